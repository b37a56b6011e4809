"""The `gramian` CLI end to end on generated data: every stage's tables, the run record, re-runs.

storage.root is given as a `file:` URI (what a cluster user writes for s3a://, abfss://, ...): tables go
through Spark/Delta and every artifact through the storage layer, under <root>/_artifacts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gramian.cli import main
from gramian.config import StorageConfig, load_config
from gramian.pipeline import headline, run_summary, stage_runs
from gramian.tables import read
from gramian.tracking import tracking_uri

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


def _mlflow_run(warehouse: Path) -> tuple[Any, Any]:
    from mlflow import MlflowClient

    cfg = load_config("conf/synthetic.yaml", [*SMALL, f"storage.root={warehouse}"])
    client = MlflowClient(tracking_uri(cfg))
    exp = client.get_experiment_by_name("gramian")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`gramian.run_id` = 'r1'")
    return client, runs


def test_run_logs_one_mlflow_run_with_params_epoch_history_metrics_and_artifacts(spark, warehouse):
    client, runs = _mlflow_run(warehouse)
    main_run = [r for r in runs if "gramian.part" not in r.data.tags]
    assert len(main_run) == 1 and main_run[0].info.status == "FINISHED"
    run = main_run[0]
    assert run.data.params["model.dim"] == "8" and run.data.params["model.epochs"] == "3"
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss] == [1, 2, 3] and loss[-1].value < loss[0].value
    assert len(client.get_metric_history(run.info.run_id, "user_step_seconds")) == 3
    metrics = run.data.metrics
    assert {"recall_at_10", "recall_at_20", "ndcg_at_20", "sampled.item_recall_at_20", "corrected.item_recall_at_20",
            "index_recall"} <= set(metrics)
    st = StorageConfig(root=str(warehouse))
    exact = read(spark, st, "metrics").filter("run_id = 'r1' AND model = 'ials' AND metric = 'recall' "
                                               "AND k = 20 AND method = 'exact'").first()["value"]
    assert metrics["recall_at_20"] == pytest.approx(exact)
    pop = [r for r in runs if r.data.tags.get("gramian.part") == "evaluate/popularity"]
    assert len(pop) == 1 and pop[0].data.tags["mlflow.parentRunId"] == run.info.run_id
    assert "recall_at_20" in pop[0].data.metrics and pop[0].info.status == "FINISHED"
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "report", "stages", "model"} <= top
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} >= {
        "report/report.md", "report/metrics_at_k.png", "report/loss.png"}
    assert "stages/publish.json" in {a.path for a in client.list_artifacts(run.info.run_id, "stages")}
    assert run.data.tags["publish.index"] == "brute"


def test_logged_model_predicts_the_fold_in_top_n_of_recommend_without_spark(spark, warehouse):
    from gramian.retrieval.recommend import recommend

    client, runs = _mlflow_run(warehouse)
    run = [r for r in runs if "gramian.part" not in r.data.tags][0]
    cfg = load_config("conf/synthetic.yaml", [*SMALL, f"storage.root={warehouse}"])
    history = [r["id"] for r in read(spark, StorageConfig(root=str(warehouse)), "items").orderBy("idx").limit(3)
               .collect()]
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({tracking_uri(cfg)!r})\n"
        f"m = mlflow.pyfunc.load_model({run.data.tags['gramian.model_uri']!r})\n"
        f"out = m.predict(pd.DataFrame({{'items': [{history!r}]}}), params={{'n': 5}})\n"
        "from pyspark import SparkContext\n"
        "assert SparkContext._active_spark_context is None and SparkContext._gateway is None\n"
        "print(json.dumps({'ids': list(out['item_ids'][0]), 'scores': list(out['scores'][0])}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    rec = recommend(history, n=5, cfg=cfg, run_id="r1", spark=spark)
    assert got["ids"] == rec.items and not set(got["ids"]) & set(history)
    np.testing.assert_allclose(got["scores"], rec.scores, rtol=1e-4)


def test_run_summary_puts_the_model_beside_popularity_with_the_lift(spark, warehouse):
    cfg = load_config("conf/synthetic.yaml", [*SMALL, f"storage.root={warehouse}"])
    summaries = {r["stage"]: {**json.loads(r["summary"]), "stage_seconds": 1.0}
                 for r in stage_runs(spark, cfg, "r1")}
    text = run_summary(spark, cfg, "r1", summaries)
    scores = headline(spark, cfg, "r1")
    model, pop = scores["ials"], scores["popularity"]
    assert f"{model['recall']:.4f}" in text and f"{pop['ndcg']:.4f}" in text
    assert f"{(model['recall'] / pop['recall'] - 1) * 100:+.0f}%" in text
    assert "mlflow: sqlite:///" in text and "report.md" in text and len(text.splitlines()) < 15


def test_tracking_disabled_leaves_no_mlflow_store(spark, tmp_path):
    sets = [x for s in [*SMALL, f"storage.root={tmp_path}", "tracking.enabled=false"] for x in ("--set", s)]
    assert main(["ingest", "--conf", "conf/synthetic.yaml", *sets, "--run-id", "off"]) == 0
    assert (tmp_path / "interactions").is_dir() and not (tmp_path / "_artifacts" / "mlflow").exists()


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


def test_spark_jobs_carry_the_stage_and_epoch_they_belong_to(spark):
    from gramian.progress import EpochProgress, describe_jobs
    from gramian.train.als import EpochStats

    progress = EpochProgress(spark, total=2, label="train r9", bar=False)
    assert spark.sparkContext.getLocalProperty("spark.job.description") == "train r9 epoch 1/2"
    progress(EpochStats(1, 1.0, 1.0, 0.0, 0.0, 0.1, 0.1))
    assert spark.sparkContext.getLocalProperty("spark.job.description") == "train r9 epoch 2/2"
    progress.close()
    assert spark.sparkContext.getLocalProperty("spark.job.description") == "train r9"
    describe_jobs(spark, None)
    assert spark.sparkContext.getLocalProperty("spark.job.description") is None
