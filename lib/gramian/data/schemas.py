"""Schemas of the data layer's Delta tables and the quarantine reasons: the contract later stages read.

Tables (names under `storage.root`, see gramian.tables):
- `interactions`: the accepted, de-duplicated pairs of the latest ingest (overwritten per ingest).
- `given_test`: the provided test file (split.method=given), same schema, same id maps.
- `users`, `items`: id maps, dense `idx` 0..n-1, append-only across runs; `n` is the number of
  interactions of the id in `last_seen_run`, the latest ingest that saw it.
- `quarantine`: rejected rows of every run (a re-run replaces its own run_id's rows); `raw` is
  backslash-escaped (gramian.data.readers.escaped) so bytes that are not UTF-8 survive as text.
- `ingest_runs`: one accounting row per (run_id, source); read = accepted + quarantined.
- `train`, `test`, `foldin`: the split, in dense indices. `foldin` is empty except for
  split.method=strong, where it holds the held-out users' fold-in part (their test part is in
  `test`, and they are absent from `train`).
"""

from __future__ import annotations

from pyspark.sql import types as T

# All columns are nullable: that is how Delta stores a table created from a DataFrame write.

INTERACTIONS = T.StructType([
    T.StructField("user_id", T.StringType(), True),
    T.StructField("item_id", T.StringType(), True),
    T.StructField("weight", T.DoubleType(), True),
    T.StructField("ts", T.TimestampType(), True),
])

ID_MAP = T.StructType([
    T.StructField("id", T.StringType(), True),
    T.StructField("idx", T.IntegerType(), True),
    T.StructField("first_seen_run", T.StringType(), True),
    T.StructField("last_seen_run", T.StringType(), True),
    T.StructField("n", T.IntegerType(), True),
])

QUARANTINE = T.StructType([
    T.StructField("raw", T.StringType(), True),
    T.StructField("source", T.StringType(), True),
    T.StructField("line", T.IntegerType(), True),
    T.StructField("reason", T.StringType(), True),
    T.StructField("run_id", T.StringType(), True),
])

INGEST_RUNS = T.StructType([
    T.StructField("run_id", T.StringType(), True),
    T.StructField("source", T.StringType(), True),
    T.StructField("part", T.StringType(), True),
    T.StructField("read", T.LongType(), True),
    T.StructField("accepted", T.LongType(), True),
    T.StructField("quarantined", T.LongType(), True),
    T.StructField("duplicates_merged", T.LongType(), True),
    T.StructField("filtered", T.LongType(), True),
    T.StructField("interactions", T.LongType(), True),
    T.StructField("users", T.LongType(), True),
    T.StructField("items", T.LongType(), True),
    T.StructField("started", T.TimestampType(), True),
    T.StructField("finished", T.TimestampType(), True),
])

SPLIT = T.StructType([
    T.StructField("user_idx", T.IntegerType(), True),
    T.StructField("item_idx", T.IntegerType(), True),
    T.StructField("weight", T.DoubleType(), True),
    T.StructField("ts", T.TimestampType(), True),
])

# Table names owned by the data layer.
INTERACTIONS_TABLE = "interactions"
GIVEN_TEST_TABLE = "given_test"
USERS_TABLE = "users"
ITEMS_TABLE = "items"
QUARANTINE_TABLE = "quarantine"
INGEST_RUNS_TABLE = "ingest_runs"
TRAIN_TABLE = "train"
TEST_TABLE = "test"
FOLDIN_TABLE = "foldin"


class Reason:
    """Quarantine reasons: fixed strings, so they can be counted and filtered on; first failing check wins."""

    FIELD_COUNT = "wrong number of fields"
    USER_EMPTY = "user id null or empty"
    USER_NOT_UTF8 = "user id is not valid UTF-8"
    USER_CONTROL = "user id contains a control character"
    USER_NOT_INTEGER = "user id is not a non-negative integer"
    ITEM_EMPTY = "item id null or empty"
    ITEM_NOT_UTF8 = "item id is not valid UTF-8"
    ITEM_CONTROL = "item id contains a control character"
    ITEM_NOT_INTEGER = "item id is not a non-negative integer"
    WEIGHT_NOT_NUMBER = "weight missing or not a number"
    WEIGHT_NAN = "weight is NaN"
    WEIGHT_INFINITE = "weight is infinite"
    WEIGHT_NEGATIVE = "weight is negative"
    TS_UNPARSEABLE = "timestamp unparseable"

    ALL = (FIELD_COUNT, USER_EMPTY, USER_NOT_UTF8, USER_CONTROL, USER_NOT_INTEGER, ITEM_EMPTY, ITEM_NOT_UTF8,
           ITEM_CONTROL, ITEM_NOT_INTEGER, WEIGHT_NOT_NUMBER, WEIGHT_NAN, WEIGHT_INFINITE, WEIGHT_NEGATIVE,
           TS_UNPARSEABLE)
