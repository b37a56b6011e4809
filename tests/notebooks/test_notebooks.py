"""Each Databricks source notebook executes end to end locally (local session, dbutils.widgets stand-in)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

from gramian.notebook import CELL, HEADER, DBUtils, cells, run_notebook

pytestmark = pytest.mark.notebooks

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SMALL = ("generate.n_users=300;generate.n_items=150;generate.n_interactions=6000;evaluate.k=[10,20];"
         "evaluate.sampled.m=50")


@pytest.fixture(scope="module")
def widgets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("nb-warehouse")
    return {"conf": str(ROOT / "conf" / "synthetic.yaml"), "overrides": SMALL, "storage_root": str(root),
            "run_id": "nb1", "dim": "8", "epochs": "3", "n": "5", "users": "2"}


def test_every_notebook_is_in_databricks_source_format():
    paths = sorted(NOTEBOOKS.glob("*.py"))
    assert [p.name for p in paths] == ["01_explore.py", "02_train_evaluate.py", "03_publish.py"]
    for path in paths:
        text = path.read_text()
        assert text.splitlines()[0] == HEADER and CELL in text and len(cells(path)) >= 3
        assert "dbutils.widgets.text(" in text


def test_widget_stand_in_returns_given_values_over_defaults():
    w = DBUtils({"dim": "16"}).widgets
    w.text("dim", "32")
    w.text("epochs", "10")
    assert (w.get("dim"), w.get("epochs")) == ("16", "10")
    with pytest.raises(ValueError, match="must be defined"):
        w.get("missing")


def test_explore_notebook_ingests_splits_and_plots(spark, widgets):
    matplotlib.use("Agg")
    g = run_notebook(NOTEBOOKS / "01_explore.py", widgets, spark)
    assert g["sizes"]["interactions"] > 0 and 0 < g["sizes"]["density"] < 1
    assert g["split_summary"]["train"] == g["sizes"]["interactions"]
    assert len(g["fig"].axes) == 2 and g["item_counts"][0] >= g["item_counts"][-1]


def test_train_evaluate_notebook_uses_the_widgets_and_plots_metrics(spark, widgets):
    g = run_notebook(NOTEBOOKS / "02_train_evaluate.py", widgets, spark)
    assert g["cfg"].model.dim == 8 and g["trained"]["dim"] == 8 and g["trained"]["epochs"] == 3
    assert [e["epoch"] for e in g["epochs"]] == [1, 2, 3]
    exact = g["exact"]
    assert {"recall", "ndcg"} <= set(exact["metric"]) and set(exact["k"]) == {10, 20}
    assert ((exact["value"] >= 0) & (exact["value"] <= 1)).all()
    assert len(g["fig"].axes[0].lines) == exact["metric"].nunique()


def test_train_evaluate_notebook_tunes_first_when_asked_and_trains_the_profile(spark, widgets):
    given = {**widgets, "run_id": "nb-tuned", "tune_trials": "2",
             "overrides": SMALL + ";tune.space.dim.choices=[4,8];tune.space.epochs=null"}
    g = run_notebook(NOTEBOOKS / "02_train_evaluate.py", given, spark)
    assert g["tuned"]["trials"] == 2 and any(s.endswith("gramian-nb-tuned.tuned.yaml") for s in g["cfg"].sources)
    assert g["cfg"].model.reg == g["tuned"]["best_params"]["reg"] and g["trained"]["epochs"] == 3
    assert g["trained"]["dim"] == g["tuned"]["best_params"]["dim"]


def test_publish_notebook_writes_topn_and_folds_in_a_new_user(spark, widgets):
    g = run_notebook(NOTEBOOKS / "03_publish.py", widgets, spark)
    rows = g["shown"].collect()
    assert len({r["user_id"] for r in rows}) == 2
    assert max(r["rank"] for r in rows) == 5
    assert g["history"].count() == 2
    new_user = g["new_user"]
    assert len(new_user.items) == 5 and not set(new_user.items) & set(g["popular"]) and not new_user.unknown
