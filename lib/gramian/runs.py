"""What identifies a run and what it is pinned to: safe run ids, the predicates over them, its split's versions.

A run id selects a run's rows (`replaceWhere`, filters) and names its folders (checkpoints, index,
report), so it is checked once against RUN_ID_PATTERN wherever it enters (CLI, every stage's `run`,
the Airflow DAG) and every predicate is built here: Column expressions for filters, one quoted
literal (`sql_literal`) for the `replaceWhere` strings Delta takes as text.

At train time a run records the Delta versions of its inputs (`train`, `test`, `foldin`,
`interactions`) in its `runs` row (column `inputs`, JSON). evaluate, gate and publish read those
versions by time travel (`read_input`), so re-splitting after a train never evaluates or publishes
the model against pairs it was not trained for; runs trained on different splits are not compared.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any

from gramian import tables
from gramian.config import StorageConfig
from gramian.errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
RUN_ID_RULE = ("1-128 characters of letters, digits, '.', '_' and '-', starting with a letter or digit "
               f"(pattern {RUN_ID_PATTERN})")
_RUN_ID = re.compile(RUN_ID_PATTERN)
INPUTS = ("train", "test", "foldin", "interactions")  # the tables a run is pinned to
SPLIT = ("train", "test", "foldin")                   # two runs are comparable when these versions agree


def check_run_id(run_id: Any, where: str = "--run-id") -> str:
    """`run_id` itself when it matches RUN_ID_PATTERN, else ConfigError naming the pattern.

    No quote, space, slash or colon: the id is a SQL literal and a folder name on any Hadoop filesystem.
    """
    if not isinstance(run_id, str) or _RUN_ID.fullmatch(run_id) is None:
        raise ConfigError(f"run id must be {RUN_ID_RULE}, got {run_id!r} ({where}). "
                          f"Pick an id such as 20261204T000000 or ials-dim64.")
    return run_id


def sql_literal(value: str) -> str:
    """`value` as a Spark SQL string literal: the one escaper for predicates Delta takes as text."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_where(run_id: str, **equal: str | tuple[str, ...]) -> str:
    """A `replaceWhere` predicate: run_id = <id> AND col = <value> (or col IN (...) for a tuple)."""
    parts = [f"run_id = {sql_literal(check_run_id(run_id))}"]
    for column, value in equal.items():
        if isinstance(value, tuple):
            parts.append(f"{column} IN ({', '.join(sql_literal(v) for v in value)})")
        else:
            parts.append(f"{column} = {sql_literal(value)}")
    return " AND ".join(parts)


def run_rows(run_id: str) -> Any:
    """The filter Column selecting one run's rows."""
    from pyspark.sql import functions as F

    return F.col("run_id") == F.lit(check_run_id(run_id))


def current_inputs(spark: Any, storage: StorageConfig) -> dict[str, int]:
    """Latest Delta version of each input table that exists (what a run starting now trains on), the tables
    looked up at once (gramian.spark.run_together)."""
    from gramian.spark import run_together

    got = run_together(spark, {name: functools.partial(tables.version, spark, storage, name) for name in INPUTS})
    return {name: version for name, version in got.items() if version is not None}


def recorded_inputs(spark: Any, storage: StorageConfig, run_id: str) -> dict[str, int] | None:
    """The input versions in run_id's `runs` row; None for a run trained before they were recorded."""
    if not tables.exists(spark, storage, "runs"):
        return None
    df = tables.read(spark, storage, "runs")
    if "inputs" not in df.columns:
        return None
    rows = df.filter(run_rows(run_id)).select("inputs").collect()
    if not rows or not rows[0]["inputs"]:
        return None
    return {k: int(v) for k, v in json.loads(rows[0]["inputs"]).items()}


def pinned_inputs(spark: Any, storage: StorageConfig, run_id: str) -> dict[str, int] | None:
    """recorded_inputs, with a warning when the run has none (its stages then read the current tables)."""
    pins = recorded_inputs(spark, storage, run_id)
    if pins is None:
        log.warning("run %s has no recorded input versions (trained before runs were pinned); reading the "
                    "current train/test/foldin", run_id)
    return pins


def read_input(spark: Any, storage: StorageConfig, name: str, pins: dict[str, int] | None, run_id: str) -> Any:
    """Table `name` as run_id trained on it (time travel to its recorded version), or InputDataError.

    `pins` None (an unpinned run) reads the current version; None when the run recorded no `foldin`.
    """
    if pins is None:
        return tables.read(spark, storage, name) if tables.exists(spark, storage, name) else None
    current = tables.version(spark, storage, name)
    if name not in pins:
        if name == "foldin":
            return None
        raise InputDataError(f"table {name!r} must have existed when run {run_id!r} was trained, got no "
                             f"recorded version ({describe_split(pins)}; current version {current}). "
                             f"Re-train under a new --run-id after `gramian split`.")
    try:
        df = tables.read_version(spark, storage, name, pins[name])
        df.schema  # noqa: B018 - resolves the version now (Spark Connect analyses lazily)
        return df
    except Exception as e:  # Delta: version removed (VACUUM / log cleanup), table deleted or recreated
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputDataError(
            f"table {name!r} must still hold version {pins[name]} that run {run_id!r} was trained on, got "
            f"current version {current} ({tables.table_ref(storage, name)}: {first}). Re-train under a new "
            f"--run-id on the current split, or restore that version of the table.") from e


def same_split(a: dict[str, int] | None, b: dict[str, int] | None) -> bool:
    """Whether two runs' recorded versions of train/test/foldin agree (unknown versions never agree)."""
    if a is None or b is None:
        return False
    return all(a.get(name) == b.get(name) for name in SPLIT)


def describe_split(pins: dict[str, int] | None) -> str:
    """`train v3, test v3, foldin v3` (or `no recorded versions`), for messages."""
    if pins is None:
        return "no recorded versions"
    return ", ".join(f"{name} v{pins[name]}" for name in SPLIT if name in pins) or "no split tables"


def require_same_split(spark: Any, storage: StorageConfig, run_id: str, pins: dict[str, int] | None,
                       others: tuple[str, ...] | list[str], where: str) -> None:
    """InputDataError when a run of `others` was trained on another split than run_id (versions named)."""
    for other in others:
        theirs = recorded_inputs(spark, storage, check_run_id(other, where))
        if not same_split(pins, theirs):
            raise InputDataError(
                f"run {other!r} must have been trained on the split of run {run_id!r} ({describe_split(pins)}), "
                f"got {describe_split(theirs)} ({where}). Compare runs trained on one split: re-train "
                f"{other!r}'s configuration under a new --run-id on the current split.")


def current_publication(spark: Any, storage: StorageConfig) -> dict[str, Any] | None:
    """The `publications` row marked current (the run applications should read), or None."""
    if not tables.exists(spark, storage, "publications"):
        return None
    rows = tables.read(spark, storage, "publications").filter("current").collect()
    return rows[0].asDict() if rows else None
