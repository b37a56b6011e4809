"""Tracking location, param flattening, the fold-in pyfunc's scorer against a brute-force twin, quiet Spark start."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from gramian import spark as gspark
from gramian import tracking
from gramian.config import ModelConfig, load_config
from gramian.errors import ConfigError, InputDataError
from gramian.kernels.foldin import fold_in_one
from gramian.progress import EpochProgress
from gramian.pyfunc import FoldInScorer
from gramian.train.als import EpochStats


def test_tracking_uri_is_sqlite_under_a_local_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    cfg = load_config("conf/synthetic.yaml", [f"storage.root={tmp_path}/wh"])
    assert tracking.tracking_uri(cfg) == f"sqlite:///{tmp_path}/wh/_artifacts/mlflow/mlflow.db"
    expect = (tmp_path / "wh/_artifacts/mlflow/artifacts").as_uri()
    assert tracking.artifact_location(cfg, tracking.tracking_uri(cfg)) == expect
    file_root = load_config("conf/synthetic.yaml", [f"storage.root=file://{tmp_path}/wh"])
    assert tracking.tracking_uri(file_root) == tracking.tracking_uri(cfg)


def test_a_remote_root_without_a_uri_runs_untracked_with_a_warning(monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    cfg = load_config("conf/synthetic.yaml", ["storage.root=s3a://bucket/wh"])
    assert tracking.tracking_uri(cfg) is None
    with caplog.at_level(logging.WARNING, logger="gramian.tracking"), tracking.tracked(cfg, "r1", "train") as t:
        assert not isinstance(t, tracking.Tracker) and not isinstance(tracking.active(), tracking.Tracker)
    assert "storage.root 's3a://bucket/wh' is not a local path" in caplog.text and "tracking.uri" in caplog.text
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(cfg) == "http://127.0.0.1:5000"
    given = load_config("conf/synthetic.yaml", ["storage.root=s3a://bucket/wh", "tracking.uri=databricks"])
    assert tracking.tracking_uri(given) == "databricks"
    assert tracking.artifact_location(given, "databricks") is None


def test_a_tracking_store_that_cannot_be_opened_leaves_the_stage_untracked_with_a_warning(tmp_path, caplog):
    """The run is opened in the background while the stage starts; a failed opening is a warning and the
    stage's tracker calls go nowhere (tracking never fails a stage)."""
    cfg = load_config("conf/synthetic.yaml", [f"storage.root={tmp_path}/wh", "tracking.uri=nosuchscheme://x"])
    with caplog.at_level(logging.WARNING, logger="gramian.tracking"), tracking.tracked(cfg, "r1", "train") as t:
        assert isinstance(t, tracking.DeferredTracker) and tracking.active() is t
        t.log_metrics({"loss": 1.0})  # waits for the opening, then does nothing
        assert t.link is None and not isinstance(t.resolve(), tracking.Tracker)
    assert "MLflow tracking is off for stage train" in caplog.text and "nosuchscheme" in caplog.text
    assert not isinstance(tracking.active(), tracking.DeferredTracker)


def test_a_tracked_stage_logs_into_its_mlflow_run_opened_in_the_background(tmp_path):
    from mlflow import MlflowClient

    cfg = load_config("conf/synthetic.yaml", [f"storage.root={tmp_path}/wh"])
    uri = tracking.tracking_uri(cfg)
    with tracking.tracked(cfg, "r2", "train") as t:
        tracking.active().log_metrics({"loss": 2.5}, step=1)
    run = MlflowClient(uri).get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.RUN_TAG] == "r2"
    assert run.data.metrics["loss"] == 2.5 and run.data.params["model.dim"] == str(cfg.model.dim)


def test_tracking_section_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="tracking.urii"):
        load_config("conf/synthetic.yaml", ["tracking.urii=x"])
    assert load_config("conf/synthetic.yaml", ["tracking.enabled=false"]).tracking.enabled is False


def test_flat_params_are_dotted_and_metric_names_follow_the_metrics_table():
    params = tracking.flat_params(load_config("conf/synthetic.yaml", ["model.dim=8"]).to_dict())
    assert params["model.dim"] == "8" and params["model.confidence.form"] == "rendle"
    assert params["evaluate.k"] == "[10, 20, 50, 100]" and params["spark.conf"] == "{}"
    assert tracking.metric_name("recall", 20, "exact") == "recall_at_20"
    assert tracking.metric_name("ndcg", 10, "corrected") == "corrected.ndcg_at_10"
    assert tracking.metric_name("users_evaluated", None, "count") == "count.users_evaluated"


def _scorer(seed: int = 0) -> tuple[FoldInScorer, np.ndarray, ModelConfig]:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((40, 6)).astype(np.float32)
    model = ModelConfig(dim=6, alpha0=0.05, reg=0.1)
    ids = [f"i{j}" for j in range(40)]
    import dataclasses

    return FoldInScorer(h, ids, dataclasses.asdict(model), n_users=100), h, model


def test_fold_in_scorer_matches_brute_force_top_n_without_history():
    scorer, h, model = _scorer()
    history, weights = ["i3", "i7", "i3", "nope"], [1.0, 2.0, 4.0, 9.0]
    ids, scores = scorer.top_n([history], [weights], 5)
    emb = fold_in_one(np.array([3, 7]), np.array([5.0, 2.0]), h, model, n_users=100)  # repeated ids summed
    brute = h.astype(np.float64) @ emb
    brute[[3, 7]] = -np.inf
    expected = np.argsort(-brute, kind="stable")[:5]
    assert ids[0] == [f"i{j}" for j in expected]
    np.testing.assert_allclose(scores[0], brute[expected], rtol=1e-4)
    assert "i3" not in ids[0] and "i7" not in ids[0]


def test_fold_in_scorer_rejects_weights_of_another_length():
    scorer, _, _ = _scorer()
    with pytest.raises(InputDataError, match=r"weights must give one value per history item \(2\), got 1"):
        scorer.top_n([["i1", "i2"]], [[1.0]], 3)


def test_epoch_progress_logs_one_info_line_per_epoch_off_a_terminal(caplog):
    progress = EpochProgress(spark=None, total=2, bar=False)
    with caplog.at_level(logging.INFO, logger="gramian.progress"):
        for e in (1, 2):
            progress(EpochStats(e, 10.0 / e, 8.0, 1.0, 1.0 / e, 0.5, 0.25))
        progress.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "gramian.progress"]
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2 loss 5 ") and "user 0.50s item 0.25s" in lines[1]


def test_jars_come_from_the_manifest_only_when_every_jar_is_cached(tmp_path):
    pkgs = "io.delta:delta-spark_4.2_2.13:4.4.0"
    assert gspark.jar_settings(tmp_path, pkgs) == {"spark.jars.packages": pkgs}
    jar = tmp_path / "jars" / "a.jar"
    jar.parent.mkdir()
    jar.write_bytes(b"x")
    gspark._manifest(tmp_path, pkgs).write_text(f"{jar}\n")
    assert gspark.jar_settings(tmp_path, pkgs, "extra.jar") == {"spark.jars": f"extra.jar,{jar}"}
    assert gspark.jar_settings(tmp_path, pkgs + ",org.x:y:1") == {"spark.jars.packages": pkgs + ",org.x:y:1"}
    jar.unlink()
    assert gspark.jar_settings(tmp_path, pkgs) == {"spark.jars.packages": pkgs}


def test_spark_submit_gets_the_cached_jars_and_packages_only_until_they_are_cached(tmp_path):
    pkgs = "io.delta:delta-spark_4.2_2.13:4.4.0"
    assert gspark.submit_args(pkgs, tmp_path) == ["--packages", pkgs, "--conf", f"spark.jars.ivy={tmp_path}"]
    jars = [tmp_path / "jars" / name for name in ("a.jar", "b.jar")]
    jars[0].parent.mkdir()
    for jar in jars:
        jar.write_bytes(b"x")
    gspark._manifest(tmp_path, pkgs).write_text("".join(f"{j}\n" for j in jars))
    assert gspark.submit_args(pkgs, str(tmp_path)) == ["--jars", f"{jars[0]},{jars[1]}"]
    jars[1].unlink()  # one jar gone from the cache: Ivy must resolve again
    assert gspark.submit_args(pkgs, tmp_path)[:2] == ["--packages", pkgs]


def test_calls_run_together_return_by_key_and_raise_the_first_failure_after_all_ran():
    started = []

    def call(key, fail=False):
        def run():
            started.append(key)
            if fail:
                raise ValueError(key)
            return key * 2
        return run

    assert gspark.run_together(None, {"a": call("a"), "b": call("b")}) == {"a": "aa", "b": "bb"}
    started.clear()
    with pytest.raises(ValueError, match="^b$"):
        gspark.run_together(None, {"a": call("a"), "b": call("b", True), "c": call("c", True)})
    assert sorted(started) == ["a", "b", "c"]


def test_quiet_java_options_add_gramians_log4j_file_unless_one_is_given():
    opts = gspark.quiet_java_options("-Xss4m")
    assert opts.startswith("-Xss4m -Dlog4j.configurationFile=file:") and Path(gspark.LOG4J).is_file()
    assert gspark.quiet_java_options("-Dlog4j.configurationFile=mine.xml") == "-Dlog4j.configurationFile=mine.xml"


def test_executor_java_options_add_c1_only_jit_and_larger_stacks_unless_the_options_or_the_config_choose():
    assert gspark.executor_java_options("", "c1") == "-XX:TieredStopAtLevel=1 -Xss4m"
    assert gspark.executor_java_options("-Xmn1g", "c1") == "-Xmn1g -XX:TieredStopAtLevel=1 -Xss4m"
    assert gspark.executor_java_options("-Xss8m", "c1") == "-Xss8m -XX:TieredStopAtLevel=1"  # theirs stands
    for given in ("-XX:TieredStopAtLevel=4", "-XX:-TieredCompilation -Xss4m"):
        assert gspark.executor_java_options(given, "c1") == given  # the user's JIT choice stands
    assert gspark.executor_java_options("-Xss4m", "default") == "-Xss4m"
    from gramian.config import load_config

    assert load_config(None, []).spark.executor_jit == "c1"
    with pytest.raises(Exception, match="executor_jit"):
        load_config(None, ["spark.executor_jit=c2"])
