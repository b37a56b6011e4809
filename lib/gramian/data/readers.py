"""Readers: every input format turned into one parsed shape that ingest validates row by row.

The parsed shape (PARSED_COLUMNS): `source` (file), `line` (1-based line in the file, null where
unknown), `raw` (the row as text), `reason` (a structural problem such as a wrong field count, else
null), `user_id`, `item_id` (trimmed strings), `weight` (double; null when missing or not a number;
1.0 when no weight column is configured), `ts` (timestamp or null) and `ts_text` (the timestamp as
given, null when absent: `ts` null with `ts_text` set means unparseable).

Delimited text and the LightGCN format are read as text lines (spark.read.text) and split here, so
a malformed line is seen as it is rather than repaired by the CSV parser. Line numbers come from the
file scan itself: each split (file, block start) is contiguous in one partition, so
monotonically_increasing_id minus the split's first id, plus the lines of the earlier splits of
the same file, is the line number. File-level problems raise InputDataError naming file and column.

Bytes that are not UTF-8 would become U+FFFD as soon as Spark treats a line as a Java string (any
regex, split or trim), so two different corrupted ids would merge. A line failing is_valid_utf8 is
therefore parsed in its ISO-8859-1 view (one character per byte, lossless; separators, quotes and
whitespace are ASCII, so it splits exactly as the UTF-8 text would) and its fields are turned back
into their original bytes (`_original`): ingest then sees the invalid id and quarantines the row.
Clean files pay one is_valid_utf8 per line.
"""

from __future__ import annotations

import csv
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from gramian.config import DataConfig, GenerateConfig
from gramian.data.schemas import Reason
from gramian.errors import ConfigError, InputDataError

PARSED_COLUMNS = ("source", "line", "raw", "reason", "user_id", "item_id", "weight", "ts", "ts_text")
FORMATS = ("csv", "parquet", "delta", "lightgcn", "synthetic")
MAX_UNIX_SECONDS = 253_402_300_799.0  # 9999-12-31T23:59:59Z; larger numbers are not timestamps
_LOGICAL = ("user", "item", "weight", "ts")


@dataclass
class Source:
    """One input read into the parsed shape, with its number of data rows read.

    `integer_ids`: the format defines ids as non-negative integers (LightGCN), which ingest checks.
    """

    df: DataFrame
    read: int
    path: str
    cached: list[DataFrame] = field(default_factory=list)
    integer_ids: bool = False

    def release(self) -> None:
        """Drop what this reader cached."""
        for df in self.cached:
            df.unpersist()


def read_source(spark: Any, data: DataConfig, gen: GenerateConfig, path: str | None,
                key: str = "data.path") -> Source:
    """Read `path` (the value of config key `key`) in `data.format` into the parsed shape."""
    fmt = data.format
    if fmt == "synthetic":
        return read_synthetic(spark, gen)
    if not path:
        raise ConfigError(f"{key} must be set when data.format is {fmt!r}, got {path!r}. "
                          f"Set it in the conf file or with --set {key}=...")
    if fmt == "csv":
        return read_delimited(spark, data, path, key)
    if fmt == "lightgcn":
        return read_lightgcn(spark, path, key)
    if fmt in ("parquet", "delta"):
        return read_table(spark, data, path, fmt, key)
    raise InputDataError(f"data.format must be one of {', '.join(FORMATS)}, got {fmt!r} ({path}). "
                         f"Pick the format of the file.")


# ---------------------------------------------------------------- helpers


def strip(col: Column) -> Column:
    """Trim all whitespace (tabs, CR, spaces), not only spaces as F.trim does."""
    return F.regexp_replace(col, r"^\s+|\s+$", "")


CONTROL = "[\\x00-\\x1f\\x7f-\\x9f]"  # C0 controls, DEL and C1 controls (a Java regex class)
_UTF8_CHAR = ("[\\x00-\\x7f]|[\\xc2-\\xdf][\\x80-\\xbf]|\\xe0[\\xa0-\\xbf][\\x80-\\xbf]"
              "|[\\xe1-\\xec\\xee\\xef][\\x80-\\xbf]{2}|\\xed[\\x80-\\x9f][\\x80-\\xbf]"
              "|\\xf0[\\x90-\\xbf][\\x80-\\xbf]{2}|[\\xf1-\\xf3][\\x80-\\xbf]{3}"
              "|\\xf4[\\x80-\\x8f][\\x80-\\xbf]{2}")  # one well-formed UTF-8 character, as ISO-8859-1 chars


def _original(text: Column, as_bytes: Column) -> Column:
    """`text` itself, or, where `as_bytes` (text is a line's ISO-8859-1 view), the original bytes as a string."""
    return F.when(as_bytes, F.encode(text, "ISO-8859-1").cast("string")).otherwise(text)


def escaped(text: Column) -> Column:
    """`text`, or, where it holds bytes that are not UTF-8 or control characters other than tab, the text
    backslash-escaped: \\\\ for a backslash, \\xNN for such a byte and for a C0 control or DEL, \\u00NN for a
    C1 control. The quarantine table keeps raw lines so (read back, the bytes would all be U+FFFD)."""
    units = F.regexp_extract_all(F.decode(text.cast("binary"), "ISO-8859-1"), F.lit(f"{_UTF8_CHAR}|[\\x80-\\xff]"), 0)

    def one(u: Column) -> Column:  # one UTF-8 character or stray byte, ISO-8859-1 view; \z: $ matches before NEL
        return (F.when(u == "\\", F.lit("\\\\"))
                .when(u.rlike("^[\\x00-\\x08\\x0a-\\x1f\\x7f-\\xff]\\z"), F.format_string("\\x%02x", F.ascii(u)))
                .when(u.rlike("^\\xc2[\\x80-\\x9f]\\z"), F.format_string("\\u%04x", F.ascii(F.substring(u, 2, 1))))
                .otherwise(F.encode(u, "ISO-8859-1").cast("string")))

    needs = ~F.is_valid_utf8(text) | text.rlike("[\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f]")
    return F.when(needs, F.array_join(F.transform(units, one), "")).otherwise(text)


def parse_ts(text: Column, fmt: str | None = None) -> Column:
    """Timestamp from text: `fmt` (a Spark datetime pattern) when set, else unix seconds or ISO-8601."""
    if fmt:
        return F.try_to_timestamp(text, F.lit(fmt))
    seconds = text.try_cast("double")
    numeric = F.when(F.abs(seconds) <= MAX_UNIX_SECONDS, F.timestamp_seconds(seconds))
    return F.coalesce(numeric, text.try_cast("timestamp"))


def _is_local(path: str) -> bool:
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]+):", path)
    return scheme is None or scheme.group(1).lower() == "file"


def check_path(path: str, key: str) -> None:
    """A local path (or glob) must match something; remote paths are left to Spark."""
    if not _is_local(path):
        return
    local = re.sub(r"^file:(//)?", "", path)
    if not glob.glob(local):
        raise InputDataError(f"{key} must exist, got {path!r} (nothing there). Check the path, or "
                             f"GRAMIAN_DATA for ${{GRAMIAN_DATA}} paths.")


def _empty(key: str, path: str) -> InputDataError:
    return InputDataError(f"{key} must hold at least one data row, got 0 ({path}). Point it at a "
                          f"non-empty file.")


def _text_lines(spark: Any, path: str, key: str) -> DataFrame:
    """The text lines of `path` with their file, split start and a scan-order id (cache it)."""
    try:
        df = spark.read.text(path)
    except Exception as e:  # AnalysisException: path vanished, unreadable
        raise InputDataError(f"{key} must be a readable text file or folder, got {path!r}: "
                             f"{_first_line(e)}") from e
    value = F.col("value")
    utf8 = F.is_valid_utf8(value)
    as_bytes = F.regexp_replace(F.decode(value.cast("binary"), "ISO-8859-1"), "^\u00ef\u00bb\u00bf|\r$", "")
    return df.select(
        F.regexp_replace(F.col("_metadata.file_path"), "^file:", "").alias("file"),
        F.col("_metadata.file_block_start").alias("block"),
        F.monotonically_increasing_id().alias("_mono"),
        F.when(utf8, F.regexp_replace(value, "^\ufeff|\r$", "")).otherwise(as_bytes).alias("value"),
        (~utf8).alias("as_bytes"),
    )


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@dataclass
class _LineStats:
    """Per-file line accounting from one aggregation over the scanned lines."""

    deltas: list[tuple[str, int, int]]  # (file, block, line - _mono)
    first_lines: dict[str, tuple[str, int]]  # file -> (first line, its field count)
    by_nf: dict[int, int]  # field count -> lines (0 = blank)


def _line_stats(lines: DataFrame, nf: Column) -> _LineStats:
    """One small job: lines per (file, split, field count), the first id and first line of each."""
    rows = (lines.groupBy("file", "block", nf.alias("nf"))
            .agg(F.count(F.lit(1)).alias("n"), F.min("_mono").alias("first"),
                 F.min_by(_original(F.col("value"), F.col("as_bytes")), "_mono").alias("first_value"))
            .collect())
    splits: dict[tuple[str, int], list[int]] = {}
    first: dict[str, tuple[int, int, str, int]] = {}
    by_nf: dict[int, int] = {}
    for r in rows:  # one row per split and field count: small
        s = splits.setdefault((r.file, r.block), [0, r.first])
        s[0] += r.n
        s[1] = min(s[1], r.first)
        by_nf[r.nf] = by_nf.get(r.nf, 0) + r.n
        if r.file not in first or (r.block, r.first) < first[r.file][:2]:
            first[r.file] = (r.block, r.first, r.first_value, r.nf)
    deltas: list[tuple[str, int, int]] = []
    done: dict[str, int] = {}
    for (file, block), (n, first_id) in sorted(splits.items()):
        before = done.get(file, 0)
        deltas.append((file, block, before + 1 - first_id))
        done[file] = before + n
    return _LineStats(deltas, {f: (v[2], v[3]) for f, v in first.items()}, by_nf)


def _numbered(spark: Any, lines: DataFrame, stats: _LineStats) -> DataFrame:
    """`lines` with `line`: 1-based line number within its file."""
    offsets = spark.createDataFrame(stats.deltas, "file string, block long, delta long")
    return (lines.join(F.broadcast(offsets), ["file", "block"])
            .withColumn("line", (F.col("_mono") + F.col("delta")).cast("int")))


# ---------------------------------------------------------------- delimited text


def _split_fields(value: Column, sep: str) -> Column:
    """Fields of a delimited line; quote-aware ("a,b" is one field) only on lines holding a quote."""
    literal = "\\Q" + sep + "\\E"
    outside_quotes = literal + '(?=(?:[^"]*"[^"]*")*[^"]*$)'
    plain = F.transform(F.split(value, literal, -1), strip)
    quoted = F.transform(F.split(value, outside_quotes, -1),
                         lambda x: F.regexp_replace(F.regexp_replace(strip(x), '^"(.*)"$', "$1"), '""', '"'))
    return F.when(value.contains('"'), quoted).otherwise(plain)


def _fields(sep: str) -> Column:
    """The fields of each line (`value`), split in the line's own view (text, or bytes as ISO-8859-1)."""
    as_bytes = sep.encode("utf-8").decode("iso-8859-1")
    value = F.col("value")
    return F.when(F.col("as_bytes"), _split_fields(value, as_bytes)).otherwise(_split_fields(value, sep))


def separator(sep: str) -> str:
    """data.sep, with the spelled-out tab of a shell `--set data.sep=\\t` (or `tab`) turned into a tab."""
    return "\t" if sep in ("\\t", "tab") else sep


def _split_header(line: str, sep: str) -> list[str]:
    if len(sep) == 1:
        fields = next(csv.reader([line], delimiter=sep))
    else:
        fields = line.split(sep)
    return [f.strip() for f in fields]


def _resolve_positions(data: DataConfig, names: list[str] | None, n_fields: int, path: str) -> dict[str, int]:
    """Logical column -> 0-based field position, from header names or configured positions."""
    positions: dict[str, int] = {}
    for logical in _LOGICAL:
        spec = getattr(data.columns, logical)
        if spec is None:
            continue
        if names is not None:
            if spec not in names:
                raise InputDataError(f"data.columns.{logical} must name a column of {path}, got {spec!r}. "
                                     f"Columns present: {', '.join(names)}.")
            positions[logical] = names.index(spec)
            continue
        if not spec.isdigit():
            raise ConfigError(f"data.columns.{logical} must be a 0-based position when data.header is "
                              f"false, got {spec!r} ({path}). Use e.g. \"0\", or set data.header: true.")
        if int(spec) >= n_fields:
            raise InputDataError(f"data.columns.{logical} must be a position below the {n_fields} fields "
                                 f"per line of {path}, got {spec}. Count fields from 0.")
        positions[logical] = int(spec)
    return positions


def read_delimited(spark: Any, data: DataConfig, path: str, key: str = "data.path") -> Source:
    """Delimited text (CSV/TSV, optional header, CRLF or LF, .gz) read as lines and split here."""
    check_path(path, key)
    sep = separator(data.sep)
    lines = _text_lines(spark, path, key).cache()
    blank = F.col("value").rlike(r"^\s*$")
    stats = _line_stats(lines, F.when(blank, 0).otherwise(F.size(_fields(sep))))
    data_lines = sum(n for nf, n in stats.by_nf.items() if nf > 0)
    names = None
    if data.header:
        headers = {v for v, nf in stats.first_lines.values() if nf > 0}
        if len(headers) > 1:
            raise InputDataError(f"every file under {key} must have the same header, got "
                                 f"{sorted(headers)!r} ({path}). Ingest the files separately.")
        data_lines -= sum(1 for _, nf in stats.first_lines.values() if nf > 0)
        names = _split_header(headers.pop(), sep) if headers else []
    if data_lines <= 0:
        lines.unpersist()
        raise _empty(key, path)
    if names is not None:
        n_fields = len(names)
    else:  # the most common field count; ties go to the larger count
        n_fields = max((n, nf) for nf, n in stats.by_nf.items() if nf > 0)[1]
    pos = _resolve_positions(data, names, n_fields, path)

    body = _numbered(spark, lines, stats).filter(~F.col("value").rlike(r"^\s*$"))
    if data.header:
        body = body.filter(F.col("line") > 1)
    body = body.select("file", "line", _original(F.col("value"), F.col("as_bytes")).alias("value"),
                       "as_bytes", _fields(sep).alias("f"))

    def field_at(logical: str) -> Column:
        return _original(F.get(F.col("f"), pos[logical]), F.col("as_bytes"))

    ts_text = F.nullif(field_at("ts"), F.lit("")) if "ts" in pos else F.lit(None).cast("string")
    parsed = body.select(
        F.col("file").alias("source"),
        F.col("line"),
        F.col("value").alias("raw"),
        F.when(F.size("f") != n_fields, F.lit(Reason.FIELD_COUNT)).alias("reason"),
        field_at("user").alias("user_id"),
        field_at("item").alias("item_id"),
        (field_at("weight").try_cast("double") if "weight" in pos else F.lit(1.0)).alias("weight"),
        ts_text.alias("ts_text"),
    ).withColumn("ts", parse_ts(F.col("ts_text"), data.ts_format))
    return Source(parsed.select(*PARSED_COLUMNS), data_lines, path, [lines])


# ---------------------------------------------------------------- LightGCN lines


def read_lightgcn(spark: Any, path: str, key: str = "data.path") -> Source:
    """`user item item ...` per line (LightGCN/NGCF files, .gz fine): one row per (user, item) pair."""
    check_path(path, key)
    lines = _text_lines(spark, path, key).cache()
    tokens = F.split(strip(F.col("value")), r"\s+")
    blank = F.col("value").rlike(r"^\s*$")
    stats = _line_stats(lines, F.when(blank, 0).otherwise(F.size(tokens)))
    read = sum(n * (nf - 1) for nf, n in stats.by_nf.items() if nf >= 2)
    if read == 0:
        lines.unpersist()
        raise _empty(key, path)
    pairs = (_numbered(spark, lines, stats)
             .filter(~blank)
             .select("file", "line", "as_bytes", tokens.alias("t"))
             .filter(F.size("t") >= 2)
             .select("file", "line", "as_bytes", F.col("t")[0].alias("user_id"),
                     F.explode(F.slice("t", 2, F.size("t") - 1)).alias("item_id")))
    as_bytes = F.col("as_bytes")
    user, item = _original(F.col("user_id"), as_bytes), _original(F.col("item_id"), as_bytes)
    parsed = pairs.select(
        F.col("file").alias("source"), "line",
        F.concat_ws(" ", user, item).alias("raw"),  # the pair, not the whole line (one row per pair)
        F.lit(None).cast("string").alias("reason"),
        user.alias("user_id"), item.alias("item_id"),
        F.lit(1.0).alias("weight"),
        F.lit(None).cast("timestamp").alias("ts"),
        F.lit(None).cast("string").alias("ts_text"),
    )
    return Source(parsed, read, path, [lines], integer_ids=True)


# ---------------------------------------------------------------- Parquet / Delta


def read_table(spark: Any, data: DataConfig, path: str, fmt: str, key: str = "data.path") -> Source:
    """A Parquet file/folder or a Delta table; columns by name, any numeric/string/timestamp types."""
    check_path(path, key)
    if fmt == "delta" and _is_local(path) and not (Path(re.sub(r"^file:(//)?", "", path)) / "_delta_log").is_dir():
        raise InputDataError(f"{key} must be a Delta table (a folder with _delta_log) when data.format is "
                             f"'delta', got {path!r}. Set data.format to the data's real format.")
    try:
        df = spark.read.format(fmt).load(path)
        present = df.columns
    except Exception as e:
        raise InputDataError(f"{key} must be readable as {fmt}, got {path!r}: {_first_line(e)}. "
                             f"Set data.format to the data's real format.") from e
    cols: dict[str, str] = {}
    for logical in _LOGICAL:
        spec = getattr(data.columns, logical)
        if spec is None:
            continue
        if spec not in present:
            raise InputDataError(f"data.columns.{logical} must name a column of {path}, got {spec!r}. "
                                 f"Columns present: {', '.join(present)}.")
        cols[logical] = spec
    types = dict(df.dtypes)
    source = (F.regexp_replace(F.col("_metadata.file_path"), "^file:", "") if fmt == "parquet"
              else F.lit(path))

    def text(logical: str) -> Column:  # trimmed, unless trimming would replace bytes that are not UTF-8
        value = F.col(f"`{cols[logical]}`").cast("string")
        return F.when(F.is_valid_utf8(value), strip(value)).otherwise(value)

    if "ts" not in cols:
        ts, ts_text = F.lit(None).cast("timestamp"), F.lit(None).cast("string")
    elif types[cols["ts"]] in ("timestamp", "timestamp_ntz", "date"):
        ts, ts_text = F.col(f"`{cols['ts']}`").cast("timestamp"), F.lit(None).cast("string")
    else:
        ts_text = F.nullif(text("ts"), F.lit(""))
        ts = parse_ts(ts_text, data.ts_format if types[cols["ts"]] == "string" else None)
    weight = text("weight").try_cast("double") if "weight" in cols else F.lit(1.0)
    parsed = df.select(
        source.alias("source"),
        F.lit(None).cast("int").alias("line"),
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in present])).alias("raw"),
        F.lit(None).cast("string").alias("reason"),
        text("user").alias("user_id"),
        text("item").alias("item_id"),
        weight.alias("weight"),
        ts.alias("ts"),
        ts_text.alias("ts_text"),
    )
    try:
        read = df.count()
    except Exception as e:
        raise InputDataError(f"{key} must be readable as {fmt}, got {path!r}: {_first_line(e)}") from e
    if read == 0:
        raise _empty(key, path)
    return Source(parsed, read, path)


# ---------------------------------------------------------------- synthetic


def read_synthetic(spark: Any, gen: GenerateConfig) -> Source:
    """The `generate` section's synthetic set, generated now (data.columns is ignored)."""
    from gramian.data.synthetic import generate_from_config, to_dataframe

    arrays = generate_from_config(gen)
    df = to_dataframe(spark, arrays)
    name = f"synthetic(seed={gen.seed})"
    parsed = df.select(
        F.lit(name).alias("source"),
        F.lit(None).cast("int").alias("line"),
        F.to_json(F.struct("user_id", "item_id", "weight", "ts")).alias("raw"),
        F.lit(None).cast("string").alias("reason"),
        "user_id", "item_id", "weight", "ts",
        F.lit(None).cast("string").alias("ts_text"),
    )
    return Source(parsed, len(arrays["user"]), name)
