"""Warm start (train.warm_start): a run's first epoch starts from an earlier run's factors.

Id maps are append-only, so an earlier run's `idx` rows are this run's rows of the same ids. Rows the source
run has are copied; users and items it has not seen (new since, or without train rows then) keep the usual
N(0, σ/√d) init. The user half-step comes first in every epoch and solves each user exactly from the item
factors, so a warm user side matters little and new users with history are in effect folded in by it.
A source of another model or dimension is refused: its factors mean something else.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from gramian import tables
from gramian.config import Config
from gramian.errors import ConfigError
from gramian.factors import factor_rows
from gramian.runs import check_run_id, current_publication, run_rows
from gramian.train.als import FitState
from gramian.train.init import init_factors

log = logging.getLogger(__name__)

KEY = "train.warm_start"


def source_run(spark: Any, cfg: Config, run_id: str) -> str | None:
    """The run to start from: None (cold), the current publication's run ("published") or a named run."""
    wanted = cfg.train.warm_start
    if wanted is None:
        return None
    if wanted == "published":
        pub = current_publication(spark, cfg.storage)
        if pub is None:
            log.info("%s=published but nothing is published yet: run %s starts cold", KEY, run_id)
            return None
        source = str(pub["run_id"])
    else:
        source = check_run_id(wanted, KEY)
    if source == run_id:
        raise ConfigError(f"{KEY} must name another run than the one being trained, got {source!r} (the "
                          f"--run-id). Pick a new --run-id, or use --resume to continue {source!r}.")
    return source


def source_model(spark: Any, cfg: Config, source: str) -> dict[str, Any]:
    """The model config run `source` was trained with (its `runs` row), or ConfigError naming the remedy."""
    rows = []
    if tables.exists(spark, cfg.storage, "runs"):
        rows = tables.read(spark, cfg.storage, "runs").filter(run_rows(source)).select("config", "status").collect()
    if not rows or rows[0]["status"] != "finished":
        raise ConfigError(f"{KEY} must name a finished run in {tables.table_ref(cfg.storage, 'runs')}, got "
                          f"{source!r} ({'no such run' if not rows else 'status ' + str(rows[0]['status'])}). "
                          f"Pick a finished run_id, 'published', or null for a cold start.")
    return dict(json.loads(rows[0]["config"])["model"])


def check_compatible(cfg: Config, source: str, model: dict[str, Any]) -> None:
    """ConfigError when run `source` has another model or dimension than the configured one."""
    for key in ("name", "dim"):
        mine, theirs = getattr(cfg.model, key), model.get(key)
        if theirs != mine:
            raise ConfigError(f"{KEY} must name a run of the same model.{key} ({mine!r}), got run {source!r} with "
                              f"model.{key}={theirs!r}. Start cold (--set {KEY}=null) or set model.{key}={theirs!r}.")


def warm_rows(init: np.ndarray, idx: np.ndarray, rows: np.ndarray, positions: np.ndarray | None = None) -> int:
    """Copy source rows (`idx`, `rows`) into `init` in place at their trainer positions; return how many.

    `positions` (train.rows) lists the index each trainer row stands for; None means positions are indices.
    Source rows whose index has no trainer row (a user without train rows now) are left out."""
    if len(idx) == 0:
        return 0
    if positions is None:
        keep = idx < len(init)
        at = idx[keep]
    else:
        pos = np.searchsorted(positions, idx)
        keep = (pos < len(positions)) & (positions[np.minimum(pos, len(positions) - 1)] == idx)
        at = pos[keep]
    init[at] = rows[keep]
    return int(keep.sum())


def warm_state(spark: Any, cfg: Config, source: str, n_users: int, n_items: int,
               user_rows: np.ndarray | None) -> tuple[FitState, dict[str, Any]]:
    """(initial FitState from run `source`, what was copied), after the compatibility check."""
    check_compatible(cfg, source, source_model(spark, cfg, source))
    m = cfg.model
    user = init_factors(n_users, m.dim, m.init_scale, m.seed, 0)
    item = init_factors(n_items, m.dim, m.init_scale, m.seed, 1)
    copied = {}
    for side, array, positions in (("user", user, user_rows), ("item", item, None)):
        idx, rows = factor_rows(spark, cfg.storage, f"{side}_factors", source)
        copied[f"{side}s_from_source"] = warm_rows(array, idx, rows, positions)
        copied[f"{side}s_new"] = len(array) - copied[f"{side}s_from_source"]
    log.info("warm start from run %s: %d users and %d items copied, %d and %d new", source,
             copied["users_from_source"], copied["items_from_source"], copied["users_new"], copied["items_new"])
    return FitState(user, item), {"run_id": source, **copied}
