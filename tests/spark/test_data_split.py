"""Split: reproducible across runs and partitionings, no pair in train and test, the rules of each method.

(split.method=given is checked on Gowalla in test_data_ingest.py, beside its ingest.)
"""

from __future__ import annotations

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from gramian import tables
from gramian.config import Config, SplitConfig
from gramian.data import split
from gramian.errors import ConfigError
from tests.spark.test_data_ingest import ingested_ml100k


@pytest.fixture(scope="module")
def ml100k(spark, shared_data, tmp_path_factory) -> Config:
    """ml-100k ingested once per session (shared with the ingest tests: Delta commits are the cost)."""
    return ingested_ml100k(spark, tmp_path_factory)[0]


@pytest.fixture(scope="module")
def interactions(spark, ml100k):
    """The indexed interactions, cached for the in-memory split checks."""
    df = split.indexed(spark, ml100k).cache()
    yield df
    df.unpersist()


@pytest.fixture(scope="module")
def first_split(spark, ml100k):
    """split.run once (random, 20%, seed 0), with what it wrote."""
    summary = split.run(spark, ml100k, "s1")
    return summary, {name: tables.read(spark, ml100k.storage, name).collect() for name in ("train", "test")}


def _per_user(df):
    return df.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n"),
        F.sum((F.col("part") == "test").cast("int")).alias("test"),
        F.sum((F.col("part") == "foldin").cast("int")).alias("foldin"),
        F.max(F.when(F.col("part") == "train", F.col("ts"))).alias("last_train"),
        F.min(F.when(F.col("part") == "test", F.col("ts"))).alias("first_test"))


def test_random_split_is_identical_across_runs_and_partitionings(spark, ml100k, interactions, first_split):
    first, written = first_split
    second = split.run(spark, ml100k, "s2")
    assert {k: v for k, v in first.items() if k not in ("run_id", "seconds")} == \
        {k: v for k, v in second.items() if k not in ("run_id", "seconds")}
    test = tables.read(spark, ml100k.storage, "test")  # train is the rest: same test, same counts
    assert_df_equality(test, spark.createDataFrame(written["test"], test.schema), ignore_row_order=True)
    assert tables.read(spark, ml100k.storage, "foldin").count() == 0

    def held_out(df, cfg=ml100k.split):
        return split.assign_parts(df, cfg).filter(F.col("part") == "test").select("user_idx", "item_idx")

    base = held_out(interactions)
    assert_df_equality(base, held_out(interactions.repartition(7, "item_id")), ignore_row_order=True)
    assert_df_equality(base, test.select("user_idx", "item_idx"), ignore_row_order=True)
    other_seed = held_out(interactions, SplitConfig(method="random", test_fraction=0.2, seed=1))
    assert other_seed.exceptAll(base).count() > 0


def test_random_split_puts_no_pair_in_both_train_and_test(spark, first_split):
    summary, written = first_split
    train = {(r["user_idx"], r["item_idx"]) for r in written["train"]}
    test = {(r["user_idx"], r["item_idx"]) for r in written["test"]}
    assert not train & test
    assert (len(train), len(test)) == (summary["train"], summary["test"]) == (80_000, 20_000)
    assert list(written["test"][0].asDict()) == ["user_idx", "item_idx", "weight", "ts"]


def test_random_split_holds_out_the_rounded_fraction_of_each_user(interactions):
    cfg = SplitConfig(method="random", test_fraction=0.2, min_interactions=2, seed=0)
    users = _per_user(split.assign_parts(interactions, cfg)).withColumn(
        "want", F.least(F.greatest(F.round(F.col("n") * 0.2), F.lit(1)), F.col("n") - 1))
    assert users.filter(F.col("test") != F.col("want")).count() == 0
    totals = users.agg(F.sum("test"), F.sum("n")).first()
    assert abs(totals[0] / totals[1] - 0.2) < 0.01


def test_split_keeps_users_below_min_interactions_entirely_in_train(interactions):
    for method in ("random", "leave_last", "strong"):
        cfg = SplitConfig(method=method, min_interactions=60, holdout_users=0.5, seed=3)
        users = _per_user(split.assign_parts(interactions, cfg))
        small = users.filter(F.col("n") < 60)
        assert small.count() > 100
        assert small.filter((F.col("test") > 0) | (F.col("foldin") > 0)).count() == 0, method
    cfg = SplitConfig(method="random", min_interactions=60)
    eligible = _per_user(split.assign_parts(interactions, cfg)).filter(F.col("n") >= 60)
    assert eligible.filter(F.col("test") == 0).count() == 0


def test_leave_last_holds_out_each_users_latest_interactions(interactions):
    cfg = SplitConfig(method="leave_last", leave_last_k=2, min_interactions=2)
    users = _per_user(split.assign_parts(interactions, cfg))
    assert users.filter(F.col("test") != 2).count() == 0  # every ml-100k user has >= 20 ratings
    assert users.filter(F.col("first_test") < F.col("last_train")).count() == 0


def test_leave_last_breaks_timestamp_ties_deterministically(spark):
    rows = [("u", f"i{k}", 1.0, "2020-01-01 00:00:00") for k in range(6)] + [("u", "old", 1.0, "2019-01-01")]
    df = spark.createDataFrame(rows, "user_id string, item_id string, weight double, ts string").withColumn(
        "ts", F.col("ts").cast("timestamp"))
    cfg = SplitConfig(method="leave_last", leave_last_k=3, min_interactions=2)
    picks = [sorted(r["item_id"] for r in split.assign_parts(d, cfg).filter("part = 'test'").collect())
             for d in (df, df.repartition(3), df.orderBy(F.col("item_id").desc()).coalesce(1))]
    assert picks[0] == picks[1] == picks[2] and len(picks[0]) == 3 and "old" not in picks[0]


def test_strong_split_holds_out_about_the_fraction_of_users_and_keeps_them_out_of_train(interactions):
    cfg = SplitConfig(method="strong", holdout_users=0.2, test_fraction=0.25, seed=5)
    users = _per_user(split.assign_parts(interactions, cfg)).cache()
    held = users.filter(F.col("test") + F.col("foldin") > 0)
    n_held = held.count()
    assert abs(n_held / 943 - 0.2) < 0.04
    # held-out users are wholly test + foldin (absent from train), each with both parts
    assert held.filter(F.col("test") + F.col("foldin") != F.col("n")).count() == 0
    assert held.filter((F.col("test") == 0) | (F.col("foldin") == 0)).count() == 0
    share = held.agg(F.sum("test") / F.sum("n")).first()[0]
    assert abs(share - 0.25) < 0.01
    users.unpersist()


def test_split_refuses_given_without_a_test_file_in_assign_parts(interactions):
    with pytest.raises(ConfigError, match="given"):
        split.assign_parts(interactions, SplitConfig(method="given"))
