"""One evaluation for every method: exact full-catalogue top-k with train items excluded (kernels.ranking)."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.datasets import Split
from gramian.kernels.ranking import metric_means, ranking_metrics_by_user, topk_excluding

KS = (10, 20, 50)


def evaluate(split: Split, user_factors: np.ndarray, item_factors: np.ndarray,
             ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Metrics at `ks` for every user with a test item, plus the evaluation's own wall seconds."""
    return evaluate_by_user(split, user_factors, item_factors, ks)[0]


def evaluate_by_user(split: Split, user_factors: np.ndarray, item_factors: np.ndarray,
                     ks: tuple[int, ...] = KS) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """`evaluate`'s means and the same metrics per user (one top-k pass for both)."""
    t0 = time.perf_counter()
    csr = split.train_csr()
    users = np.flatnonzero(np.diff(split.test_indptr) > 0)
    items, _ = topk_excluding(user_factors, item_factors, users, csr.indptr, csr.indices, max(ks))
    per_user = ranking_metrics_by_user(items, split.test_indptr, split.test_indices, ks, users=users)
    out = metric_means(per_user)
    out["eval_seconds"] = time.perf_counter() - t0
    return out, per_user


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
