"""The pipeline runner behind `gramian run`: every stage in order under one run_id, resumable.

Each stage's completion is recorded in the `stage_runs` table (run_id, stage, status, started,
finished, fingerprint, summary). A re-run with the same run_id skips a stage only when all hold:
it finished with the same config fingerprint (its own sections and every upstream stage's), its
shared output tables were last written by this run_id (Delta commit userMetadata), its per-run
output tables hold rows of this run_id, and no earlier stage was redone in this invocation.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gramian import tables, tracking
from gramian.config import Config
from gramian.progress import Phases, describe_jobs
from gramian.runs import check_run_id, run_rows, run_where

log = logging.getLogger(__name__)

STAGE_RUNS = "stage_runs"
STAGE_RUNS_SCHEMA = ("run_id string, stage string, status string, started timestamp, finished timestamp, "
                     "fingerprint string, summary string")
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
ORDER = ("ingest", "split", "train", "evaluate", "publish")  # the pipeline's stages, in order


@dataclass(frozen=True)
class StageSpec:
    """What a stage reads from the config and what it leaves behind."""

    sections: tuple[str, ...]       # config sections that change its output
    shared: tuple[str, ...] = ()    # tables the stage overwrites whole (not keyed by run_id)
    per_run: tuple[str, ...] = ()   # tables holding rows keyed by run_id


SPECS: dict[str, StageSpec] = {
    "generate": StageSpec(("data", "generate")),
    "ingest": StageSpec(("data", "generate"), shared=("interactions", "users", "items"), per_run=("ingest_runs",)),
    "split": StageSpec(("split",), shared=("train", "test")),
    "train": StageSpec(("model", "train"), per_run=("user_factors", "item_factors", "runs")),
    "evaluate": StageSpec(("evaluate",), per_run=("metrics",)),
    "publish": StageSpec(("publish",), per_run=("topn",)),
    "tune": StageSpec(("model", "tune"), per_run=("tuning",)),  # not in ORDER: `gramian tune` runs on its own
}


def stage_function(stages: dict[str, str], name: str) -> Callable[..., dict[str, Any]]:
    """Resolve a "module:function" entry of cli.STAGES."""
    module, func = stages[name].split(":")
    return getattr(importlib.import_module(module), func)


def fingerprint(cfg: Config, pipeline: Iterable[str], stage: str) -> str:
    """Hash of the config sections of `stage` and of every stage before it in `pipeline`, plus storage."""
    order = list(pipeline)
    upto = order[: order.index(stage) + 1] if stage in order else [stage]
    full = cfg.to_dict()
    sections = sorted({"storage", *(s for name in upto for s in SPECS.get(name, StageSpec(())).sections)})
    text = json.dumps({s: full.get(s) for s in sections}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record(spark: Any, cfg: Config, run_id: str, stage: str, status: str, started: datetime,
           fp: str, summary: dict[str, Any]) -> None:
    """Replace this (run_id, stage)'s row of `stage_runs`."""
    row = (run_id, stage, status, started, datetime.now(UTC), fp, json.dumps(summary, default=str))
    df = tables.local_frame(spark, [row], STAGE_RUNS_SCHEMA)
    tables.write(df, cfg.storage, STAGE_RUNS, replace_where=run_where(run_id, stage=stage),
                 rows_of={"run_id": run_id, "stage": stage}, files=1)


def stage_runs(spark: Any, cfg: Config, run_id: str | None = None) -> list[dict[str, Any]]:
    """Rows of `stage_runs` (of one run_id when given), oldest first."""
    if not tables.exists(spark, cfg.storage, STAGE_RUNS):
        return []
    df = tables.read(spark, cfg.storage, STAGE_RUNS)
    if run_id is not None:
        df = df.filter(run_rows(run_id))
    return [r.asDict() for r in df.orderBy("finished").collect()]


def last_writer(spark: Any, cfg: Config, name: str) -> str | None:
    """The userMetadata (gramian sets it to the run_id) of a table's latest Delta commit."""
    ref = tables.table_ref(cfg.storage, name)
    target = ref if cfg.storage.catalog else f"delta.`{ref}`"
    rows = spark.sql(f"DESCRIBE HISTORY {target} LIMIT 1").select("userMetadata").collect()
    return rows[0][0] if rows else None


def incomplete_reason(spark: Any, cfg: Config, run_id: str, stage: str, fp: str,
                      previous: dict[str, Any] | None) -> str | None:
    """Why `stage` must be (re)done for run_id, or None when its recorded outputs are complete."""
    if previous is None:
        return "never ran"
    if previous["status"] != "finished":
        return f"last attempt {previous['status']}"
    if previous["fingerprint"] != fp:
        return "config changed"
    spec = SPECS.get(stage, StageSpec(()))
    for name in (*spec.shared, *spec.per_run):
        if not tables.exists(spark, cfg.storage, name):
            return f"table {name} missing"
    for name in spec.shared:
        writer = last_writer(spark, cfg, name)
        if writer != run_id:
            return f"table {name} last written by {writer or 'another job'}"
    for name in spec.per_run:
        if tables.read(spark, cfg.storage, name).filter(run_rows(run_id)).limit(1).count() == 0:
            return f"table {name} has no rows of this run"
    return None


def execute(spark: Any, cfg: Config, run_id: str, stage: str, func: Callable[..., dict[str, Any]],
            pipeline: Iterable[str], **kwargs: Any) -> dict[str, Any]:
    """Run one stage, tagging its Delta commits with run_id and recording the outcome in `stage_runs`."""
    check_run_id(run_id)
    fp = fingerprint(cfg, pipeline, stage)
    started = datetime.now(UTC)
    before = _get_conf(spark, USER_METADATA)
    spark.conf.set(USER_METADATA, run_id)
    phases = Phases(f"{stage} {run_id}")
    try:
        describe_jobs(spark, f"{stage} {run_id}")
        with tracking.tracked(cfg, run_id, stage) as tracker:
            phases.mark("open tracking")
            summary = func(spark, cfg, run_id, **kwargs)
            phases.mark("stage")
            tracking.safe(tracker.stage_done, stage, summary)
        phases.mark("close tracking")
        if tracker.link:
            summary = {**summary, "mlflow_run": tracker.link}
    except BaseException as e:
        describe_jobs(spark, None)
        spark.conf.set(USER_METADATA, before) if before else spark.conf.unset(USER_METADATA)
        try:
            record(spark, cfg, run_id, stage, "failed", started, fp,
                   {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=5)})
        except Exception:  # recording must never hide the stage's own error
            log.exception("could not record the failure of %s", stage)
        raise
    describe_jobs(spark, None)
    if before:
        spark.conf.set(USER_METADATA, before)
    else:
        spark.conf.unset(USER_METADATA)
    record(spark, cfg, run_id, stage, "finished", started, fp, summary)
    phases.mark("record stage_runs")
    return summary


def _get_conf(spark: Any, key: str) -> str | None:
    try:
        return spark.conf.get(key)
    except Exception:  # unset keys raise on some Spark versions / Connect
        return None


def run_pipeline(spark: Any, cfg: Config, run_id: str, stages: dict[str, str], pipeline: Iterable[str],
                 force: bool = False, resume: bool = False,
                 echo: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run `pipeline` in order under run_id, skipping stages whose recorded outputs are complete."""
    check_run_id(run_id)
    order = tuple(pipeline)
    previous = {r["stage"]: r for r in stage_runs(spark, cfg, run_id)}
    summaries: dict[str, dict[str, Any]] = {}
    redo = force
    for stage in order:
        fp = fingerprint(cfg, order, stage)
        reason = "forced" if force else ("an earlier stage was redone" if redo else
                                         incomplete_reason(spark, cfg, run_id, stage, fp, previous.get(stage)))
        if reason is None:
            summary = {"skipped": True, "reason": "complete for this run_id",
                       **json.loads(previous[stage]["summary"] or "{}")}
            log.info("%s: complete for run %s, skipped", stage, run_id)
        else:
            log.info("%s: running (%s)", stage, reason)
            kwargs: dict[str, Any] = {}
            if stage == "train":
                # same upstream data as the stopped attempt: continue from its checkpoint, if any
                kwargs["resume"] = resume or not redo
            t0 = time.perf_counter()
            summary = execute(spark, cfg, run_id, stage, stage_function(stages, stage), order, **kwargs)
            summary = {**summary, "stage_seconds": round(time.perf_counter() - t0, 2)}
            redo = True
        summaries[stage] = summary
        if echo is not None:
            echo(stage, summary)
    return summaries


def stage_line(stage: str, summary: dict[str, Any]) -> str:
    """One line per finished stage for `gramian run` (its full summary stays in --json and `stage_runs`)."""
    if summary.get("skipped"):
        return f"  {stage:<9} skipped ({summary.get('reason', 'complete')})"
    facts = {"ingest": ("accepted", "quarantined", "users", "items"), "split": ("train", "test"),
             "train": ("epochs", "final_loss"), "evaluate": ("test_users",), "publish": ("users", "index_recall")}
    parts = [f"{k} {_short(summary[k])}" for k in facts.get(stage, ()) if k in summary]
    seconds = summary.get("stage_seconds", summary.get("seconds"))
    took = f"{seconds:7.1f} s" if isinstance(seconds, int | float) else ""
    return f"  {stage:<9} {took}  " + ", ".join(parts)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def headline(spark: Any, cfg: Config, run_id: str, k: int = 20) -> dict[str, dict[str, float]]:
    """Exact Recall@k and NDCG@k per model of the run (the model and its popularity baseline)."""
    from pyspark.sql import functions as F

    if not tables.exists(spark, cfg.storage, "metrics"):
        return {}
    rows = (tables.read(spark, cfg.storage, "metrics")
            .filter(run_rows(run_id) & (F.col("k") == k) & (F.col("method") == "exact")
                    & F.col("metric").isin("recall", "ndcg"))
            .select("model", "metric", "value").collect())
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r["model"], {})[r["metric"]] = float(r["value"])
    return out


def run_summary(spark: Any, cfg: Config, run_id: str, summaries: dict[str, dict[str, Any]]) -> str:
    """What a person reads at the end of `gramian run`: model vs popularity with the lift, sizes, times, places."""
    k = 20 if 20 in cfg.evaluate.k else sorted(cfg.evaluate.k)[0]
    train = summaries.get("train", {})
    lines = [f"== run {run_id}: {train.get('model', cfg.model.name)} dim {train.get('dim', cfg.model.dim)}, "
             f"{train.get('epochs', cfg.model.epochs)} epochs on {train.get('users', '?')} users x "
             f"{train.get('items', '?')} items"]
    scores = headline(spark, cfg, run_id, k)
    model = next((m for m in scores if m != "popularity" and "@" not in m), None)
    if model is not None:
        lines.append(f"  {'':<12}{'Recall@' + str(k):>10}{'NDCG@' + str(k):>10}")
        for name in (model, "popularity"):
            if name in scores:
                s = scores[name]
                lines.append(f"  {name:<12}{s.get('recall', float('nan')):>10.4f}{s.get('ndcg', float('nan')):>10.4f}")
        pop = scores.get("popularity")
        if pop:
            lift = [_lift(scores[model].get(m), pop.get(m)) for m in ("recall", "ndcg")]
            lines.append(f"  {'lift':<12}{lift[0]:>10}{lift[1]:>10}")
    times = [f"{s} {v['stage_seconds']:.0f}s" for s, v in summaries.items() if "stage_seconds" in v]
    if times:
        total = sum(v["stage_seconds"] for v in summaries.values() if "stage_seconds" in v)
        lines.append(f"  time: {', '.join(times)} (total {total:.0f}s)")
    report = summaries.get("evaluate", {}).get("report")
    if report:
        lines.append(f"  report: {report}")
    where = f"catalog {cfg.storage.catalog}.{cfg.storage.schema}" if cfg.storage.catalog else cfg.storage.root
    lines.append(f"  tables: {where} (metrics, topn, runs, ...)")
    link = next((v["mlflow_run"] for v in summaries.values() if v.get("mlflow_run")), None)
    if link:
        lines.append(f"  mlflow: {link}")
    lines.append("  all metrics: --json, the `metrics` table or the report")
    return "\n".join(lines)


def _lift(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "n/a"
    return f"{(value / base - 1) * 100:+.0f}%"
