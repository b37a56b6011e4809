"""Metrics as DataFrame aggregations over per-user rank rows (paper §2.3; Krichene & Rendle 2020).

Exact: each user's held-out ranks become per-user Precision@k, Recall@k (|T| and min(k,|T|)
denominators: `recall`, `recall_min`), AP@k, NDCG@k and AUC inside tasks (kernels.ranking.metrics_from_ranks,
the one implementation); a groupBy averages over users. Sampled: every held-out item alone against the
user's negatives (`item_*` metrics), naive from the sampled rank, corrected (kernels.sampled) and exact
from rho = r - (j - 1), averaged per user then over users.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from gramian.evaluate.ranks import _list_column
from gramian.kernels.ranking import metrics_from_ranks
from gramian.kernels.sampled import ITEM_METRICS, corrected_table

EXACT_METRICS = ("precision", "recall", "recall_min", "ap", "ndcg")
BIN_WIDTH = 0.005  # users whose negative counts differ by < 0.5% share one correction table


def exact_per_user(ranked: Any, ks: tuple[int, ...]) -> Any:
    """Wide per-user frame: user_idx, n_test, n_cand and one column per `metric@k` plus `auc`.

    Computed inside tasks by kernels.ranking.metrics_from_ranks (the one implementation of the exact
    metrics); Spark only averages the per-user values (`user_average`). Undefined values (AUC when every
    candidate is held out) are null.
    """
    import pyarrow as pa
    from pyspark.sql.types import DoubleType, IntegerType, LongType, StructField, StructType

    names = [f"{m}@{k}" for k in ks for m in EXACT_METRICS] + ["auc"]
    ids = ["user_idx", "n_test", "n_cand"]
    schema = StructType([StructField("user_idx", IntegerType()), StructField("n_test", IntegerType()),
                         StructField("n_cand", LongType())] + [StructField(n, DoubleType()) for n in names])

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ip, ranks = _list_column(batch.column("ranks"), np.int64)
            per_user = metrics_from_ranks(ip, ranks, np.asarray(batch.column("n_cand"), np.int64), ks)
            cols = [batch.column(c) for c in ids]
            cols += [pa.array(per_user[n], pa.float64(), from_pandas=True) for n in names]  # NaN -> null
            yield pa.RecordBatch.from_arrays(cols, names=ids + names)

    return ranked.select(*ids, "ranks").mapInArrow(task, schema)


def long_format(wide: Any, id_cols: list[str]) -> Any:
    """`metric@k` columns -> rows (id..., metric, k, value); `auc` gets k null."""
    from pyspark.sql import functions as F

    names = [c for c in wide.columns if "@" in c or c in ("auc",) or c.startswith("item_")]
    long = wide.unpivot(id_cols, names, "name", "value")
    parts = F.split("name", "@")
    k = F.when(F.size(parts) > 1, F.element_at(parts, 2).cast("int"))
    return long.select(*id_cols, F.element_at(parts, 1).alias("metric"), k.alias("k"), "value")


def user_average(long: Any, group_cols: list[str]) -> list[dict[str, Any]]:
    """Mean over users of each (group..., metric, k), with the number of users averaged."""
    from pyspark.sql import functions as F

    rows = (long.filter(F.col("value").isNotNull())
            .groupBy(*group_cols, "metric", "k").agg(F.avg("value").alias("value"), F.count("value").alias("users"))
            .collect())
    return [r.asDict() for r in rows]


def correction_tables(spark: Any, n_negs: list[int], ks: tuple[int, ...], m: int, gamma: float) -> Any:
    """DataFrame (n_neg, s, item_*@k..., item_auc): corrected value of sampled rank s for a user with n_neg.

    One table per bin of negative counts (see `neg_bin`), shared by every n_neg in the bin; built in
    pandas and handed to Spark through Arrow (Python row tuples are slow).
    """
    import pandas as pd

    names = [(name, k) for name in ITEM_METRICS for k in ks] + [("item_auc", None)]
    labels = [f"{name}@{k}" if k else name for name, k in names]
    n_negs = sorted({int(n) for n in n_negs if n > 0})
    bins = sorted({neg_bin(n) for n in n_negs})
    parts = []
    for b in bins:
        values = corrected_table(names, bin_center(b), m, gamma)
        cols = {"bin": np.full(m + 1, b, np.int32), "s": np.arange(1, m + 2, dtype=np.int32)}
        for j, label in enumerate(labels):
            cols[label] = values[:, j]
        parts.append(pd.DataFrame(cols))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["bin", "s", *labels])
    members = pd.DataFrame({"n_neg": np.array(n_negs, np.int64), "bin": np.array([neg_bin(n) for n in n_negs],
                                                                                  np.int32)})
    return spark.createDataFrame(members.merge(table, on="bin").drop(columns="bin"))


def neg_bin(n: int) -> int:
    """Bin of a negative count: exact below 200, else log-spaced with relative width BIN_WIDTH."""
    return int(n) if n < 200 else 200 + int(math.floor(math.log(n / 200.0) / math.log1p(BIN_WIDTH)))


def bin_center(b: int) -> int:
    """The negative count a bin's correction table is computed for."""
    return int(b) if b < 200 else int(round(200.0 * (1.0 + BIN_WIDTH) ** (b - 200 + 0.5)))


def _item_metric_col(name: str, k: int | None, rank: Any, n: Any) -> Any:
    from pyspark.sql import functions as F

    r = rank.cast("double")
    if name == "item_auc":
        return F.when(n > 0, (n - (r - 1.0)) / n)
    hit = r <= k
    if name == "item_recall":
        return hit.cast("double")
    if name == "item_ndcg":
        return F.when(hit, 1.0 / F.log2(r + 1.0)).otherwise(0.0)
    return F.when(hit, 1.0 / r).otherwise(0.0)


def sampled_per_user(ranked: Any, ks: tuple[int, ...], m: int, sampler: str, corrections: Any | None) -> Any:
    """Long per-user frame (user_idx, method, metric, k, value) of the item_* metrics, exact/sampled/corrected."""
    from pyspark.sql import functions as F

    e = (ranked.filter(F.col("n_neg") > 0)
         .select("user_idx", "n_neg", F.posexplode("ranks").alias("pos0", "rank"), "sampled", "ips")
         .select("user_idx", "n_neg", (F.col("rank") - F.col("pos0")).alias("rho"),
                 F.element_at("sampled", F.col("pos0") + 1).alias("s"),
                 F.element_at("ips", F.col("pos0") + 1).alias("ips")))
    names = [(name, k) for name in ITEM_METRICS for k in ks] + [("item_auc", None)]
    label = [f"{n}@{k}" if k else n for n, k in names]
    n_neg = F.col("n_neg").cast("double")
    exact = [_item_metric_col(n, k, F.col("rho"), n_neg).alias(lb) for (n, k), lb in zip(names, label, strict=True)]
    naive = [_item_metric_col(n, k, F.col("s"), F.lit(float(m))).alias(lb)
             for (n, k), lb in zip(names, label, strict=True)]
    frames = {"exact": e.select("user_idx", *exact), "sampled": e.select("user_idx", *naive)}
    if sampler == "uniform" and corrections is not None:
        joined = e.join(F.broadcast(corrections), ["n_neg", "s"], "left")
        frames["corrected"] = joined.select("user_idx", *[F.col(f"`{lb}`").alias(lb) for lb in label])
    else:  # popularity negatives: the metric at the importance-weighted rank estimate
        frames["corrected"] = e.select("user_idx", *[_item_metric_col(n, k, F.col("ips"), n_neg).alias(lb)
                                                      for (n, k), lb in zip(names, label, strict=True)])
    out = None
    for method, frame in frames.items():
        per_user = frame.groupBy("user_idx").agg(*[F.avg(F.col(f"`{lb}`")).alias(lb) for lb in label])
        long = long_format(per_user, ["user_idx"]).withColumn("method", F.lit(method))
        out = long if out is None else out.unionByName(long)
    return out
