"""Which users a publish scores (`publish.users`) and which items no list may hold (catalogue, `publish.item_filter`).

A publication is complete: every user with training rows in the run has a list in `topn` under the run's
run_id. `publish.users` decides which of them are *refreshed* (scored with this run's model); the others are
*carried*: their rows of the base publication are copied unchanged (rank, item, score and `scored_by`, the
run whose model scored them) under the new run_id, in the same Delta transaction as the refreshed rows.

- base publication: the current one; when that is this run's own (a re-run), the publication it was based on
  (`base_run_id`), so a re-run gives the first run's lists again and never duplicates. None: all refreshed.
- `all`: everyone. `changed`: users whose training rows (item, weight) in the run's pinned `train` differ from
  those in the `train` version the base publication's run was trained on (rows added, removed or reweighted;
  compared per user by row count and the XOR of 64-bit hashes of (item_idx, weight)), and users the base has
  no list for. `active_since:<days>`: users with an interaction in the run's pinned `interactions` at most
  <days> days older than the newest ts in that table (the data's clock, not the wall clock, so replays and
  late loads behave alike), and users the base has no list for.
- every mode also refreshes users whose base list holds an unavailable item: one that left the catalogue
  (absent from the run's pinned `interactions`, i.e. not seen by the ingest it trained on) or is flagged in
  the `publish.item_filter` table (item_id, available: rows with available = false; without an `available`
  column every listed item).
Everyone is refreshed (logged) when there is no base, its n differs from publish.n, or (changed) its run
recorded no input versions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from gramian import tables
from gramian.config import Config, StorageConfig, publish_users
from gramian.errors import InputDataError, PublishError
from gramian.runs import current_publication, read_input, recorded_inputs, run_rows

log = logging.getLogger(__name__)

TOPN, PUBLICATIONS = "topn", "publications"
DAY_SECONDS = 86_400.0


@dataclass
class Plan:
    """What a publish does: `keep` (idx, id) are carried from `base` (a publications row); None: score everyone."""

    mode: str
    base: dict[str, Any] | None
    keep: Any = None
    reason: str = ""


UNAVAILABLE = "unavailable_items"  # index meta key: the item ids the publication excluded (fold-in skips them)

def publication_rows(spark: Any, st: StorageConfig, pub: dict[str, Any]) -> Any:
    """The topn rows of publication `pub` (a publications row) at the Delta version it wrote."""
    ref = tables.table_ref(st, TOPN)
    reader = spark.read.format("delta").option("versionAsOf", int(pub["topn_version"]))
    frame = reader.table(ref) if st.catalog else reader.load(ref)
    return frame.filter(run_rows(pub["run_id"]))


def base_publication(spark: Any, st: StorageConfig, run_id: str) -> dict[str, Any] | None:
    """The publication whose lists unchanged users keep: the current one, or for a re-run the one it was based on."""
    cur = current_publication(spark, st)
    if cur is None or cur["run_id"] != run_id:
        return cur
    base = cur.get("base_run_id")
    if not base:
        return None
    rows = tables.read(spark, st, PUBLICATIONS).filter(run_rows(base)).collect()
    return rows[0].asDict() if rows else None


def flagged_items(spark: Any, st: StorageConfig, name: str) -> np.ndarray:
    """Item ids that table `name` flags unavailable (available = false; every listed id without that column)."""
    from pyspark.sql import functions as F

    ref = tables.table_ref(st, name)
    if not tables.exists(spark, st, name):
        raise InputDataError(f"publish.item_filter names table {name!r}, got no table at {ref}. Write it "
                             f"(item_id string, available boolean) or set publish.item_filter=null.")
    df = tables.read(spark, st, name)
    if "item_id" not in df.columns:
        raise InputDataError(f"publish.item_filter table {name!r} must have an item_id column, got columns "
                             f"{df.columns} ({ref}). Write it as (item_id string, available boolean).")
    if "available" in df.columns:
        df = df.filter(F.col("available") == F.lit(False))
    ids = df.select(F.col("item_id").cast("string")).distinct().toArrow().column(0).to_pylist()
    return np.asarray([i for i in ids if i is not None], dtype=str)


def unavailable_items(spark: Any, cfg: Config, run_id: str, item_ids: np.ndarray) -> np.ndarray:
    """Rows of the run's item matrix no list may hold: absent from its pinned interactions, or flagged."""
    st = cfg.storage
    ids = np.asarray(item_ids, dtype=str)
    bad = np.zeros(len(ids), dtype=bool)
    pins = recorded_inputs(spark, st, run_id)
    if pins and "interactions" in pins:
        inter = read_input(spark, st, "interactions", pins, run_id)
        seen = inter.select("item_id").distinct().toArrow().column(0).to_pylist()
        bad |= ~np.isin(ids, np.asarray([s for s in seen if s is not None], dtype=str))
    if cfg.publish.item_filter:
        bad |= np.isin(ids, flagged_items(spark, st, cfg.publish.item_filter))
    return np.flatnonzero(bad).astype(np.int64)


def fingerprints(train: Any) -> Any:
    """(idx, rows, fp) per user of a `train` frame: row count and XOR of hashes of (item_idx, weight)."""
    from pyspark.sql import functions as F

    h = F.xxhash64(F.col("item_idx").cast("int"), F.col("weight").cast("double"))
    return train.groupBy(F.col("user_idx").cast("int").alias("idx")).agg(
        F.count(F.lit(1)).alias("rows"), F.bit_xor(h).alias("fp"))


def unchanged_users(spark: Any, cfg: Config, run_id: str, base: dict[str, Any]) -> Any | str | None:
    """(idx) of users whose training rows equal the base run's; None: all do (one train version); a reason
    string when that cannot be known."""
    st = cfg.storage
    mine, theirs = recorded_inputs(spark, st, run_id), recorded_inputs(spark, st, base["run_id"])
    if not mine or not theirs or "train" not in mine or "train" not in theirs:
        return f"run {base['run_id']!r} or {run_id!r} recorded no train version"
    if mine["train"] == theirs["train"]:
        return None
    new = fingerprints(read_input(spark, st, "train", mine, run_id))
    old = fingerprints(read_input(spark, st, "train", theirs, base["run_id"]))
    return new.join(old, ["idx", "rows", "fp"], "left_semi").select("idx")


def active_users(spark: Any, cfg: Config, run_id: str, days: float) -> Any:
    """(id) of users with an interaction at most `days` before the newest ts of the run's pinned interactions."""
    from pyspark.sql import functions as F

    st = cfg.storage
    pins = recorded_inputs(spark, st, run_id)
    inter = read_input(spark, st, "interactions", pins, run_id) if not pins or "interactions" in pins else None
    if inter is None:
        raise InputDataError(f"publish.users=active_since:{days:g} reads the interactions run {run_id!r} was "
                             f"trained on, got none recorded. Ingest and train through gramian, or set "
                             f"publish.users=changed.")
    secs = F.col("ts").cast("double")
    newest = inter.agg(F.max(secs)).collect()[0][0]
    if newest is None:
        log.warning("publish.users=active_since: the interactions of run %s carry no ts; no user is active", run_id)
        return inter.filter(F.lit(False)).select(F.col("user_id").alias("id"))
    return inter.filter(secs >= F.lit(newest - days * DAY_SECONDS)).select(F.col("user_id").alias("id")).distinct()


def plan(spark: Any, cfg: Config, run_id: str, users: Any, blocked_ids: np.ndarray) -> Plan:
    """Which of `users` (idx, id, ...) keep the base publication's list (see module doc); keep is cached."""
    from pyspark.sql import functions as F

    st = cfg.storage
    mode, days = publish_users(cfg.publish.users)
    if mode == "all":
        return Plan(mode, None, reason="publish.users=all")
    base = base_publication(spark, st, run_id)
    if base is None:
        return Plan(mode, None, reason="no earlier publication to keep lists from")
    if int(base["n"]) != cfg.publish.n:
        return Plan(mode, None, reason=f"publish.n={cfg.publish.n} differs from the base publication's {base['n']}")
    try:
        prev = publication_rows(spark, st, base)
        prev.schema  # noqa: B018 - resolve the version now
    except Exception as e:  # VACUUM removed the version
        raise PublishError(f"topn version {base['topn_version']} of publication {base['run_id']!r} must still be "
                           f"readable to keep its lists, got {type(e).__name__}: {str(e).splitlines()[0][:200]}. "
                           f"Publish with publish.users=all.") from e
    keep = users.select("idx", "id").join(prev.select(F.col("user_id").alias("id")).distinct(), "id", "left_semi")
    if len(blocked_ids):
        bad = tables.local_frame(spark, [(str(i),) for i in blocked_ids], "item_id string")
        dirty = prev.join(F.broadcast(bad), "item_id", "left_semi").select(F.col("user_id").alias("id"))
        keep = keep.join(dirty, "id", "left_anti")
    if mode == "changed":
        same = unchanged_users(spark, cfg, run_id, base)
        if isinstance(same, str):
            return Plan(mode, None, reason=same)
        if same is not None:
            keep = keep.join(same, "idx", "left_semi")
    else:
        keep = keep.join(active_users(spark, cfg, run_id, float(days or 0)), "id", "left_anti")
    return Plan(mode, base, keep.cache(), reason=f"lists kept from publication {base['run_id']!r}")


def carried_rows(prev: Any, keep: Any, run_id: str, base_run: str) -> Any:
    """The base publication's rows of the `keep` users, re-keyed to `run_id` (scored_by names who scored them)."""
    from pyspark.sql import functions as F

    if "scored_by" not in prev.columns:  # a topn table written before scored_by existed
        prev = prev.withColumn("scored_by", F.lit(None).cast("string"))
    kept = prev.join(keep.select(F.col("id").alias("user_id")), "user_id", "left_semi")
    return kept.select(F.lit(run_id).alias("run_id"), "user_id", F.col("rank").cast("int"), "item_id",
                       F.col("score").cast("float"), F.coalesce("scored_by", F.lit(base_run)).alias("scored_by"))
