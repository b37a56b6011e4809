"""Exact full-catalogue top-k and ranking metrics for evaluation (paper §2.3), pure numpy.

Every user is scored against every item (no sampling: sampled metrics can reorder models, Krichene &
Rendle 2020); the user's training items are set to -inf before the top-k is taken, so a model is never
credited for recommending what the user already has. Metrics use binary relevance:

- recall@k      = hits / |T_u|                      (the LightGCN / BARS "Recall@20")
- recall_min@k  = hits / min(k, |T_u|)              (reaches 1 when the list is perfect)
- precision@k   = hits / k
- ndcg@k        = DCG / IDCG, DCG = sum_j rel_j / log2(j + 2), IDCG over min(k, |T_u|) hits

averaged over users with at least one test item. One implementation computes them all, from the
held-out items' ranks (`metrics_from_ranks`); `ranking_metrics` reads those ranks off top-k lists.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numba import njit


def _row_ranges(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in `rows`, CSR offset) of every stored entry of the CSR rows `rows`, without a loop."""
    lo = indptr[rows]
    counts = indptr[rows + 1] - lo
    owner = np.repeat(np.arange(len(rows)), counts)
    starts = np.cumsum(counts) - counts
    offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts - lo, counts)
    return owner, offsets


def _select_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column ids of the k largest entries per row, best first, ties to the lower column id.

    Exact, but faster than np.argpartition on wide rows: the k-th largest of c chunk maxima (c >= k)
    is a lower bound of the row's k-th largest score, so only entries at or above it (about k per row)
    are sorted. Rows with fewer than k entries are padded with column -1.
    """
    b, n = scores.shape
    c = 8 * k
    if c >= n:  # narrow catalogue: sort everything
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(scores, order, axis=1)
    chunk_max = np.maximum.reduceat(scores, (np.arange(c) * n) // c, axis=1)
    bound = np.partition(chunk_max, c - k, axis=1)[:, c - k:c - k + 1]
    rows, cols = np.nonzero(scores >= bound)
    vals = scores[rows, cols]
    order = np.lexsort((-vals, rows))  # stable: equal scores keep ascending column ids
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=b)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < k
    items = np.full((b, k), -1, dtype=np.int64)
    best = np.full((b, k), -np.inf, dtype=scores.dtype)
    items[rows[keep], rank[keep]] = cols[keep]
    best[rows[keep], rank[keep]] = vals[keep]
    return items, best


def topk_excluding(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    users: np.ndarray,
    train_indptr: np.ndarray,
    train_indices: np.ndarray,
    k: int,
    batch_size: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items by <user, item> over the whole catalogue, each user's training items excluded.

    Scores `batch_size` users at a time with one matrix product against all items (memory
    batch_size x n_items floats), sets their training items to -inf and selects exactly (see
    `_select_topk`). Returns (items int32 [n, k], scores [n, k]) best first, equal scores ordered by
    item id; slots beyond the items a user can still be recommended hold item -1 and score -inf.
    """
    if k <= 0:
        raise ValueError(f"k must be a positive integer, got k={k!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got batch_size={batch_size!r}")
    uf = np.asarray(user_factors)
    itf = np.asarray(item_factors)
    if uf.ndim != 2 or itf.ndim != 2 or uf.shape[1] != itf.shape[1]:
        raise ValueError(f"user_factors and item_factors must be 2-D with equal columns, got shapes "
                         f"{uf.shape} and {itf.shape}")
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    indptr = np.asarray(train_indptr, dtype=np.int64)
    indices = np.asarray(train_indices, dtype=np.int64)
    if len(users) and (users.min() < 0 or users.max() >= min(uf.shape[0], len(indptr) - 1)):
        raise ValueError(f"users must index rows of user_factors and of the train CSR, got ids in "
                         f"[{users.min()}, {users.max()}] for {uf.shape[0]} factor rows and "
                         f"{len(indptr) - 1} CSR rows")
    if not (np.isfinite(itf).all() and np.isfinite(uf[users]).all()):
        raise ValueError("user_factors and item_factors must be finite, got NaN or inf: the model "
                         "diverged (raise its regularisation)")
    n_items = itf.shape[0]
    kk = min(k, n_items)
    dtype = np.result_type(uf.dtype, itf.dtype, np.float32)
    items_out = np.full((len(users), k), -1, dtype=np.int32)
    scores_out = np.full((len(users), k), -np.inf, dtype=dtype)
    item_t = np.ascontiguousarray(itf.T, dtype=dtype)
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        scores = np.asarray(uf[batch], dtype=dtype) @ item_t
        owner, offsets = _row_ranges(indptr, batch)
        scores[owner, indices[offsets]] = -np.inf
        best, best_scores = _select_topk(scores, kk)
        best = np.where(np.isneginf(best_scores), -1, best)
        items_out[start:start + len(batch), :kk] = best
        scores_out[start:start + len(batch), :kk] = best_scores
    return items_out, scores_out


LIST_METRICS = ("recall", "recall_min", "precision", "ndcg")  # what `ranking_metrics` reports from top-k lists


def ranking_metrics(
    topk_items: np.ndarray,
    test_indptr: np.ndarray,
    test_indices: np.ndarray,
    ks: Iterable[int],
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean recall@k, recall_min@k, precision@k and ndcg@k over users with at least one test item.

    Row r of `topk_items` is the ranking of user `users[r]` (default: user r), whose relevant items are
    row `users[r]` of the test CSR. Keys are "recall@k", "recall_min@k", "precision@k", "ndcg@k", plus
    "users" (how many users were averaged).
    """
    return metric_means(ranking_metrics_by_user(topk_items, test_indptr, test_indices, ks, users))


def metric_means(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of `ranking_metrics_by_user` over its users (NaN when there are none), plus "users"."""
    out = {"users": float(len(per_user["users"]))}
    out.update({k: float(np.mean(v)) if len(v) else float("nan") for k, v in per_user.items() if k != "users"})
    return out


def ranking_metrics_by_user(
    topk_items: np.ndarray,
    test_indptr: np.ndarray,
    test_indices: np.ndarray,
    ks: Iterable[int],
    users: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The metrics of `ranking_metrics` per user with a test item ("users": their ids, in row order), for
    paired comparisons of two models on the same users: `metrics_from_ranks` of `ranks_in_lists`."""
    top = np.asarray(topk_items)
    if top.ndim != 2:
        raise ValueError(f"topk_items must be 2-D (users x ranks), got shape {top.shape}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] <= 0:
        raise ValueError(f"ks must hold positive cut-offs, got {ks}")
    if ks[-1] > top.shape[1]:
        raise ValueError(
            f"topk_items has {top.shape[1]} columns, fewer than the largest k={ks[-1]}: "
            f"compute the top-{ks[-1]} first"
        )
    rows, ip, ranks = ranks_in_lists(top, test_indptr, test_indices, users)
    per_user = metrics_from_ranks(ip, ranks, None, ks)
    out: dict[str, np.ndarray] = {"users": rows}
    out.update({f"{name}@{k}": per_user[f"{name}@{k}"] for k in ks for name in LIST_METRICS})
    return out


def ranks_in_lists(
    topk_items: np.ndarray, test_indptr: np.ndarray, test_indices: np.ndarray, users: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of held-out items read off top-K lists: (users with a test item, their test CSR indptr, ranks).

    A held-out item at place j (0-based) of its user's list has rank j + 1; one not in the list gets K + 1,
    which is exact for every metric @k with k <= K (it is no hit at any such k). -1 slots never match.
    """
    top = np.asarray(topk_items).astype(np.int64)
    indptr = np.asarray(test_indptr, dtype=np.int64)
    indices = np.asarray(test_indices, dtype=np.int64)
    rows = np.arange(top.shape[0]) if users is None else np.asarray(users, dtype=np.int64).reshape(-1)
    if len(rows) != top.shape[0]:
        raise ValueError(
            f"users must give one user per row of topk_items, got {len(rows)} for {top.shape[0]} rows"
        )
    keep = indptr[rows + 1] - indptr[rows] > 0
    rows, top = rows[keep], top[keep]
    owner, offsets = _row_ranges(indptr, rows)
    ip = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(np.bincount(owner, minlength=len(rows)), out=ip[1:])
    n_slots = top.shape[1]
    if len(rows) == 0 or n_slots == 0:
        return rows, ip, np.full(len(owner), n_slots + 1, np.int64)
    # (row, item) keys; -1 slots become item width - 1, which no held-out item has
    width = int(max(indices.max(initial=-1), top.max(initial=-1))) + 2
    flat = (np.arange(len(rows))[:, None] * width + top).ravel()
    order = np.argsort(flat, kind="stable")
    keys = owner * width + indices[offsets]
    at = np.minimum(np.searchsorted(flat[order], keys), len(flat) - 1)
    found = flat[order][at] == keys
    ranks = np.where(found, order[at] % n_slots + 1, n_slots + 1)
    return rows, ip, ranks.astype(np.int64)


# ---------------------------------------------------------------- ranks of held-out items (exact)
#
# rank(i | u) = 1 + #{j candidate, j != i : s_j > s_i, or s_j == s_i and j < i}, where candidates are the
# catalogue items outside the user's history (training or fold-in items). Equal scores go to the lower
# item id, the order `topk_excluding` publishes, so ranks are a permutation and metrics from ranks equal
# metrics from top-k lists.

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


@njit(**_JIT)
def _count_above(scores, pair_row, pair_item, out):  # pragma: no cover - jitted
    """out[p] = #{items j beating item pair_item[p] in row pair_row[p] of `scores`} (ties: lower id wins)."""
    n = scores.shape[1]
    for p in range(pair_row.shape[0]):
        row = scores[pair_row[p]]
        it = pair_item[p]
        s = row[it]
        c = 0
        for j in range(it):
            if row[j] >= s:
                c += 1
        for j in range(it + 1, n):
            if row[j] > s:
                c += 1
        out[p] = c


def _csr(indptr: np.ndarray, indices: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    ip = np.asarray(indptr, dtype=np.int64)
    ix = np.asarray(indices, dtype=np.int64)
    if ip.ndim != 1 or len(ip) < 1 or ip[0] != 0 or ip[-1] != len(ix) or np.any(np.diff(ip) < 0):
        raise ValueError(f"{name} must be a CSR (indptr from 0 to len(indices), non-decreasing), got indptr "
                         f"of length {len(ip)} ending at {ip[-1] if len(ip) else None} for {len(ix)} indices")
    return ip, ix


def heldout_ranks(
    user_vectors: np.ndarray,
    item_factors: np.ndarray,
    history_indptr: np.ndarray,
    history_indices: np.ndarray,
    test_indptr: np.ndarray,
    test_indices: np.ndarray,
    item_present: np.ndarray | None = None,
    item_block: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Full-catalogue rank (1-based) of every held-out item of every user, and each user's candidate count.

    Row r of `user_vectors` is scored against all items in blocks of `item_block` (float64); items in
    row r of the history CSR, and items with `item_present` False, are not candidates. Returns (ranks
    aligned with `test_indices`, n_candidates per row). Exact, O(|test| x n_items) comparisons.
    """
    if item_block <= 0:
        raise ValueError(f"item_block must be a positive integer, got {item_block!r}")
    uv = np.ascontiguousarray(user_vectors, dtype=np.float64)
    itf = np.ascontiguousarray(item_factors, dtype=np.float64)
    if uv.ndim != 2 or itf.ndim != 2 or uv.shape[1] != itf.shape[1]:
        raise ValueError(f"user_vectors and item_factors must be 2-D with equal columns, got shapes "
                         f"{uv.shape} and {itf.shape}")
    n_rows, n_items = uv.shape[0], itf.shape[0]
    hp, hx = _csr(history_indptr, history_indices, "history")
    tp, tx = _csr(test_indptr, test_indices, "test")
    if len(hp) != n_rows + 1 or len(tp) != n_rows + 1:
        raise ValueError(f"history and test CSRs must have one row per user vector ({n_rows}), got "
                         f"{len(hp) - 1} and {len(tp) - 1}")
    for name, ix in (("history", hx), ("test", tx)):
        if len(ix) and (ix.min() < 0 or ix.max() >= n_items):
            raise ValueError(f"{name} item ids must index item_factors rows 0..{n_items - 1}, got ids in "
                             f"[{ix.min()}, {ix.max()}]: map ids (or drop items without factors) first")
    if not (np.isfinite(uv).all() and np.isfinite(itf).all()):
        raise ValueError("user_vectors and item_factors must be finite, got NaN or inf: the model diverged "
                         "(raise its regularisation)")
    present = np.ones(n_items, dtype=bool) if item_present is None else np.asarray(item_present, dtype=bool)
    if present.shape != (n_items,):
        raise ValueError(f"item_present must have one flag per item ({n_items}), got shape {present.shape}")
    # Candidates: present items outside the (deduplicated) history.
    h_owner = np.repeat(np.arange(n_rows), np.diff(hp))
    keys = np.unique(h_owner * n_items + hx)
    h_owner, h_items = keys // n_items, keys % n_items
    in_hist = np.bincount(h_owner[present[h_items]], minlength=n_rows)
    n_cand = int(present.sum()) - in_hist
    t_owner = np.repeat(np.arange(n_rows), np.diff(tp))
    above = np.zeros(len(tx), dtype=np.int64)
    # Rows per pass: the whole catalogue's scores of a pass stay under ~128 MiB. The held-out item's own
    # score is read from the same matrix product as its competitors, so rounding cannot split a tie.
    rows_per_pass = max(1, min(n_rows, (128 << 20) // (8 * max(n_items, 1))))
    for r0 in range(0, n_rows, rows_per_pass):
        r1 = min(r0 + rows_per_pass, n_rows)
        scores = np.empty((r1 - r0, n_items))
        for start in range(0, n_items, item_block):
            stop = min(start + item_block, n_items)
            scores[:, start:stop] = uv[r0:r1] @ itf[start:stop].T
        scores[:, ~present] = -np.inf
        sel = (h_owner >= r0) & (h_owner < r1)
        scores[h_owner[sel] - r0, h_items[sel]] = -np.inf
        p0, p1 = tp[r0], tp[r1]
        if p1 > p0:
            own = scores[t_owner[p0:p1] - r0, tx[p0:p1]]
            if not np.isfinite(own).all():
                bad = int(tx[p0:p1][~np.isfinite(own)][0])
                raise ValueError(f"held-out item {bad} must be a candidate (present, not in the user's history), "
                                 f"got it excluded: drop held-out items without factors or in the history first")
            _count_above(scores, t_owner[p0:p1] - r0, tx[p0:p1], above[p0:p1])
    return above + 1, n_cand.astype(np.int64)


def metrics_from_ranks(
    indptr: np.ndarray, ranks: np.ndarray, n_candidates: np.ndarray | None, ks: Iterable[int],
) -> dict[str, np.ndarray]:
    """Per-user Precision, Recall (|T| and min(k,|T|) denominators), AP, NDCG @k and AUC from held-out ranks.

    Paper §2.3 eq. 4-8 with R the user's ranks among `n_candidates` items: the one implementation of the
    exact ranking metrics (evaluate's rank tasks, `ranking_metrics` and the benchmarks call it). Users
    without held-out items get NaN everywhere; AUC is NaN when every candidate is held out, and absent when
    `n_candidates` is None. Keys: "precision@k", "recall@k", "recall_min@k", "ap@k", "ndcg@k", "auc".
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] <= 0:
        raise ValueError(f"k must hold positive cut-offs, got {ks}: use e.g. k=[10, 20]")
    ip, r = _csr(indptr, ranks, "ranks")
    n_rows = len(ip) - 1
    t = np.diff(ip).astype(np.float64)
    owner = np.repeat(np.arange(n_rows), np.diff(ip))
    order = np.lexsort((r, owner))
    r, owner = r[order].astype(np.float64), owner[order]
    pos = np.arange(len(r)) - np.repeat(ip[:-1], np.diff(ip)) + 1.0  # 1-based place among the user's ranks
    empty = t == 0
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, ks[-1] + 2)))])  # IDCG of c hits
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in ks:
            hit = r <= k
            hits = np.bincount(owner, weights=hit, minlength=n_rows)
            cap = np.minimum(k, t)
            idcg = ideal[cap.astype(np.int64)]
            dcg = np.bincount(owner, weights=hit / np.log2(r + 1.0), minlength=n_rows)
            ap = np.bincount(owner, weights=hit * pos / r, minlength=n_rows)
            out[f"precision@{k}"] = np.where(empty, np.nan, hits / k)
            out[f"recall@{k}"] = np.where(empty, np.nan, hits / t)
            out[f"recall_min@{k}"] = np.where(empty, np.nan, hits / cap)
            out[f"ap@{k}"] = np.where(empty, np.nan, ap / cap)
            out[f"ndcg@{k}"] = np.where(empty, np.nan, dcg / idcg)
        if n_candidates is not None:
            n_cand = np.asarray(n_candidates, dtype=np.float64)
            below = np.bincount(owner, weights=(n_cand[owner] - r) - (t[owner] - pos), minlength=n_rows)
            out["auc"] = np.where(empty | (n_cand <= t), np.nan, below / (t * (n_cand - t)))
    return out
