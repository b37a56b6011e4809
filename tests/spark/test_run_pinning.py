"""Runs pinned to their split (Delta versions in `runs`) and replaces that never reach another run's rows.

Driven through the stages on one synthetic warehouse: ingest -> split (seed 0) -> train A -> evaluate,
publish; then a re-split (seed 1) and run B on it. A's later stages must read A's split; mixing the two
splits (compare_runs, the gate, --resume) is refused with both versions named.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from gramian import tables
from gramian.config import load_config
from gramian.data.ingest import run as ingest
from gramian.data.split import run as split
from gramian.errors import ConfigError, InputDataError
from gramian.evaluate.job import fold_in_config
from gramian.evaluate.job import run as evaluate
from gramian.gate import run as gate
from gramian.retrieval.publish import run as publish
from gramian.runs import RUN_ID_PATTERN, recorded_inputs, sql_literal
from gramian.train.job import run as train

SMALL = ["generate.n_users=300", "generate.n_items=150", "generate.n_interactions=6000", "model.dim=8",
         "model.epochs=2", "train.checkpoint_every=1", "evaluate.k=[10,20]", "evaluate.sampled.enabled=false",
         "publish.n=10", "publish.brute_force_below=100000"]
PER_RUN = ("user_factors", "item_factors", "runs", "metrics")


def cfg_of(root: Path, *extra: str):
    return load_config("conf/synthetic.yaml", [*SMALL, f"storage.root={root}", *extra])


def rows_of(spark, cfg, name: str, run_id: str) -> list[tuple]:
    df = tables.read(spark, cfg.storage, name).filter(F.col("run_id") == run_id)
    return sorted(tuple(str(v) for v in r) for r in df.drop("evaluated_at").collect())


def metric_values(spark, cfg, run_id: str) -> dict[tuple, float]:
    df = tables.read(spark, cfg.storage, "metrics").filter(F.col("run_id") == run_id)
    return {(r["model"], r["metric"], r["k"], r["method"]): r["value"] for r in df.collect()}


def topn_of(spark, cfg, run_id: str) -> list[tuple]:
    df = tables.read(spark, cfg.storage, "topn").filter(F.col("run_id") == run_id)
    return sorted((r["user_id"], r["rank"], r["item_id"]) for r in df.collect())


@pytest.fixture(scope="module")
def two_splits(spark, tmp_path_factory):
    """Run A trained, evaluated and published on split 0, then split 1 written and run B trained on it."""
    root = tmp_path_factory.mktemp("pinning") / "wh"
    cfg = cfg_of(root)
    ingest(spark, cfg, "ing")
    split(spark, cfg, "s0")
    trained_a = train(spark, cfg, "A")
    evaluate(spark, cfg, "A")
    publish(spark, cfg, "A")  # adds its index-recall rows, which a later evaluate must keep
    before = {"metrics": metric_values(spark, cfg, "A"), "topn": topn_of(spark, cfg, "A")}
    cfg1 = cfg_of(root, "split.seed=1")
    split(spark, cfg1, "s1")
    train(spark, cfg1, "B")
    return cfg, cfg1, trained_a, before


def test_train_records_the_versions_of_its_split_in_the_runs_row(spark, two_splits):
    cfg, _, trained_a, _ = two_splits
    pins_a, pins_b = recorded_inputs(spark, cfg.storage, "A"), recorded_inputs(spark, cfg.storage, "B")
    assert set(pins_a) == {"train", "test", "foldin", "interactions"} and pins_a == trained_a["inputs"]
    assert (pins_b["train"], pins_b["test"]) == (pins_a["train"] + 1, pins_a["test"] + 1)  # one re-split later
    assert pins_b["foldin"] >= pins_a["foldin"]  # empty for a random split (Delta may skip an empty overwrite)
    assert pins_b["interactions"] == pins_a["interactions"]
    assert pins_b["train"] == tables.version(spark, cfg.storage, "train")


def test_a_runs_rows_are_written_as_one_data_file_per_table(spark, two_splits):
    """Run A's first writes (factors of 300 users and 150 items, its runs row and its metrics):
    one data file each, not one per default partition (most of them empty) or per factor block."""
    cfg = two_splits[0]
    root = Path(cfg.storage.root)
    for name in ("user_factors", "item_factors", "runs", "metrics"):
        log = root / name / "_delta_log" / f"{0:020d}.json"
        adds = [a for a in map(json.loads, log.read_text().splitlines()) if "add" in a]
        assert len(adds) == 1, (name, [a["add"]["path"] for a in adds])
        assert json.loads(adds[0]["add"]["stats"])["numRecords"] > 0, name


def test_evaluate_after_a_resplit_scores_the_run_on_the_split_it_trained_on(spark, two_splits):
    cfg, cfg1, _, before = two_splits
    summary = evaluate(spark, cfg1, "A")  # the current tables are split 1 now
    assert summary["inputs"] == recorded_inputs(spark, cfg.storage, "A")
    after = metric_values(spark, cfg, "A")
    assert after.keys() == before["metrics"].keys()
    for key, value in before["metrics"].items():
        assert after[key] == pytest.approx(value, abs=1e-12), key


def test_publish_after_a_resplit_excludes_the_history_the_run_trained_on(spark, two_splits):
    cfg, cfg1, _, before = two_splits
    publish(spark, cfg1, "A")
    assert topn_of(spark, cfg, "A") == before["topn"]


def test_compare_runs_refuses_a_run_trained_on_another_split_naming_both(spark, two_splits):
    _, cfg1, _, _ = two_splits
    cfg = dataclasses.replace(cfg1, evaluate=dataclasses.replace(cfg1.evaluate, compare_runs=("A",)))
    pins_a, pins_b = recorded_inputs(spark, cfg.storage, "A"), recorded_inputs(spark, cfg.storage, "B")
    with pytest.raises(InputDataError) as info:
        evaluate(spark, cfg, "B")
    text = str(info.value)
    assert "run 'A' must have been trained on the split of run 'B'" in text
    assert f"train v{pins_b['train']}" in text and f"train v{pins_a['train']}" in text
    assert "evaluate.compare_runs" in text


def test_gate_refuses_to_compare_with_a_published_run_on_another_split(spark, two_splits):
    _, cfg1, _, _ = two_splits
    evaluate(spark, cfg1, "B")  # A is the current publication, trained on split 0
    pins_a = recorded_inputs(spark, cfg1.storage, "A")
    with pytest.raises(InputDataError) as info:
        gate(spark, cfg1, "B", metric="ndcg", k=20)
    assert "published run 'A' was trained on another split" in str(info.value)
    assert f"train v{pins_a['train']}" in str(info.value) and "--on-new-split floor" in str(info.value)
    floor = gate(spark, cfg1, "B", metric="ndcg", k=20, floor=0.0, on_new_split="floor")
    assert floor["passed"] and floor["compared_with"] is None and floor["published_run"] == "A"
    assert "floor only" in floor["reason"]


def test_each_compared_run_folds_in_with_its_own_recorded_model_settings(spark, two_splits):
    _, cfg1, _, _ = two_splits
    strong = dataclasses.replace(cfg1, model=dataclasses.replace(cfg1.model, reg=5.0, alpha0=0.5))
    train(spark, strong, "B3")
    assert fold_in_config(spark, cfg1, "B3", 150).reg == 5.0  # not cfg1's
    assert fold_in_config(spark, cfg1, "B3", 150).alpha0 == 0.5
    compared = dataclasses.replace(cfg1, evaluate=dataclasses.replace(cfg1.evaluate, compare_runs=("B3",)))
    evaluate(spark, compared, "B")
    alone = metric_values(spark, cfg1, "B")
    evaluate(spark, cfg1, "B3")
    own = metric_values(spark, cfg1, "B3")
    for (model, metric, k, method), value in alone.items():
        if model.endswith("@B3") and method == "exact":
            assert value == pytest.approx(own[(model.split("@")[0], metric, k, method)], abs=1e-9)


def test_resume_refuses_when_the_split_changed_since_the_checkpoint(spark, two_splits):
    cfg, cfg1, _, _ = two_splits
    again = dataclasses.replace(cfg1, model=dataclasses.replace(cfg.model, epochs=3))
    with pytest.raises(InputDataError) as info:
        train(spark, again, "A", resume=True)  # A's checkpoint (epoch 2) is of split 0; the tables hold split 1
    pins_a = recorded_inputs(spark, cfg.storage, "A")
    text = str(info.value)
    assert "to resume" in text and f"train v{pins_a['train']}" in text and "drop --resume" in text
    assert json.loads(tables.read(spark, cfg.storage, "runs").filter("run_id = 'A'").first()["epochs"])[-1][
        "epoch"] == 2  # nothing was trained or written


def test_a_removed_version_is_refused_naming_the_recorded_and_current_versions(spark, two_splits):
    """Last in this module: drops the train table and re-splits (a new table, versions from 0 again)."""
    cfg, cfg1, _, _ = two_splits
    pins_b = recorded_inputs(spark, cfg.storage, "B")
    shutil.rmtree(tables.table_ref(cfg.storage, "train"))
    split(spark, cfg_of(Path(cfg.storage.root), "split.seed=2"), "s2")
    with pytest.raises(InputDataError) as info:
        evaluate(spark, cfg1, "B")
    text = str(info.value)
    assert f"table 'train' must still hold version {pins_b['train']} that run 'B' was trained on" in text
    assert "got current version 0" in text and "Re-train under a new --run-id" in text


@pytest.fixture(scope="module")
def two_runs(spark, tmp_path_factory):
    """Runs A and B trained and evaluated on one split."""
    root = tmp_path_factory.mktemp("runids") / "wh"
    cfg = cfg_of(root, "model.epochs=1", "evaluate.popularity=false")
    ingest(spark, cfg, "ing")
    split(spark, cfg, "s0")
    for run_id in ("A", "B"):
        train(spark, cfg, run_id)
        evaluate(spark, cfg, run_id)
    return cfg


def test_rerunning_run_a_replaces_its_rows_and_never_touches_run_b(spark, two_runs):
    cfg = two_runs
    b_before = {name: rows_of(spark, cfg, name, "B") for name in PER_RUN}
    a_before = {name: len(rows_of(spark, cfg, name, "A")) for name in PER_RUN}
    train(spark, cfg, "A")
    evaluate(spark, cfg, "A")
    assert {name: len(rows_of(spark, cfg, name, "A")) for name in PER_RUN} == a_before
    assert {name: rows_of(spark, cfg, name, "B") for name in PER_RUN} == b_before


@pytest.mark.parametrize("crafted", ["A' OR '1'='1", "it's", "A' OR run_id LIKE '%"])
def test_a_crafted_run_id_is_refused_and_other_runs_rows_survive(spark, two_runs, crafted):
    cfg = two_runs
    b_before = {name: rows_of(spark, cfg, name, "B") for name in PER_RUN}
    for stage in (ingest, split, train, evaluate, publish):
        with pytest.raises(ConfigError, match=re.escape(RUN_ID_PATTERN)):
            stage(spark, cfg, crafted)
    assert {name: rows_of(spark, cfg, name, "B") for name in PER_RUN} == b_before


@pytest.mark.parametrize("value", ["it's", "back\\slash", "both \\' and ''", "plain"])
def test_the_one_sql_literal_round_trips_through_spark_sql(spark, value):
    assert spark.sql(f"SELECT {sql_literal(value)} AS v").first()["v"] == value


def test_an_old_runs_table_without_inputs_stays_readable_and_gains_the_column(spark, two_runs):
    cfg = two_runs
    st = cfg.storage
    old = tables.read(spark, st, "runs").drop("inputs")
    tables.write(old.localCheckpoint(), st, "runs")  # a runs table as written before runs were pinned
    assert recorded_inputs(spark, st, "A") is None
    evaluate(spark, cfg, "A")  # unpinned: reads the current split
    train(spark, cfg, "C")
    assert recorded_inputs(spark, st, "C")["train"] == tables.version(spark, st, "train")
    assert recorded_inputs(spark, st, "B") is None
