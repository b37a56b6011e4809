"""databricks.yml against the CLI: the task graph, the wheel entry point, and arguments the CLI and config accept.

The Databricks CLI cannot reach a workspace here, so the bundle's structure is what is tested: every task must be a
command `gramian` knows, with arguments its parser takes and --set keys the typed config takes.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from gramian.cli import PIPELINE, build_parser
from gramian.config import load_config

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = yaml.safe_load((ROOT / "databricks.yml").read_text())
JOBS = BUNDLE["resources"]["jobs"]
CHAIN = ["ingest", "split", "train", "evaluate", "quality_gate", "publish"]  # as the Airflow DAG
REF = re.compile(r"\{\{job\.parameters\.(\w+)\}\}")
PIPELINE_JOBS = ["gramian_pipeline", "gramian_pipeline_serverless"]


def _chain(tasks: list[dict]) -> list[str]:
    """Task keys in dependency order; fails unless the graph is one straight chain."""
    deps = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in tasks}
    order = [k for k, d in deps.items() if not d]
    assert len(order) == 1, f"one first task expected, got {order}"
    while len(order) < len(deps):
        nxt = [k for k, d in deps.items() if d == [order[-1]]]
        assert len(nxt) == 1, f"after {order[-1]} one task expected, got {nxt}"
        order.append(nxt[0])
    return order


def _resolved(args: list[str], job: dict) -> list[str]:
    """The task's arguments with the job parameters' defaults (and a job run id) filled in, as a run would."""
    defaults = {p["name"]: p["default"] for p in job["parameters"]}
    defaults["run_id"] = "4711"
    out = []
    for a in args:
        a = REF.sub(lambda m: str(defaults[m.group(1)]), a)
        out.append(a.replace("${workspace.file_path}", str(ROOT)))
    return out


def test_bundle_has_the_two_pipeline_jobs_and_the_tune_job():
    assert sorted(JOBS) == sorted([*PIPELINE_JOBS, "gramian_tune"])


@pytest.mark.parametrize("job", PIPELINE_JOBS)
def test_bundle_job_is_the_pipeline_chain_with_the_gate_before_publish(job):
    tasks = JOBS[job]["tasks"]
    assert _chain(tasks) == CHAIN
    assert [t for t in CHAIN if t != "quality_gate"] == list(PIPELINE)


@pytest.mark.parametrize("job", sorted(JOBS))
def test_bundle_tasks_call_the_gramian_console_script(job):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for task in JOBS[job]["tasks"]:
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == "gramian"
        assert scripts[wheel["entry_point"]] == "gramian.cli:main"


@pytest.mark.parametrize("job", PIPELINE_JOBS)
def test_bundle_task_arguments_parse_and_load_a_valid_config(job):
    parser = build_parser()
    for task in JOBS[job]["tasks"]:
        args = parser.parse_args(_resolved(task["python_wheel_task"]["parameters"], JOBS[job]))
        assert args.command == ("gate" if task["task_key"] == "quality_gate" else task["task_key"])
        assert args.run_id == "4711"
        cfg = load_config(args.conf, args.overrides)  # unknown --set keys or bad values raise ConfigError
        assert cfg.storage.root == next(p["default"] for p in JOBS[job]["parameters"] if p["name"] == "storage_root")
        assert cfg.storage.catalog is None
        assert args.resume == (task["task_key"] == "train"), "a train retry must continue from its checkpoint"
        if args.command == "gate":
            assert (args.metric, args.k, args.floor) == ("ndcg", 20, 0.0)


def test_bundle_tune_job_writes_a_profile_the_pipeline_can_take_as_its_conf(tmp_path):
    job = JOBS["gramian_tune"]
    (task,) = job["tasks"]
    args = build_parser().parse_args(_resolved(task["python_wheel_task"]["parameters"], job))
    assert args.command == "tune" and args.run_id == "4711"
    assert (args.trials, args.budget_minutes) == (20, 60.0)
    assert args.write_profile.startswith("/Volumes/"), "the profile must outlive the job cluster"
    cfg = load_config(args.conf, args.overrides)
    assert cfg.storage.root == next(p["default"] for p in job["parameters"] if p["name"] == "storage_root")
    assert {"whl": "./dist/*.whl"} in task["libraries"]
    assert task["max_retries"] >= 1, "a retried tune resumes its study under the same run id"
    conf = next(p for p in JOBS["gramian_pipeline"]["parameters"] if p["name"] == "conf")
    assert "{{job.parameters.conf}}" in JOBS["gramian_pipeline"]["tasks"][0]["python_wheel_task"]["parameters"]
    assert conf["default"].endswith(".yaml")


@pytest.mark.parametrize("job", sorted(JOBS))
def test_bundle_job_parameters_are_all_defined_and_all_used(job):
    defined = {p["name"] for p in JOBS[job]["parameters"]}
    used = {m for t in JOBS[job]["tasks"] for a in t["python_wheel_task"]["parameters"] for m in REF.findall(a)}
    assert used == defined


def test_bundle_cluster_job_installs_the_wheel_and_serverless_job_uses_an_environment():
    cluster, serverless = JOBS["gramian_pipeline"], JOBS["gramian_pipeline_serverless"]
    keys = {c["job_cluster_key"] for c in cluster["job_clusters"]}
    for task in cluster["tasks"]:
        assert task["job_cluster_key"] in keys
        assert {"whl": "./dist/*.whl"} in task["libraries"]
    envs = {e["environment_key"]: e["spec"] for e in serverless["environments"]}
    for task in serverless["tasks"]:
        assert "job_cluster_key" not in task and "libraries" not in task
        assert "./dist/*.whl" in envs[task["environment_key"]]["dependencies"]
    assert BUNDLE["artifacts"]["gramian_wheel"]["type"] == "whl"
    strip = [{k: v for k, v in t.items() if k not in ("job_cluster_key", "libraries", "environment_key")}
             for t in cluster["tasks"]]
    assert strip == [{k: v for k, v in t.items() if k != "environment_key"} for t in serverless["tasks"]]


def test_wheel_leaves_spark_and_delta_to_the_databricks_runtime():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[\[<>=!~ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert not base & {"pyspark", "delta-spark", "pyspark-client"}, "the runtime's Spark must not be shadowed"
    spark_extra = " ".join(project["optional-dependencies"]["spark"])
    assert "pyspark" in spark_extra and "delta-spark" in spark_extra
