"""Quality gate before publish: the candidate run's metric must reach a floor and beat the published run.

The published run is the current row of publish's `publications` table (else the latest run whose
`publish` stage finished in `stage_runs`); with none, only the floor applies. The two runs' metrics
are compared only when both were trained on one split (the same recorded train/test/foldin
versions, gramian.runs): otherwise the gate refuses, or with on_new_split="floor" applies the floor
alone and says so. Used by the Airflow DAG between evaluate and publish (`gramian gate`).
"""

from __future__ import annotations

import logging
from typing import Any

from gramian import tables
from gramian.config import Config
from gramian.errors import ConfigError, InputDataError
from gramian.pipeline import stage_runs
from gramian.runs import check_run_id, current_publication, describe_split, recorded_inputs, run_rows, same_split

log = logging.getLogger(__name__)


def metric_value(spark: Any, cfg: Config, run_id: str, metric: str, k: int, method: str) -> float | None:
    """The value of (metric, k, method) for run_id in the metrics table, or None."""
    from pyspark.sql import functions as F

    if not tables.exists(spark, cfg.storage, "metrics"):
        return None
    df = tables.read(spark, cfg.storage, "metrics")
    cond = run_rows(run_id) & (F.lower(F.col("metric")) == metric.lower())
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
    current = current_publication(spark, cfg.storage)
    if current is not None:
        return current["run_id"] if current["run_id"] != exclude else None
    runs = [r for r in stage_runs(spark, cfg) if r["stage"] == "publish" and r["status"] == "finished"
            and r["run_id"] != exclude]
    return runs[-1]["run_id"] if runs else None


def comparable_baseline(spark: Any, cfg: Config, run_id: str, baseline_run: str | None,
                        on_new_split: str) -> tuple[str | None, str]:
    """The published run to compare with (None when there is none, or it is on another split and
    on_new_split is "floor"), and a note; InputDataError when it is on another split and "refuse"."""
    if on_new_split not in ("refuse", "floor"):
        raise ConfigError(f"gate on_new_split must be 'refuse' or 'floor', got {on_new_split!r} (--on-new-split). "
                          f"Pick one of the two.")
    if baseline_run is None:
        return None, ""
    mine, theirs = recorded_inputs(spark, cfg.storage, run_id), recorded_inputs(spark, cfg.storage, baseline_run)
    if same_split(mine, theirs):
        return baseline_run, ""
    note = (f"published run {baseline_run!r} was trained on another split ({describe_split(theirs)}) than "
            f"{run_id!r} ({describe_split(mine)})")
    if on_new_split == "refuse":
        raise InputDataError(f"the published run must share the candidate's split to be compared, got: {note}. "
                             f"Pass --on-new-split floor to gate on the floor alone, or evaluate both runs "
                             f"on one split (re-train the published configuration under a new --run-id).")
    return None, f"; {note}: floor only"


def run(spark: Any, cfg: Config, run_id: str, metric: str = "ndcg", k: int = 20, method: str = "exact",
        floor: float = 0.0, min_improvement: float = 0.0, on_new_split: str = "refuse") -> dict[str, Any]:
    """Decide whether run_id may be published; `passed` is False when it does not clear the bar."""
    check_run_id(run_id)
    value = metric_value(spark, cfg, run_id, metric, k, method)
    if value is None:
        raise InputDataError(f"metrics must hold {metric}@{k} ({method}) for run {run_id!r}, got none at "
                             f"{tables.table_ref(cfg.storage, 'metrics')}. Run `gramian evaluate` for this "
                             f"run_id first.")
    published = published_run(spark, cfg, exclude=run_id)
    baseline_run, note = comparable_baseline(spark, cfg, run_id, published, on_new_split)
    baseline = metric_value(spark, cfg, baseline_run, metric, k, method) if baseline_run else None
    passed = value >= floor and (baseline is None or value >= baseline + min_improvement)
    reason = (f"{metric}@{k}={value:.4f} below floor {floor}" if value < floor else
              f"{metric}@{k}={value:.4f} does not beat published {baseline_run} ({baseline:.4f})"
              if not passed else f"{metric}@{k}={value:.4f} clears floor {floor}"
              + (f" and published {baseline_run} ({baseline:.4f})" if baseline is not None else "")) + note
    log.info("quality gate for %s: %s", run_id, reason)
    return {"run_id": run_id, "metric": f"{metric}@{k}", "method": method, "value": value, "floor": floor,
            "published_run": published, "compared_with": baseline_run, "published_value": baseline,
            "passed": passed, "reason": reason}
