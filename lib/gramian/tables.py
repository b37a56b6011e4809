"""Named Delta tables under `storage.root` (or `catalog.schema` when configured): one way to read and write.

Every write is one Delta transaction, so a failed or repeated stage never leaves half a table. Tables are
opened only through Spark/Delta: the root is any URI Spark's Hadoop filesystems open (s3a://, abfss://,
gs://, hdfs://, file:) or a POSIX path every node mounts, never a local folder looked at with pathlib.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from gramian import storage as store
from gramian.config import StorageConfig
from gramian.spark import is_connect

TABLES = ("interactions", "given_test", "quarantine", "users", "items", "ingest_runs", "train", "test", "foldin",
          "user_factors", "item_factors", "runs", "metrics", "metrics_by_user", "topn", "publications",
          "stage_runs", "tuning")
# A data file's target size when a writer sizes its output (`files_for`): large enough that a table is not
# thousands of small files (each a request and a task on read), small enough to spread over tasks.
FILE_BYTES = 128 * 2**20
# Table properties a table is created with (and that an older table gains on its next write). Delta hands a
# table's properties to the Parquet writer as its settings, so per-column `parquet.*` keys reach every writer of
# the table, on any engine. A factor table's idx, id and factor values are all distinct: a dictionary never fits
# them, and Parquet would build one per column chunk and then fall back to plain encoding, about a third of a
# factor write's CPU (measured in a fresh JVM: 5.3 -> 3.7 s for 41k rows of d=64; 2.3 -> 1.6 s once warm).
NO_DICTIONARY = {f"parquet.enable.dictionary#{column}": "false" for column in ("idx", "id", "factors.list.element")}
PROPERTIES: dict[str, dict[str, str]] = {"user_factors": NO_DICTIONARY, "item_factors": NO_DICTIONARY}
# Delta / Spark error conditions that mean "no table here yet" (anything else is a real failure)
_ABSENT = ("PATH_NOT_FOUND", "TABLE_OR_VIEW_NOT_FOUND", "DELTA_MISSING_DELTA_TABLE", "DELTA_TABLE_NOT_FOUND",
           "is not a Delta table", "Path does not exist", "doesn't exist")


def table_ref(storage: StorageConfig, name: str) -> str:
    """`catalog.schema.name` when a catalog is configured, else the Delta folder's URI or path under the root."""
    if storage.catalog:
        return f"{storage.catalog}.{storage.schema or 'default'}.{name}"
    return store.join(store.spark_path(store.resolve_root(storage.root)), name)


def local_frame(spark: Any, rows: list[Any], schema: str) -> Any:
    """A DataFrame of a few rows made on the driver (dicts by column name, or tuples in `schema`'s order), carried
    as Arrow. Classic PySpark ships a local list as pickled rows that an executor must start a Python worker to
    read (about a second of a one-row write on an executor with none for this kind of job); Arrow it reads itself.
    Spark Connect sends local rows as Arrow anyway."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType

    struct = StructType.fromDDL(schema)
    arrow = to_arrow_schema(struct, timezone="UTC")
    names = struct.names
    tuples = [tuple(_aware(v) for v in (tuple(r[n] for n in names) if isinstance(r, dict) else r)) for r in rows]
    bad = next((r for r in tuples if len(r) != len(names)), None)
    if bad is not None:
        raise ValueError(f"a row of {len(bad)} values for the {len(names)} columns of {schema!r}: {bad!r}")
    columns = [pa.array([r[k] for r in tuples], type=arrow.field(k).type) for k in range(len(names))]
    return spark.createDataFrame(pa.Table.from_arrays(columns, schema=arrow), struct)


ARROW_LOCAL_RELATION = "spark.sql.execution.arrow.localRelationThreshold"
_ARROW_CONF = threading.Lock()  # the threshold is session-wide: one arrow_frame at a time sets it


def arrow_frame(spark: Any, table: Any, schema: str) -> Any:
    """A DataFrame of an Arrow table made on the driver that executors write (factor rows: tens of MiB), its batches
    decoded where it is written. Classic PySpark makes an Arrow table under ARROW_LOCAL_RELATION (64 MiB) a
    LocalRelation: the driver converts every row, plans the write over them and Java-serializes them into the task.
    With the threshold at 0 the batches go as they are, as an RDD of Arrow batches (Gowalla's two factor tables on
    the S3 cluster: the driver's time from the fit's end to the write tasks 3.1 -> 1.9 s, 2026-12-06).
    Spark Connect sends Arrow."""
    if is_connect(spark):
        return spark.createDataFrame(table, schema)
    with _ARROW_CONF:
        before = spark.conf.get(ARROW_LOCAL_RELATION, None)
        spark.conf.set(ARROW_LOCAL_RELATION, "0")
        try:
            return spark.createDataFrame(table, schema)
        finally:
            if before is None:
                spark.conf.unset(ARROW_LOCAL_RELATION)
            else:
                spark.conf.set(ARROW_LOCAL_RELATION, before)


def _aware(value: Any) -> Any:
    """A naive datetime as this machine's local time (what Spark makes of one), in UTC; anything else as it is."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.astimezone(UTC)
    return value


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
    if not storage.catalog:
        return _newest(_log_names(spark, storage, name))
    if not exists(spark, storage, name):
        return None
    rows = spark.sql(f"DESCRIBE HISTORY {table_ref(storage, name)} LIMIT 1").select("version").collect()
    return int(rows[0][0]) if rows else None


def column_max(spark: Any, storage: StorageConfig, name: str, column: str, version: int | None = None) -> int | None:
    """The largest value of integer `column` in the table's `version` (None: the current one; the result None: no
    row has a value); raises the absent-table error (`absent`) when the table was never written.

    A table under the root: from the per-file statistics (maxValues) Delta records for every live data file in
    its log, read through the store, so no Spark job and no snapshot. Where the log states them less plainly (a
    catalog table, a version only a checkpoint describes, files without statistics or with deletion vectors):
    the column's max computed by Spark.
    """
    if not storage.catalog:
        names = _log_names(spark, storage, name)
        newest = _newest(names)
        if newest is None:
            raise FileNotFoundError(f"table {table_ref(storage, name)} doesn't exist (no Delta commit in its log)")
        state = _snapshot(spark, storage, name, newest if version is None else int(version), names)
        tops = None if state is None else [_file_max(s, column) for s in state["files"]]
        if tops is not None and all(t is not False for t in tops):
            return max((t for t in tops if t is not None), default=None)
    from pyspark.sql import functions as F

    frame = read(spark, storage, name) if version is None else read_version(spark, storage, name, version)
    top = frame.agg(F.max(column)).collect()[0][0]
    return None if top is None else int(top)


def _log_names(spark: Any, storage: StorageConfig, name: str) -> list[str]:
    """The file names in a path table's `_delta_log` (empty when it was never written)."""
    return store.open_store(table_ref(storage, name), spark).listdir("_delta_log")


_READ = object()  # a `state` argument not given: read the version's snapshot from the log


def snapshot(spark: Any, storage: StorageConfig, name: str, version: int) -> dict[str, Any] | None:
    """A path table's `version` as its log states it (`_snapshot`), read once for callers that ask the log several
    questions (log_rows, read_version, read_arrow take it as `state`); None for a catalog table, a table never
    written, or a version the log alone does not describe."""
    if storage.catalog:
        return None
    names = _log_names(spark, storage, name)
    return _snapshot(spark, storage, name, int(version), names) if _newest(names) is not None else None


def _newest(names: list[str]) -> int | None:
    """The newest commit version among a `_delta_log`'s file names."""
    commits = [int(n[:-len(".json")]) for n in names if n.endswith(".json") and n[:-len(".json")].isdigit()]
    return max(commits) if commits else None


def _checksum(spark: Any, storage: StorageConfig, name: str, version: int, names: list[str]) -> dict[str, Any] | None:
    """The parsed checksum file of a path table's `version` (None when the log has none for it)."""
    import json

    crc = f"{version:020d}.crc"
    if crc not in names:
        return None
    return json.loads(store.open_store(table_ref(storage, name), spark).child("_delta_log").read_text(crc))


def _snapshot(spark: Any, storage: StorageConfig, name: str, version: int,
              names: list[str], checksum: Any = _READ) -> dict[str, Any] | None:
    """A path table's `version` as its log states it: {"files": the live data files' `add` actions, "metadata",
    "protocol"}, from the version's checksum file when it lists the files (Delta keeps `allFiles` there for small
    tables), else by replaying every commit up to it when no checkpoint was ever written; None when neither holds
    (the caller asks Delta). `names`: the `_delta_log` listing; `checksum`: the version's `_checksum` when read."""
    import json

    log = store.open_store(table_ref(storage, name), spark).child("_delta_log")
    state = _checksum(spark, storage, name, version, names) if checksum is _READ else checksum
    if state is not None:
        if state.get("allFiles") is not None and state.get("metadata") and state.get("protocol"):
            return {"files": state["allFiles"], "metadata": state["metadata"], "protocol": state["protocol"]}
    commits = [f"{v:020d}.json" for v in range(version + 1)]
    if any(".checkpoint" in n for n in names) or not set(commits) <= set(names):
        return None
    live: dict[str, dict[str, Any]] = {}
    state = {}
    for commit in commits:
        for line in log.read_text(commit).splitlines():
            action = json.loads(line) if line.strip() else {}
            if "add" in action:
                live[action["add"]["path"]] = action["add"]
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
            elif "metaData" in action or "protocol" in action:
                state["metadata" if "metaData" in action else "protocol"] = next(iter(action.values()))
    return {"files": list(live.values()), **state} if len(state) == 2 else None


@dataclass(frozen=True)
class LogState:
    """A path table's newest version as its log states it, read once for a write's several questions (its
    properties, whether it may hold a run's rows): one listing and one checksum read."""

    version: int | None  # None: never written
    checksum: dict[str, Any] | None
    state: dict[str, Any] | None  # `_snapshot`: None where the log alone does not describe the version


def current_log(spark: Any, storage: StorageConfig, name: str) -> LogState:
    """The newest version of path table `name` from its log (`LogState`)."""
    names = _log_names(spark, storage, name)
    newest = _newest(names)
    if newest is None:
        return LogState(None, None, None)
    checksum = _checksum(spark, storage, name, newest, names)
    return LogState(newest, checksum, _snapshot(spark, storage, name, newest, names, checksum))


def log_rows(spark: Any, storage: StorageConfig, name: str, version: int, state: Any = _READ) -> int | None:
    """How many rows a path table's `version` holds, from the per-file statistics in its log (no Spark job);
    None where the log does not say (a catalog table, a file without statistics or with a deletion vector).
    `state`: the version's `snapshot` when the caller already read it."""
    import json

    state = snapshot(spark, storage, name, version) if state is _READ else state
    if state is None:
        return None
    total = 0
    for add in state["files"]:
        rows = None if add.get("deletionVector") or not add.get("stats") else json.loads(add["stats"]).get(
            "numRecords")
        if rows is None:
            return None
        total += int(rows)
    return total


def _file_max(add: dict[str, Any], column: str) -> int | None | bool:
    """`column`'s max in one data file per its statistics: None for a file without rows or values in it, False
    when the statistics cannot say (none recorded, or a deletion vector hides some rows)."""
    import json

    if add.get("deletionVector") or not add.get("stats"):
        return False
    stats = json.loads(add["stats"])
    if stats.get("numRecords") == 0 or (stats.get("nullCount") or {}).get(column) == stats.get("numRecords"):
        return None
    top = (stats.get("maxValues") or {}).get(column)
    return False if top is None else int(top)


def read_version(spark: Any, storage: StorageConfig, name: str, version: int, state: Any = _READ) -> Any:
    """A table as it was at Delta `version` (time travel); Delta raises if that version is gone.

    A plain table under the root (reader version 1: no column mapping, deletion vectors or partitions) whose log
    lists the version's files (`_snapshot`) is read as those Parquet files with its schema: Delta's own time
    travel would first rebuild the table's state in Spark jobs (a log scan, a shuffle, a cached state), the
    better part of a minute on a cluster's fresh executors, to find the same files. `state`: the version's
    `snapshot` when the caller already read it.
    """
    ref = table_ref(storage, name)
    if not storage.catalog:
        state = snapshot(spark, storage, name, version) if state is _READ else state
        if state is not None and _plain(state):
            import json

            from pyspark.sql.types import StructType

            schema = StructType.fromJson(json.loads(state["metadata"]["schemaString"]))
            paths = [add["path"] if ":" in add["path"] or add["path"].startswith("/")  # absolute (a clone's)
                     else store.join(ref, unquote(add["path"])) for add in state["files"]]
            return spark.read.schema(schema).parquet(*paths) if paths else spark.createDataFrame([], schema)
    reader = spark.read.format("delta").option("versionAsOf", int(version))
    return reader.table(ref) if storage.catalog else reader.load(ref)


def read_arrow(spark: Any, storage: StorageConfig, name: str, version: int, columns: list[str],
               state: Any = _READ) -> Any | None:
    """`columns` of a plain path table's `version` (`_plain`) read in this process with pyarrow, file by file
    through the store, with no Spark job: for a table small enough to hold here (the train stage's
    train.driver_pairs_max). None where Spark must read it: a catalog table, a version that is not plain or that
    the log does not list, files outside the table's folder (a shallow clone's), no rows. `state`: the version's
    `snapshot` when the caller already read it."""
    state = snapshot(spark, storage, name, version) if state is _READ else state
    if state is None or not _plain(state) or not state["files"]:
        return None
    paths = [unquote(add["path"]) for add in state["files"]]
    if any(":" in p or p.startswith("/") for p in paths):
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = store.open_store(table_ref(storage, name), spark)
    parts = []
    for path in paths:
        with folder.open_input(path) as f:
            parts.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(parts, promote_options="permissive")


def _plain(state: dict[str, Any]) -> bool:
    """Whether a version's rows are exactly its files' Parquet rows (reader version 1, no partition columns)."""
    return (state["protocol"].get("minReaderVersion") == 1 and not state["metadata"].get("partitionColumns")
            and not any(add.get("deletionVector") for add in state["files"]))


def may_hold(spark: Any, storage: StorageConfig, name: str, values: dict[str, str],
             log: LogState | None = None) -> bool:
    """Whether the table's current version may hold a row whose string columns equal `values` (False: it certainly
    holds none), from the per-file min/max statistics its log records (read through the store, no Spark job). True
    whenever the log cannot say so plainly: a catalog table, a version only a checkpoint describes, a file without
    statistics or with a deletion vector. A table never written holds none.

    Delta cuts long strings' statistics to a prefix (32 characters by default): a cut minimum is still at most the
    true one, and a cut maximum (its prefix and a tie-breaking character) is compared on its prefix alone.
    `log`: the table's `current_log` when the caller already read it.
    """
    if storage.catalog or not all(v.isascii() for v in values.values()):  # Delta orders strings by UTF-8 bytes:
        return True                                                         # ASCII agrees with str order
    log = current_log(spark, storage, name) if log is None else log
    if log.version is None:
        return False
    state = log.state
    return state is None or any(all(_file_may_hold(add, c, v) for c, v in values.items()) for add in state["files"])


def _file_may_hold(add: dict[str, Any], column: str, value: str) -> bool:
    """Whether one data file (its `add` action) may hold `column` = `value` per its statistics."""
    import json

    if add.get("deletionVector") or not add.get("stats"):
        return True
    stats = json.loads(add["stats"])
    if stats.get("numRecords") == 0 or (stats.get("nullCount") or {}).get(column) == stats.get("numRecords"):
        return False
    low, high = (stats.get("minValues") or {}).get(column), (stats.get("maxValues") or {}).get(column)
    if not isinstance(low, str) or not isinstance(high, str):
        return True
    if high[-1:].isascii():  # an uncut maximum (a cut one ends in a non-ASCII tie-breaker, e.g. U+FFFD)
        return low <= value <= high
    return low <= value and value[:len(high) - 1] <= high[:-1]  # cut: only its prefix is the true maximum's


def files_for(rows: int, row_bytes: int) -> int:
    """How many data files `rows` rows of about `row_bytes` bytes each make at FILE_BYTES per file (at least 1)."""
    return max(1, math.ceil(rows * row_bytes / FILE_BYTES))


def write(df: Any, storage: StorageConfig, name: str, mode: str = "overwrite",
          replace_where: str | None = None, merge_schema: bool = False,
          rows_of: dict[str, str] | None = None, files: int | None = None) -> None:
    """Write `df` in one transaction; `replace_where` swaps only the matching rows (e.g. one run_id).

    `merge_schema` lets a write add columns to an existing table (older rows read them as null).
    `rows_of` {column: value}: every row of `df` and every row `replace_where` matches has these values (e.g.
    {"run_id": id}). When the table's log shows that no file may hold such a row (`may_hold`: a run writing its
    rows for the first time) the write is a blind append: Delta then neither rebuilds the table's state nor scans
    its files for rows to replace, and the result is the same.
    `files`: at most this many data files, i.e. write tasks (coalesced, no shuffle). A few rows made on the driver
    pass 1: otherwise each of the session's default partitions is a task and a file, most of them empty, and on a
    cluster those tasks take every executor's slot while other writes wait.
    A table in PROPERTIES is created with its properties by its first write, and given any it lacks before a
    later one (`with_properties`).
    """
    spark = df.sparkSession
    if files is not None:
        df = df.coalesce(files)
    log = None
    if not storage.catalog and (name in PROPERTIES or (replace_where is not None and rows_of is not None)):
        with _opening(storage):
            log = current_log(spark, storage, name)  # one read of the log serves both questions below
    if name in PROPERTIES:
        with _opening(storage):
            if with_properties(df, storage, name, log):
                return  # the table's first write, made with its properties
    if replace_where is not None and rows_of is not None and not may_hold(spark, storage, name, rows_of, log):
        mode, replace_where = "append", None  # also creates a table never written
    elif replace_where is not None and not exists(spark, storage, name):
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


def with_properties(df: Any, storage: StorageConfig, name: str, log: LogState | None = None) -> bool:
    """Give table `name` its PROPERTIES. A table never written is created from `df` with them, in one
    transaction (True: `df` is written); a table that lacks some is given them (one metadata commit, once in its
    life; False: the caller writes `df`). A path table's properties are read from its log through the store (no
    Spark job); where the log alone cannot say (a checkpointed log without a checksum) it is left as it is.
    `log`: the table's `current_log` when the caller already read it."""
    spark = df.sparkSession
    want = PROPERTIES[name]
    ref = table_ref(storage, name)
    sql_ref = ref if storage.catalog else f"delta.`{ref}`"
    if storage.catalog:
        have = None if not spark.catalog.tableExists(ref) else {
            r[0]: r[1] for r in spark.sql(f"SHOW TBLPROPERTIES {ref}").collect()}
    else:
        log = current_log(spark, storage, name) if log is None else log
        have = None if log.version is None else _configuration(log)
        if log.version is not None and have is None:
            return False
    if have is None:
        try:
            writer = df.writeTo(sql_ref).using("delta")
            for key, value in want.items():
                writer = writer.tableProperty(key, value)
            writer.create()
            return True
        except Exception as e:
            if "TABLE_OR_VIEW_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e):
                raise
            return False  # another writer created it meanwhile (with them): write df as to any existing table
    missing = {k: v for k, v in want.items() if have.get(k) != v}
    if missing:
        spark.sql(f"ALTER TABLE {sql_ref} SET TBLPROPERTIES ({_pairs(missing)})")
    return False


def _pairs(properties: dict[str, str]) -> str:
    """SQL's 'key' = 'value' list."""
    return ", ".join(f"'{k}' = '{v}'" for k, v in properties.items())


def _configuration(log: LogState) -> dict[str, str] | None:
    """A path table's properties from its log: the checksum file's metadata, else the replayed commits'
    (`_snapshot`); None when neither says."""
    for source in (log.checksum, log.state):
        if source is not None and source.get("metadata") is not None:
            return dict(source["metadata"].get("configuration") or {})
    return None
