"""One evaluation for every method: exact full-catalogue top-k with train items excluded (kernels.ranking)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from benchmarks.datasets import Split
from gramian.kernels.ranking import metric_means, ranking_metrics_by_user, topk_excluding

KS = (10, 20, 50)
Scorer = Callable[[np.ndarray], np.ndarray]


def evaluate(split: Split, user_factors: np.ndarray, item_factors: np.ndarray,
             ks: tuple[int, ...] = KS, scorer: Scorer | None = None) -> dict[str, float]:
    """Metrics at `ks` for every user with a test item, plus the evaluation's own wall seconds."""
    return evaluate_by_user(split, user_factors, item_factors, ks, scorer)[0]


def evaluate_by_user(split: Split, user_factors: np.ndarray, item_factors: np.ndarray,
                     ks: tuple[int, ...] = KS, scorer: Scorer | None = None
                     ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """`evaluate`'s means and the same metrics per user (one top-k pass for both).

    `scorer` (item-item models) replaces the factors: it maps a batch of users to dense score rows.
    """
    t0 = time.perf_counter()
    csr = split.train_csr()
    users = np.flatnonzero(np.diff(split.test_indptr) > 0)
    if scorer is None:
        items, _ = topk_excluding(user_factors, item_factors, users, csr.indptr, csr.indices, max(ks))
    else:
        items = topk_scored(scorer, users, csr.indptr, csr.indices, max(ks))
    per_user = ranking_metrics_by_user(items, split.test_indptr, split.test_indices, ks, users=users)
    out = metric_means(per_user)
    out["eval_seconds"] = time.perf_counter() - t0
    return out, per_user


def topk_scored(scorer: Scorer, users: np.ndarray, indptr: np.ndarray, indices: np.ndarray, k: int,
                batch_size: int = 1024) -> np.ndarray:
    """Top-k item ids per user from `scorer`'s dense rows, training items excluded, best first (ties by id)."""
    out = np.full((len(users), k), -1, dtype=np.int32)
    for lo in range(0, len(users), batch_size):
        batch = users[lo:lo + batch_size]
        scores = np.array(scorer(batch), dtype=np.float64)
        for r, u in enumerate(batch):
            scores[r, indices[indptr[u]:indptr[u + 1]]] = -np.inf
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        vals = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -vals), axis=1)
        top = np.take_along_axis(part, order, axis=1)
        top[np.take_along_axis(vals, order, axis=1) == -np.inf] = -1
        out[lo:lo + len(batch), :kk] = top
    return out


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of a - b over the same users with a normal 95% interval (per-user pairs, so their shared
    difficulty cancels): whether two Recall@k figures differ by more than the test set's noise."""
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"need the same users on both sides (>= 2), got shapes {a.shape} and {b.shape}")
    diff = a - b
    half = 1.96 * float(np.std(diff, ddof=1)) / np.sqrt(len(diff))
    return {"mean": float(diff.mean()), "low": float(diff.mean()) - half, "high": float(diff.mean()) + half,
            "users": int(len(diff))}


def popularity_factors(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Rank-1 factors scoring every item by its number of train users."""
    counts = np.bincount(split.train_items, minlength=split.n_items).astype(np.float32)
    return np.ones((split.n_users, 1), np.float32), counts[:, None]
