"""Argument validation shared by the loss and solver kernels: canonical dtypes, messages with remedies."""

from __future__ import annotations

import numpy as np


def canon(a: np.ndarray, dtype: type) -> np.ndarray:
    """`a` as a C-contiguous, writeable array of `dtype`, copying only when needed.

    Read-only inputs (e.g. np.frombuffer over Arrow buffers) are copied: numba compiles a separate
    specialisation for read-only arrays, and each costs seconds of JIT time on every fresh executor.
    """
    return np.require(a, dtype=dtype, requirements=["C", "W"])


def as_matrix(x: np.ndarray, name: str, d: int | None = None, rows: int | None = None) -> np.ndarray:
    """Return `x` as a C-contiguous 2-D float32/float64 array, checking its shape."""
    a = np.asarray(x)
    a = canon(a, a.dtype if a.dtype in (np.float32, np.float64) else np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x d), got shape {a.shape}: reshape it to (n_rows, d)")
    if d is not None and a.shape[1] != d:
        raise ValueError(f"{name} must have d={d} columns, got shape {a.shape}: use the same rank on both sides")
    if rows is not None and a.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got shape {a.shape}: pass one row per CSR row")
    return a


def nonneg_scalar(value: float, name: str) -> float:
    """Return `value` as float, raising when it is negative (NaN passes: callers check results)."""
    v = float(value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {name}={v!r}: use a non-negative value")
    return v


def per_row(value: float | np.ndarray, name: str, n: int) -> np.ndarray:
    """Broadcast a scalar or (n,) array of non-negative per-row weights to a float64 (n,) array."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got shape {a.shape}: one value per row")
    if (a < 0).any():
        k = int(np.argmax(a < 0))
        raise ValueError(f"{name} must be >= 0, got {name}[{k}]={float(a[k])!r}: use a non-negative regularisation")
    return canon(a, np.float64)


def as_csr(
    indptr: np.ndarray,
    indices: np.ndarray,
    alpha: np.ndarray,
    target: np.ndarray,
    n_rows: int,
    n_other: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a CSR block (row r owns indices[indptr[r]:indptr[r+1]]) as canonical int64/float64 arrays."""
    ip = np.asarray(indptr)
    ix = np.asarray(indices)
    for name, arr in (("indptr", ip), ("indices", ix)):
        if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
            raise ValueError(
                f"{name} must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}: "
                "pass int32/int64 CSR arrays"
            )
    ip = canon(ip, np.int64)
    ix = canon(ix, np.int64)
    if ip.shape != (n_rows + 1,):
        raise ValueError(
            f"indptr must have n_rows + 1 = {n_rows + 1} entries, got shape {ip.shape}: "
            "build indptr for exactly the rows being solved"
        )
    nnz = ix.shape[0]
    if ip[0] != 0 or ip[-1] != nnz or (n_rows > 0 and (np.diff(ip) < 0).any()):
        raise ValueError(
            f"indptr must start at 0, be non-decreasing and end at len(indices)={nnz}, "
            f"got indptr[0]={int(ip[0])}, indptr[-1]={int(ip[-1])}: rebuild the CSR arrays"
        )
    if nnz and (int(ix.min()) < 0 or int(ix.max()) >= n_other):
        bad = int(np.argmax((ix < 0) | (ix >= n_other)))
        raise ValueError(
            f"indices must lie in [0, {n_other}), got indices[{bad}]={int(ix[bad])}: "
            "re-index the other side so every observed column has a row in `other`"
        )
    a = canon(alpha, np.float64)
    t = canon(target, np.float64)
    for name, arr in (("alpha", a), ("target", t)):
        if arr.shape != (nnz,):
            raise ValueError(
                f"{name} must have shape ({nnz},) like indices, got shape {arr.shape}: align it with indices"
            )
    if (a < 0).any():
        k = int(np.argmax(a < 0))
        raise ValueError(f"alpha must be >= 0, got alpha[{k}]={float(a[k])!r}: build it with observed_weights()")
    return ip, ix, a, t


def check_int(value: object, name: str, lo: int, hi: int | None, remedy: str) -> int:
    """Return `value` as int, raising ValueError unless it is an integer in [lo, hi]."""
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if ok and value >= lo and (hi is None or value <= hi):
        return int(value)
    rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
    raise ValueError(f"{name} must be an integer in {rng}, got {name}={value!r}: {remedy}")
