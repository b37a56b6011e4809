"""The `gramian` CLI end to end on generated data: every stage's tables, the run record, re-runs.

storage.root is given as a `file:` URI (what a cluster user writes for s3a://, abfss://, ...): tables go
through Spark/Delta and every artifact through the storage layer, under <root>/_artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gramian.cli import main
from gramian.config import StorageConfig
from gramian.tables import read

SMALL = ["generate.n_users=300", "generate.n_items=150", "generate.n_interactions=6000", "model.dim=8",
         "model.epochs=3", "train.checkpoint_every=1"]


CONF = Path(__file__).resolve().parents[2] / "conf" / "synthetic.yaml"


def cli(tmp: Path, *args: str, run_id: str = "r1") -> int:
    sets = [x for s in [*SMALL, f"storage.root=file://{tmp}"] for x in ("--set", s)]
    return main([*args, "--conf", str(CONF), *sets, "--run-id", run_id])


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wh")
    assert cli(root, "run") == 0
    return root


def test_run_writes_every_stage_table_with_consistent_counts(spark, warehouse):
    st = StorageConfig(root=str(warehouse))
    interactions = read(spark, st, "interactions").count()
    train, test = read(spark, st, "train").count(), read(spark, st, "test").count()
    assert interactions > 0 and train + test == interactions
    n_users = read(spark, st, "users").count()
    factors = read(spark, st, "user_factors").filter("run_id = 'r1'")
    assert factors.count() == n_users
    row = factors.first()
    assert len(row["factors"]) == 8 and row["id"] is not None


def test_run_record_holds_config_and_a_decreasing_loss_per_epoch(spark, warehouse):
    runs = read(spark, StorageConfig(root=str(warehouse)), "runs").filter("run_id = 'r1'").collect()
    assert len(runs) == 1 and runs[0]["status"] == "finished"
    epochs = json.loads(runs[0]["epochs"])
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    losses = [e["loss"] for e in epochs]
    assert losses[-1] < losses[0]
    assert json.loads(runs[0]["config"])["model"]["dim"] == 8


def test_file_uri_root_keeps_every_artifact_under_root_artifacts(spark, warehouse, tmp_path, monkeypatch):
    from gramian.retrieval.publish import current_publication

    arts = warehouse / "_artifacts"
    assert json.loads((arts / "checkpoints" / "r1" / "latest.json").read_text())["epoch"] == 3
    token = (arts / "index" / "r1" / "CURRENT").read_text().strip()
    assert (arts / "index" / "r1" / token / "item_factors.npy").is_file()
    assert {"report.md", "metrics_at_k.png", "loss.png"} <= {p.name for p in (arts / "reports" / "r1").iterdir()}
    assert sorted(p.name for p in warehouse.iterdir() if p.name.startswith("_")) == ["_artifacts"]
    pub = current_publication(spark, StorageConfig(root=f"file://{warehouse}"))
    assert pub["run_id"] == "r1" and pub["index_path"] == f"file://{warehouse}/_artifacts/index/r1"
    monkeypatch.chdir(tmp_path)  # a URI root is never turned into a local folder named after it
    assert cli(warehouse, "evaluate") == 0
    assert list(tmp_path.iterdir()) == []


def test_rerunning_train_with_the_same_run_id_replaces_its_rows(spark, warehouse):
    st = StorageConfig(root=str(warehouse))
    before = read(spark, st, "item_factors").count()
    assert cli(warehouse, "train") == 0
    assert read(spark, st, "item_factors").count() == before
    assert read(spark, st, "runs").filter("run_id = 'r1'").count() == 1


def test_resume_picks_up_the_checkpoint_of_the_same_run(spark, warehouse):
    st = StorageConfig(root=str(warehouse))
    first = {r["idx"]: r["factors"] for r in read(spark, st, "item_factors").filter("run_id='r1'").collect()}
    assert cli(warehouse, "train", "--resume") == 0  # checkpoint at epoch 3 = epochs: nothing left to do
    again = {r["idx"]: r["factors"] for r in read(spark, st, "item_factors").filter("run_id='r1'").collect()}
    np.testing.assert_allclose(np.array([again[k] for k in sorted(again)]),
                               np.array([first[k] for k in sorted(first)]), atol=1e-6)


def test_bad_config_exits_2_and_names_the_key(capsys, tmp_path):
    assert main(["train", "--conf", "conf/synthetic.yaml", "--set", "model.dimm=3"]) == 2
    assert "model.dimm" in capsys.readouterr().err


def test_train_without_a_split_explains_what_to_run_first(capsys, spark, tmp_path):
    assert cli(tmp_path, "train") == 2
    assert "gramian split" in capsys.readouterr().err
