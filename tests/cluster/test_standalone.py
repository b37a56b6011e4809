"""The pipeline through spark-submit on a real two-worker standalone cluster on loopback, and losing a worker.

Slow by nature (JVMs, a cluster, spark-submit): one cluster for the module, small synthetic data. To keep
the suite's time reasonable, ingest and split run in-process first under the same run_id; `jobs/run.py`
on the cluster then skips them (resumability, stage_runs) and runs train, evaluate and publish there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gramian.cli import PIPELINE, main
from gramian.config import StorageConfig
from gramian.tables import read
from tests.cluster.standalone import ROOT, StandaloneCluster, build_zip, spark_env

pytestmark = pytest.mark.cluster

SMALL = ["generate.n_users=400", "generate.n_items=200", "generate.n_interactions=8000", "model.dim=8",
         "model.epochs=6", "train.checkpoint_every=0", "train.num_user_blocks=4", "train.num_item_blocks=4",
         "evaluate.k=[10,20]", "publish.n=10"]
TIMEOUT = float(os.environ.get("GRAMIAN_CLUSTER_TIMEOUT", "1200"))  # per spark-submit; a loaded 2-core box is slow


class Submitted:
    """A spark-submit process whose combined output is collected line by line (and kept in a file)."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.lines: list[str] = []
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=spark_env(),
                                     cwd=ROOT, text=True, errors="replace")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log, "w") as out:
            for line in self.proc.stdout:
                self.lines.append(line)
                out.write(line)
                out.flush()

    def wait_for(self, pattern: str, timeout: float) -> int:
        """Index of the first output line matching pattern; fails when the job ends or time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, line in enumerate(list(self.lines)):
                if re.search(pattern, line):
                    return i
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.2)
        pytest.fail(f"spark-submit never logged {pattern!r}:\n" + "".join(self.lines[-60:]))

    def finish(self, timeout: float = TIMEOUT) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"spark-submit did not finish in {timeout}s:\n" + "".join(self.lines[-60:]))
        self.reader.join(timeout=30)
        text = "".join(self.lines)
        assert self.proc.returncode == 0, f"spark-submit failed ({self.proc.returncode}):\n{text[-6000:]}"
        return text


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("standalone")
    with StandaloneCluster(work / "cluster", workers=2, cores=1) as c:
        c.zip = build_zip(work / "dist" / "gramian.zip")
        c.warehouse = work / "warehouse"
        yield c


def submit(cluster, job: str, run_id: str, name: str) -> Submitted:
    sets = [x for s in [*SMALL, f"storage.root={cluster.warehouse}"] for x in ("--set", s)]
    args = ["--conf", "conf/synthetic.yaml", *sets, "--run-id", run_id, "--verbose"]  # the log lines read below
    return Submitted(cluster.submit_command(job, args, py_files=cluster.zip), cluster.workdir / f"{name}.log")


def local_args(cluster, *extra: str) -> list[str]:
    sets = [x for s in [*SMALL, f"storage.root={cluster.warehouse}"] for x in ("--set", s)]
    return ["--conf", "conf/synthetic.yaml", *sets, *extra]


@pytest.fixture(scope="module")
def baseline(spark, cluster) -> str:
    """ingest + split in-process, then `jobs/run.py` through spark-submit (the rest), undisturbed."""
    for stage in ("ingest", "split"):
        assert main([stage, *local_args(cluster, "--run-id", "base")]) == 0
    return submit(cluster, "jobs/run.py", "base", "run-base").finish()


def recall_at(spark, storage: StorageConfig, run_id: str, k: int = 10) -> float:
    """Mean Recall@k over test users, computed in numpy from the run's factors (independent of evaluate)."""
    def factors(name: str) -> np.ndarray:
        rows = read(spark, storage, name).filter(f"run_id = '{run_id}'").select("idx", "factors").collect()
        out = np.zeros((max(r[0] for r in rows) + 1, len(rows[0][1])))
        for idx, f in rows:
            out[idx] = f
        return out

    users, items = factors("user_factors"), factors("item_factors")
    scores = users @ items.T
    for u, i in read(spark, storage, "train").select("user_idx", "item_idx").collect():
        scores[u, i] = -np.inf
    test: dict[int, set[int]] = {}
    for u, i in read(spark, storage, "test").select("user_idx", "item_idx").collect():
        test.setdefault(u, set()).add(i)
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([len(test[u] & set(top[u].tolist())) / min(k, len(test[u])) for u in test]))


def final_loss(spark, storage: StorageConfig, run_id: str) -> tuple[int, float]:
    row = read(spark, storage, "runs").filter(f"run_id = '{run_id}'").collect()[0]
    epochs = json.loads(row["epochs"])
    return epochs[-1]["epoch"], epochs[-1]["loss"]


def test_pipeline_runs_through_spark_submit_on_a_two_worker_cluster(spark, cluster, baseline):
    assert f"master {cluster.url}" in baseline  # the driver ran against the standalone master, not local
    for stage in PIPELINE:
        assert f"\n  {stage} " in baseline  # gramian run's one line per stage
    assert "ingest: complete for run base, skipped" in baseline and "split: complete for run base" in baseline
    assert "train: running" in baseline
    for i in range(2):
        assert "Asked to launch executor" in cluster.logs[f"worker{i}"].read_text()
    st = StorageConfig(root=str(cluster.warehouse))
    n_users = read(spark, st, "users").count()
    assert read(spark, st, "user_factors").filter("run_id = 'base'").count() == n_users
    assert final_loss(spark, st, "base")[0] == 6
    stages = {r["stage"]: r["status"] for r in read(spark, st, "stage_runs").filter("run_id = 'base'").collect()}
    assert stages == {s: "finished" for s in PIPELINE}


def test_losing_a_worker_mid_training_still_finishes_with_the_same_model(spark, cluster, baseline):
    job = submit(cluster, "jobs/train.py", "faulty", "train-faulty")
    killed_after = job.wait_for(r"epoch 2/6 loss", timeout=TIMEOUT)
    cluster.kill_worker(1)
    text = job.finish()
    later = "".join(job.lines[killed_after + 1:])
    assert re.search(r"epoch 6/6 loss", later), "the worker must be lost before training ended"
    assert re.search(r"(?i)lost executor|executor \S+ (is now )?lost|removed executor", text), "no executor loss seen"
    st = StorageConfig(root=str(cluster.warehouse))
    assert final_loss(spark, st, "faulty")[0] == 6
    np.testing.assert_allclose(final_loss(spark, st, "faulty")[1], final_loss(spark, st, "base")[1], rtol=1e-4)
    assert abs(recall_at(spark, st, "faulty") - recall_at(spark, st, "base")) < 1e-3
    if "evaluate" in PIPELINE:  # the stage's own metrics (computed in-process: the factors are what is tested)
        assert main(["evaluate", *local_args(cluster, "--run-id", "faulty")]) == 0
        metrics = read(spark, st, "metrics").filter(
            "run_id in ('base', 'faulty') AND method = 'exact' AND model NOT LIKE '%@%'").collect()
        by_run: dict[str, dict[tuple, float]] = {}
        for r in metrics:  # keyed by model too: the popularity baseline shares metric, k and method
            key = (r["model"], r["metric"], r["k"])
            assert key not in by_run.get(r["run_id"], {}), f"two exact rows for {key} in run {r['run_id']}"
            by_run.setdefault(r["run_id"], {})[key] = r["value"]
        assert by_run["base"].keys() == by_run["faulty"].keys() and by_run["base"]
        assert {m for m, _, _ in by_run["base"]} >= {"popularity"}
        for key, value in by_run["base"].items():
            assert abs(by_run["faulty"][key] - value) < 1e-3, key
