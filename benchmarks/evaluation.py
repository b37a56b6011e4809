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


def popularity_factors(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Rank-1 factors scoring every item by its number of train users."""
    counts = np.bincount(split.train_items, minlength=split.n_items).astype(np.float32)
    return np.ones((split.n_users, 1), np.float32), counts[:, None]
