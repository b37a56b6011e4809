"""Quality gate before publish: the candidate run's metric must reach a floor and beat the published run.

The published run is the current row of publish's `publications` table (else the latest run whose
`publish` stage finished in `stage_runs`); with none, only the floor applies. Used by the Airflow
DAG between evaluate and publish (`gramian gate`).
"""

from __future__ import annotations

import logging
from typing import Any

from gramian import tables
from gramian.config import Config
from gramian.errors import InputDataError
from gramian.pipeline import stage_runs

log = logging.getLogger(__name__)


def metric_value(spark: Any, cfg: Config, run_id: str, metric: str, k: int, method: str) -> float | None:
    """The value of (metric, k, method) for run_id in the metrics table, or None."""
    from pyspark.sql import functions as F

    if not tables.exists(spark, cfg.storage, "metrics"):
        return None
    df = tables.read(spark, cfg.storage, "metrics")
    cond = (F.col("run_id") == run_id) & (F.lower(F.col("metric")) == metric.lower())
    if "k" in df.columns:
        cond &= F.col("k") == k
    if "method" in df.columns:
        cond &= F.col("method") == method
    if "model" in df.columns:  # evaluate also writes the popularity baseline and "<model>@<other run>" rows
        cond &= ~F.col("model").contains("@") & (F.col("model") != "popularity")
    rows = df.filter(cond).select("value").limit(1).collect()
    return float(rows[0][0]) if rows else None


def published_run(spark: Any, cfg: Config, exclude: str | None = None) -> str | None:
    """The run_id currently published (publish's `publications` table; else the latest finished publish stage)."""
    try:
        from gramian.retrieval.publish import current_publication
    except ImportError:  # publish stage not installed: fall back to the stage record
        current_publication = None
    if current_publication is not None:
        current = current_publication(spark, cfg.storage)
        if current is not None:
            return current["run_id"] if current["run_id"] != exclude else None
    runs = [r for r in stage_runs(spark, cfg) if r["stage"] == "publish" and r["status"] == "finished"
            and r["run_id"] != exclude]
    return runs[-1]["run_id"] if runs else None


def run(spark: Any, cfg: Config, run_id: str, metric: str = "ndcg", k: int = 20, method: str = "exact",
        floor: float = 0.0, min_improvement: float = 0.0) -> dict[str, Any]:
    """Decide whether run_id may be published; `passed` is False when it does not clear the bar."""
    value = metric_value(spark, cfg, run_id, metric, k, method)
    if value is None:
        raise InputDataError(f"metrics must hold {metric}@{k} ({method}) for run {run_id!r}, got none at "
                             f"{tables.table_ref(cfg.storage, 'metrics')}. Run `gramian evaluate` for this "
                             f"run_id first.")
    baseline_run = published_run(spark, cfg, exclude=run_id)
    baseline = metric_value(spark, cfg, baseline_run, metric, k, method) if baseline_run else None
    passed = value >= floor and (baseline is None or value >= baseline + min_improvement)
    reason = (f"{metric}@{k}={value:.4f} below floor {floor}" if value < floor else
              f"{metric}@{k}={value:.4f} does not beat published {baseline_run} ({baseline:.4f})"
              if not passed else f"{metric}@{k}={value:.4f} clears floor {floor}"
              + (f" and published {baseline_run} ({baseline:.4f})" if baseline is not None else ""))
    log.info("quality gate for %s: %s", run_id, reason)
    return {"run_id": run_id, "metric": f"{metric}@{k}", "method": method, "value": value, "floor": floor,
            "published_run": baseline_run, "published_value": baseline, "passed": passed, "reason": reason}
