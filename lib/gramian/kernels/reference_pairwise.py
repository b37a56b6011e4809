"""Brute-force dense twins of the pairwise kernels, for tests only: every (c, i, j) triple is materialised."""

from __future__ import annotations

import numpy as np


def _residuals(A: np.ndarray, support: np.ndarray, users: np.ndarray, items: np.ndarray):  # noqa: N803
    """E[c, i, j] = y(i|c) - y(j|c) - 1 and the triple weights alpha_ci s_j (zero for (c, i) not in S)."""
    p = np.asarray(users, np.float64) @ np.asarray(items, np.float64).T
    e = p[:, :, None] - p[:, None, :] - 1.0
    wt = np.asarray(A, np.float64)[:, :, None] * np.asarray(support, np.float64)[None, None, :]
    return e, wt


def dense_pairwise_loss(A: np.ndarray, support: np.ndarray, users: np.ndarray, items: np.ndarray,  # noqa: N803
                        reg_users: float | np.ndarray, reg_items: float | np.ndarray) -> float:
    """Eq. 42 triple by triple: sum_c sum_i sum_j alpha_ci s_j (y(i|c) - y(j|c) - 1)^2 + L2 terms."""
    e, wt = _residuals(A, support, users, items)
    regl = float(np.sum(reg_users * np.sum(users * users, axis=1)) + np.sum(reg_items * np.sum(items * items, axis=1)))
    return float(np.sum(wt * e * e)) + regl


def dense_pairwise_gradients(A: np.ndarray, support: np.ndarray, users: np.ndarray, items: np.ndarray,  # noqa: N803
                             reg_users: float | np.ndarray,
                             reg_items: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of dense_pairwise_loss w.r.t. every user row and every item row.

    d/dw_c = 2 sum_ij wt e (h_i - h_j) + 2 lambda_c w_c; d/dh_k = 2 sum_c R_ck w_c + 2 lambda_k h_k with
    R_ck = sum_j wt_ckj e_ckj - sum_i wt_cik e_cik (h_k as the positive minus h_k as the negative item).
    """
    e, wt = _residuals(A, support, users, items)
    we = wt * e
    r = we.sum(axis=2) - we.sum(axis=1)
    g_users = 2.0 * r @ items + 2.0 * np.reshape(reg_users, (-1, 1)) * users
    g_items = 2.0 * r.T @ users + 2.0 * np.reshape(reg_items, (-1, 1)) * items
    return g_users, g_items


def jacobi_item_update(A: np.ndarray, support: np.ndarray, users: np.ndarray, items: np.ndarray,  # noqa: N803
                       reg_items: float | np.ndarray) -> np.ndarray:
    """Each item's exact minimiser with every other item held at its current value, all at once (Jacobi).

    The per-item update in the style of Takacs & Tikk 2012: exact for one item alone, not for all jointly.
    """
    n_items, d = items.shape
    lam = np.broadcast_to(np.asarray(reg_items, np.float64), (n_items,))
    out = np.empty_like(items, dtype=np.float64)
    for k in range(n_items):
        def grad_k(hk: np.ndarray, k: int = k) -> np.ndarray:
            h = np.array(items, np.float64)
            h[k] = hk
            return dense_pairwise_gradients(A, support, users, h, 0.0, lam)[1][k]
        g0 = grad_k(np.zeros(d))
        hess = np.column_stack([grad_k(np.eye(d)[m]) - g0 for m in range(d)])
        out[k] = np.linalg.lstsq(hess, -g0, rcond=None)[0]
    return out
