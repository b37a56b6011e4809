"""Split: interactions -> `train` / `test` (and `foldin`) in dense indices, reproducibly.

Every random choice is a hash, never rand() or partition order, so a split is the same across runs
and across partitionings: a pair's key is xxhash64(seed, user_id, item_id), a user's is
xxhash64(seed, "user", user_id). Users with fewer than split.min_interactions interactions stay
entirely in train, and every split user keeps at least one training (or fold-in) interaction.

- random: each eligible user's k = round(test_fraction·n) (half up, at least 1, at most n-1)
  lowest-key items go to test.
- leave_last: each eligible user's k = min(leave_last_k, n-1) latest items (ts descending; ties by
  the pair key, then item id; missing ts counts as oldest) go to test.
- strong: eligible users whose key falls below split.holdout_users are held out: absent from
  train, their items split by the random rule into `foldin` (their history, for fold-in) and
  `test`. Everyone else is entirely in train.
- given: train = `interactions`, test = `given_test` (ingested from data.test_path); the provided
  split is kept as it is (min_interactions does not apply).
`foldin` is written by every method (empty except for strong), so a stale one never lingers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from gramian import tables
from gramian.config import Config, SplitConfig
from gramian.data.schemas import (
    FOLDIN_TABLE,
    GIVEN_TEST_TABLE,
    INTERACTIONS_TABLE,
    ITEMS_TABLE,
    TEST_TABLE,
    TRAIN_TABLE,
    USERS_TABLE,
)
from gramian.errors import ConfigError, InputDataError
from gramian.runs import check_run_id

log = logging.getLogger(__name__)

TRAIN, TEST, FOLDIN = "train", "test", "foldin"
OUTPUT_COLUMNS = ("user_idx", "item_idx", "weight", "ts")


def pair_key(seed: int) -> Column:
    """The per-row random key: a hash of (seed, user_id, item_id), independent of partitioning."""
    return F.xxhash64(F.lit(seed), F.col("user_id"), F.col("item_id"))


def user_uniform(seed: int) -> Column:
    """A per-user uniform number in [0, 1) from a hash of (seed, "user", user_id)."""
    h = F.xxhash64(F.lit(seed), F.lit("user"), F.col("user_id"))
    return F.shiftrightunsigned(h, 11).cast("double") / float(1 << 53)


def assign_parts(df: DataFrame, split: SplitConfig) -> DataFrame:
    """`df` (user_id, item_id, ts, ...) with `part` in train | test | foldin by split.method (not given)."""
    method = split.method
    if method == "given":
        raise ConfigError("split.method 'given' takes its test set from data.test_path, not from "
                          "assign_parts. Call split.run, or pick random, leave_last or strong.")
    by_user = Window.partitionBy("user_id")
    n = F.count(F.lit(1)).over(by_user)
    eligible = n >= split.min_interactions
    if method == "leave_last":
        order = by_user.orderBy(F.col("ts").desc_nulls_last(), F.col("_key").desc(), F.col("item_id"))
        k = F.least(F.lit(split.leave_last_k), n - 1)
    elif method in ("random", "strong"):
        order = by_user.orderBy(F.col("_key"), F.col("item_id"))
        k = F.least(F.greatest(F.round(F.lit(split.test_fraction) * n), F.lit(1)), n - 1)
    else:
        raise ConfigError(f"split.method must be one of random, leave_last, strong, given, got {method!r}.")
    held_out = F.when(eligible, F.row_number().over(order) <= k).otherwise(F.lit(False))
    out = df.withColumn("_key", pair_key(split.seed))
    if method == "strong":
        heldout_user = eligible & (user_uniform(split.seed) < split.holdout_users)
        part = (F.when(~heldout_user, F.lit(TRAIN))
                .when(held_out, F.lit(TEST)).otherwise(F.lit(FOLDIN)))
    else:
        part = F.when(held_out, F.lit(TEST)).otherwise(F.lit(TRAIN))
    return out.withColumn("part", part).drop("_key")


def indexed(spark: Any, cfg: Config, name: str = INTERACTIONS_TABLE) -> DataFrame:
    """Table `name` (user_id, item_id, weight, ts) left-joined to the id maps: adds user_idx, item_idx.

    An id missing from its map gives a null index (run() refuses to write such a split).
    """
    for needed in (name, USERS_TABLE, ITEMS_TABLE):
        if not tables.exists(spark, cfg.storage, needed):
            raise InputDataError(f"table {needed!r} must exist before split, got nothing at "
                                 f"{tables.table_ref(cfg.storage, needed)}. Run `gramian ingest` first.")
    users = tables.read(spark, cfg.storage, USERS_TABLE).select(
        F.col("id").alias("user_id"), F.col("idx").alias("user_idx"))
    items = tables.read(spark, cfg.storage, ITEMS_TABLE).select(
        F.col("id").alias("item_id"), F.col("idx").alias("item_idx"))
    return tables.read(spark, cfg.storage, name).join(users, "user_id", "left").join(items, "item_id", "left")


def run(spark: Any, cfg: Config, run_id: str) -> dict[str, Any]:
    """`gramian split`: write train, test and foldin; check no pair is in both train and test."""
    check_run_id(run_id)
    t0 = time.time()
    split, storage = cfg.split, cfg.storage
    data = indexed(spark, cfg)
    if split.method == "given":
        if not tables.exists(spark, storage, GIVEN_TEST_TABLE):
            raise InputDataError(f"table 'given_test' must exist for split.method 'given', got nothing at "
                                 f"{tables.table_ref(storage, GIVEN_TEST_TABLE)}. Ingest with data.test_path "
                                 f"set ({cfg.data.test_path!r}).")
        test = indexed(spark, cfg, GIVEN_TEST_TABLE)
        labelled = (data.withColumn("part", F.lit(TRAIN))
                    .unionByName(test.withColumn("part", F.lit(TEST))))
    else:
        labelled = assign_parts(data, split)
    labelled = labelled.select(
        F.col("user_idx").cast("int"), F.col("item_idx").cast("int"), F.col("weight").cast("double"),
        F.col("ts").cast("timestamp"), "part").cache()
    try:
        unmapped = F.col("user_idx").isNull() | F.col("item_idx").isNull()
        rows = labelled.groupBy("part").agg(F.count(F.lit(1)).alias("n"), F.countDistinct("user_idx").alias(
            "users"), F.sum(unmapped.cast("long")).alias("unmapped")).collect()
        stats = {r["part"]: (int(r["n"]), int(r["users"])) for r in rows}
        total = sum(n for n, _ in stats.values())
        missing = sum(int(r["unmapped"]) for r in rows)
        if missing:
            raise InputDataError(f"every interaction must have an id in the users/items maps, got {missing} "
                                 f"of {total} without ({tables.table_ref(storage, USERS_TABLE)}). "
                                 f"Re-run `gramian ingest` into this storage.root.")
        if split.method == "given" and TEST not in stats:
            raise InputDataError(f"table 'given_test' must hold the test file's pairs for split.method 'given', "
                                 f"got none ({tables.table_ref(storage, GIVEN_TEST_TABLE)}). Ingest with "
                                 f"data.test_path set ({cfg.data.test_path!r}).")
        overlap = (labelled.filter(F.col("part") == TRAIN).select("user_idx", "item_idx")
                   .join(labelled.filter(F.col("part") == TEST).select("user_idx", "item_idx"),
                         ["user_idx", "item_idx"]).count())
        if overlap:
            raise InputDataError(f"no (user, item) pair may be in both train and test, got {overlap} "
                                 f"(split.method={split.method!r}, {cfg.data.test_path or cfg.data.path}). "
                                 f"Remove the overlapping pairs from the test file.")
        for part, name in ((TRAIN, TRAIN_TABLE), (TEST, TEST_TABLE), (FOLDIN, FOLDIN_TABLE)):
            tables.write(labelled.filter(F.col("part") == part).select(*OUTPUT_COLUMNS), storage, name)
    finally:
        labelled.unpersist()

    summary: dict[str, Any] = {"run_id": run_id, "method": split.method}
    for part in (TRAIN, TEST, FOLDIN):
        n, users = stats.get(part, (0, 0))
        summary[part] = n
        summary[f"{part}_users"] = users
    if split.method == "strong":
        summary["heldout_users"] = summary["foldin_users"]  # every held-out user keeps >= 1 fold-in row
    summary["test_share"] = round(summary[TEST] / max(1, total), 4)
    summary["seconds"] = round(time.time() - t0, 2)
    log.info("split %s: train=%d test=%d foldin=%d (test users %d)", split.method, summary[TRAIN],
             summary[TEST], summary[FOLDIN], summary["test_users"])
    return summary
