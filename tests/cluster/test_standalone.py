"""The pipeline through spark-submit on a two-worker cluster that shares no disk, with its store on S3.

Each worker runs in its own mount namespace (tests/cluster/standalone.py): its /tmp and /dev/shm are
private, so nothing the driver writes locally reaches an executor; the store is moto's S3 server on
127.0.0.1, used through s3a:// (tests/cluster/s3.py). One cluster and one S3 server for the module, small
synthetic data. Reference for every metric: the same config run in-process on local[2] (`local_run`), and
the undisturbed cluster run (`baseline`) for the fault tests. Tolerances: final loss rtol 1e-4, every
exact metric and Recall@10 within 1e-3 absolute (the same math; only summation order may differ).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gramian.cli import PIPELINE, main
from gramian.config import StorageConfig, load_config
from gramian.tables import read
from tests.cluster.s3 import AWS_ENV
from tests.cluster.standalone import ROOT, StandaloneCluster, build_zip, s3a_jars

pytestmark = [pytest.mark.cluster, pytest.mark.s3]

SMALL = ["generate.n_users=400", "generate.n_items=200", "generate.n_interactions=8000", "model.dim=8",
         "model.epochs=6", "train.checkpoint_every=0", "train.num_user_blocks=4", "train.num_item_blocks=4",
         "evaluate.k=[10,20]", "publish.n=10"]
TIMEOUT = float(os.environ.get("GRAMIAN_CLUSTER_TIMEOUT", "1200"))  # per spark-submit; a loaded 2-core box is slow
LOSS_RTOL, METRIC_ATOL = 1e-4, 1e-3


class Submitted:
    """A spark-submit process (its own process group) whose output is collected line by line and kept in a file."""

    def __init__(self, cmd: list[str], log: Path, cwd: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     text=True, errors="replace", start_new_session=True)
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

    def kill(self) -> None:
        """SIGKILL the driver (spark-submit's JVM and the Python driver it started): a lost driver host."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)
        self.reader.join(timeout=30)

    def finish(self, timeout: float = TIMEOUT, expect: int = 0) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"spark-submit did not finish in {timeout}s:\n" + "".join(self.lines[-60:]))
        self.reader.join(timeout=30)
        text = "".join(self.lines)
        assert self.proc.returncode == expect, f"spark-submit ended {self.proc.returncode}:\n{text[-6000:]}"
        return text


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    work = tmp_path_factory.mktemp("standalone")
    with StandaloneCluster(work / "cluster", workers=2, cores=1, env=AWS_ENV) as c:
        c.zip = build_zip(work / "dist" / "gramian.zip")
        c.root = s3.url("wh")
        c.jars = s3a_jars()
        yield c


def config_args(cluster, *extra: str) -> list[str]:
    sets = [x for s in [*SMALL, f"storage.root={cluster.root}", *extra] for x in ("--set", s)]
    return ["--conf", str(ROOT / "conf" / "synthetic.yaml"), *sets]


def submit(cluster, s3, job: str, name: str, args: list[str]) -> Submitted:
    """spark-submit `job` from a working directory under /tmp (which no worker can see) with the S3A settings."""
    cmd = cluster.submit_command(job, [*args, "--verbose"],  # --verbose: the INFO lines the tests read
                                 py_files=cluster.zip, conf=s3.s3a_conf, class_path=cluster.jars)
    return Submitted(cmd, cluster.workdir / f"{name}.log", cluster.driver_cwd, cluster.env)


@pytest.fixture(scope="module")
def local_run(spark, cluster) -> str:
    """The reference: the same config run in-process on local[2] (the tests' session), same S3 root.

    Runs after the cluster's runs (last test): its ingest rewrites the shared tables with the same rows.
    """
    assert main(["run", *config_args(cluster), "--run-id", "local"]) == 0
    return "local"


@pytest.fixture(scope="module")
def baseline(spark, s3, cluster) -> str:
    """`jobs/run.py` (ingest -> ... -> publish) then `jobs/gate.py` through spark-submit on the cluster."""
    text = submit(cluster, s3, "jobs/run.py", "run-base", [*config_args(cluster), "--run-id", "base"]).finish()
    gate = submit(cluster, s3, "jobs/gate.py", "gate-base",
                  [*config_args(cluster), "--run-id", "base", "--metric", "ndcg", "--k", "10", "--floor", "0.01"])
    return text + gate.finish()


def storage(cluster) -> StorageConfig:
    return StorageConfig(root=cluster.root)


def recall_at(spark, st: StorageConfig, run_id: str, k: int = 10) -> float:
    """Mean Recall@k over test users, computed in numpy from the run's factors (independent of evaluate)."""
    def factors(name: str) -> np.ndarray:
        rows = read(spark, st, name).filter(f"run_id = '{run_id}'").select("idx", "factors").collect()
        out = np.zeros((max(r[0] for r in rows) + 1, len(rows[0][1])))
        for idx, f in rows:
            out[idx] = f
        return out

    users, items = factors("user_factors"), factors("item_factors")
    scores = users @ items.T
    for u, i in read(spark, st, "train").select("user_idx", "item_idx").collect():
        scores[u, i] = -np.inf
    test: dict[int, set[int]] = {}
    for u, i in read(spark, st, "test").select("user_idx", "item_idx").collect():
        test.setdefault(u, set()).add(i)
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([len(test[u] & set(top[u].tolist())) / min(k, len(test[u])) for u in test]))


def final_loss(spark, st: StorageConfig, run_id: str) -> tuple[int, float]:
    row = read(spark, st, "runs").filter(f"run_id = '{run_id}'").collect()[0]
    epochs = json.loads(row["epochs"])
    return epochs[-1]["epoch"], epochs[-1]["loss"]


def exact_metrics(spark, st: StorageConfig, run_id: str) -> dict[tuple, float]:
    """(model, metric, k) -> value of the run's exact metrics (the popularity baseline shares metric and k)."""
    out: dict[tuple, float] = {}
    rows = read(spark, st, "metrics").filter(
        f"run_id = '{run_id}' AND method = 'exact' AND model NOT LIKE '%@%'").collect()
    for r in rows:
        key = (r["model"], r["metric"], r["k"])
        assert key not in out, f"two exact rows for {key} in run {run_id}"
        out[key] = r["value"]
    assert out, f"no exact metrics for run {run_id}"
    return out


def assert_same_model(spark, st: StorageConfig, run_id: str, reference: str) -> None:
    """Same number of epochs, the same final loss and the same Recall@10 as the reference run."""
    assert final_loss(spark, st, run_id)[0] == final_loss(spark, st, reference)[0]
    np.testing.assert_allclose(final_loss(spark, st, run_id)[1], final_loss(spark, st, reference)[1],
                               rtol=LOSS_RTOL)
    assert abs(recall_at(spark, st, run_id) - recall_at(spark, st, reference)) < METRIC_ATOL


def test_a_file_the_driver_writes_locally_is_invisible_to_the_executors(cluster, s3):
    text = submit(cluster, s3, "tests/cluster/visibility_job.py", "visibility", []).finish()
    found = json.loads(re.search(r"^VISIBILITY (.*)$", text, re.M).group(1))
    assert found["driver"] == [True, True, True, True], found  # cwd, /tmp, /dev/shm files and the venv python
    assert found["paths"][0].startswith(str(cluster.driver_cwd))
    assert found["tasks_run"] == 16
    executors = {t["cwd"] for t in found["tasks"]}
    assert len(executors) == 2, f"both workers' executors must run tasks, got {executors}"
    for task in found["tasks"]:
        assert task["seen"] == [False, False, False, True], task  # none of the driver's files; the venv, yes


def test_training_resumes_from_its_checkpoint_on_s3_after_the_driver_is_killed(spark, s3, cluster, baseline):
    args = [*config_args(cluster, "train.checkpoint_every=1"), "--run-id", "resumed"]
    first = submit(cluster, s3, "jobs/train.py", "train-killed", args)
    first.wait_for(r"epoch 4/6 loss", timeout=TIMEOUT)  # epoch 3's checkpoint is saved before epoch 4 runs
    first.kill()
    assert not any(re.search(r"epoch 6/6 loss", line) for line in first.lines), "killed too late"
    assert [k for k in s3.keys("wh/_artifacts/") if "resumed" in k], "no checkpoint of the run on S3"
    text = submit(cluster, s3, "jobs/train.py", "train-resumed", [*args, "--resume"]).finish()
    epoch = int(re.search(r"resuming from checkpoint at epoch (\d+)", text).group(1))
    assert 3 <= epoch < 6 and not re.search(rf"epoch {epoch}/6 loss", text), "it must continue, not start over"
    assert re.search(r"epoch 6/6 loss", text)
    assert_same_model(spark, storage(cluster), "resumed", "base")


def lose_a_worker_mid_training(cluster, s3, run_id: str, *extra: str) -> None:
    """Train on the cluster, kill worker 1 after epoch 2, check the job still finished every epoch; worker 1
    comes back afterwards, for the next test."""
    job = submit(cluster, s3, "jobs/train.py", f"train-{run_id}", [*config_args(cluster, *extra), "--run-id", run_id])
    killed_after = job.wait_for(r"epoch 2/6 loss", timeout=TIMEOUT)
    cluster.kill_worker(1)
    try:
        text = job.finish()
    finally:
        cluster.restart_worker(1)
    later = "".join(job.lines[killed_after + 1:])
    assert re.search(r"epoch 6/6 loss", later), "the worker must be lost before training ended"
    assert re.search(r"(?i)lost executor|executor \S+ (is now )?lost|removed executor", text), "no executor loss seen"


def test_losing_a_worker_mid_routed_training_still_finishes_with_the_same_model(spark, s3, cluster, baseline):
    """Routed factor blocks live in the store between steps (not in executor memory): the lost executor's
    tasks are retried from there, and the model is the whole-factor baseline's."""
    lose_a_worker_mid_training(cluster, s3, "faulty-routed", "train.routing=routed")
    assert_same_model(spark, storage(cluster), "faulty-routed", "base")


def test_losing_a_worker_mid_training_still_finishes_with_the_same_model(spark, s3, cluster, baseline):
    lose_a_worker_mid_training(cluster, s3, "faulty")
    st = storage(cluster)
    assert_same_model(spark, st, "faulty", "base")
    assert main(["evaluate", *config_args(cluster), "--run-id", "faulty"]) == 0  # in-process, from S3
    base, faulty = exact_metrics(spark, st, "base"), exact_metrics(spark, st, "faulty")
    assert base.keys() == faulty.keys()
    for key, value in base.items():
        assert abs(faulty[key] - value) < METRIC_ATOL, key


def test_tune_runs_through_spark_submit_with_its_table_and_study_on_s3(spark, s3, cluster, baseline, tmp_path):
    """jobs/tune.py on the cluster: trials run on the executors, the tuning rows and the study land on S3, and
    the profile the driver writes trains what the best trial found."""
    profile = tmp_path / "small.tuned.yaml"
    space = ["tune.space.dim={choices: [4, 8]}", "tune.space.epochs={low: 2, high: 3, step: 1}", "tune.prune_every=1"]
    args = [*config_args(cluster, *space), "--run-id", "tuned", "--trials", "2", "--write-profile", str(profile)]
    submit(cluster, s3, "jobs/tune.py", "tune", args).finish()
    st = storage(cluster)
    rows = [r.asDict() for r in read(spark, st, "tuning").filter("run_id = 'tuned'").orderBy("trial").collect()]
    assert [r["trial"] for r in rows] == [0, 1]
    done = [r for r in rows if r["state"] == "complete"]
    assert done and all(0 < r["value"] <= 1 for r in done)
    assert "wh/_artifacts/tune/tuned/study.db" in s3.keys("wh/_artifacts/tune/"), "the study is not on S3"
    best = max(done, key=lambda r: r["value"])
    cfg = load_config(profile, [f"storage.root={cluster.root}"])
    assert (cfg.model.dim, cfg.model.epochs) == tuple(json.loads(best["params"])[k] for k in ("dim", "epochs"))
    assert cfg.storage.root == cluster.root and cfg.generate.n_users == 400  # the base's data settings


def test_the_pipeline_runs_on_s3_through_spark_submit_with_the_local_runs_metrics(spark, s3, cluster, baseline,
                                                                                  local_run):
    assert f"master {cluster.url}" in baseline  # the driver ran against the standalone master, not local
    for stage in PIPELINE:
        assert f"\n  {stage} " in baseline  # gramian run's one line per stage
    assert "== gate" in baseline and re.search(r"passed: True", baseline), baseline[-3000:]
    for i in range(2):
        launched = cluster.logs[f"worker{i}"].read_text()
        assert "Asked to launch executor" in launched
        assert "-XX:TieredStopAtLevel=1" in launched  # spark.executor_jit c1: gramian's executors run without C2
    st = storage(cluster)
    stages = {r["stage"]: r["status"] for r in read(spark, st, "stage_runs").filter("run_id = 'base'").collect()}
    assert stages == {**{s: "finished" for s in PIPELINE}, "gate": "finished"}
    n_users = read(spark, st, "users").count()
    assert read(spark, st, "user_factors").filter("run_id = 'base'").count() == n_users
    assert read(spark, st, "topn").filter("run_id = 'base'").select("user_id").distinct().count() > 0
    keys = s3.keys("wh/")
    for table in ("interactions", "train", "test", "user_factors", "metrics", "topn", "stage_runs"):
        assert any(k.startswith(f"wh/{table}/_delta_log/") for k in keys), f"{table} is not on S3"
    assert any(k.startswith("wh/_artifacts/") for k in keys), "no artifact (index, report) on S3"
    stray = re.compile(r"(?<!spark-)warehouse|_artifacts|_index|_checkp")
    leftovers = [p for p in cluster.driver_cwd.rglob("*") if stray.search(str(p))]
    assert not leftovers, f"the driver wrote storage to its local disk: {leftovers[:5]}"
    assert_same_model(spark, st, "base", "local")
    local, base = exact_metrics(spark, st, "local"), exact_metrics(spark, st, "base")
    assert base.keys() == local.keys() and {m for m, _, _ in base} >= {"popularity"}
    for key, value in local.items():
        assert abs(base[key] - value) < METRIC_ATOL, (key, base[key], value)
