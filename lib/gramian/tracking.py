"""MLflow tracking: every stage of a gramian run logs into one MLflow run tagged with its run_id.

`tracked(cfg, run_id, stage)` wraps each stage (pipeline.execute): it finds the MLflow run tagged
`gramian.run_id` (or starts it), logs the resolved config once as params and config.yaml, and makes
that run `active()` for the stage's own logging: per-epoch loss terms and half-step seconds with
step=epoch (train), metrics at every k (evaluate; baselines in nested runs), the report, the stage
summaries, and the trained model as a pyfunc (gramian.pyfunc). With tracking.enabled false, or for
code outside a stage, `active()` is a NullTracker whose methods do nothing.

Everything goes through an explicit MlflowClient: the process-wide MLflow state of a notebook or job
(its tracking URI, its active run) is never changed.
"""

from __future__ import annotations

import json
import logging
import os
import pkgutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gramian.config import Config
from gramian.errors import ConfigError

log = logging.getLogger(__name__)

RUN_TAG = "gramian.run_id"
PART_TAG = "gramian.part"
_LOCAL_SCHEMES = ("", "file")


def local_root(root: str) -> Path | None:
    """The local folder of a storage root, or None when it is a remote URI (s3a://, abfss://, dbfs:, ...)."""
    parsed = urlparse(root)
    if parsed.scheme not in _LOCAL_SCHEMES and len(parsed.scheme) > 1:  # one letter: a Windows drive
        return None
    path = parsed.path if parsed.scheme == "file" else root
    return Path(path).expanduser().resolve()


def tracking_uri(cfg: Config) -> str | None:
    """Where runs go: tracking.uri, else $MLFLOW_TRACKING_URI, else Databricks' own workspace tracking
    inside a Databricks runtime, else SQLite in a local artifact location (<root>/_artifacts/mlflow/mlflow.db).

    None when the root is not local (s3a://...) and no URI is given: there is no sensible place for a
    SQLite file on an object store, so the run goes untracked with a warning (`tracked`), not failed:
    a pipeline that ran before tracking existed keeps running.
    """
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return "databricks"
    from gramian.storage import artifacts_uri

    try:
        where = artifacts_uri(cfg.storage)  # the one artifact location (storage.artifacts or <root>/_artifacts)
    except ConfigError:  # tables in a catalog and no storage.artifacts: nowhere local to put a SQLite file
        return None
    local = local_root(where)
    return None if local is None else f"sqlite:///{local / 'mlflow' / 'mlflow.db'}"


def artifact_location(cfg: Config, uri: str) -> str | None:
    """Artifacts beside the local SQLite store (<artifacts>/mlflow/artifacts); servers keep their own default."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config tree as dotted MLflow params (model.dim=64); values cut to MLflow's 6000 characters."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "conf":
            out.update(flat_params(value, f"{name}."))
        else:
            text = json.dumps(value, default=str) if isinstance(value, dict | list | tuple) else str(value)
            out[name] = text[:6000]
    return out


def metric_name(metric: str, k: Any, method: str) -> str:
    """MLflow name of one metrics-table row: recall_at_20 (exact), sampled.item_recall_at_20, count.users_evaluated."""
    base = metric if k is None else f"{metric}_at_{int(k)}"
    return base if method == "exact" else f"{method}.{base}"


class NullTracker:
    """What stages log to when tracking is off: every method is a no-op."""

    link: str | None = None
    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_dict(self, data: Any, name: str) -> None: ...
    def log_artifacts(self, folder: str | Path, path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_epoch(self, stats: Any) -> None: ...
    def log_evaluation(self, rows: list[dict[str, Any]], main_model: str, report: Any) -> None: ...
    def log_model(self, **kwargs: Any) -> None: ...
    def stage_done(self, stage: str, summary: dict[str, Any]) -> None: ...


class Tracker(NullTracker):
    """One MLflow run (and its nested part runs) logged through an explicit MlflowClient."""

    def __init__(self, client: Any, uri: str, experiment_id: str, run_id: str, gramian_run_id: str) -> None:
        self.client, self.uri, self.experiment_id = client, uri, experiment_id
        self.run_id, self.gramian_run_id = run_id, gramian_run_id
        self.link = f"{uri} experiment {experiment_id} run {run_id}"
        self._children: dict[str, Tracker] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params not logged yet; a changed value (same run_id, new config) is kept as the first one."""
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        new = {k: str(v) for k, v in params.items() if k not in have}
        changed = sorted(k for k, v in params.items() if k in have and have[k] != str(v))
        if changed:
            log.warning("MLflow run %s keeps its first value of %d changed params (%s): params cannot change",
                        self.run_id, len(changed), ", ".join(changed[:5]))
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_dict(self, data: Any, name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_artifacts(self, folder: str | Path, path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_epoch(self, stats: Any) -> None:
        """One epoch's loss terms (eq. 26) and half-step seconds, step=epoch."""
        self.log_metrics({"loss": stats.loss, "loss_observed": stats.observed, "loss_gramian": stats.gramian,
                          "loss_regularization": stats.regularization, "user_step_seconds": stats.user_seconds,
                          "item_step_seconds": stats.item_seconds,
                          "epoch_seconds": stats.user_seconds + stats.item_seconds}, step=stats.epoch)

    def child(self, part: str) -> Tracker:
        """The nested run for one part of this run (e.g. the popularity baseline's evaluation)."""
        if part not in self._children:
            found = self.client.search_runs([self.experiment_id], filter_string=(
                f"tags.`{RUN_TAG}` = '{self.gramian_run_id}' and tags.`{PART_TAG}` = '{part}'"), max_results=1)
            if found:
                rid = found[0].info.run_id
            else:
                rid = self.client.create_run(self.experiment_id, run_name=part, tags={
                    RUN_TAG: self.gramian_run_id, PART_TAG: part, "mlflow.parentRunId": self.run_id}).info.run_id
            self._children[part] = Tracker(self.client, self.uri, self.experiment_id, rid, self.gramian_run_id)
        return self._children[part]

    def log_evaluation(self, rows: list[dict[str, Any]], main_model: str, report: Any) -> None:
        """Metrics at every k: the run's model on this run, each other model (popularity...) in a nested run."""
        by_model: dict[str, dict[str, float]] = {}
        for r in rows:
            by_model.setdefault(r["model"], {})[metric_name(r["metric"], r.get("k"), r["method"])] = r["value"]
        for model, metrics in by_model.items():
            (self if model == main_model else self.child(f"evaluate/{model}")).log_metrics(metrics)
        if report is not None and hasattr(report, "local_dir"):  # a gramian.storage.Store (local, or fetched)
            report = report.local_dir()
        if report is not None and Path(report).exists():
            folder = Path(report) if Path(report).is_dir() else Path(report).parent
            self.log_artifacts(folder, "report")

    def log_model(self, *, item_factors: Any, item_ids: list[str | None], model: dict[str, Any],
                  n_users: int) -> None:
        """The trained model as an MLflow pyfunc (fold-in top-n), a LoggedModel linked to this run."""
        import mlflow

        from gramian import pyfunc

        with tempfile.TemporaryDirectory() as tmp:
            artifacts = pyfunc.write_model_files(Path(tmp) / "files", item_factors, item_ids, model, n_users,
                                                 self.gramian_run_id)
            out = Path(tmp) / "model"
            code = Path(pyfunc.__file__).with_name("_mlflow_model.py")
            if not code.is_file():  # imported from a zip (spark-submit --py-files): MLflow needs a real file
                source = pkgutil.get_data("gramian", "_mlflow_model.py")
                code = Path(tmp) / "_mlflow_model.py"
                code.write_bytes(source or b"")
            with warnings.catch_warnings():  # "no input example": the signature is given whole
                warnings.simplefilter("ignore", UserWarning)
                mlflow.pyfunc.save_model(str(out), python_model=str(code), artifacts=artifacts,
                                         signature=pyfunc.signature(), pip_requirements=_requirements())
            logged = self.client.create_logged_model(self.experiment_id, name="model", source_run_id=self.run_id,
                                                     tags={RUN_TAG: self.gramian_run_id})
            self.client.log_model_artifacts(logged.model_id, str(out))
            self.client.finalize_logged_model(logged.model_id, "READY")
            self.client.log_artifacts(self.run_id, str(out), "model")  # also loadable as runs:/<id>/model
        self.set_tags({"gramian.model_uri": f"models:/{logged.model_id}"})

    def stage_done(self, stage: str, summary: dict[str, Any]) -> None:
        """A stage's summary as stages/<stage>.json, its seconds as a metric; publish facts as tags too."""
        self.log_dict(summary, f"stages/{stage}.json")
        seconds = summary.get("seconds", summary.get("fit_seconds"))
        if isinstance(seconds, int | float):
            self.log_metrics({f"{stage}_seconds": seconds})
        if stage == "publish":
            self.log_metrics({k: summary[k] for k in ("index_recall", "index_recall_searcher") if k in summary})
            self.set_tags({f"publish.{k}": summary[k] for k in ("index", "topn_version", "n") if k in summary})


def _requirements() -> list[str]:
    """What loading the pyfunc needs: gramian's numeric stack (no Spark)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("numpy", "numba", "pandas", "pyyaml")]


_ACTIVE: NullTracker = NullTracker()


def active() -> NullTracker:
    """The tracker of the stage now running (a NullTracker outside `tracked`)."""
    return _ACTIVE


def _quiet_mlflow() -> None:
    """MLflow's and alembic's INFO lines (database migrations on first use) and its artifact progress bars
    stay out of the run's output (MLflow sets its logger's level on import, so this runs after it)."""
    import mlflow  # noqa: F401

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def open_run(cfg: Config, run_id: str, uri: str) -> Tracker:
    """The MLflow run tagged with gramian run_id in tracking.experiment at `uri` (created on first use)."""
    _quiet_mlflow()
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.tracking.experiment,
                                                                    artifact_location(cfg, uri))
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}' and "
                               f"attributes.run_name = '{run_id}'", max_results=1)
    rid = found[0].info.run_id if found else client.create_run(exp_id, run_name=run_id,
                                                               tags={RUN_TAG: run_id}).info.run_id
    return Tracker(client, uri, exp_id, rid, run_id)


class DeferredTracker:
    """The stage's tracker while a background thread opens it: MLflow's import and store setup (seconds, more
    on a busy driver) overlap the stage's own first Spark jobs instead of preceding them. Every attribute
    waits for the opening, then comes from the opened Tracker, or from a NullTracker when opening failed."""

    def __init__(self, cfg: Config, run_id: str, stage: str, uri: str) -> None:
        self._tracker: NullTracker = NullTracker()
        self._thread = threading.Thread(target=self._open, args=(cfg, run_id, stage, uri), daemon=True,
                                        name=f"gramian-tracking-{stage}")
        self._thread.start()

    def _open(self, cfg: Config, run_id: str, stage: str, uri: str) -> None:
        try:
            tracker = open_run(cfg, run_id, uri)
            tracker.log_params(flat_params(cfg.to_dict()))
            tracker.log_dict(cfg.to_dict(), "config.yaml")
            tracker.client.update_run(tracker.run_id, status="RUNNING")
            self._tracker = tracker
        except Exception as e:  # never lose a stage to the tracking server
            log.warning("MLflow tracking is off for stage %s: %s: %s", stage, type(e).__name__, e)

    def resolve(self) -> NullTracker:
        """The opened tracker (waits for the opening to finish)."""
        self._thread.join()
        return self._tracker

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resolve(), name)


@contextmanager
def tracked(cfg: Config, run_id: str, stage: str) -> Iterator[NullTracker]:
    """Make the run's MLflow run active for one stage; mark it FINISHED, or FAILED when the stage raises.

    The MLflow run is opened in the background (DeferredTracker) while the stage starts. Tracking problems
    (a server down) are logged and the stage runs untracked, and so does a run whose storage.root is not
    local when no tracking URI is given (a warning names the remedy).
    """
    global _ACTIVE
    uri = tracking_uri(cfg) if cfg.tracking.enabled else None
    if uri is None:
        if cfg.tracking.enabled:
            log.warning("MLflow tracking is off for stage %s: storage.root %r is not a local path and no "
                        "tracking.uri or MLFLOW_TRACKING_URI is set. Set tracking.uri (an MLflow server, or "
                        "'databricks'), or tracking.enabled=false to silence this.", stage, cfg.storage.root)
        yield NullTracker()
        return
    opening = DeferredTracker(cfg, run_id, stage, uri)
    _ACTIVE = opening  # type: ignore[assignment]  # a NullTracker in all but name: attributes delegate
    try:
        yield opening  # type: ignore[misc]
    except BaseException:
        _finish(opening.resolve(), "FAILED")
        raise
    finally:
        _ACTIVE = NullTracker()
    _finish(opening.resolve(), "FINISHED")


def _finish(tracker: NullTracker, status: str) -> None:
    if isinstance(tracker, Tracker):
        try:
            for child in tracker._children.values():
                child.client.set_terminated(child.run_id, status)
            tracker.client.set_terminated(tracker.run_id, status)
        except Exception as e:
            log.warning("could not mark MLflow run %s %s: %s", tracker.run_id, status, e)


def safe(call: Any, *args: Any, **kwargs: Any) -> None:
    """Run one logging call on the active tracker; a tracking error is a warning, never the stage's failure."""
    try:
        call(*args, **kwargs)
    except Exception as e:
        log.warning("MLflow logging failed (%s: %s); the stage goes on", type(e).__name__, e)
