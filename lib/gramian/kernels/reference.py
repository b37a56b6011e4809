"""Brute-force dense twins of the kernels, for tests only: every (c, i) pair is materialised (tiny data)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def dense_loss(
    Y_alpha_tilde_dense: np.ndarray,  # noqa: N803 - matrix names follow the paper
    Y_target_dense: np.ndarray,  # noqa: N803
    x: np.ndarray,
    other: np.ndarray,
    alpha0: float,
    reg_x: float | np.ndarray,
    reg_other: float | np.ndarray,
) -> float:
    """Eq. 21 summed pair by pair: sum_S alpha_t (y_hat - y_t)^2 + alpha0 sum_all y_hat^2 + L2 terms."""
    p = np.asarray(x, np.float64) @ np.asarray(other, np.float64).T
    observed = float(np.sum(Y_alpha_tilde_dense * (p - Y_target_dense) ** 2))
    all_pairs = alpha0 * float(np.sum(p * p))
    regl = float(np.sum(reg_x * np.sum(x * x, axis=1)) + np.sum(reg_other * np.sum(other * other, axis=1)))
    return observed + all_pairs + regl


def dense_original_loss(
    Y_alpha_tilde_dense: np.ndarray,  # noqa: N803
    Y_target_dense: np.ndarray,  # noqa: N803
    x: np.ndarray,
    other: np.ndarray,
    alpha0: float,
    reg_x: float | np.ndarray,
    reg_other: float | np.ndarray,
) -> float:
    """Original loss sum_all alpha (y_hat - y)^2 + L2 with alpha = alpha0 + alpha_t, y = alpha_t y_t/alpha."""
    w = alpha0 + Y_alpha_tilde_dense
    y = np.divide(Y_alpha_tilde_dense * Y_target_dense, w, out=np.zeros_like(w), where=w > 0)
    p = np.asarray(x, np.float64) @ np.asarray(other, np.float64).T
    regl = float(np.sum(reg_x * np.sum(x * x, axis=1)) + np.sum(reg_other * np.sum(other * other, axis=1)))
    return float(np.sum(w * (p - y) ** 2)) + regl


def dense_gradient(
    Y_alpha_tilde_dense: np.ndarray,  # noqa: N803
    Y_target_dense: np.ndarray,  # noqa: N803
    x: np.ndarray,
    other: np.ndarray,
    alpha0: float,
    reg_x: float | np.ndarray,
) -> np.ndarray:
    """Gradient of dense_loss w.r.t. each row of x: 2 sum_i W_ci (y_hat - y_ci) h_i + 2 lambda_c x_c."""
    w = alpha0 + Y_alpha_tilde_dense
    y = np.divide(Y_alpha_tilde_dense * Y_target_dense, w, out=np.zeros_like(w), where=w > 0)
    p = x @ other.T
    return 2.0 * (w * (p - y)) @ other + 2.0 * np.reshape(reg_x, (-1, 1)) * x


def dense_row_solution(
    Y_alpha_tilde_dense: np.ndarray,  # noqa: N803
    Y_target_dense: np.ndarray,  # noqa: N803
    other: np.ndarray,
    alpha0: float,
    reg: float | np.ndarray,
) -> np.ndarray:
    """Row minimisers: np.linalg.solve((H^T diag(alpha0 + alpha_t) H + lambda I), H^T alpha_t y_t) per row."""
    h = np.asarray(other, np.float64)
    n, d = Y_alpha_tilde_dense.shape[0], h.shape[1]
    lam = np.broadcast_to(np.asarray(reg, np.float64), (n,))
    out = np.empty((n, d))
    for c in range(n):
        w = alpha0 + Y_alpha_tilde_dense[c]
        a = (h * w[:, None]).T @ h + lam[c] * np.eye(d)
        b = h.T @ (Y_alpha_tilde_dense[c] * Y_target_dense[c])
        out[c] = np.linalg.solve(a, b)
    return out


def cg_rows_slow(
    indptr: np.ndarray,
    indices: np.ndarray,
    alpha: np.ndarray,
    target: np.ndarray,
    other: np.ndarray,
    gramian_other: np.ndarray,
    alpha0: float,
    reg: np.ndarray,
    x0: np.ndarray,
    cg_steps: int,
) -> np.ndarray:
    """Slow twin of the lockstep CG (`_rows.cg_rows`): one row at a time, its matrix formed, plain numpy.

    Row r takes `cg_steps` CG steps on (alpha0 G + sum alpha h h^T + reg_r I) x = sum alpha t h from x0[r],
    stopping early as the kernel does (|res|^2 = 0, or p^T A p <= 0 without moving).
    """
    h_all = np.asarray(other, np.float64)
    g = np.asarray(gramian_other, np.float64)
    a0g = alpha0 * 0.5 * (g + g.T)
    out = np.array(x0, dtype=np.float64, copy=True)
    d = out.shape[1]
    for r in range(out.shape[0]):
        lo, hi = int(indptr[r]), int(indptr[r + 1])
        h = h_all[np.asarray(indices[lo:hi], np.int64)]
        a = np.asarray(alpha[lo:hi], np.float64)
        m = a0g + (h.T * a) @ h + float(reg[r]) * np.eye(d)
        b = (a * np.asarray(target[lo:hi], np.float64)) @ h
        x = out[r]
        res = b - m @ x
        p = res.copy()
        rs = float(res @ res)
        for _ in range(cg_steps):
            if rs <= 0.0:
                break
            ap = m @ p
            pap = float(p @ ap)
            if pap <= 0.0:
                break
            step = rs / pap
            x += step * p
            res -= step * ap
            rs_new = float(res @ res)
            p = res + (rs_new / rs) * p
            rs = rs_new
    return out


@dataclass(frozen=True)
class CSR:
    """One side's CSR block: row r observes indices[indptr[r]:indptr[r+1]] with weights alpha and targets."""

    indptr: np.ndarray
    indices: np.ndarray
    alpha: np.ndarray
    target: np.ndarray


def csr_from_dense(alpha_tilde: np.ndarray, target: np.ndarray, index_dtype: type = np.int64) -> CSR:
    """CSR of the pairs with alpha_tilde > 0 in a dense matrix (column order within rows)."""
    rows, cols = np.nonzero(alpha_tilde > 0)
    indptr = np.zeros(alpha_tilde.shape[0] + 1, dtype=index_dtype)
    np.cumsum(np.bincount(rows, minlength=alpha_tilde.shape[0]), out=indptr[1:])
    return CSR(indptr, cols.astype(index_dtype), alpha_tilde[rows, cols].copy(), target[rows, cols].copy())


@dataclass(frozen=True)
class Problem:
    """A tiny random iALS problem with its dense twin (A = alpha_tilde, T = target; zero where unobserved)."""

    A: np.ndarray  # noqa: N815
    T: np.ndarray  # noqa: N815
    users: np.ndarray
    items: np.ndarray
    alpha0: float

    def rows(self, side: str = "users") -> CSR:
        """The CSR block for solving `side` ('users' = rows of A, 'items' = rows of A^T)."""
        if side == "users":
            return csr_from_dense(self.A, self.T)
        return csr_from_dense(self.A.T, self.T.T)


def random_problem(
    n_users: int = 7,
    n_items: int = 9,
    d: int = 4,
    density: float = 0.3,
    alpha0: float = 0.3,
    seed: int = 0,
    empty_user: bool = True,
    empty_item: bool = True,
    scale: float = 0.5,
) -> Problem:
    """Random sparse positive alpha_tilde/targets and embeddings; optionally an empty user and empty item."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    if empty_user:
        mask[-1, :] = False
    if empty_item:
        mask[:, -1] = False
    a = np.where(mask, rng.uniform(0.5, 3.0, mask.shape), 0.0)
    t = np.where(mask, rng.uniform(0.5, 2.0, mask.shape), 0.0)
    users = rng.normal(0.0, scale, (n_users, d))
    items = rng.normal(0.0, scale, (n_items, d))
    return Problem(a, t, users, items, alpha0)
