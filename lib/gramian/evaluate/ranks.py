"""Held-out ranks inside Spark tasks: one row per test user in, its exact and sampled ranks out.

The per-user frame (test items, history, factors or fold-in history) is assembled with DataFrame joins;
a mapInArrow task scores each batch of users against the item factors in item blocks (kernels.ranking)
and draws sampled negatives (kernels.sampled). No RDD, no SparkContext: the same code runs on Spark
Connect. The item matrix (and its Gramian, for fold-in) travel in the task closure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gramian.config import ModelConfig
from gramian.kernels.foldin import fold_in
from gramian.kernels.ranking import heldout_ranks
from gramian.kernels.sampled import sampled_ranks

RANKED_SCHEMA = ("user_idx int, source string, n_test int, n_dropped int, n_in_hist int, n_cand long, "
                 "ranks array<int>, n_neg long, sampled array<int>, ips array<double>")


@dataclass(frozen=True)
class Scorer:
    """What every rank task needs: item factors, which items exist, fold-in and sampling settings."""

    item_factors: np.ndarray  # float32 (n_items, d); rows of absent items are zero
    present: np.ndarray  # bool (n_items,)
    model: ModelConfig | None  # None: no fold-in (users without factors were filtered out)
    item_gramian: np.ndarray | None
    neg_weights: np.ndarray | None  # None: no sampled ranks
    m: int
    seed: int
    score_batch_size: int
    item_block: int
    constant_user: np.ndarray | None = None  # popularity: every user scores with this vector


def _list_column(col: pa.Array, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, values) of an Arrow list column; nulls are empty lists."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    if n == 0:
        return np.zeros(1, np.int64), np.zeros(0, dtype)
    lengths = np.asarray(col.value_lengths().fill_null(0), dtype=np.int64)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    values = np.asarray(col.flatten(), dtype=dtype)  # flatten skips null lists and respects slicing
    return indptr, values


def _concat_rows(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Row-wise union of two CSRs with equal row counts (duplicates kept; kernels deduplicate)."""
    (ap_, ax), (bp, bx) = a, b
    n = len(ap_) - 1
    owner = np.concatenate([np.repeat(np.arange(n), np.diff(ap_)), np.repeat(np.arange(n), np.diff(bp))])
    vals = np.concatenate([ax, bx])
    order = np.argsort(owner, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(owner, minlength=n), out=indptr[1:])
    return indptr, vals[order]


def _filter_csr(indptr: np.ndarray, values: np.ndarray, keep: np.ndarray, *extra: np.ndarray) -> tuple:
    owner = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    new = np.zeros_like(indptr)
    np.cumsum(np.bincount(owner[keep], minlength=len(indptr) - 1), out=new[1:])
    return (new, values[keep], *(e[keep] for e in extra))


def rank_batch(batch: pa.RecordBatch, sc: Scorer) -> pa.RecordBatch:
    """Ranks for one Arrow batch of users (columns: user_idx, test, hist, fold_items, fold_w, factors)."""
    n = batch.num_rows
    cols = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
    users = np.asarray(cols["user_idx"], dtype=np.int64)
    n_items, d = sc.item_factors.shape
    t_ip, t_ix = _list_column(cols["test"], np.int64)
    h_ip, h_ix = _list_column(cols["hist"], np.int64)
    f_ip, f_ix = _list_column(cols["fold_items"], np.int64)
    _, f_w = _list_column(cols["fold_w"], np.float64)
    # Held-out items without factors cannot be ranked: dropped here, counted per user.
    t_ok = (t_ix < n_items) & sc.present[np.minimum(t_ix, n_items - 1)]
    dropped = np.bincount(np.repeat(np.arange(n), np.diff(t_ip))[~t_ok], minlength=n)
    t_ip, t_ix = _filter_csr(t_ip, t_ix, t_ok)
    f_keep = (f_ix < n_items) & sc.present[np.minimum(f_ix, n_items - 1)] if len(f_ix) else np.zeros(0, bool)
    f_ip, f_ix, f_w = _filter_csr(f_ip, f_ix, f_keep, f_w)
    h_keep = h_ix < n_items
    h_ip, h_ix = _filter_csr(h_ip, h_ix, h_keep)
    hist_ip, hist_ix = _concat_rows((h_ip, h_ix), (f_ip, f_ix))
    # Held-out items also in the user's history are not candidates: dropped, counted apart.
    t_owner = np.repeat(np.arange(n), np.diff(t_ip))
    h_owner = np.repeat(np.arange(n), np.diff(hist_ip))
    in_hist = np.isin(t_owner * n_items + t_ix, h_owner * n_items + hist_ix)
    n_in_hist = np.bincount(t_owner[in_hist], minlength=n)
    t_ip, t_ix = _filter_csr(t_ip, t_ix, ~in_hist)
    source = np.array(["factors"] * n, dtype=object)
    if sc.constant_user is not None:
        uv = np.tile(sc.constant_user, (n, 1)).astype(np.float64)
    else:
        fac_col = cols["factors"]
        has = ~np.asarray(fac_col.is_null(), dtype=bool)
        uv = np.zeros((n, d), np.float64)
        if has.any():
            flat = np.asarray(fac_col.filter(pa.array(has)).flatten(), dtype=np.float64)
            uv[has] = flat.reshape(-1, d)
        need = ~has
        if need.any():
            if sc.model is None:
                raise ValueError("users without factors reached a rank task with fold-in disabled")
            rows = np.flatnonzero(need)
            sub_ip = np.concatenate([[0], np.cumsum(np.diff(f_ip)[rows])])
            sel = np.concatenate([np.arange(f_ip[r], f_ip[r + 1]) for r in rows]).astype(np.int64)
            uv[rows] = fold_in(sub_ip, f_ix[sel], f_w[sel], sc.item_factors, sc.model, sc.item_gramian)
            source[rows] = "foldin"
    ranks = np.zeros(len(t_ix), np.int64)
    n_cand = np.zeros(n, np.int64)
    b = sc.score_batch_size
    for s in range(0, n, b):
        e = min(s + b, n)
        hp = hist_ip[s:e + 1] - hist_ip[s]
        h = hist_ix[hist_ip[s]:hist_ip[e]]
        tp = t_ip[s:e + 1] - t_ip[s]
        r, c = heldout_ranks(uv[s:e], sc.item_factors, hp, h, tp, t_ix[t_ip[s]:t_ip[e]], sc.present, sc.item_block)
        ranks[t_ip[s]:t_ip[e]] = r
        n_cand[s:e] = c
    # Sort each user's held-out items by rank: the metric step reads positions from the order.
    owner = np.repeat(np.arange(n), np.diff(t_ip))
    order = np.lexsort((ranks, owner))
    if sc.neg_weights is not None:
        pos_ip, pos_ix = _concat_rows((hist_ip, hist_ix), (t_ip, t_ix))
        s_rank, ips, n_neg = sampled_ranks(uv, sc.item_factors, users, pos_ip, pos_ix, t_ip, t_ix,
                                           sc.neg_weights, sc.m, sc.seed)
        sampled = pa.ListArray.from_arrays(pa.array(t_ip, pa.int32()), pa.array(s_rank[order], pa.int32()))
        ips_col = pa.ListArray.from_arrays(pa.array(t_ip, pa.int32()), pa.array(ips[order], pa.float64()))
        n_neg_col = pa.array(n_neg, pa.int64())
    else:
        sampled = pa.nulls(n, pa.list_(pa.int32()))
        ips_col = pa.nulls(n, pa.list_(pa.float64()))
        n_neg_col = pa.nulls(n, pa.int64())
    return pa.RecordBatch.from_arrays(
        [pa.array(users, pa.int32()), pa.array(source.tolist(), pa.string()),
         pa.array(np.diff(t_ip), pa.int32()), pa.array(dropped, pa.int32()), pa.array(n_in_hist, pa.int32()),
         pa.array(n_cand, pa.int64()),
         pa.ListArray.from_arrays(pa.array(t_ip, pa.int32()), pa.array(ranks[order], pa.int32())),
         n_neg_col, sampled, ips_col],
        names=["user_idx", "source", "n_test", "n_dropped", "n_in_hist", "n_cand", "ranks", "n_neg", "sampled", "ips"])


def rank_users(user_rows: Any, scorer: Scorer, num_partitions: int) -> Any:
    """DataFrame of RANKED_SCHEMA: one row per user of `user_rows`, scored inside mapInArrow tasks."""

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                yield rank_batch(batch, scorer)

    return user_rows.repartition(num_partitions).mapInArrow(task, RANKED_SCHEMA)


def num_partitions(spark: Any, n_users: int, users_per_task: int = 4096) -> int:
    """At least one task per core, at most ~users_per_task users per task."""
    try:
        parallelism = spark.sparkContext.defaultParallelism
    except Exception:  # Spark Connect: no SparkContext
        try:
            parallelism = int(spark.conf.get("spark.default.parallelism"))
        except Exception:
            parallelism = 2
    return max(1, parallelism, math.ceil(n_users / users_per_task))
