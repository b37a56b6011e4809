"""Named Delta tables under `storage.root` (or `catalog.schema` when configured): one way to read and write.

Every write is one Delta transaction, so a failed or repeated stage never leaves half a table. Tables are
opened only through Spark/Delta: the root is any URI Spark's Hadoop filesystems open (s3a://, abfss://,
gs://, hdfs://, file:) or a POSIX path every node mounts, never a local folder looked at with pathlib.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from gramian import storage as store
from gramian.config import StorageConfig
from gramian.spark import is_connect

TABLES = ("interactions", "given_test", "quarantine", "users", "items", "ingest_runs", "train", "test", "foldin",
          "user_factors", "item_factors", "runs", "metrics", "metrics_by_user", "topn", "publications",
          "stage_runs", "tuning")
# Delta / Spark error conditions that mean "no table here yet" (anything else is a real failure)
_ABSENT = ("PATH_NOT_FOUND", "TABLE_OR_VIEW_NOT_FOUND", "DELTA_MISSING_DELTA_TABLE", "DELTA_TABLE_NOT_FOUND",
           "is not a Delta table", "Path does not exist", "doesn't exist")


def table_ref(storage: StorageConfig, name: str) -> str:
    """`catalog.schema.name` when a catalog is configured, else the Delta folder's URI or path under the root."""
    if storage.catalog:
        return f"{storage.catalog}.{storage.schema or 'default'}.{name}"
    return store.join(store.spark_path(store.resolve_root(storage.root)), name)


@contextlib.contextmanager
def _opening(storage: StorageConfig) -> Iterator[None]:
    """Turn Spark's filesystem failures (no connector jar, unreachable root) into a StorageError naming the fix."""
    try:
        yield
    except Exception as e:
        err = None if storage.catalog else store.spark_storage_error(e, storage.root, "storage.root")
        if err is not None:
            raise err from e
        raise


def exists(spark: Any, storage: StorageConfig, name: str) -> bool:
    """Whether the table has been written at least once (asked of Delta: works on classic and Connect)."""
    if storage.catalog:
        return bool(spark.catalog.tableExists(table_ref(storage, name)))
    ref = table_ref(storage, name)
    with _opening(storage):
        if not is_connect(spark):  # classic: Delta's own check, a _delta_log lookup through Hadoop (no snapshot)
            from delta.tables import DeltaTable

            return bool(DeltaTable.isDeltaTable(spark, ref))
        try:  # Connect: resolving the table's schema fails cleanly when there is none
            spark.read.format("delta").load(ref).schema  # noqa: B018
            return True
        except Exception as e:
            if absent(e):
                return False
            raise


def absent(error: BaseException) -> bool:
    """Whether a Delta/Spark error says the table was never written (anything else is a real failure)."""
    return any(marker in str(error) for marker in _ABSENT)


def read(spark: Any, storage: StorageConfig, name: str) -> Any:
    """The current version of a table as a DataFrame."""
    ref = table_ref(storage, name)
    if storage.catalog:
        return spark.read.table(ref)
    with _opening(storage):
        return spark.read.format("delta").load(ref)


def version(spark: Any, storage: StorageConfig, name: str) -> int | None:
    """The latest Delta version of a table (None when it was never written): what a run pins.

    A table under the root: the newest commit file in its `_delta_log`, one listing through the store (the
    artifacts' mechanism). DESCRIBE HISTORY would load the table's snapshot and run a Spark job for each table
    on a fresh driver, for a number the log's file names hold. A catalog table: its history.
    """
    ref = table_ref(storage, name)
    if not storage.catalog:
        names = store.open_store(ref, spark).listdir("_delta_log")
        commits = [int(n[:-len(".json")]) for n in names if n.endswith(".json") and n[:-len(".json")].isdigit()]
        return max(commits) if commits else None
    if not exists(spark, storage, name):
        return None
    rows = spark.sql(f"DESCRIBE HISTORY {ref} LIMIT 1").select("version").collect()
    return int(rows[0][0]) if rows else None


def read_version(spark: Any, storage: StorageConfig, name: str, version: int) -> Any:
    """A table as it was at Delta `version` (time travel); Delta raises if that version is gone."""
    ref = table_ref(storage, name)
    reader = spark.read.format("delta").option("versionAsOf", int(version))
    return reader.table(ref) if storage.catalog else reader.load(ref)


def write(df: Any, storage: StorageConfig, name: str, mode: str = "overwrite",
          replace_where: str | None = None, merge_schema: bool = False) -> None:
    """Write `df` in one transaction; `replace_where` swaps only the matching rows (e.g. one run_id).

    `merge_schema` lets a write add columns to an existing table (older rows read them as null).
    """
    if replace_where is not None and not exists(df.sparkSession, storage, name):
        replace_where = None  # first write of the table: nothing to replace
    writer = df.write.format("delta").mode(mode)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if mode == "overwrite":
        writer = writer.option("overwriteSchema", "true") if replace_where is None else writer
    if replace_where is not None:
        writer = writer.option("replaceWhere", replace_where)
    ref = table_ref(storage, name)
    if storage.catalog:
        writer.saveAsTable(ref)
    else:
        with _opening(storage):
            writer.save(ref)
