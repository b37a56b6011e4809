"""Airflow 3 DAGs: one SparkSubmitOperator per gramian stage, a quality gate before publish.

Each task runs the stage's thin job (jobs/<stage>.py) with the DAG run's params (conf file, --set
overrides) and a run_id taken from the logical date, so every task of one DAG run writes one run_id
and a retry replaces its own output. The gate (`jobs/gate.py`) exits 3 when the candidate does not
reach `gate_floor` or beat the currently published run; the task is then skipped, and so is publish.
Stages join the DAG as soon as their jobs/<stage>.py exists.

- `gramian_pipeline` runs on a clock ($GRAMIAN_SCHEDULE, daily by default; "none" for manual runs only);
  ingest emits the `interactions` Asset and publish the `topn` Asset, so downstream DAGs can be triggered
  by data. Train warm-starts from the published run (param `warm_start`) and a retry resumes (`--resume`);
  publish rescores only the users whose history changed (param `publish_users`, default `changed`).
- param `tune` (default false): the tune task between split and train runs `gramian tune` (skipped otherwise)
  and train takes the profile it writes as its conf.
- `gramian_on_interactions` is the data-aware variant: split -> ... -> publish, triggered by an update of
  the `interactions` Asset (an upstream ingest) instead of a clock.
Asset URIs are the tables under $GRAMIAN_STORAGE_ROOT (default: the repo's ./warehouse, the default root).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Asset, Param
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from gramian.config import SparkConfig
from gramian.runs import check_run_id
from gramian.spark import delta_package, submit_args

REPO = Path(os.environ.get("GRAMIAN_HOME", Path(__file__).resolve().parents[1]))
STAGES = tuple(s for s in ("ingest", "split", "tune", "train", "evaluate", "publish")
               if (REPO / "jobs" / f"{s}.py").is_file())
GATED = "evaluate" in STAGES and "publish" in STAGES
CONN_ID = os.environ.get("GRAMIAN_SPARK_CONN", "spark_gramian")
GATE_REJECTED = 3  # gramian.cli.GATE_REJECTED: not imported, DAG parsing stays light
# Loopback defaults (DESIGN: local Spark on 127.0.0.1); GRAMIAN_SPARK_CONF (JSON) replaces them for a real cluster.
SPARK_CONF: dict[str, str] = json.loads(os.environ.get("GRAMIAN_SPARK_CONF", "null") or "null") or {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.jars.ivy": SparkConfig().ivy_folder,
    "spark.pyspark.python": sys.executable,
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "4",
}
ENV = {"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
# Jinja expression of the run_id: the logical date (a manual run without one: when it was due)
RUN_ID = "(logical_date or dag_run.run_after).strftime('%Y%m%dT%H%M%S')"
SCHEDULE = os.environ.get("GRAMIAN_SCHEDULE", "@daily")
STORAGE_ROOT = os.environ.get("GRAMIAN_STORAGE_ROOT", (REPO / "warehouse").as_uri()).rstrip("/")
INTERACTIONS = Asset(name="gramian.interactions", uri=f"{STORAGE_ROOT}/interactions")
TOPN = Asset(name="gramian.topn", uri=f"{STORAGE_ROOT}/topn")
OUTLETS = {"ingest": [INTERACTIONS], "publish": [TOPN]}
# param tune: true -> the tune task (run id <run_id>-tune) writes the profile here and train takes it as --conf;
# a folder every worker running the DAG's tasks can read
PROFILE_DIR = Path(os.environ.get("GRAMIAN_PROFILE_DIR", REPO / "conf" / "tuned"))


def jar_args(ivy: str) -> dict[str, str]:
    """SparkSubmitOperator's `jars` (the Delta jars an earlier resolution left in the Ivy cache `ivy`, all still
    there) or else its `packages`: what gramian.spark.submit_args gives spark-submit. --packages runs Ivy against
    Maven Central on every task (seconds each) and ships every jar again; a driver started with it remembers the
    jars it resolved, so the DAG's later tasks take --jars (the DAG file is parsed again where each task runs)."""
    args = submit_args(delta_package(), ivy)
    return {"jars": args[1]} if args[0] == "--jars" else {"packages": delta_package()}


def profile_path(run_id: str) -> str:
    """Where the tune task of DAG run `run_id` writes its profile (and train reads it)."""
    return str(PROFILE_DIR / f"{run_id}.tuned.yaml")


def gramian_args(params: dict[str, Any], run_id: str, gate: bool = False, resume: bool = False,
                 tune: bool = False, publish: bool = False) -> list[str]:
    """--conf, one --set per override and --run-id (plus the gate's bar, train's --resume and warm start, tune's
    profile, or publish's users): what every jobs/<stage>.py takes.

    A retried train task continues from its checkpoint in the artifact store (a changed config or data shape
    does not match the checkpoint's fingerprint and starts afresh; a changed split is refused); its first try
    starts from param `warm_start` (the published run by default; "null" trains cold), which an override of
    train.warm_start replaces. Publish scores the users of param `publish_users` (publish.users: `changed` by
    default; an override of publish.users replaces it). The run id is checked here (gramian.runs.RUN_ID_PATTERN)
    so a bad one fails the task before spark-submit. With param `tune` true, the tune task (`tune`) writes
    profile_path(run_id) under run id <run_id>-tune (its own MLflow run: train's params are the tuned ones) and
    train takes that profile as its --conf and trains cold (the tuned model.dim may differ from the published
    run's).
    """
    check_run_id(run_id, "the DAG's run id")
    tuned = bool(params.get("tune")) and resume  # the train task of a tuning DAG run
    args = ["--conf", profile_path(run_id) if tuned else str(params["conf"])]
    warm = params.get("warm_start")
    if resume and not tuned and warm not in (None, ""):  # the train task (the only one that resumes)
        args += ["--set", f"train.warm_start={warm}"]
    users = params.get("publish_users")
    if publish and users not in (None, ""):
        args += ["--set", f"publish.users={users}"]
    for item in params.get("overrides") or []:
        args += ["--set", str(item)]
    args += ["--run-id", f"{run_id}-tune" if tune else run_id]
    if tune:
        args += ["--write-profile", profile_path(run_id)]
    if resume:
        args += ["--resume"]
    if gate:
        args += ["--metric", str(params["gate_metric"]), "--k", str(params["gate_k"]),
                 "--method", str(params["gate_method"]), "--floor", str(params["gate_floor"]),
                 "--on-new-split", str(params.get("gate_on_new_split", "floor"))]
    return args


class GateSubmitOperator(SparkSubmitOperator):
    """spark-submit jobs/gate.py; its exit status 3 (candidate below the bar) skips this task and publish."""

    def execute(self, context: Any) -> None:
        try:
            super().execute(context)
        except AirflowException:
            proc = getattr(self._hook, "_submit_sp", None)
            if proc is not None and proc.returncode == GATE_REJECTED:
                raise AirflowSkipException("quality gate: candidate does not clear the bar; publish skipped") from None
            raise


class TuneSubmitOperator(SparkSubmitOperator):
    """spark-submit jobs/tune.py when the DAG run's param `tune` is true; skipped otherwise (train still runs)."""

    def execute(self, context: Any) -> None:
        if not (context.get("params") or {}).get("tune"):
            raise AirflowSkipException("param tune is false: train uses the conf as given")
        super().execute(context)


def stage_task(stage: str, gate: bool = False) -> SparkSubmitOperator:
    """One spark-submit of jobs/<stage>.py with the run's arguments."""
    cls = GateSubmitOperator if gate else TuneSubmitOperator if stage == "tune" else SparkSubmitOperator
    extra: dict[str, Any] = {"retries": 0} if gate else {}  # a rejection is a decision, not a failure to retry
    if stage == "train" and "tune" in STAGES:
        extra["trigger_rule"] = "none_failed"  # runs after a skipped tune task too
    return cls(
        task_id="quality_gate" if gate else stage,
        application=str(REPO / "jobs" / f"{'gate' if gate else stage}.py"),
        application_args=(f"{{{{ gramian_args(params, {RUN_ID}, {gate}, {stage == 'train'}, {stage == 'tune'}, "
                          f"{stage == 'publish'}) }}}}"),
        conn_id=CONN_ID,
        **jar_args(SPARK_CONF.get("spark.jars.ivy", SparkConfig().ivy_folder)),
        conf=SPARK_CONF,
        env_vars=ENV,
        name=f"gramian-{stage}",
        outlets=[] if gate else OUTLETS.get(stage, []),
        **extra,
    )


PARAMS = {
    "conf": Param(str(REPO / "conf" / "synthetic.yaml"), type="string", description="gramian YAML config"),
    "overrides": Param([], type="array", description="--set overrides, e.g. model.dim=128"),
    "warm_start": Param("published", type="string",
                        description="train.warm_start: published (the current publication's run), a run_id, or "
                                    "null for a cold start"),
    "tune": Param(False, type="boolean", description="run gramian tune before train (budgets: overrides "
                  "tune.trials / tune.budget_minutes); train then takes the tuned profile"),
    "publish_users": Param("changed", type="string",
                           description="publish.users: changed (users whose history changed since the current "
                                       "publication), all, or active_since:<days>"),
    "gate_metric": Param("ndcg", type="string", description="metric the gate compares"),
    "gate_k": Param(20, type="integer", description="its cut-off"),
    "gate_method": Param("exact", type="string", description="exact | sampled | corrected"),
    "gate_floor": Param(0.0, type="number", description="publish only at or above this value"),
    # every DAG run re-splits, so the published run was trained on another split: the floor alone applies
    "gate_on_new_split": Param("floor", type="string", enum=["floor", "refuse"],
                               description="published run on another split: gate on the floor, or refuse"),
}


def pipeline_dag(dag_id: str, schedule: Any, stages: tuple[str, ...], description: str) -> DAG:
    """The stage chain `stages` (the gate before publish) as one DAG with the shared params and retries."""
    with DAG(
        dag_id=dag_id,
        description=description,
        schedule=schedule,
        catchup=False,
        max_active_runs=1,  # stages of two runs would race on the shared interactions/train tables
        render_template_as_native_obj=True,  # application_args renders to a list (one --set per override)
        user_defined_macros={"gramian_args": gramian_args},
        default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
        params=PARAMS,
        tags=["gramian"],
    ) as built:
        previous = None
        for name in stages:
            if name == "publish" and GATED:
                gate_task = stage_task("gate", gate=True)
                previous = previous >> gate_task if previous is not None else gate_task
            task = stage_task(name)
            previous = previous >> task if previous is not None else task
    return built


dag = pipeline_dag("gramian_pipeline", None if SCHEDULE.lower() == "none" else SCHEDULE, STAGES,
                   "gramian: ingest -> split -> train -> evaluate -> quality gate -> publish, on a clock")
on_interactions = pipeline_dag("gramian_on_interactions", [INTERACTIONS], tuple(s for s in STAGES if s != "ingest"),
                               "gramian: split -> ... -> publish when the interactions Asset is updated")
