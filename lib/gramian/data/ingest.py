"""Ingest: read a source, validate every row, quarantine the bad ones, merge duplicates, map ids.

Accounting per source (and per run in `ingest_runs`): read = accepted + quarantined, checked here.
Accepted rows below data.min_weight are `filtered` (not bad, just not feedback), and accepted pairs
seen more than once are merged by data.duplicates (sum | max | count of weights; ts = latest) and
counted as `duplicates_merged`; so interactions = accepted - filtered - duplicates_merged.

Outputs (gramian.tables, schemas in gramian.data.schemas): `interactions` (overwritten);
`given_test` (the data.test_path file, mapped with the same id maps, for split.method=given;
emptied by an ingest without a test file); `users`/`items` (append-only MERGE); `quarantine` and
`ingest_runs` (this run_id's rows replaced, so re-running a run_id never duplicates them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import reduce
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from gramian import tables
from gramian.config import Config
from gramian.data import idmap
from gramian.data.readers import CONTROL, Source, escaped, read_source
from gramian.data.schemas import (
    GIVEN_TEST_TABLE,
    INGEST_RUNS,
    INGEST_RUNS_TABLE,
    INTERACTIONS,
    INTERACTIONS_TABLE,
    ITEMS_TABLE,
    QUARANTINE_TABLE,
    USERS_TABLE,
    Reason,
)
from gramian.errors import ConfigError, GramianError, InputDataError
from gramian.runs import check_run_id, run_where

log = logging.getLogger(__name__)


def _id_checks(reason: Column, col: Column, empty: str, not_utf8: str, control: str, not_integer: str | None
               ) -> Column:
    """`reason` chained with an id column's checks: null or empty, bytes not UTF-8, control characters, and,
    for formats whose ids are integers, not a non-negative integer (ids that could silently merge or mislead)."""
    reason = (reason.when(col.isNull() | (col == ""), F.lit(empty))
              .when(~F.is_valid_utf8(col), F.lit(not_utf8))
              .when(col.rlike(CONTROL), F.lit(control)))
    return reason if not_integer is None else reason.when(~col.rlike("^[0-9]+\\z"), F.lit(not_integer))


def validate(parsed: DataFrame, integer_ids: bool = False) -> DataFrame:
    """`parsed` with `reason` set on every row that cannot be an interaction (the first failing check).

    `raw` is kept for rejected rows only (null on accepted ones), escaped (readers.escaped) so that bytes
    that are not UTF-8 survive the quarantine table. `integer_ids`: ids must be non-negative integers.
    """
    user, item, w = F.col("user_id"), F.col("item_id"), F.col("weight")
    reason = F.when(F.col("reason").isNotNull(), F.col("reason"))
    reason = _id_checks(reason, user, Reason.USER_EMPTY, Reason.USER_NOT_UTF8, Reason.USER_CONTROL,
                        Reason.USER_NOT_INTEGER if integer_ids else None)
    reason = _id_checks(reason, item, Reason.ITEM_EMPTY, Reason.ITEM_NOT_UTF8, Reason.ITEM_CONTROL,
                        Reason.ITEM_NOT_INTEGER if integer_ids else None)
    reason = (reason
              .when(w.isNull(), F.lit(Reason.WEIGHT_NOT_NUMBER))
              .when(F.isnan(w), F.lit(Reason.WEIGHT_NAN))
              .when(F.abs(w) == F.lit(float("inf")), F.lit(Reason.WEIGHT_INFINITE))
              .when(w < 0, F.lit(Reason.WEIGHT_NEGATIVE))
              .when(F.col("ts").isNull() & F.col("ts_text").isNotNull(), F.lit(Reason.TS_UNPARSEABLE)))
    checked = parsed.withColumn("reason", reason)
    # the raw text is only needed for rejected rows: not building it for the others saves work and cache
    return checked.withColumn("raw", F.when(F.col("reason").isNotNull(), escaped(F.col("raw"))))


def merge_duplicates(accepted: DataFrame, policy: str) -> DataFrame:
    """One row per (user_id, item_id): weight by `policy` (sum | max | count), ts = the latest, rows merged."""
    weights = {"sum": F.sum("weight"), "max": F.max("weight"), "count": F.count(F.lit(1)).cast("double")}
    if policy not in weights:
        raise ConfigError(f"data.duplicates must be one of {sorted(weights)}, got {policy!r}.")
    return accepted.groupBy("user_id", "item_id").agg(
        weights[policy].alias("weight"), F.max("ts").alias("ts"), F.count(F.lit(1)).alias("rows"))


@dataclass
class Loaded:
    """One source read, validated and de-duplicated (nothing written yet), with its accounting."""

    part: str
    source: Source
    checked: DataFrame
    pairs: DataFrame
    read: int
    accepted: int
    quarantined: int
    filtered: int
    interactions: int
    users: int
    items: int
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def duplicates_merged(self) -> int:
        """Accepted rows folded into another row of the same pair."""
        return self.accepted - self.filtered - self.interactions

    def quarantine_rows(self, run_id: str) -> DataFrame:
        """The rejected rows in the quarantine table's shape."""
        return self.checked.filter(F.col("reason").isNotNull()).select(
            F.col("raw").cast("string"), F.col("source").cast("string"), F.col("line").cast("int"),
            F.col("reason").cast("string"), F.lit(run_id).alias("run_id"))

    def release(self) -> None:
        """Drop cached data."""
        self.pairs.unpersist()
        self.checked.unpersist()
        self.source.release()


def load(spark: Any, cfg: Config, path: str | None, key: str = "data.path", part: str = "train") -> Loaded:
    """Read `path`, validate, count, and merge duplicates of the accepted rows (cached, not written)."""
    src = read_source(spark, cfg.data, cfg.generate, path, key)
    # parsed once, then counted, merged, quarantined
    checked = validate(src.df, src.integer_ids).drop("ts_text").cache()
    min_w = cfg.data.min_weight
    low = F.col("reason").isNull() & (F.col("weight") < min_w) if min_w is not None else F.lit(False)
    rows = checked.groupBy("reason").agg(F.count(F.lit(1)).alias("n"),
                                         F.sum(low.cast("long")).alias("low")).collect()
    reasons = {r["reason"]: int(r["n"]) for r in rows if r["reason"] is not None}
    accepted = sum(int(r["n"]) for r in rows if r["reason"] is None)
    filtered = sum(int(r["low"] or 0) for r in rows if r["reason"] is None)
    quarantined = sum(reasons.values())
    src.release()  # the text lines are in `checked` now
    if src.read != accepted + quarantined:
        checked.unpersist()
        raise GramianError(f"ingest accounting must satisfy read = accepted + quarantined, got read="
                           f"{src.read}, accepted={accepted}, quarantined={quarantined} ({src.path}). "
                           f"This is a bug in the reader: please report it with the file.")
    kept = checked.filter(F.col("reason").isNull())
    if min_w is not None:
        kept = kept.filter(F.col("weight") >= min_w)
    pairs = merge_duplicates(kept, cfg.data.duplicates).cache()
    agg = pairs.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("user_id").alias("u"),
                    F.countDistinct("item_id").alias("i")).first()
    loaded = Loaded(part, src, checked, pairs, src.read, accepted, quarantined, filtered,
                    int(agg["n"]), int(agg["u"]), int(agg["i"]), reasons)
    log.info("ingest %s %s: read=%d accepted=%d quarantined=%d filtered=%d duplicates_merged=%d "
             "interactions=%d users=%d items=%d %s", part, src.path, loaded.read, accepted, quarantined,
             filtered, loaded.duplicates_merged, loaded.interactions, loaded.users, loaded.items,
             reasons or "")
    return loaded


def _id_counts(parts: list[Loaded], column: str) -> DataFrame:
    both = reduce(lambda a, b: a.unionByName(b), [p.pairs.select(F.col(column).alias("id")) for p in parts])
    return both.groupBy("id").agg(F.count(F.lit(1)).alias("n"))


def run(spark: Any, cfg: Config, run_id: str) -> dict[str, Any]:
    """`gramian ingest`: write interactions, id maps, quarantine and the run's accounting; return a summary."""
    check_run_id(run_id)
    t0 = time.time()
    started = datetime.now(UTC)
    data, storage = cfg.data, cfg.storage
    sources = [("train", data.path, "data.path")]
    if data.test_path:
        if data.format == "synthetic":
            raise ConfigError("data.test_path must be null when data.format is 'synthetic', got "
                              f"{data.test_path!r}. Use split.method random, leave_last or strong.")
        sources.append(("test", data.test_path, "data.test_path"))
    parts: list[Loaded] = []
    try:
        for part, path, key in sources:
            parts.append(load(spark, cfg, path, key, part))
        quarantine = reduce(lambda a, b: a.unionByName(b), [p.quarantine_rows(run_id) for p in parts])
        if any(p.quarantined for p in parts) or tables.exists(spark, storage, QUARANTINE_TABLE):
            tables.write(quarantine, storage, QUARANTINE_TABLE, replace_where=run_where(run_id))
        for p, (_, path, key) in zip(parts, sources, strict=True):
            if p.interactions == 0:
                raise InputDataError(
                    f"{key} must yield at least one valid interaction, got 0 of {p.read} rows read "
                    f"({path}); quarantined by reason: {p.reasons}, filtered by data.min_weight: "
                    f"{p.filtered}. See the quarantine table, run_id {run_id!r}.")
        one = len(parts) == 1  # then the distinct counts are known already
        users = idmap.update(spark, storage, USERS_TABLE, _id_counts(parts, "user_id"), run_id,
                             parts[0].users if one else None)
        items = idmap.update(spark, storage, ITEMS_TABLE, _id_counts(parts, "item_id"), run_id,
                             parts[0].items if one else None)
        for p in parts:
            name = INTERACTIONS_TABLE if p.part == "train" else GIVEN_TEST_TABLE
            tables.write(p.pairs.select("user_id", "item_id", "weight", "ts"), storage, name)
        if len(parts) == 1 and tables.exists(spark, storage, GIVEN_TEST_TABLE):
            # an earlier ingest's test file must not outlive the interactions it was split from
            tables.write(spark.createDataFrame([], INTERACTIONS), storage, GIVEN_TEST_TABLE)
        finished = datetime.now(UTC)
        accounting = [(run_id, p.source.path, p.part, p.read, p.accepted, p.quarantined,
                       p.duplicates_merged, p.filtered, p.interactions, p.users, p.items, started, finished)
                      for p in parts]
        tables.write(spark.createDataFrame(accounting, INGEST_RUNS), storage, INGEST_RUNS_TABLE,
                     replace_where=run_where(run_id), files=1)
    finally:
        for p in parts:
            p.release()

    train = parts[0]
    summary: dict[str, Any] = {
        "run_id": run_id, "source": train.source.path, "read": train.read, "accepted": train.accepted,
        "quarantined": train.quarantined, "duplicates_merged": train.duplicates_merged,
        "filtered": train.filtered, "interactions": train.interactions,
        "users": users["seen"], "items": items["seen"], "new_users": users["new"], "new_items": items["new"],
        "users_total": users["total"], "items_total": items["total"], "quarantine_reasons": train.reasons,
    }
    if len(parts) > 1:
        test = parts[1]
        summary.update({"test_source": test.source.path, "test_read": test.read,
                        "test_quarantined": test.quarantined, "test_interactions": test.interactions,
                        "test_duplicates_merged": test.duplicates_merged})
    summary["seconds"] = round(time.time() - t0, 2)
    return summary

