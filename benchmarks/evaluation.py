"""One evaluation for every method: exact full-catalogue top-k with train items excluded (kernels.ranking)."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.datasets import Split
from gramian.kernels.ranking import ranking_metrics, topk_excluding

KS = (10, 20, 50)


def evaluate(split: Split, user_factors: np.ndarray, item_factors: np.ndarray,
             ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Metrics at `ks` for every user with a test item, plus the evaluation's own wall seconds."""
    t0 = time.perf_counter()
    csr = split.train_csr()
    users = np.flatnonzero(np.diff(split.test_indptr) > 0)
    items, _ = topk_excluding(user_factors, item_factors, users, csr.indptr, csr.indices, max(ks))
    out = ranking_metrics(items, split.test_indptr, split.test_indices, ks, users=users)
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def user_recall(split: Split, user_factors: np.ndarray, item_factors: np.ndarray, k: int = 20) -> np.ndarray:
    """Recall@k (hits/|test|) of every user with a test item, in user order: for paired comparisons."""
    csr = split.train_csr()
    users = np.flatnonzero(np.diff(split.test_indptr) > 0)
    items, _ = topk_excluding(user_factors, item_factors, users, csr.indptr, csr.indices, k)
    out = np.empty(len(users))
    for r, u in enumerate(users):
        test = split.test_indices[split.test_indptr[u]:split.test_indptr[u + 1]]
        out[r] = np.isin(items[r, :k], test).sum() / len(test)
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
