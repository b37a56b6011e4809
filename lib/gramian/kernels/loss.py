"""The iALS loss of eq. 21/26 via the Gramian trick (eq. 22-25), and its per-row regularisation weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gramian.kernels import _rows
from gramian.kernels._checks import as_csr, as_matrix, nonneg_scalar, per_row

REG_COUNTS = ("observed", "all")


def regularization_base(counts: np.ndarray, alpha0: float, n_other: int, *, reg_counts: str) -> np.ndarray:
    """Per-row base_c of lambda_c = reg * base_c^nu: |I_c| + alpha0 * n_other (reg_counts='all', Rendle et al. 2022,
    'Revisiting iALS' §3) or |I_c| (reg_counts='observed', Zhou et al. 2008's ALS-WR, as Spark MLlib)."""
    if reg_counts not in REG_COUNTS:
        raise ValueError(f"reg_counts must be one of {REG_COUNTS}, got reg_counts={reg_counts!r}: pick one of those")
    alpha0 = nonneg_scalar(alpha0, "alpha0")
    if not isinstance(n_other, int | np.integer) or n_other < 0:
        raise ValueError(f"n_other must be a non-negative integer, got n_other={n_other!r}: pass the other side's size")
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"counts must be 1-D, got shape {c.shape}: pass one count |I_c| per row")
    if (c < 0).any():
        k = int(np.argmax(c < 0))
        raise ValueError(f"counts must be >= 0, got counts[{k}]={float(c[k])!r}: pass |I_c| per row")
    return c + alpha0 * float(n_other) if reg_counts == "all" else c


def regularization_weights(reg: float, nu: float, counts: np.ndarray, alpha0: float, n_other: int, *,
                           reg_counts: str) -> np.ndarray:
    """Per-row lambda_c = reg * base_c^nu, base_c as `regularization_base` (the trainer's, fold-in's and tune's)."""
    reg = nonneg_scalar(reg, "reg")
    if not np.isfinite(nu):
        raise ValueError(f"nu must be finite, got nu={float(nu)!r}: use nu=0 (plain reg) or nu=1 (frequency-scaled)")
    base = regularization_base(counts, alpha0, n_other, reg_counts=reg_counts)
    if nu < 0 and (base == 0).any():
        k = int(np.argmax(base == 0))
        raise ValueError(f"nu={float(nu)!r} < 0 needs a positive base, but row {k} has none "
                         f"(reg_counts={reg_counts!r}): use nu >= 0, or reg_counts='all' with alpha0 > 0")
    if nu == 0:
        return np.full(base.shape, reg)
    return reg * np.power(base, nu)


def gramian(x: np.ndarray) -> np.ndarray:
    """Gramian G = sum_r x_r x_r^T = x^T x in float64 (eq. 25)."""
    x64 = np.asarray(x, dtype=np.float64)
    return x64.T @ x64


def gramian_term(alpha0: float, gramian_x: np.ndarray, gramian_other: np.ndarray) -> float:
    """alpha0 * <G^C, G^I>: the loss over all C x I pairs via the Gramian trick (eq. 24)."""
    return alpha0 * float(np.sum(gramian_x * gramian_other))


def regularization_term(reg: np.ndarray, x: np.ndarray) -> float:
    """sum_c lambda_c ||w_c||^2 for one side's rows."""
    return float(np.asarray(reg, dtype=np.float64) @ np.einsum("ij,ij->i", x, x, dtype=np.float64))


def observed_loss(
    indptr: np.ndarray,
    indices: np.ndarray,
    alpha: np.ndarray,
    target: np.ndarray,
    x: np.ndarray,
    other: np.ndarray,
) -> float:
    """Sum over the CSR block of alpha_tilde * (<x_r, other_i> - target)^2 (first term of eq. 21)."""
    xm = as_matrix(x, "x").astype(np.float64, copy=False)
    om = as_matrix(other, "other", d=xm.shape[1])  # float32 or float64: the kernel reads either, no copy
    ip, ix, a, t = as_csr(indptr, indices, alpha, target, xm.shape[0], om.shape[0])
    return float(_rows.observed_sq_error(ip, ix, a, t, xm, om))


@dataclass(frozen=True)
class LossTerms:
    """The three terms of eq. 26: observed (S-tilde), Gramian (alpha0 <G^C, G^I>) and L2 regularisation."""

    observed: float
    gramian: float
    regularization: float

    @property
    def total(self) -> float:
        """The full loss L-tilde of eq. 26."""
        return self.observed + self.gramian + self.regularization


def ials_loss(
    indptr: np.ndarray,
    indices: np.ndarray,
    alpha: np.ndarray,
    target: np.ndarray,
    x: np.ndarray,
    other: np.ndarray,
    alpha0: float,
    reg_x: float | np.ndarray,
    reg_other: float | np.ndarray,
) -> LossTerms:
    """Full iALS loss of eq. 26 with the all-pairs term as alpha0 <G(x), G(other)> (eq. 24)."""
    alpha0 = nonneg_scalar(alpha0, "alpha0")
    x64 = as_matrix(x, "x").astype(np.float64, copy=False)
    o64 = as_matrix(other, "other", d=x64.shape[1]).astype(np.float64, copy=False)
    lx = per_row(reg_x, "reg_x", x64.shape[0])
    lo = per_row(reg_other, "reg_other", o64.shape[0])
    obs = observed_loss(indptr, indices, alpha, target, x64, o64)
    gram = gramian_term(alpha0, gramian(x64), gramian(o64))
    regl = regularization_term(lx, x64) + regularization_term(lo, o64)
    return LossTerms(observed=obs, gramian=gram, regularization=regl)
