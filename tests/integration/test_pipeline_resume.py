"""`gramian run` resumability (stage_runs: fingerprint, last writer, per-run rows) and the quality gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gramian.cli import GATE_REJECTED, PIPELINE, STAGES, main
from gramian.config import StorageConfig, load_config
from gramian.errors import InputDataError
from gramian.pipeline import run_pipeline, stage_runs
from gramian.tables import read, write

SMALL = ["generate.n_users=300", "generate.n_items=150", "generate.n_interactions=6000", "model.dim=8",
         "model.epochs=2", "evaluate.k=[10,20]", "evaluate.sampled.m=50", "publish.n=10"]


def args(root: Path, *extra: str) -> list[str]:
    return ["--conf", "conf/synthetic.yaml", *[x for s in [*SMALL, f"storage.root={root}", *extra]
                                               for x in ("--set", s)]]


def cfg_of(root: Path, *extra: str):
    return load_config("conf/synthetic.yaml", [*SMALL, f"storage.root={root}", *extra])


@pytest.fixture(scope="module")
def first(spark, tmp_path_factory):
    """One full `gramian run` (run_id r1) and what it printed."""
    root = tmp_path_factory.mktemp("resume")
    capture = pytest.MonkeyPatch()
    import io
    import sys

    out = io.StringIO()
    capture.setattr(sys, "stdout", out)
    try:
        assert main(["run", *args(root), "--run-id", "r1"]) == 0
    finally:
        capture.undo()
    return root, out.getvalue()


def test_run_records_every_stage_and_prints_a_line_each_and_the_short_summary(spark, first):
    root, printed = first
    rows = {r["stage"]: r for r in stage_runs(spark, cfg_of(root), "r1")}
    assert set(rows) == set(PIPELINE) and all(r["status"] == "finished" for r in rows.values())
    assert len({r["fingerprint"] for r in rows.values()}) == len(PIPELINE)  # each covers its upstream sections
    lines = printed.splitlines()
    for stage in PIPELINE:
        assert sum(line.startswith(f"  {stage} ") for line in lines) == 1
    assert "== run r1: ials" in printed and "Recall@20" in printed and "NDCG@20" in printed
    assert any(line.split()[:1] == ["popularity"] for line in lines) and "lift" in printed
    assert "mlflow: sqlite:///" in printed and len(lines) < 25  # the full metrics table stays in --json


def test_rerun_with_the_same_run_id_skips_every_complete_stage(spark, first):
    root, _ = first
    before = {r["stage"]: r["finished"] for r in stage_runs(spark, cfg_of(root), "r1")}
    summaries = run_pipeline(spark, cfg_of(root), "r1", STAGES, PIPELINE)
    assert all(s.get("skipped") for s in summaries.values()), summaries
    after = {r["stage"]: r["finished"] for r in stage_runs(spark, cfg_of(root), "r1")}
    assert after == before


def test_changed_model_config_redoes_train_and_everything_after_it_only(spark, first):
    root, _ = first
    summaries = run_pipeline(spark, cfg_of(root, "model.epochs=3"), "r1", STAGES, PIPELINE)
    assert summaries["ingest"].get("skipped") and summaries["split"].get("skipped")
    after_train = PIPELINE[PIPELINE.index("train"):]
    assert not any(summaries[s].get("skipped") for s in after_train)
    assert summaries["train"]["epochs"] == 3
    runs = read(spark, StorageConfig(root=str(root)), "runs").filter("run_id = 'r1'").collect()
    assert len(json.loads(runs[0]["epochs"])) == 3


def test_tables_rewritten_by_another_run_make_the_stage_incomplete(spark, first):
    root, _ = first
    cfg = cfg_of(root, "model.epochs=3")
    assert main(["ingest", *args(root, "model.epochs=3"), "--run-id", "other"]) == 0
    summaries = run_pipeline(spark, cfg, "r1", STAGES, ("ingest", "split", "train"))
    assert not summaries["ingest"].get("skipped")  # interactions were last written by run "other"
    assert not summaries["split"].get("skipped") and not summaries["train"].get("skipped")


def boom(spark, cfg, run_id, **kwargs):
    """A stage that fails, for the failure record."""
    raise InputDataError("boom must not happen, got it (test). Remove the failing stage.")


def test_a_failed_stage_is_recorded_and_redone_next_time(spark, first):
    root, _ = first
    cfg = cfg_of(root, "model.epochs=3")
    stages = {**STAGES, "train": f"{__name__}:boom"}
    with pytest.raises(InputDataError):
        run_pipeline(spark, cfg, "r3", stages, ("ingest", "split", "train"))
    rows = {r["stage"]: r for r in stage_runs(spark, cfg, "r3")}
    assert rows["ingest"]["status"] == "finished" and rows["train"]["status"] == "failed"
    assert "boom must not happen" in json.loads(rows["train"]["summary"])["error"]
    summaries = run_pipeline(spark, cfg, "r3", STAGES, ("ingest", "split", "train"))
    assert summaries["ingest"].get("skipped") and summaries["split"].get("skipped")
    assert not summaries["train"].get("skipped")
    assert {r["stage"]: r["status"] for r in stage_runs(spark, cfg, "r3")}["train"] == "finished"


def test_gate_passes_a_floor_and_rejects_what_does_not_beat_the_published_run(spark, first):
    root, _ = first
    st = StorageConfig(root=str(root))
    gate = [*args(root), "--metric", "ndcg", "--k", "20", "--method", "exact"]
    assert main(["gate", *gate, "--run-id", "r1", "--floor", "0.0"]) == 0
    assert main(["gate", *gate, "--run-id", "r1", "--floor", "1.01"]) == GATE_REJECTED
    published = read(spark, st, "metrics").filter("run_id = 'r1' AND model NOT LIKE '%@%'")
    value = published.filter("metric = 'ndcg' AND k = 20 AND method = 'exact' AND model != 'popularity'"
                             ).first()["value"]
    for run_id, delta in (("worse", -0.01), ("better", 0.01)):
        from pyspark.sql import functions as F

        # the popularity baseline beside each run scores high: a gate reading it would pass "worse"
        moved = F.when(F.col("model") == "popularity", F.lit(0.99)).otherwise(F.col("value") + delta)
        write(published.withColumn("run_id", F.lit(run_id)).withColumn("value", moved), st,
              "metrics", replace_where=f"run_id = '{run_id}'")
        # r1's model on r1's split (its runs row): the gate compares only runs trained on one split
        runs_row = read(spark, st, "runs").filter("run_id = 'r1'").withColumn("run_id", F.lit(run_id))
        write(runs_row.localCheckpoint(), st, "runs", replace_where=f"run_id = '{run_id}'")
    assert main(["gate", *gate, "--run-id", "worse"]) == GATE_REJECTED
    assert main(["gate", *gate, "--run-id", "better"]) == 0
    assert value > 0
