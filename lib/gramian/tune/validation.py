"""The tuner's validation split: carved from the pinned `train` table only (never `test`), and its scoring.

The configured split method (gramian.data.split.assign_parts, the split stage's own function) is applied
to `train` with seed split.seed + 1 and fraction tune.validation_fraction (default split.test_fraction):
its train part fits the trials, its held-out part scores them. split.method `given` (a provided test
file) has no rule to re-apply, so its validation is `random`. The fit part's interactions per user and
item are counted once here and handed to every trial's fit (no trial counts them again). A trial's model
is scored with the evaluate stage's code (evaluate.job.evaluate_model: exact full-catalogue ranks,
kernels.ranking's metrics).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from gramian import tables
from gramian.config import Config, SplitConfig
from gramian.data.split import FOLDIN, TEST, TRAIN, assign_parts
from gramian.errors import InputDataError

VALIDATION_COLUMNS = ("user_idx", "item_idx", "weight", "ts")


@dataclass
class Validation:
    """The validation split of one tune: what trials fit and what scores them."""

    train: Any  # validation-train rows in trainer positions (train.job.train_positions)
    user_rows: np.ndarray | None  # trainer position -> users idx (None: identity)
    n_users: int  # trainer rows
    n_items: int
    counts: tuple[np.ndarray, np.ndarray]  # validation-train interactions per trainer row and per item
    rows: Any  # one row per validation user (evaluate.job.heldout_rows), cached
    n_test_users: int
    parts: dict[str, Any]  # train / test / foldin frames in users indices (what was carved)
    summary: dict[str, Any]  # method, seed, fraction, train version, pair and user counts

    def release(self) -> None:
        """Drop the cached frames."""
        self.rows.unpersist()


def validation_split(cfg: Config) -> SplitConfig:
    """The split rule carving validation out of train: the configured one (given -> random), seed + 1."""
    s = cfg.split
    return dataclasses.replace(s, method="random" if s.method == "given" else s.method,
                               test_fraction=cfg.tune.validation_fraction or s.test_fraction, seed=s.seed + 1)


def carve(spark: Any, cfg: Config) -> Validation:
    """Split the current `train` table (its version recorded) into validation train / held-out / fold-in."""
    from pyspark.sql import functions as F

    from gramian.evaluate.job import heldout_rows
    from gramian.train.als import row_counts
    from gramian.train.job import read_inputs, train_positions

    st = cfg.storage
    # checks that train, users and items exist
    inputs, _, _, n_users, n_items, (train, _, _) = read_inputs(spark, cfg, count=False)
    version = inputs["train"]
    split = validation_split(cfg)
    keyed = train.select(F.col("user_idx").cast("string").alias("user_id"),
                         F.col("item_idx").cast("string").alias("item_id"), *VALIDATION_COLUMNS)
    labelled = assign_parts(keyed, split).select(*VALIDATION_COLUMNS, "part").localCheckpoint()
    stats = {r["part"]: (int(r["n"]), int(r["users"])) for r in labelled.groupBy("part").agg(
        F.count(F.lit(1)).alias("n"), F.countDistinct("user_idx").alias("users")).collect()}
    if TEST not in stats:
        raise InputDataError(f"the validation split must hold out some train pairs, got none (split.method="
                             f"{split.method!r}, fraction {split.test_fraction}, {tables.table_ref(st, 'train')} "
                             f"version {version}). Lower split.min_interactions or raise tune.validation_fraction.")
    parts = {p: labelled.filter(F.col("part") == p).select(*VALIDATION_COLUMNS) for p in (TRAIN, TEST, FOLDIN)}
    fit_rows, user_rows, counts, _ = train_positions(parts[TRAIN], n_users,
                                                     row_counts(parts[TRAIN], n_users, n_items))
    rows = heldout_rows(parts[TRAIN], parts[TEST], parts[FOLDIN] if split.method == "strong" else None).cache()
    n_test_users = rows.count()
    summary = {"method": split.method, "seed": split.seed, "fraction": split.test_fraction, "train_version": version,
               **{f"validation_{p}": stats.get(p, (0, 0))[0] for p in (TRAIN, TEST, FOLDIN)},
               "validation_users": n_test_users}
    return Validation(fit_rows, user_rows, n_users if user_rows is None else len(user_rows), n_items, counts, rows,
                      n_test_users, parts, summary)


def score(spark: Any, cfg: Config, val: Validation, model: Any) -> dict[str, float]:
    """Exact validation metrics at tune.k of a (partly) trained model: {"recall@20": ..., "auc": ...}.

    The evaluate stage's ranking (users without factors fold in from their fold-in part, iALS only)."""
    from pyspark.sql import functions as F

    from gramian.evaluate.job import evaluate_model, rankable
    from gramian.evaluate.ranks import Scorer
    from gramian.kernels.loss import gramian as gramian_of
    from gramian.train.rows import to_indices

    h = model.item_array
    fold = model.config.name == "ials"
    uf = model.user_factors if val.user_rows is None else to_indices(model.user_factors, val.user_rows)
    with_f, can_fold = rankable(val.rows, uf.select(F.col("idx").alias("user_idx"), "factors"), fold)
    ev = dataclasses.replace(cfg.evaluate, per_user=False)
    scorer = Scorer(h, np.ones(len(h), bool), model.config if fold else None,
                    gramian_of(h.astype(np.float64)) if fold else None, None, ev.sampled.m, ev.sampled.seed,
                    ev.score_batch_size, ev.item_block)
    keep = with_f.filter(F.col("factors").isNotNull() | can_fold)
    rows, _, _ = evaluate_model(spark, dataclasses.replace(cfg, evaluate=ev), "tune", keep, scorer, (cfg.tune.k,),
                                val.n_test_users)
    return {(f"{r['metric']}@{r['k']}" if r["k"] is not None else r["metric"]): float(r["value"])
            for r in rows if r["method"] == "exact"}
