"""Numba per-row loops behind solvers.py and loss.py (single-threaded: Spark tasks give the parallelism).

All kernels take canonical arrays (int64 CSR, float64 weights, float64 or float32 `other`) and write float64.
`a0g` is alpha0 * G_other, symmetric. Each row's observed `other` rows are gathered into a contiguous
float64 buffer (chunks of _CHUNK), and the hot loops handle four rows of a matrix per pass so LLVM emits
wide FMA code with few loads (measured 1.5-2.5x over one-row-at-a-time loops). fastmath omits nnan/ninf so
NaNs propagate to the caller's finiteness check instead of being assumed away.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_FM = {"nsz", "arcp", "contract", "reassoc"}
_JIT = {"cache": True, "nogil": True, "fastmath": _FM, "error_model": "numpy"}
_CHUNK = 2048  # observations gathered at once: 2048 x 64 float64 = 1 MiB, within L2
_ROWS = 32  # rows CG advances in lockstep (one alpha0 G product per group and step)
_GROUP_OBS = 4096  # observations of a group kept gathered across its CG steps


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
def _gather(hc, other, indices, lo, n):  # pragma: no cover - jitted
    """Copy other[indices[lo:lo+n]] into the contiguous float64 buffer hc[:n]."""
    d = hc.shape[1]
    for k in range(n):
        h = other[indices[lo + k]]
        for j in range(d):
            hc[k, j] = h[j]


@njit(**_JIT)
def _gram_matvec(out, a0g, v, scale, k0, k1):  # pragma: no cover - jitted
    """out[j] += scale * sum_{k0 <= k < k1} a0g[j, k] v[k] for every j (four rows of a0g per pass)."""
    d = out.shape[0]
    d4 = d - d % 4
    for j in range(0, d4, 4):
        g0, g1, g2, g3 = a0g[j], a0g[j + 1], a0g[j + 2], a0g[j + 3]
        s0 = s1 = s2 = s3 = 0.0
        for k in range(k0, k1):
            vk = v[k]
            s0 += g0[k] * vk
            s1 += g1[k] * vk
            s2 += g2[k] * vk
            s3 += g3[k] * vk
        out[j] += scale * s0
        out[j + 1] += scale * s1
        out[j + 2] += scale * s2
        out[j + 3] += scale * s3
    for j in range(d4, d):
        s = 0.0
        for k in range(k0, k1):
            s += a0g[j, k] * v[k]
        out[j] += scale * s


@njit(**_JIT)
def _dots(q, hc, n, v, k0, k1):  # pragma: no cover - jitted
    """q[p] = <hc[p, k0:k1], v[k0:k1]> for p < n (four observations per pass)."""
    n4 = n - n % 4
    for p in range(0, n4, 4):
        h0, h1, h2, h3 = hc[p], hc[p + 1], hc[p + 2], hc[p + 3]
        s0 = s1 = s2 = s3 = 0.0
        for j in range(k0, k1):
            vj = v[j]
            s0 += h0[j] * vj
            s1 += h1[j] * vj
            s2 += h2[j] * vj
            s3 += h3[j] * vj
        q[p], q[p + 1], q[p + 2], q[p + 3] = s0, s1, s2, s3
    for p in range(n4, n):
        s = 0.0
        for j in range(k0, k1):
            s += hc[p, j] * v[j]
        q[p] = s


@njit(**_JIT)
def _axpys(acc, hc, n, q, k0, k1):  # pragma: no cover - jitted
    """acc[k0:k1] += sum_{p < n} q[p] hc[p, k0:k1] (four observations per pass)."""
    n4 = n - n % 4
    for p in range(0, n4, 4):
        h0, h1, h2, h3 = hc[p], hc[p + 1], hc[p + 2], hc[p + 3]
        c0, c1, c2, c3 = q[p], q[p + 1], q[p + 2], q[p + 3]
        for j in range(k0, k1):
            acc[j] += c0 * h0[j] + c1 * h1[j] + c2 * h2[j] + c3 * h3[j]
    for p in range(n4, n):
        c = q[p]
        for j in range(k0, k1):
            acc[j] += c * hc[p, j]


@njit(**_JIT)
def _rank_update(m, hc, n, w, k0, k1):  # pragma: no cover - jitted
    """Lower triangle of m[:k1-k0, :k1-k0] += sum_{p < n} w[p] h h^T with h = hc[p, k0:k1]."""
    nb = k1 - k0
    n4 = n - n % 4
    for p in range(0, n4, 4):
        h0, h1, h2, h3 = hc[p, k0:k1], hc[p + 1, k0:k1], hc[p + 2, k0:k1], hc[p + 3, k0:k1]
        w0, w1, w2, w3 = w[p], w[p + 1], w[p + 2], w[p + 3]
        for j in range(nb):
            c0, c1, c2, c3 = w0 * h0[j], w1 * h1[j], w2 * h2[j], w3 * h3[j]
            mj = m[j]
            for k in range(j + 1):
                mj[k] += c0 * h0[k] + c1 * h1[k] + c2 * h2[k] + c3 * h3[k]
    for p in range(n4, n):
        h = hc[p, k0:k1]
        for j in range(nb):
            c = w[p] * h[j]
            mj = m[j]
            for k in range(j + 1):
                mj[k] += c * h[k]


@njit(**_JIT)
def _chol_solve(m, b, n):  # pragma: no cover - jitted
    """Solve m[:n, :n] y = b[:n] in place (y in b) by Cholesky on the lower triangle; NaN if not SPD."""
    for j in range(n):
        mj = m[j]
        s = mj[j]
        for k in range(j):
            s -= mj[k] * mj[k]
        djj = math.sqrt(s) if s > 0 else np.nan
        mj[j] = djj
        inv = 1.0 / djj
        i = j + 1
        while i + 3 < n:  # four rows of column j per pass share the loads of row j
            m0, m1, m2, m3 = m[i], m[i + 1], m[i + 2], m[i + 3]
            s0, s1, s2, s3 = m0[j], m1[j], m2[j], m3[j]
            for k in range(j):
                mk = mj[k]
                s0 -= m0[k] * mk
                s1 -= m1[k] * mk
                s2 -= m2[k] * mk
                s3 -= m3[k] * mk
            m0[j], m1[j], m2[j], m3[j] = s0 * inv, s1 * inv, s2 * inv, s3 * inv
            i += 4
        while i < n:
            mi = m[i]
            s = mi[j]
            for k in range(j):
                s -= mi[k] * mj[k]
            mi[j] = s * inv
            i += 1
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
def _max_row_nnz(indptr):  # pragma: no cover - jitted
    """Largest number of observations in one CSR row."""
    best = 0
    for r in range(indptr.shape[0] - 1):
        best = max(best, indptr[r + 1] - indptr[r])
    return best


@njit(**_JIT)
def _load_weights(w, alpha, lo, n):  # pragma: no cover - jitted
    """w[:n] = alpha[lo:lo+n]."""
    for p in range(n):
        w[p] = alpha[lo + p]


@njit(**_JIT)
def cholesky_rows(indptr, indices, alpha, target, other, a0g, reg, out):  # pragma: no cover - jitted
    """Exact row solves (alpha0 G + sum alpha_t h h^T + lambda I) w = sum alpha_t y_t h (§5.1.2, Alg. 4)."""
    d = out.shape[1]
    cap = max(1, min(_max_row_nnz(indptr), _CHUNK))
    hc = np.empty((cap, d))
    q = np.empty(cap)
    m = np.empty((d, d))
    b = np.empty(d)
    for r in range(out.shape[0]):
        for j in range(d):
            for k in range(j + 1):
                m[j, k] = a0g[j, k]
            m[j, j] += reg[r]
            b[j] = 0.0
        for c0 in range(indptr[r], indptr[r + 1], cap):
            n = min(cap, indptr[r + 1] - c0)
            _gather(hc, other, indices, c0, n)
            _load_weights(q, alpha, c0, n)
            _rank_update(m, hc, n, q, 0, d)
            for p in range(n):
                q[p] *= target[c0 + p]
            _axpys(b, hc, n, q, 0, d)
        _chol_solve(m, b, d)
        for j in range(d):
            out[r, j] = b[j]


@njit(**_JIT)
def _observed_part(acc, hc, q, other, indices, alpha, target, lo, hi, v, residual, resident):
    """acc += sum_p alpha_p h_p <h_p, v> (residual=False) or sum_p alpha_p (t_p - <h_p, v>) h_p (True)."""
    cap = hc.shape[0]
    d = hc.shape[1]
    for c0 in range(lo, hi, cap):
        n = min(cap, hi - c0)
        if not resident:
            _gather(hc, other, indices, c0, n)
        _dots(q, hc, n, v, 0, d)
        for p in range(n):
            if residual:
                q[p] = alpha[c0 + p] * (target[c0 + p] - q[p])
            else:
                q[p] *= alpha[c0 + p]
        _axpys(acc, hc, n, q, 0, d)


@njit(**_JIT)
def cg_advance(x, res, pv, ap, rs):  # pragma: no cover - jitted
    """One CG update given ap = A pv: x, res and pv move in place; returns the new |res|^2 (0 stops the loop)."""
    d = x.shape[0]
    pap = 0.0
    for j in range(d):
        pap += pv[j] * ap[j]
    if pap <= 0.0:
        return 0.0
    step = rs / pap
    rs_new = 0.0
    for j in range(d):
        x[j] += step * pv[j]
        res[j] -= step * ap[j]
        rs_new += res[j] * res[j]
    beta = rs_new / rs
    for j in range(d):
        pv[j] = res[j] + beta * pv[j]
    return rs_new


@njit(**_JIT)
def group_buffers(indptr, d):  # pragma: no cover - jitted
    """Work arrays of a lockstep CG over row groups: scratch (rows too long for the group buffer), hg (the
    group's gathered observations), q, per-row res/pv/ap/rs, and each row's start in hg / residency."""
    big = max(1, min(_max_row_nnz(indptr), _CHUNK))
    return (np.empty((big, d)), np.empty((_GROUP_OBS, d)), np.empty(max(big, _GROUP_OBS)), np.empty((_ROWS, d)),
            np.empty((_ROWS, d)), np.empty((_ROWS, d)), np.empty(_ROWS), np.empty(_ROWS, np.int64),
            np.empty(_ROWS, np.bool_))


@njit(**_JIT)
def gather_group(hg, other, indices, indptr, g0, m, start, resident):  # pragma: no cover - jitted
    """Gather rows g0..g0+m-1's observations into hg while they fit: row i's start there, or resident False.

    A row without observations is never resident: with hg exactly full its slice hg[used:] would be empty
    and the chunked loops over it would step by zero.
    """
    used = 0
    for i in range(m):
        lo, hi = indptr[g0 + i], indptr[g0 + i + 1]
        start[i] = used
        resident[i] = lo < hi and used + hi - lo <= hg.shape[0]
        if resident[i]:
            _gather(hg[used:], other, indices, lo, hi - lo)
            used += hi - lo


@njit(**_JIT)
def cg_group_steps(x, scale, reg, g, steps, g0, m, indptr, indices, alpha, target, other, hg, scratch, q, start,
                   resident, res, pv, ap, rs):  # pragma: no cover - jitted
    """`steps` CG steps on rows g0.. g0+m-1 of (scale_r g + sum alpha h h^T + reg_r I) x = b in lockstep, from
    the residuals `res` (search directions `pv`, |res|^2 `rs`); `x` holds the group's rows and moves in place."""
    d = x.shape[1]
    for _ in range(steps):
        np.dot(pv[:m], g, ap[:m])  # ap = A pv: the Gramian part for the whole group at once
        for i in range(m):
            if rs[i] <= 0.0:  # exact solution reached (or singular row with zero residual)
                continue
            r = g0 + i
            for j in range(d):
                ap[i, j] = scale[r] * ap[i, j] + reg[r] * pv[i, j]
            hc = hg[start[i]:] if resident[i] else scratch
            _observed_part(ap[i], hc, q, other, indices, alpha, target, indptr[r], indptr[r + 1], pv[i], False,
                           resident[i])
            rs[i] = cg_advance(x[i], res[i], pv[i], ap[i], rs[i])


@njit(**_JIT)
def cg_rows(indptr, indices, alpha, target, other, a0g, reg, out, steps):  # pragma: no cover - jitted
    """`steps` CG steps per row, warm-started at out[r], never forming the matrix (Takacs et al. 2011).

    Rows advance in lockstep, _ROWS at a time, so alpha0 G P is one matrix product per group and step
    (a0g is read once per group instead of once per row: 1.5x on short rows at d=128); each row's
    observed `other` rows are gathered once per group while they fit in _GROUP_OBS, else on the fly.
    """
    n_rows, d = out.shape
    scratch, hg, q, res, pv, ap, rs, start, resident = group_buffers(indptr, d)
    ones = np.ones(n_rows)
    for g0 in range(0, n_rows, _ROWS):
        m = min(_ROWS, n_rows - g0)
        x = out[g0:g0 + m]
        gather_group(hg, other, indices, indptr, g0, m, start, resident)
        np.dot(x, a0g, ap[:m])
        for i in range(m):  # res = b - A x
            r = g0 + i
            lam = reg[r]
            for j in range(d):
                res[i, j] = -lam * x[i, j] - ap[i, j]
            hc = hg[start[i]:] if resident[i] else scratch
            _observed_part(res[i], hc, q, other, indices, alpha, target, indptr[r], indptr[r + 1], x[i], True,
                           resident[i])
            s = 0.0
            for j in range(d):
                pv[i, j] = res[i, j]
                s += res[i, j] * res[i, j]
            rs[i] = s
        cg_group_steps(x, ones, reg, a0g, steps, g0, m, indptr, indices, alpha, target, other, hg, scratch, q,
                       start, resident, res, pv, ap, rs)


@njit(**_JIT)
def subspace_rows(indptr, indices, alpha, target, other, a0g, reg, out, block):  # pragma: no cover - jitted
    """One sweep of exact block coordinate descent over blocks of `block` coordinates (iALS++, Rendle 2021).

    Predictions <x_r, h_p> and alpha0 G x_r are kept current as blocks change, so a sweep costs
    O(|I_r| d block + d block^2 + d^2) per row instead of rebuilding the residual for every block.
    """
    d = out.shape[1]
    max_nnz = _max_row_nnz(indptr)
    cap = max(1, min(max_nnz, _CHUNK))
    hc = np.empty((cap, d))
    q = np.empty(cap)
    pred = np.empty(max(1, max_nnz))
    g = np.empty(d)
    m = np.empty((block, block))
    b = np.empty(block)
    rhs = np.empty(d)
    delta = np.zeros(d)
    for r in range(out.shape[0]):
        x = out[r]
        lam = reg[r]
        lo, hi = indptr[r], indptr[r + 1]
        resident = hi - lo <= cap
        for c0 in range(lo, hi, cap):
            n = min(cap, hi - c0)
            _gather(hc, other, indices, c0, n)
            _dots(q, hc, n, x, 0, d)
            for p in range(n):
                pred[c0 - lo + p] = q[p]
        for j in range(d):
            g[j] = 0.0
        _gram_matvec(g, a0g, x, 1.0, 0, d)
        for s0 in range(0, d, block):
            s1 = min(d, s0 + block)
            nb = s1 - s0
            for j in range(nb):  # m = Hessian / 2 on the block, rhs = -gradient / 2
                for k in range(j + 1):
                    m[j, k] = a0g[s0 + j, s0 + k]
                m[j, j] += lam
                rhs[s0 + j] = -g[s0 + j] - lam * x[s0 + j]
            for c0 in range(lo, hi, cap):
                n = min(cap, hi - c0)
                if not resident:
                    _gather(hc, other, indices, c0, n)
                _load_weights(q, alpha, c0, n)
                _rank_update(m, hc, n, q, s0, s1)
                for p in range(n):
                    q[p] *= target[c0 + p] - pred[c0 - lo + p]
                _axpys(rhs, hc, n, q, s0, s1)
            for j in range(nb):
                b[j] = rhs[s0 + j]
            _chol_solve(m, b, nb)
            for j in range(nb):
                x[s0 + j] += b[j]
                delta[s0 + j] = b[j]
            for c0 in range(lo, hi, cap):
                n = min(cap, hi - c0)
                if not resident:
                    _gather(hc, other, indices, c0, n)
                _dots(q, hc, n, delta, s0, s1)
                for p in range(n):
                    pred[c0 - lo + p] += q[p]
            _gram_matvec(g, a0g, delta, 1.0, s0, s1)
