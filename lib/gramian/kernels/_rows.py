"""Numba per-row loops behind solvers.py and loss.py (single-threaded: Spark tasks give the parallelism).

All kernels take canonical arrays (int64 CSR, float64 weights, float64 or float32 `other`) and write float64.
`a0g` is alpha0 * G_other, symmetric. Loops over d are written as axpy/dot on contiguous rows so LLVM
vectorises them; fastmath omits nnan/ninf so NaNs propagate to the caller's finiteness check.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_FM = {"nsz", "arcp", "contract", "reassoc"}
_JIT = {"cache": True, "nogil": True, "fastmath": _FM, "error_model": "numpy"}


@njit(**_JIT)
def observed_sq_error(indptr, indices, alpha, target, x, other):  # pragma: no cover - jitted
    """Sum of alpha_tilde * (<x_r, other_i> - target)^2 over the CSR block (first term of eq. 21)."""
    d = x.shape[1]
    total = 0.0
    for r in range(x.shape[0]):
        for k in range(indptr[r], indptr[r + 1]):
            h = other[indices[k]]
            s = 0.0
            for j in range(d):
                s += x[r, j] * h[j]
            e = s - target[k]
            total += alpha[k] * e * e
    return total


@njit(**_JIT)
def _gram_axpy(out, a0g, v, scale, start, stop):  # pragma: no cover - jitted
    """out += scale * a0g[:, start:stop] @ v[start:stop], using the symmetry of a0g (row access)."""
    d = out.shape[0]
    for k in range(start, stop):
        c = scale * v[k]
        for j in range(d):
            out[j] += a0g[k, j] * c


@njit(**_JIT)
def _chol_solve(m, b, n):  # pragma: no cover - jitted
    """Solve m[:n, :n] y = b[:n] in place (y in b) by Cholesky on the lower triangle; NaN if not SPD."""
    for j in range(n):
        s = m[j, j]
        for k in range(j):
            s -= m[j, k] * m[j, k]
        djj = math.sqrt(s) if s > 0 else np.nan
        m[j, j] = djj
        inv = 1.0 / djj
        for i in range(j + 1, n):
            s = m[i, j]
            for k in range(j):
                s -= m[i, k] * m[j, k]
            m[i, j] = s * inv
    for i in range(n):  # L z = b
        s = b[i]
        for k in range(i):
            s -= m[i, k] * b[k]
        b[i] = s / m[i, i]
    for i in range(n - 1, -1, -1):  # L^T y = z
        s = b[i]
        for k in range(i + 1, n):
            s -= m[k, i] * b[k]
        b[i] = s / m[i, i]


@njit(**_JIT)
def cholesky_rows(indptr, indices, alpha, target, other, a0g, reg, out):  # pragma: no cover - jitted
    """Exact row solves (alpha0 G + sum alpha_t h h^T + lambda I) w = sum alpha_t y_t h (§5.1.2, Alg. 4)."""
    d = out.shape[1]
    m = np.empty((d, d))
    b = np.empty(d)
    hv = np.empty(d)
    for r in range(out.shape[0]):
        for j in range(d):
            for k in range(j + 1):
                m[j, k] = a0g[j, k]
            m[j, j] += reg[r]
            b[j] = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            h = other[indices[p]]
            a = alpha[p]
            at = a * target[p]
            for j in range(d):
                hv[j] = h[j]
                b[j] += at * h[j]
            for j in range(d):
                c = a * hv[j]
                for k in range(j + 1):
                    m[j, k] += c * hv[k]
        _chol_solve(m, b, d)
        for j in range(d):
            out[r, j] = b[j]


_CHUNK = 2048  # observations gathered per chunk: 2048 x d float64 stays within L2 for d <= 64


@njit(**_JIT)
def _gather(hc, other, indices, lo, n):  # pragma: no cover - jitted
    """Copy other[indices[lo:lo+n]] into the contiguous float64 buffer hc[:n]."""
    d = hc.shape[1]
    for k in range(n):
        h = other[indices[lo + k]]
        for j in range(d):
            hc[k, j] = h[j]


@njit(**_JIT)
def _observed_apply(acc, hc, n, alpha, target, lo, v, sign, use_target, q):  # pragma: no cover - jitted
    """acc += sign * hc[:n]^T (alpha * (hc[:n] v - use_target * target)) for observations lo..lo+n."""
    d = hc.shape[1]
    for k in range(n):
        s = 0.0
        for j in range(d):
            s += hc[k, j] * v[j]
        if use_target:
            s -= target[lo + k]
        q[k] = sign * alpha[lo + k] * s
    for k in range(n):
        c = q[k]
        for j in range(d):
            acc[j] += c * hc[k, j]


@njit(**_JIT)
def _row_observed(acc, hc, q, other, indices, alpha, target, lo, hi, v, sign, use_target, resident):
    """_observed_apply over a whole row, re-gathering chunk by chunk unless the row is resident in hc."""
    if resident:
        _observed_apply(acc, hc, hi - lo, alpha, target, lo, v, sign, use_target, q)
        return
    for c0 in range(lo, hi, _CHUNK):
        n = min(_CHUNK, hi - c0)
        _gather(hc, other, indices, c0, n)
        _observed_apply(acc, hc, n, alpha, target, c0, v, sign, use_target, q)


@njit(**_JIT)
def cg_rows(indptr, indices, alpha, target, other, a0g, reg, out, steps):  # pragma: no cover - jitted
    """`steps` conjugate-gradient steps per row, warm-started at out[r] (Takacs et al. 2011)."""
    n_rows, d = out.shape
    max_nnz = 0
    for r in range(n_rows):
        max_nnz = max(max_nnz, indptr[r + 1] - indptr[r])
    cap = min(max_nnz, _CHUNK)
    hc = np.empty((cap, d))
    q = np.empty(cap)
    res = np.empty(d)
    pv = np.empty(d)
    ap = np.empty(d)
    for r in range(n_rows):
        x = out[r]
        lam = reg[r]
        lo = indptr[r]
        hi = indptr[r + 1]
        resident = hi - lo <= cap
        if resident:
            _gather(hc, other, indices, lo, hi - lo)
        # res = b - A x
        for j in range(d):
            res[j] = -lam * x[j]
        _gram_axpy(res, a0g, x, -1.0, 0, d)
        _row_observed(res, hc, q, other, indices, alpha, target, lo, hi, x, -1.0, True, resident)
        rs = 0.0
        for j in range(d):
            pv[j] = res[j]
            rs += res[j] * res[j]
        for _ in range(steps):
            if rs <= 0.0:  # converged exactly (or singular row with zero residual)
                break
            # ap = A pv, without forming A
            for j in range(d):
                ap[j] = lam * pv[j]
            _gram_axpy(ap, a0g, pv, 1.0, 0, d)
            _row_observed(ap, hc, q, other, indices, alpha, target, lo, hi, pv, 1.0, False, resident)
            pap = 0.0
            for j in range(d):
                pap += pv[j] * ap[j]
            if pap <= 0.0:
                break
            step = rs / pap
            rs_new = 0.0
            for j in range(d):
                x[j] += step * pv[j]
                res[j] -= step * ap[j]
                rs_new += res[j] * res[j]
            beta = rs_new / rs
            for j in range(d):
                pv[j] = res[j] + beta * pv[j]
            rs = rs_new


@njit(**_JIT)
def subspace_rows(indptr, indices, alpha, target, other, a0g, reg, out, block):  # pragma: no cover - jitted
    """One sweep of block coordinate descent over coordinate blocks of size `block` (iALS++, Rendle 2021)."""
    n, d = out.shape
    max_nnz = 0
    for r in range(n):
        max_nnz = max(max_nnz, indptr[r + 1] - indptr[r])
    pred = np.empty(max_nnz)  # <x_r, h_i> for the row's observations, kept current
    g = np.empty(d)  # alpha0 G x_r, kept current
    m = np.empty((block, block))
    b = np.empty(block)
    hb = np.empty(block)
    delta = np.empty(d)
    for r in range(n):
        x = out[r]
        lam = reg[r]
        lo = indptr[r]
        hi = indptr[r + 1]
        for p in range(lo, hi):
            h = other[indices[p]]
            s = 0.0
            for j in range(d):
                s += h[j] * x[j]
            pred[p - lo] = s
        for j in range(d):
            g[j] = 0.0
        _gram_axpy(g, a0g, x, 1.0, 0, d)
        for s0 in range(0, d, block):
            nb = min(block, d - s0)
            # Newton step on the block: m = Hessian/2, b = -gradient/2.
            for j in range(nb):
                for k in range(j + 1):
                    m[j, k] = a0g[s0 + j, s0 + k]
                m[j, j] += lam
                b[j] = -g[s0 + j] - lam * x[s0 + j]
            for p in range(lo, hi):
                h = other[indices[p]]
                a = alpha[p]
                e = a * (target[p] - pred[p - lo])
                for j in range(nb):
                    hb[j] = h[s0 + j]
                    b[j] += e * hb[j]
                for j in range(nb):
                    c = a * hb[j]
                    for k in range(j + 1):
                        m[j, k] += c * hb[k]
            _chol_solve(m, b, nb)
            for j in range(nb):
                x[s0 + j] += b[j]
            for p in range(lo, hi):
                h = other[indices[p]]
                s = 0.0
                for j in range(nb):
                    s += h[s0 + j] * b[j]
                pred[p - lo] += s
            for j in range(nb):
                delta[s0 + j] = b[j]
            _gram_axpy(g, a0g, delta, 1.0, s0, s0 + nb)
