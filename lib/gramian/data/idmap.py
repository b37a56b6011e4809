"""Id maps: external string ids -> dense int indices, append-only across runs (one Delta MERGE).

An id keeps the `idx` it got when first seen, forever; ids new to a run get the next indices,
max(idx)+1 onwards, in natural order (shorter ids first, then lexicographic, so non-negative
integer ids keep their numeric order). Factors trained in different runs therefore line up.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from gramian import tables
from gramian.config import StorageConfig

log = logging.getLogger(__name__)


def _merge_target(storage: StorageConfig, name: str) -> str:
    ref = tables.table_ref(storage, name)
    return ref if storage.catalog else "delta.`" + ref.replace("`", "``") + "`"


def number_new_ids(new_ids: DataFrame, base: int) -> DataFrame:
    """`id` -> `idx` = base, base+1, ... in natural id order (deterministic whatever the partitioning)."""
    order = Window.orderBy(F.length("id"), F.col("id"))
    return new_ids.withColumn("idx", (F.lit(base) - 1 + F.row_number().over(order)).cast("int"))


def update(spark: Any, storage: StorageConfig, name: str, counts: DataFrame, run_id: str,
           seen: int | None = None) -> dict[str, int]:
    """Add the ids of `counts` (id, n) missing from map `name`; refresh n of the others. Returns counts.

    Ids absent from this run keep their row untouched (n counts interactions in `last_seen_run`).
    `seen`, the number of rows of `counts`, is counted here unless the caller knows it.
    """
    counts = counts.select(F.col("id").cast("string"), F.col("n").cast("int")).cache()
    seen = counts.count() if seen is None else seen
    if not tables.exists(spark, storage, name):
        first = number_new_ids(counts, 0).select(
            "id", "idx", F.lit(run_id).alias("first_seen_run"), F.lit(run_id).alias("last_seen_run"), "n")
        tables.write(first, storage, name)
        counts.unpersist()
        return {"seen": seen, "new": seen, "total": seen}

    current = tables.read(spark, storage, name)
    base = tables.column_max(spark, storage, name, "idx")  # the log's file statistics: no scan of the map
    base = 0 if base is None else base + 1
    fresh = number_new_ids(counts.join(current.select("id"), "id", "left_anti"), base)
    source = counts.join(fresh.select("id", "idx"), "id", "left").withColumn("run", F.lit(run_id))
    view = f"_gramian_{name}_ids"
    source.createOrReplaceTempView(view)
    target = _merge_target(storage, name)
    metrics = spark.sql(f"""
        MERGE INTO {target} AS t USING {view} AS s ON t.id = s.id
        WHEN MATCHED THEN UPDATE SET t.n = s.n, t.last_seen_run = s.run
        WHEN NOT MATCHED THEN INSERT (id, idx, first_seen_run, last_seen_run, n)
          VALUES (s.id, s.idx, s.run, s.run, s.n)
    """).first()
    spark.catalog.dropTempView(view)
    counts.unpersist()
    new = int(metrics["num_inserted_rows"]) if metrics is not None else 0
    log.info("id map %s: %d ids seen, %d new, %d in total", name, seen, new, base + new)
    return {"seen": seen, "new": new, "total": base + new}
