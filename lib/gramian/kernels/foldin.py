"""Fold-in (paper §6.3, dynamic user model): a new user's embedding is one iALS user-row solve.

The user step of iALS already solves each user's row exactly against the item factors and their
Gramian, so folding in a history the model never saw is that same solve: no retraining.
"""

from __future__ import annotations

import numpy as np

from gramian.config import ModelConfig
from gramian.kernels.confidence import observed_weights
from gramian.kernels.loss import gramian as gramian_of
from gramian.kernels.loss import regularization_weights
from gramian.kernels.solvers import solve_side


def fold_in(
    indptr: np.ndarray,
    indices: np.ndarray,
    weight: np.ndarray | None,
    item_factors: np.ndarray,
    model: ModelConfig,
    item_gramian: np.ndarray | None = None,
    n_users: int | None = None,
) -> np.ndarray:
    """Embeddings of users given as CSR histories over item rows, minimising their iALS row loss exactly.

    `weight` are raw interaction weights (None: all 1), mapped to confidences exactly as in training;
    `item_gramian` defaults to item_factors^T item_factors (pass it when folding in many batches);
    `n_users` (training users) is needed only to resolve a null alpha0 that scales with the user count.
    """
    h = np.ascontiguousarray(item_factors, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"item_factors must be 2-D (n_items, d), got shape {h.shape}: pass the item factor matrix")
    ip = np.asarray(indptr, dtype=np.int64)
    ix = np.asarray(indices, dtype=np.int64)
    n_rows = len(ip) - 1
    if n_rows < 0:
        raise ValueError("indptr must have at least one entry (0): pass a CSR row pointer")
    w = np.ones(len(ix)) if weight is None else np.asarray(weight, dtype=np.float64)
    if len(w) != len(ix):
        raise ValueError(f"weight must have one entry per history item ({len(ix)}), got {len(w)}")
    if len(ix) and (ix.min() < 0 or ix.max() >= h.shape[0]):
        bad = int(ix[(ix < 0) | (ix >= h.shape[0])][0])
        raise ValueError(f"history item row {bad} is outside the item factors (0..{h.shape[0] - 1}): map ids first")
    model = model.resolved(int(h.shape[0]), n_users)  # alpha0 null: alpha0_total / n, as in training
    conf = model.confidence
    alpha, target = observed_weights(w, model.alpha0, form=conf.form, scale=conf.scale, beta=conf.beta, eps=conf.eps)
    g = gramian_of(h) if item_gramian is None else np.asarray(item_gramian, dtype=np.float64)
    counts = np.diff(ip).astype(np.float64)
    lam = regularization_weights(model.reg, model.nu, counts, model.alpha0, int(h.shape[0]),
                                 reg_counts=model.reg_counts)
    x0 = np.zeros((n_rows, h.shape[1]))
    return solve_side(ip, ix, alpha, target, h, g, model.alpha0, lam, x0, solver="cholesky")


def fold_in_one(
    item_rows: np.ndarray, weights: np.ndarray | None, item_factors: np.ndarray, model: ModelConfig,
    item_gramian: np.ndarray | None = None, n_users: int | None = None,
) -> np.ndarray:
    """One user's embedding from the item rows of their history (see `fold_in`)."""
    rows = np.asarray(item_rows, dtype=np.int64)
    out = fold_in(np.array([0, len(rows)]), rows, weights, item_factors, model, item_gramian, n_users)
    return out[0]
