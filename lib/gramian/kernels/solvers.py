"""Row solvers for one side of iALS: exact Cholesky, warm-started CG, and iALS++ subspace sweeps (§5.1.2)."""

from __future__ import annotations

import numpy as np

from gramian.kernels import _rows
from gramian.kernels._checks import as_csr, as_matrix, check_int, nonneg_scalar, per_row

SOLVERS = ("cholesky", "cg", "subspace")


def check_finite(x: np.ndarray, what: str) -> None:
    """Raise FloatingPointError naming `what` and the first row holding a NaN or infinity."""
    a = np.asarray(x)
    ok = np.isfinite(a)
    if ok.all():
        return
    bad_rows = ~ok.reshape(a.shape[0], -1).all(axis=1) if a.ndim >= 1 else np.array([True])
    r = int(np.argmax(bad_rows))
    raise FloatingPointError(
        f"{what} is not finite: first bad row is {r}; training diverged or a row system was singular "
        "(raise reg or alpha0, or check the input weights)"
    )


def solve_side(
    indptr: np.ndarray,
    indices: np.ndarray,
    alpha: np.ndarray,
    target: np.ndarray,
    other: np.ndarray,
    gramian_other: np.ndarray,
    alpha0: float,
    reg: np.ndarray,
    x0: np.ndarray,
    solver: str = "cg",
    cg_steps: int = 3,
    solver_block_size: int | None = None,
) -> np.ndarray:
    """New rows solving (alpha0 G + sum alpha_t h h^T + lambda I) w = sum alpha_t y_t h per row (Alg. 4)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got solver={solver!r}: pick one of those names")
    cg_steps = check_int(cg_steps, "cg_steps", 1, None, "use cg_steps=3 (Takacs et al.) or more")
    x = as_matrix(x0, "x0")
    n_rows, d = x.shape
    if d == 0:
        raise ValueError("x0 must have d >= 1 columns, got d=0: the embedding rank must be positive")
    block = d if solver_block_size is None else solver_block_size
    block = check_int(block, "solver_block_size", 1, d, f"use a block size between 1 (iCD) and d={d} (ALS)")
    oth = as_matrix(other, "other", d=d)
    g = np.asarray(gramian_other, dtype=np.float64)
    if g.shape != (d, d):
        raise ValueError(
            f"gramian_other must have shape ({d}, {d}), got shape {g.shape}: pass gramian(other) of the fixed side"
        )
    alpha0 = nonneg_scalar(alpha0, "alpha0")
    lam = per_row(reg, "reg", n_rows)
    ip, ix, a, t = as_csr(indptr, indices, alpha, target, n_rows, oth.shape[0])
    a0g = np.ascontiguousarray(alpha0 * 0.5 * (g + g.T))
    out = np.array(x, dtype=np.float64, order="C", copy=True)
    if n_rows == 0:
        return out
    if solver == "cholesky":
        _rows.cholesky_rows(ip, ix, a, t, oth, a0g, lam, out)
    elif solver == "cg":
        _rows.cg_rows(ip, ix, a, t, oth, a0g, lam, out, cg_steps)
    else:
        _rows.subspace_rows(ip, ix, a, t, oth, a0g, lam, out, block)
    return out
