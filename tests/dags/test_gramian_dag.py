"""The Airflow 3 DAG: it imports cleanly, its graph is the README's, the gate skips publish, dag.test() runs it."""

from __future__ import annotations

import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gramian.cli import PIPELINE
from tests.dags.conftest import DAGS, ROOT

pytestmark = pytest.mark.airflow

SMALL = ["generate.n_users=300", "generate.n_items=150", "generate.n_interactions=6000", "model.dim=8",
         "model.epochs=3", "evaluate.k=[10,20]", "publish.n=10"]


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dagbag_imports_without_errors(bag):
    assert bag.import_errors == {}
    assert "gramian_pipeline" in bag.dags


def test_task_graph_is_the_readme_chain_with_the_gate_before_publish(bag):
    dag = bag.dags["gramian_pipeline"]
    expected = [s for s in PIPELINE if s != "publish"]
    if "train" in expected:  # the optional tune task (param tune) sits before train
        expected.insert(expected.index("train"), "tune")
    if "evaluate" in PIPELINE and "publish" in PIPELINE:
        expected += ["quality_gate", "publish"]
    edges = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert edges == {a: [b] for a, b in zip(expected, expected[1:], strict=False)} | {expected[-1]: []}
    readme = (ROOT / "README.md").read_text()
    assert " >> ".join(expected) in readme  # the README states this exact chain
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    for task in dag.tasks:
        assert isinstance(task, SparkSubmitOperator)
        job = "gate" if task.task_id == "quality_gate" else task.task_id
        assert task.application == str(ROOT / "jobs" / f"{job}.py") and Path(task.application).is_file()
        assert task.retries == (0 if task.task_id == "quality_gate" else 2)


def test_run_id_and_arguments_come_from_the_logical_date_and_params(bag):
    dag = bag.dags["gramian_pipeline"]
    fn = dag.user_defined_macros["gramian_args"]
    args = fn({"conf": "c.yaml", "overrides": ["model.dim=8", "model.epochs=2"]}, "20260101T000000")
    assert args == ["--conf", "c.yaml", "--set", "model.dim=8", "--set", "model.epochs=2", "--run-id",
                    "20260101T000000"]
    env = dag.get_template_env()
    params = {"conf": "c.yaml", "overrides": ["model.dim=8"], "gate_metric": "ndcg", "gate_k": 20,
              "gate_method": "exact", "gate_floor": 0.1}
    rendered = env.from_string(dag.get_task("train").application_args).render(
        params=params, logical_date=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), dag_run=None)
    # train resumes: a retried train task continues from its checkpoint in the store (fingerprint-guarded)
    assert rendered == ["--conf", "c.yaml", "--set", "model.dim=8", "--run-id", "20260102T030405", "--resume"]
    for other in (t for t in dag.task_ids if t != "train"):
        assert "--resume" not in env.from_string(dag.get_task(other).application_args).render(
            params=params, logical_date=datetime(2026, 1, 2, tzinfo=UTC), dag_run=None), other
    if "quality_gate" in dag.task_ids:
        gate = env.from_string(dag.get_task("quality_gate").application_args).render(
            params=params, logical_date=datetime(2026, 1, 2, tzinfo=UTC), dag_run=None)
        # each DAG run re-splits, so by default the gate applies the floor alone to a run on another split
        assert gate[-10:] == ["--metric", "ndcg", "--k", "20", "--method", "exact", "--floor", "0.1",
                              "--on-new-split", "floor"]


def test_tasks_submit_the_delta_jars_the_ivy_cache_holds_and_resolve_packages_only_when_it_does_not(bag, tmp_path):
    import airflow_dags.gramian_pipeline as module
    from gramian.spark import _manifest, delta_package

    ivy = tmp_path / "ivy"
    ivy.mkdir()
    assert module.jar_args(str(ivy)) == {"packages": delta_package()}  # nothing resolved yet: Ivy runs once
    jars = [tmp_path / "delta-spark.jar", tmp_path / "delta-storage.jar"]
    for jar in jars:
        jar.write_bytes(b"")
    _manifest(ivy, delta_package()).write_text("\n".join(map(str, jars)) + "\n")  # what a submitted driver leaves
    assert module.jar_args(str(ivy)) == {"jars": ",".join(map(str, jars))}
    jars[1].unlink()  # a jar gone from the cache: resolve again
    assert module.jar_args(str(ivy)) == {"packages": delta_package()}
    expected = module.jar_args(module.SPARK_CONF["spark.jars.ivy"])
    for task in bag.dags["gramian_pipeline"].tasks:
        assert (task.jars, task.packages) == (expected.get("jars"), expected.get("packages")), task.task_id


@pytest.mark.parametrize("bad", ["x' OR '1'='1", "a b", "manual__2026-01-01T00:00:00+00:00"])
def test_dag_refuses_a_run_id_outside_the_pattern_before_spark_submit(bag, bad):
    from gramian.errors import ConfigError
    from gramian.runs import RUN_ID_PATTERN

    fn = bag.dags["gramian_pipeline"].user_defined_macros["gramian_args"]
    with pytest.raises(ConfigError, match=re.escape(RUN_ID_PATTERN)):
        fn({"conf": "c.yaml", "overrides": []}, bad)


def fake_spark_submit(tmp_path: Path, code: int) -> dict[str, str]:
    """A PATH whose `spark-submit` only exits with `code`."""
    bin_dir = tmp_path / f"bin{code}"
    bin_dir.mkdir()
    script = bin_dir / "spark-submit"
    script.write_text(f"#!/bin/sh\necho fake spark-submit\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("code", [3, 1])
def test_gate_rejection_skips_and_other_failures_fail(tmp_path, code):
    from airflow.sdk.exceptions import AirflowException, AirflowSkipException

    import airflow_dags.gramian_pipeline as module

    op = module.GateSubmitOperator(task_id=f"gate{code}", application=str(ROOT / "jobs" / "gate.py"),
                                   conn_id="spark_gramian", env_vars=fake_spark_submit(tmp_path, code))
    expected = AirflowSkipException if code == 3 else AirflowException
    with pytest.raises(expected) as info:
        op.execute({})
    if code == 1:
        assert not isinstance(info.value, AirflowSkipException)


def test_the_daily_dag_is_scheduled_and_emits_assets_and_a_data_aware_variant_follows_them(bag):
    dag = bag.dags["gramian_pipeline"]
    assert os.environ.get("GRAMIAN_SCHEDULE") is None and dag.schedule == "@daily"
    outlets = {t.task_id: [a.name for a in t.outlets] for t in dag.tasks}
    assert outlets["ingest"] == ["gramian.interactions"]
    assert outlets.get("publish", ["gramian.topn"]) == ["gramian.topn"]
    assert all(not v for k, v in outlets.items() if k not in ("ingest", "publish")), outlets
    uri = next(a.uri for t in dag.tasks for a in t.outlets if a.name == "gramian.interactions")
    assert uri == f"{(ROOT / 'warehouse').as_uri()}/interactions"
    follower = bag.dags["gramian_on_interactions"]
    assert [a.name for a in follower.schedule] == ["gramian.interactions"]  # triggered by data, not a clock
    assert type(follower.timetable).__name__ == "AssetTriggeredTimetable"
    chain = [t.task_id for t in follower.topological_sort()]
    assert chain[0] == "split" and "ingest" not in chain and chain[-1] == dag.topological_sort()[-1].task_id


def test_train_warm_starts_from_the_published_run_unless_told_otherwise(bag):
    fn = bag.dags["gramian_pipeline"].user_defined_macros["gramian_args"]
    params = {"conf": "c.yaml", "overrides": ["model.dim=8"], "warm_start": "published"}
    assert bag.dags["gramian_pipeline"].params["warm_start"] == "published"  # the daily DAG's default
    assert fn(params, "20260101T000000", resume=True) == [
        "--conf", "c.yaml", "--set", "train.warm_start=published", "--set", "model.dim=8", "--run-id",
        "20260101T000000", "--resume"]  # an override of train.warm_start comes later and wins
    assert "train.warm_start=published" not in fn(params, "20260101T000000")  # other stages: no warm start
    assert "--set" not in fn({**params, "warm_start": "", "overrides": []}, "20260101T000000", resume=True)


def test_with_param_tune_the_tune_task_writes_a_profile_that_train_takes(bag, tmp_path):
    from airflow.sdk.exceptions import AirflowSkipException

    import airflow_dags.gramian_pipeline as module

    dag = bag.dags["gramian_pipeline"]
    assert dag.params["tune"] is False
    fn = dag.user_defined_macros["gramian_args"]
    params = {"conf": "c.yaml", "overrides": ["tune.trials=5"], "warm_start": "published", "tune": True}
    profile = module.profile_path("20260101T000000")
    assert fn(params, "20260101T000000", tune=True) == [
        "--conf", "c.yaml", "--set", "tune.trials=5", "--run-id", "20260101T000000-tune", "--write-profile", profile]
    assert fn(params, "20260101T000000", resume=True) == [  # the tuned model may change dim: a cold start
        "--conf", profile, "--set", "tune.trials=5", "--run-id", "20260101T000000", "--resume"]
    assert fn({**params, "tune": False}, "20260101T000000", resume=True)[:2] == ["--conf", "c.yaml"]
    assert dag.get_task("train").trigger_rule == "none_failed"  # after a skipped tune too
    op = module.TuneSubmitOperator(task_id="tune_off", application=str(ROOT / "jobs" / "tune.py"),
                                   conn_id="spark_gramian", env_vars=fake_spark_submit(tmp_path, 1))
    with pytest.raises(AirflowSkipException):
        op.execute({"params": {"tune": False}})


def test_publish_refreshes_the_users_of_param_publish_users(bag):
    dag = bag.dags["gramian_pipeline"]
    assert dag.params["publish_users"] == "changed"  # the daily DAG's default
    fn = dag.user_defined_macros["gramian_args"]
    params = {"conf": "c.yaml", "overrides": ["publish.n=5"], "publish_users": "active_since:2"}
    assert fn(params, "20260101T000000", publish=True) == [
        "--conf", "c.yaml", "--set", "publish.users=active_since:2", "--set", "publish.n=5", "--run-id",
        "20260101T000000"]
    assert "publish.users=active_since:2" not in fn(params, "20260101T000000", resume=True)  # train: not it
    env = dag.get_template_env()
    rendered = env.from_string(dag.get_task("publish").application_args).render(
        params={**params, "warm_start": "published"}, logical_date=datetime(2026, 1, 2, tzinfo=UTC), dag_run=None)
    assert rendered[:4] == ["--conf", "c.yaml", "--set", "publish.users=active_since:2"]


def day_csv(path: Path, gainers: tuple[str, ...] = ()) -> None:
    """A generated interactions CSV; `gainers` each get 3 more items than the day before."""
    import pandas as pd

    from gramian.data.synthetic import generate

    g = generate(300, 150, 6000, rank=4, seed=0)
    df = pd.DataFrame({"user_id": [f"u{u}" for u in g["user"]], "item_id": [f"i{i}" for i in g["item"]],
                       "weight": g["weight"]})
    seen = df.groupby("user_id")["item_id"].agg(set)
    extra = [(u, i, 1.0) for u in gainers for i in [f"i{j}" for j in range(150) if f"i{j}" not in seen[u]][:3]]
    pd.concat([df, pd.DataFrame(extra, columns=df.columns)]).to_csv(path, index=False)


def test_dag_test_two_days_the_second_warm_starts_from_the_first_publication(airflow_db, tmp_path, spark):
    from airflow.dag_processing.dagbag import DagBag

    from gramian.config import StorageConfig
    from gramian.tables import read

    dag = DagBag(dag_folder=str(DAGS)).dags["gramian_pipeline"]
    csv, gainers = tmp_path / "events.csv", ("u3", "u17", "u42")
    source = ["data.format=csv", f"data.path={csv}", "data.columns.weight=weight"]
    overrides = [*SMALL, *source, f"storage.root={tmp_path / 'wh'}"]
    st = StorageConfig(root=str(tmp_path / "wh"))
    days = [datetime(2026, 11, 27, tzinfo=UTC), datetime(2026, 11, 28, tzinfo=UTC)]
    for day, logical in enumerate(days):
        day_csv(csv, gainers if day else ())  # day 2: three users gained interactions upstream
        dr = dag.test(logical_date=logical, run_conf={"conf": str(ROOT / "conf" / "synthetic.yaml"),
                                                      "overrides": overrides})
        states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        assert str(dr.state) == "success", states
        assert states.pop("tune").endswith("skipped")  # param tune defaults to false
        assert all(s.endswith("success") for s in states.values()), states
        run_id = logical.strftime("%Y%m%dT%H%M%S")
        done = {r["stage"]: r["status"] for r in read(spark, st, "stage_runs").filter(f"run_id = '{run_id}'").collect()}
        assert {s: "finished" for s in PIPELINE}.items() <= done.items()
        if "publish" in PIPELINE:
            assert done.get("gate") == "finished"
            assert read(spark, st, "topn").filter(f"run_id = '{run_id}'").count() > 0
    runs = {r["run_id"]: r["warm_start"] for r in read(spark, st, "runs").collect()}
    first, second = (d.strftime("%Y%m%dT%H%M%S") for d in days)
    assert runs[first] is None  # nothing was published before day 1: a cold start
    assert runs[second] == (first if "publish" in PIPELINE else None)
    if "publish" not in PIPELINE:
        return
    pubs = {r["run_id"]: r for r in read(spark, st, "publications").collect()}
    assert pubs[first]["refreshed"] == pubs[first]["users"]  # day 1: nothing to keep, everyone scored
    assert pubs[second]["users_mode"] == "changed" and pubs[second]["base_run_id"] == first
    assert 0 < pubs[second]["refreshed"] < pubs[second]["users"] == pubs[first]["users"]

    def lists(run_id: str) -> dict[str, list[tuple]]:
        out: dict[str, list[tuple]] = {}
        for r in read(spark, st, "topn").filter(f"run_id = '{run_id}'").collect():
            out.setdefault(r["user_id"], []).append((r["rank"], r["item_id"], r["score"], r["scored_by"]))
        return {u: sorted(v) for u, v in out.items()}

    one, two = lists(first), lists(second)
    rescored = {u for u, v in two.items() if v[0][3] == second}
    assert rescored == set(gainers)  # each gained 3 items, at least 2 of them in train: their history changed
    assert all(two[u] == one[u] for u in set(two) - rescored)  # everyone else: exactly day 1's list
