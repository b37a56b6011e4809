"""RankALS: exact alternating least squares for the pairwise square loss (paper §5.2, eq. 42-45).

L = sum_(c,i) in S sum_(j in I) alpha_ci s_j [y(i|c) - y(j|c) - 1]^2 + sum_c lambda_c |w_c|^2 + sum_i lambda_i |h_i|^2.
With S = sum_j s_j, zbar = sum_j s_j h_j / S and the centred Gramian G^ = sum_j s_j (h_j - zbar)(h_j - zbar)^T,
the data term is S sum_S alpha_ci (<w_c, h_i - zbar> - 1)^2 + <G^C, G^>, G^C = sum_c A_c w_c w_c^T (docs/rankals.md).
The user step is therefore an iALS row solve against centred items; the item step couples items only
through two d-vectors, so it is solved exactly with a 2d x 2d system (a Woodbury/Schur correction), or, by
default, inexactly in one pass: per-item CG directions and the exact joint step along them (item_descent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from gramian.kernels import _rows
from gramian.kernels._checks import as_csr, as_matrix, check_int, nonneg_scalar, per_row
from gramian.kernels._rows import _JIT
from gramian.kernels.loss import LossTerms, observed_loss, regularization_term, regularization_weights
from gramian.kernels.solvers import check_finite, solve_side

_BATCH_ELEMS = 1 << 22  # float64 elements per batched item solve (32 MiB)


# ------------------------------------------------------------------------------------------ weights


def support_weights(counts: np.ndarray, power: float = 0.0) -> np.ndarray:
    """Item support s_j proportional to |U_j|^power, scaled to mean 1 (power=0: s_j = 1, eq. 42 as printed).

    The scale keeps S = sum_j s_j = |I| whatever the power, so reg means the same across settings.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {c.shape}: pass |U_j| for every item")
    if (c < 0).any() or not np.isfinite(c).all():
        k = int(np.argmax((c < 0) | ~np.isfinite(c)))
        raise ValueError(f"counts must be finite and >= 0, got counts[{k}]={float(c[k])!r}: pass |U_j| per item")
    if not np.isfinite(power) or power < 0:
        raise ValueError(f"power must be finite and >= 0, got power={float(power)!r}: use 0 (uniform) to 1")
    if power == 0:
        return np.ones_like(c)
    raw = np.power(c, power)
    total = raw.sum()
    if total <= 0:
        raise ValueError(f"support_power={float(power)!r} gives every item weight 0 (no item has users): use power=0")
    return raw * (c.size / total)


def row_sums(indptr: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A_r = sum of alpha over each CSR row (the row's weight in the pair terms)."""
    ip = np.asarray(indptr, dtype=np.int64)
    csum = np.concatenate([[0.0], np.cumsum(np.asarray(alpha, dtype=np.float64))])
    return csum[ip[1:]] - csum[ip[:-1]]


def user_regularization(reg: float, nu: float, alpha_sums: np.ndarray, total_support: float) -> np.ndarray:
    """lambda_c = reg * (A_c S)^nu: A_c S is the total pair weight of the terms that contain w_c."""
    return regularization_weights(reg, nu, np.asarray(alpha_sums, np.float64) * total_support, 0.0, 0,
                                  reg_counts="observed")


def item_regularization(reg: float, nu: float, alpha_sums: np.ndarray, support: np.ndarray, total_support: float,
                        total_alpha: float) -> np.ndarray:
    """lambda_i = reg * (S sum_c alpha_ci + s_i A)^nu: pair weight of h_i as positive plus as negative item."""
    weight = total_support * np.asarray(alpha_sums, np.float64) + total_alpha * np.asarray(support, np.float64)
    return regularization_weights(reg, nu, weight, 0.0, 0, reg_counts="observed")


# ------------------------------------------------------------------------------------------ moments


@dataclass(frozen=True)
class ItemMoments:
    """S = sum s_j, z = sum s_j h_j and G^I = sum s_j h_j h_j^T (eq. 45 with support); partials add up."""

    total: float
    z: np.ndarray
    gram: np.ndarray

    def __add__(self, other: ItemMoments) -> ItemMoments:
        return ItemMoments(self.total + other.total, self.z + other.z, self.gram + other.gram)

    @property
    def mean(self) -> np.ndarray:
        """zbar = z / S, the support-weighted mean item."""
        if not self.total > 0:
            raise ValueError(f"total support must be > 0, got S={self.total!r}: give some item a positive support")
        return self.z / self.total

    @property
    def centred_gram(self) -> np.ndarray:
        """G^ = G^I - z z^T / S = sum s_j (h_j - zbar)(h_j - zbar)^T (PSD)."""
        g = self.gram - np.outer(self.z, self.z) / self.total
        return 0.5 * (g + g.T)


@dataclass(frozen=True)
class UserMoments:
    """A = sum_S alpha, b = sum_c A_c w_c and G^C = sum_c A_c w_c w_c^T (eq. 45); partials add up."""

    total: float
    b: np.ndarray
    gram: np.ndarray

    def __add__(self, other: UserMoments) -> UserMoments:
        return UserMoments(self.total + other.total, self.b + other.b, self.gram + other.gram)


def item_moments(items: np.ndarray, support: np.ndarray) -> ItemMoments:
    """The support-weighted moments of a set of item rows (one block's partial, or all items)."""
    h = as_matrix(items, "items").astype(np.float64, copy=False)
    s = per_row(support, "support", h.shape[0])
    return ItemMoments(float(s.sum()), s @ h, (h * s[:, None]).T @ h)


def user_moments(indptr: np.ndarray, alpha: np.ndarray, users: np.ndarray) -> UserMoments:
    """The A_c-weighted moments of a set of user rows, A_c = row sums of alpha (one block's partial, or all)."""
    w = as_matrix(users, "users").astype(np.float64, copy=False)
    a = row_sums(indptr, alpha)
    if a.shape != (w.shape[0],):
        raise ValueError(f"indptr must have {w.shape[0] + 1} entries (one row per user), got {a.shape[0] + 1}: "
                         "pass the users' CSR")
    return UserMoments(float(a.sum()), a @ w, (w * a[:, None]).T @ w)


# ---------------------------------------------------------------------------------------------- loss


def pairwise_terms(observed: float, users: UserMoments, items: ItemMoments, regularization: float) -> LossTerms:
    """Assemble eq. 44: S-scaled observed term on centred items + <G^C, G^> + L2 (each summed over blocks)."""
    return LossTerms(observed=observed, gramian=float(np.sum(users.gram * items.centred_gram)),
                     regularization=regularization)


def centred_observed_loss(indptr: np.ndarray, indices: np.ndarray, alpha: np.ndarray, users: np.ndarray,
                          items: np.ndarray, moments: ItemMoments) -> float:
    """S sum_S alpha_ci (<w_c, h_i - zbar> - 1)^2 over one users' CSR block (first term of eq. 44)."""
    a = np.asarray(alpha, dtype=np.float64)
    centred = np.asarray(items, dtype=np.float64) - moments.mean
    return observed_loss(indptr, indices, moments.total * a, np.ones_like(a), users, centred)


def pairwise_loss(indptr: np.ndarray, indices: np.ndarray, alpha: np.ndarray, users: np.ndarray,
                  items: np.ndarray, support: np.ndarray, reg_users: float | np.ndarray,
                  reg_items: float | np.ndarray) -> LossTerms:
    """The full pairwise square loss (eq. 42) in Gramian form (eq. 44-45), never summing over S x I."""
    w = as_matrix(users, "users").astype(np.float64, copy=False)
    h = as_matrix(items, "items", d=w.shape[1]).astype(np.float64, copy=False)
    im = item_moments(h, support)
    um = user_moments(indptr, alpha, w)
    obs = centred_observed_loss(indptr, indices, alpha, w, h, im)
    regl = regularization_term(per_row(reg_users, "reg_users", w.shape[0]), w) + regularization_term(
        per_row(reg_items, "reg_items", h.shape[0]), h)
    return pairwise_terms(obs, um, im, regl)


@njit(**_JIT)
def _pair_partials(indptr, indices, alpha, rows, cols, v, rows_are_users):  # pragma: no cover - jitted
    """Sum alpha (<w_c, h_i> - 1)^2 over a CSR block; v += sum alpha (<w_c, h_i> - 1) w_c.

    The block's rows are users (w_c = the row) or items (w_c = the column), as rows_are_users says.
    """
    d = rows.shape[1]
    total = 0.0
    for r in range(rows.shape[0]):
        x = rows[r]
        acc = 0.0
        for k in range(indptr[r], indptr[r + 1]):
            y = cols[indices[k]]
            dot = 0.0
            for j in range(d):
                dot += x[j] * y[j]
            e = dot - 1.0
            total += alpha[k] * e * e
            if rows_are_users:
                acc += alpha[k] * e
            else:
                for j in range(d):
                    v[j] += alpha[k] * e * y[j]
        if rows_are_users:
            for j in range(d):
                v[j] += acc * x[j]
    return total


def item_side_partials(indptr: np.ndarray, indices: np.ndarray, alpha: np.ndarray, items: np.ndarray,
                       users: np.ndarray) -> tuple[float, np.ndarray]:
    """(sum alpha (y - 1)^2, sum alpha (y - 1) w_c) over an item block: the observed term before zbar is known.

    The item step learns zbar only once every block has its new rows; `observed_from_partials` finishes it.
    """
    h = as_matrix(items, "items").astype(np.float64, copy=False)
    w = as_matrix(users, "users", d=h.shape[1]).astype(np.float64, copy=False)
    ip, ix, a, _ = as_csr(indptr, indices, alpha, np.ones(np.asarray(indices).shape[0]), h.shape[0], w.shape[0])
    v = np.zeros(h.shape[1])
    return float(_pair_partials(ip, ix, a, h, w, v, False)), v


def observed_from_partials(square: float, v: np.ndarray, users: UserMoments, items: ItemMoments) -> float:
    """S sum_S alpha (<w_c, h_i - zbar> - 1)^2 = S (square - 2 zbar^T v + zbar^T G^C zbar) (first term of eq. 44)."""
    zbar = items.mean
    return items.total * (square - 2.0 * float(zbar @ v) + float(zbar @ users.gram @ zbar))


# ---------------------------------------------------------------------------------------- user step


def solve_users(indptr: np.ndarray, indices: np.ndarray, alpha: np.ndarray, items: np.ndarray,
                moments: ItemMoments, reg: np.ndarray, x0: np.ndarray, solver: str = "cholesky",
                cg_steps: int = 3, solver_block_size: int | None = None) -> np.ndarray:
    """New user rows: per user, (S sum alpha h~h~^T + A_c G^ + lambda_c I) w = S sum alpha h~, h~ = h - zbar.

    Divided by A_c this is exactly an iALS row system (alpha0 = 1, Gramian G^), so the numba row solvers
    of solve_side do the work (cholesky exact; cg/subspace descend). Users without positives get w = 0.
    """
    w0 = as_matrix(x0, "x0")
    n = w0.shape[0]
    a = np.asarray(alpha, dtype=np.float64)
    ip = np.asarray(indptr)
    sums = row_sums(ip, a)
    if sums.shape != (n,):
        raise ValueError(f"indptr must have {n + 1} entries (one per row of x0), got {sums.shape[0] + 1}: "
                         "pass the block's CSR")
    lam = per_row(reg, "reg", n)
    has = sums > 0
    scale = np.where(has, sums, 1.0)
    counts = np.diff(ip.astype(np.int64))
    centred = np.asarray(items, dtype=np.float64) - moments.mean
    out = solve_side(ip, indices, moments.total * a / np.repeat(scale, counts), np.ones_like(a), centred,
                     moments.centred_gram, 1.0, lam / scale, w0, solver=solver, cg_steps=cg_steps,
                     solver_block_size=solver_block_size)
    out[~has] = 0.0
    return out


# ---------------------------------------------------------------------------------------- item step


_WB = {"cache": True, "nogil": True, "error_model": "numpy"}  # exact arithmetic (no fastmath): Woodbury subtracts


@njit(**_WB)
def _item_inverse(xh, a, dinv, total):  # pragma: no cover - jitted
    """B^-1 for B = diag(1/dinv) + S X^T diag(a) X in the G^C eigenbasis (X: the item's rotated user rows).

    Few users (n <= d): Woodbury, B^-1 = D^-1 - V^T V with V = L^-1 X D^-1, L L^T = diag(1/(S a)) + X D^-1 X^T,
    O(n d^2). Many users: the d x d matrix is formed and inverted, O(n d^2 + d^3).
    """
    n, d = xh.shape
    if n == 0:
        return np.diag(dinv)
    if n <= d:
        y = xh * dinv
        c = y @ xh.T
        for k in range(n):
            c[k, k] += 1.0 / (total * a[k])
        low = np.linalg.cholesky(c)
        v = np.empty_like(y)
        for k in range(n):  # forward substitution L V = Y
            inv = 1.0 / low[k, k]
            for j in range(d):
                acc = y[k, j]
                for m in range(k):
                    acc -= low[k, m] * v[m, j]
                v[k, j] = acc * inv
        binv = -(v.T @ v)
        for j in range(d):
            binv[j, j] += dinv[j]
        return binv
    xa = xh.T * (total * a)
    b = xa @ xh
    for j in range(d):
        b[j, j] += 1.0 / dinv[j]
    binv = np.linalg.inv(b)
    return 0.5 * (binv + binv.T)


@njit(**_WB)
def _item_apply(xh, a, dinv, total, rhs):  # pragma: no cover - jitted
    """B^-1 rhs for the B of _item_inverse without forming B^-1 (Woodbury on a vector for n <= d)."""
    n, d = xh.shape
    if n == 0:
        return dinv * rhs
    if n <= d:
        y = xh * dinv
        c = y @ xh.T
        for k in range(n):
            c[k, k] += 1.0 / (total * a[k])
        low = np.linalg.cholesky(c)
        t = y @ rhs
        for k in range(n):  # L t' = t
            acc = t[k]
            for m in range(k):
                acc -= low[k, m] * t[m]
            t[k] = acc / low[k, k]
        for k in range(n - 1, -1, -1):  # L^T t'' = t'
            acc = t[k]
            for m in range(k + 1, n):
                acc -= low[m, k] * t[m]
            t[k] = acc / low[k, k]
        return dinv * rhs - y.T @ t
    b = (xh.T * (total * a)) @ xh
    for j in range(d):
        b[j, j] += 1.0 / dinv[j]
    return np.linalg.solve(b, rhs)


@njit(**_WB)
def _coupling_rows(indptr, indices, alpha, users, g, s, lam, total, m_ss, m_sl, m_ll, y_s, y_l):  # pragma: no cover
    """Accumulate sum w B_i^-1 for w in (s^2, s lambda, lambda^2) and sum (s, lambda) S B_i^-1 q_i over items."""
    d = users.shape[1]
    for r in range(s.shape[0]):
        lo, hi = indptr[r], indptr[r + 1]
        if hi == lo and s[r] == 0.0:
            continue  # h_r = 0; contributes lambda_r I and lambda_r to both sides of the m equation, which cancel
        dinv = 1.0 / (s[r] * g + lam[r])
        xh = np.empty((hi - lo, d))
        a = np.empty(hi - lo)
        for k in range(hi - lo):
            xh[k] = users[indices[lo + k]]
            a[k] = alpha[lo + k]
        binv = _item_inverse(xh, a, dinv, total)
        y = total * (binv @ (xh.T @ a))
        m_ss += (s[r] * s[r]) * binv
        m_sl += (s[r] * lam[r]) * binv
        m_ll += (lam[r] * lam[r]) * binv
        y_s += s[r] * y
        y_l += lam[r] * y


@njit(**_WB)
def _item_rows(indptr, indices, alpha, users, g, s, lam, total, m, mu, out):  # pragma: no cover - jitted
    """e_i = B_i^-1 (S q_i - lambda_i m + s_i mu) and out_i = m + e_i (rotated basis); 0 for items in no term."""
    d = users.shape[1]
    for r in range(s.shape[0]):
        lo, hi = indptr[r], indptr[r + 1]
        if hi == lo and s[r] == 0.0:
            out[r] = 0.0
            continue
        dinv = 1.0 / (s[r] * g + lam[r])
        xh = np.empty((hi - lo, d))
        a = np.empty(hi - lo)
        for k in range(hi - lo):
            xh[k] = users[indices[lo + k]]
            a[k] = alpha[lo + k]
        out[r] = m + _item_apply(xh, a, dinv, total, total * (xh.T @ a) - lam[r] * m + s[r] * mu)


@dataclass(frozen=True)
class ItemBasis:
    """Eigenbasis of G^C = Q diag(g) Q^T, fixed for one item step: there every s_i G^C + lambda_i I is diagonal.

    Computed once on the driver and handed to every block, so all blocks work in the same basis.
    """

    q: np.ndarray
    g: np.ndarray

    @classmethod
    def of(cls, users: UserMoments) -> ItemBasis:
        g, q = np.linalg.eigh(0.5 * (users.gram + users.gram.T))
        return cls(np.ascontiguousarray(q), np.maximum(g, 0.0))


@dataclass(frozen=True)
class Coupling:
    """Partial sums of the 2d x 2d system for (m, mu) of the exact item step (rotated basis); they add up.

    m_xy = sum x_i y_i B_i^-1 (x, y in s, lambda), y_x = sum x_i S B_i^-1 q_i, lam = sum lambda_i.
    """

    m_ss: np.ndarray
    m_sl: np.ndarray
    m_ll: np.ndarray
    y_s: np.ndarray
    y_l: np.ndarray
    lam: float

    def __add__(self, other: Coupling) -> Coupling:
        return Coupling(self.m_ss + other.m_ss, self.m_sl + other.m_sl, self.m_ll + other.m_ll,
                        self.y_s + other.y_s, self.y_l + other.y_l, self.lam + other.lam)

    def to_array(self) -> np.ndarray:
        """Flat float64 vector (for shipping a block's share to the driver)."""
        return np.concatenate([self.m_ss.ravel(), self.m_sl.ravel(), self.m_ll.ravel(), self.y_s, self.y_l,
                               [self.lam]])

    @classmethod
    def from_array(cls, x: np.ndarray, d: int) -> Coupling:
        dd = d * d
        return cls(x[:dd].reshape(d, d), x[dd:2 * dd].reshape(d, d), x[2 * dd:3 * dd].reshape(d, d),
                   x[3 * dd:3 * dd + d], x[3 * dd + d:3 * dd + 2 * d], float(x[3 * dd + 2 * d]))

    def solve(self) -> tuple[np.ndarray, np.ndarray]:
        """(m, mu): the new support-weighted mean item and the constraint's multiplier (rotated basis).

        Equations: sum s_i e_i = 0 and sum lambda_i (m + e_i) = 0 with e_i = B_i^-1 (S q_i - lambda_i m + s_i mu).
        """
        d = self.y_s.shape[0]
        k = np.block([[-self.m_sl, self.m_ss], [self.lam * np.eye(d) - self.m_ll, self.m_sl]])
        try:
            x = np.linalg.solve(k, -np.concatenate([self.y_s, self.y_l]))
        except np.linalg.LinAlgError as exc:
            raise FloatingPointError("the item coupling system is singular: the item subproblem has no unique "
                                     "minimiser (raise reg so every item has lambda_i > 0)") from exc
        check_finite(x[None, :], "item coupling solution")
        return x[:d], x[d:]


@dataclass(frozen=True)
class _ItemBlock:
    """Validated item CSR with the per-item support and lambda, users rotated into the G^C eigenbasis."""

    indptr: np.ndarray
    indices: np.ndarray
    alpha: np.ndarray
    users: np.ndarray
    support: np.ndarray
    reg: np.ndarray


def _item_block(indptr, indices, alpha, users, support, reg, basis: ItemBasis) -> _ItemBlock:
    w = as_matrix(users, "users", d=basis.g.shape[0])
    s = np.asarray(support, dtype=np.float64)
    n = s.shape[0] if s.ndim == 1 else -1
    s = per_row(s, "support", n)
    lam = per_row(reg, "reg", n)
    ip, ix, a, _ = as_csr(indptr, indices, alpha, np.ones(np.asarray(indices).shape[0]), n, w.shape[0])
    empty = (np.diff(ip) == 0) & (s == 0)  # no loss term touches h_i but lambda_i |h_i|^2: h_i = 0
    if ((lam == 0) & ~empty).any():
        k = int(np.argmax((lam == 0) & ~empty))
        raise ValueError(f"reg must be > 0 for every item in the pairwise item step, got reg[{k}]=0.0: the pair "
                         "loss is unchanged by shifting all items, so raise reg (and keep nu finite)")
    if (a <= 0).any():
        k = int(np.argmax(a <= 0))
        raise ValueError(f"alpha must be > 0 for every observed pair, got alpha[{k}]={float(a[k])!r}: "
                         "drop pairs of weight 0 or use confidence form 'rendle'")
    rotated = np.ascontiguousarray(w.astype(np.float64, copy=False) @ basis.q)
    return _ItemBlock(ip, ix, a, rotated, s, lam)


def item_coupling(indptr: np.ndarray, indices: np.ndarray, alpha: np.ndarray, users: np.ndarray,
                  basis: ItemBasis, support: np.ndarray, total_support: float, reg: np.ndarray) -> Coupling:
    """One item block's share of the (m, mu) system: first pass of the exact item step (docs/rankals.md).

    The driver adds the blocks' shares and calls Coupling.solve().
    """
    total_support = nonneg_scalar(total_support, "total_support")
    blk = _item_block(indptr, indices, alpha, users, support, reg, basis)
    d = basis.g.shape[0]
    mats = [np.zeros((d, d)) for _ in range(3)]
    vecs = [np.zeros(d) for _ in range(2)]
    try:
        _coupling_rows(blk.indptr, blk.indices, blk.alpha, blk.users, basis.g, blk.support, blk.reg,
                       total_support, *mats, *vecs)
    except np.linalg.LinAlgError as exc:
        raise FloatingPointError("an item system is not positive definite: raise reg") from exc
    live = (np.diff(blk.indptr) > 0) | (blk.support > 0)  # the rows _coupling_rows does not skip
    return Coupling(*mats, *vecs, float(blk.reg[live].sum()))


def solve_items(indptr: np.ndarray, indices: np.ndarray, alpha: np.ndarray, users: np.ndarray,
                basis: ItemBasis, support: np.ndarray, total_support: float, reg: np.ndarray,
                m: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """New item rows h_i = m + B_i^-1 (S q_i - lambda_i m + s_i mu): second pass of the exact item step.

    With (m, mu) from Coupling.solve() this is the joint minimiser of the item subproblem.
    """
    total_support = nonneg_scalar(total_support, "total_support")
    blk = _item_block(indptr, indices, alpha, users, support, reg, basis)
    d = basis.g.shape[0]
    mm, mmu = np.asarray(m, np.float64), np.asarray(mu, np.float64)
    if mm.shape != (d,) or mmu.shape != (d,):
        raise ValueError(f"m and mu must have shape ({d},), got {mm.shape} and {mmu.shape}: pass Coupling.solve()")
    out = np.zeros((blk.support.shape[0], d))
    try:
        _item_rows(blk.indptr, blk.indices, blk.alpha, blk.users, basis.g, blk.support, blk.reg, total_support,
                   mm, mmu, out)
    except np.linalg.LinAlgError as exc:
        raise FloatingPointError("an item system is not positive definite: raise reg") from exc
    return out @ basis.q.T


def item_step(indptr: np.ndarray, indices: np.ndarray, alpha: np.ndarray, users: np.ndarray,
              support: np.ndarray, reg: np.ndarray, user_alpha_sums: np.ndarray) -> np.ndarray:
    """The exact item half-step for all items at once (single process): coupling pass, 2d solve, item pass."""
    w = as_matrix(users, "users").astype(np.float64, copy=False)
    a = np.asarray(user_alpha_sums, np.float64)
    basis = ItemBasis.of(UserMoments(float(a.sum()), a @ w, (w * a[:, None]).T @ w))
    s_total = float(np.sum(support))
    m, mu = item_coupling(indptr, indices, alpha, w, basis, support, s_total, reg).solve()
    return solve_items(indptr, indices, alpha, w, basis, support, s_total, reg, m, mu)


# ------------------------------------------------------------------------- inexact item step (descent)


def user_side_partials(indptr: np.ndarray, indices: np.ndarray, alpha: np.ndarray, users: np.ndarray,
                       items: np.ndarray) -> tuple[float, np.ndarray]:
    """(sum alpha (y - 1)^2, sum alpha (y - 1) w_c) over a user block: what item_side_partials gives, by users.

    The user step emits it so the item step knows the item gradient (through R = v - G^C zbar) before it starts.
    """
    w = as_matrix(users, "users").astype(np.float64, copy=False)
    h = as_matrix(items, "items", d=w.shape[1])
    ip, ix, a, _ = as_csr(indptr, indices, alpha, np.ones(np.asarray(indices).shape[0]), w.shape[0], h.shape[0])
    v = np.zeros(w.shape[1])
    return float(_pair_partials(ip, ix, a, w, h, v, True)), v


@njit(**_JIT)
def _row_partials(hc, q, qd, users, indices, alpha, lo, hi, hr, dr, v, resident):  # pragma: no cover - jitted
    """One item's (sum alpha (<w, h> - 1) <w, delta>, sum alpha <w, delta>^2); v += sum alpha <w, delta> w."""
    cap, d = hc.shape
    c1 = 0.0
    c2 = 0.0
    for c0 in range(lo, hi, cap):
        n = min(cap, hi - c0)
        if not resident:
            _rows._gather(hc, users, indices, c0, n)
        _rows._dots(q, hc, n, hr, 0, d)
        _rows._dots(qd, hc, n, dr, 0, d)
        for p in range(n):
            a = alpha[c0 + p]
            c1 += a * (q[p] - 1.0) * qd[p]
            c2 += a * qd[p] * qd[p]
            qd[p] *= a
        _rows._axpys(v, hc, n, qd, 0, d)
    return c1, c2


@njit(**_JIT)
def _descent_rows(indptr, indices, alpha, alpha_s, target, users, g, s, u, lam, h, delta, steps,
                  v_delta):  # pragma: no cover - jitted
    """Per item, `steps` CG steps from 0 on D_i x = -grad_i / 2 with D_i = S sum alpha w w^T + s_i G^C + lambda_i I.

    alpha_s = S alpha; -grad_i / 2 = S sum alpha (1 + <w, zbar> - <w, h_i>) w + s_i (u - G^C h_i) - lambda_i h_i
    with target = 1 + <w, zbar> per pair and u = R + G^C zbar = v0 (docs/rankals.md, "inexact item step").
    Returns the line-search sums c1, c2 and adds v_delta while the item's users are still in cache. Items
    advance in lockstep groups as in `_rows.cg_rows`, so G^C P is one matrix product per group and step.
    """
    n_rows, d = h.shape
    rows = _rows._ROWS
    scratch, hg, q, res, pv, ap, rs, start, resident = _rows.group_buffers(indptr, d)
    qd = np.empty_like(q)
    c1 = 0.0
    c2 = 0.0
    for g0 in range(0, n_rows, rows):
        m = min(rows, n_rows - g0)
        # items without users are never resident (gather_group), so no slice of hg below is empty
        _rows.gather_group(hg, users, indices, indptr, g0, m, start, resident)
        np.dot(h[g0:g0 + m], g, ap[:m])
        for i in range(m):
            r = g0 + i
            x = delta[r]
            for j in range(d):
                res[i, j] = s[r] * (u[j] - ap[i, j]) - lam[r] * h[r, j]
                x[j] = 0.0
            hc = hg[start[i]:] if resident[i] else scratch
            _rows._observed_part(res[i], hc, q, users, indices, alpha_s, target, indptr[r], indptr[r + 1], h[r],
                                 True, resident[i])
            t = 0.0
            for j in range(d):
                pv[i, j] = res[i, j]
                t += res[i, j] * res[i, j]
            rs[i] = t
        _rows.cg_group_steps(delta[g0:g0 + m], s, lam, g, steps, g0, m, indptr, indices, alpha_s, target, users, hg,
                             scratch, q, start, resident, res, pv, ap, rs)
        for i in range(m):
            r = g0 + i
            hc = hg[start[i]:] if resident[i] else scratch
            a1, a2 = _row_partials(hc, q, qd, users, indices, alpha, indptr[r], indptr[r + 1], h[r], delta[r],
                                   v_delta, resident[i])
            c1 += a1
            c2 += a2
    return c1, c2


@dataclass(frozen=True)
class Descent:
    """One item block's share of the exact line search along the joint direction Delta; shares add up.

    c1 = sum_S alpha (y - 1) <w, Delta_i>, c2 = sum_S alpha <w, Delta_i>^2, v = sum_S alpha <w, Delta_i> w,
    z = sum s Delta, cross = sum s Delta h^T, outer = sum s Delta Delta^T, reg_hd = sum lambda <h, Delta>,
    reg_dd = sum lambda |Delta|^2.
    """

    c1: float
    c2: float
    v: np.ndarray
    z: np.ndarray
    cross: np.ndarray
    outer: np.ndarray
    reg_hd: float
    reg_dd: float

    def __add__(self, other: Descent) -> Descent:
        return Descent(self.c1 + other.c1, self.c2 + other.c2, self.v + other.v, self.z + other.z,
                       self.cross + other.cross, self.outer + other.outer, self.reg_hd + other.reg_hd,
                       self.reg_dd + other.reg_dd)

    def to_array(self) -> np.ndarray:
        """Flat float64 vector (for shipping a block's share to the driver)."""
        return np.concatenate([[self.c1, self.c2, self.reg_hd, self.reg_dd], self.v, self.z, self.cross.ravel(),
                               self.outer.ravel()])

    @classmethod
    def from_array(cls, x: np.ndarray, d: int) -> Descent:
        dd = d * d
        return cls(float(x[0]), float(x[1]), x[4:4 + d], x[4 + d:4 + 2 * d], x[4 + 2 * d:4 + 2 * d + dd].reshape(d, d),
                   x[4 + 2 * d + dd:4 + 2 * d + 2 * dd].reshape(d, d), float(x[2]), float(x[3]))

    def coefficients(self, users: UserMoments, items: ItemMoments, v0: np.ndarray) -> tuple[float, float]:
        """(L1, L2) with L(H + t Delta) = L(H) + t L1 + t^2 L2 (v0 = sum_S alpha (y - 1) w at H; docs/rankals.md)."""
        s_total, gc = items.total, users.gram
        l1 = 2.0 * (s_total * self.c1 - float(items.z @ self.v) - float(self.z @ v0) + float(np.sum(gc * self.cross))
                    + self.reg_hd)
        l2 = s_total * self.c2 - 2.0 * float(self.z @ self.v) + float(np.sum(gc * self.outer)) + self.reg_dd
        return l1, l2

    def step(self, users: UserMoments, items: ItemMoments, v0: np.ndarray) -> float:
        """t minimising L(H + t Delta) exactly (the loss is quadratic in the items); 0 when Delta does nothing."""
        l1, l2 = self.coefficients(users, items, v0)
        if not l2 > 0.0:
            return 0.0
        return -l1 / (2.0 * l2)

    def moved(self, items: ItemMoments, t: float) -> ItemMoments:
        """(S, z, G^I) of H + t Delta from those of H."""
        return ItemMoments(items.total, items.z + t * self.z,
                           items.gram + t * (self.cross + self.cross.T) + (t * t) * self.outer)

    def partials_at(self, t: float, square0: float, v0: np.ndarray, reg0: float) -> tuple[float, np.ndarray, float]:
        """(sum alpha (y - 1)^2, sum alpha (y - 1) w, sum lambda |h|^2) at H + t Delta from their values at H."""
        return (square0 + 2.0 * t * self.c1 + t * t * self.c2, v0 + t * self.v,
                reg0 + 2.0 * t * self.reg_hd + t * t * self.reg_dd)


def move_rows(rows: np.ndarray, delta: np.ndarray, t: float) -> np.ndarray:
    """The float32 factor rows h + t Delta (one block, or all items)."""
    return (np.asarray(rows, np.float32) + np.float32(t) * np.asarray(delta, np.float32)).astype(np.float32)


def item_descent(indptr: np.ndarray, indices: np.ndarray, alpha: np.ndarray, users: np.ndarray,
                 items: np.ndarray, support: np.ndarray, reg: np.ndarray, user_moments_: UserMoments,
                 moments: ItemMoments, v0: np.ndarray, cg_steps: int = 3) -> tuple[np.ndarray, Descent]:
    """One item block's direction Delta and its share of the line search (the inexact item step, one pass).

    Delta_i takes `cg_steps` CG steps on item i's own Newton system (the other items' coupling through zbar and R
    held at H), so <grad, Delta> < 0; the driver then moves every item by the same exact step t along Delta,
    which never increases the loss (docs/rankals.md).
    """
    h = as_matrix(items, "items").astype(np.float64, copy=False)
    n, d = h.shape
    w = as_matrix(users, "users", d=d)
    s = per_row(support, "support", n)
    lam = per_row(reg, "reg", n)
    cg_steps = check_int(cg_steps, "cg_steps", 1, None, "use cg_steps=3 or more")
    ip, ix, a, _ = as_csr(indptr, indices, alpha, np.ones(np.asarray(indices).shape[0]), n, w.shape[0])
    gc = np.ascontiguousarray(0.5 * (user_moments_.gram + user_moments_.gram.T))
    zbar = moments.mean
    target = 1.0 + (w @ zbar)[ix]
    delta = np.zeros((n, d))
    v = np.zeros(d)
    c1, c2 = _descent_rows(ip, ix, a, moments.total * a, np.ascontiguousarray(target, np.float64), w, gc, s,
                           np.ascontiguousarray(v0, np.float64), lam, np.ascontiguousarray(h), delta, cg_steps, v)
    ds = delta * s[:, None]
    part = Descent(float(c1), float(c2), v, s @ delta, ds.T @ h, ds.T @ delta,
                   float(lam @ np.einsum("ij,ij->i", h, delta)), float(lam @ np.einsum("ij,ij->i", delta, delta)))
    return delta, part


def item_descent_step(indptr: np.ndarray, indices: np.ndarray, alpha: np.ndarray, users: np.ndarray,
                      items: np.ndarray, support: np.ndarray, reg: np.ndarray, user_indptr: np.ndarray,
                      user_indices: np.ndarray, user_alpha: np.ndarray, cg_steps: int = 3) -> np.ndarray:
    """The inexact item half-step for all items at once (single process): direction, exact step along it."""
    w = as_matrix(users, "users").astype(np.float64, copy=False)
    h = as_matrix(items, "items", d=w.shape[1]).astype(np.float64, copy=False)
    um = user_moments(user_indptr, user_alpha, w)
    im = item_moments(h, support)
    _, v0 = user_side_partials(user_indptr, user_indices, user_alpha, w, h)
    delta, part = item_descent(indptr, indices, alpha, w, h, support, reg, um, im, v0, cg_steps=cg_steps)
    return h + part.step(um, im, v0) * delta


# ------------------------------------------------------------------------------ single-process trainer


@dataclass(frozen=True)
class PairwiseData:
    """Both CSR views of S with pair weights alpha_ci, the item support s_j and per-row lambdas."""

    user_indptr: np.ndarray
    user_indices: np.ndarray
    user_alpha: np.ndarray
    item_indptr: np.ndarray
    item_indices: np.ndarray
    item_alpha: np.ndarray
    support: np.ndarray
    reg_users: np.ndarray
    reg_items: np.ndarray

    @classmethod
    def from_coo(cls, user_idx: np.ndarray, item_idx: np.ndarray, alpha: np.ndarray, n_users: int, n_items: int,
                 reg: float, nu: float = 0.0, support_power: float = 0.0) -> PairwiseData:
        """Build both CSRs (column order within rows) and the regularisation of the pairwise loss."""
        u = np.asarray(user_idx, np.int64)
        i = np.asarray(item_idx, np.int64)
        a = np.asarray(alpha, np.float64)
        views = []
        for rows, cols, n in ((u, i, n_users), (i, u, n_items)):
            order = np.lexsort((cols, rows))
            indptr = np.zeros(n + 1, np.int64)
            np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
            views.append((indptr, cols[order], a[order]))
        support = support_weights(np.bincount(i, minlength=n_items).astype(np.float64), support_power)
        s_total = float(support.sum())
        user_sums, item_sums = row_sums(views[0][0], views[0][2]), row_sums(views[1][0], views[1][2])
        lam_u = user_regularization(reg, nu, user_sums, s_total)
        lam_i = item_regularization(reg, nu, item_sums, support, s_total, float(a.sum()))
        return cls(*views[0], *views[1], support, lam_u, lam_i)

    def loss(self, users: np.ndarray, items: np.ndarray) -> LossTerms:
        """The pairwise loss of eq. 42 (Gramian form) at the given factors."""
        return pairwise_loss(self.user_indptr, self.user_indices, self.user_alpha, users, items, self.support,
                             self.reg_users, self.reg_items)


def pairwise_epoch(data: PairwiseData, users: np.ndarray, items: np.ndarray, solver: str = "cholesky",
                   cg_steps: int = 3, solver_block_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One RankALS epoch on one process: user half-step, then the exact (cholesky) or descent (cg) item step."""
    im = item_moments(items, data.support)
    w = solve_users(data.user_indptr, data.user_indices, data.user_alpha, items, im, data.reg_users, users,
                    solver=solver, cg_steps=cg_steps, solver_block_size=solver_block_size)
    check_finite(w, "user factors")
    if solver == "cholesky":
        h = item_step(data.item_indptr, data.item_indices, data.item_alpha, w, data.support, data.reg_items,
                      row_sums(data.user_indptr, data.user_alpha))
    else:  # one inexact pass that still descends: per-item CG direction, exact joint step along it
        h = item_descent_step(data.item_indptr, data.item_indices, data.item_alpha, w, items, data.support,
                              data.reg_items, data.user_indptr, data.user_indices, data.user_alpha, cg_steps=cg_steps)
    check_finite(h, "item factors")
    return w, h


def fit_pairwise(data: PairwiseData, users: np.ndarray, items: np.ndarray, epochs: int,
                 solver: str = "cholesky", cg_steps: int = 3) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Run `epochs` RankALS epochs from the given factors; returns factors and the loss after each epoch."""
    w, h = np.asarray(users, np.float64), np.asarray(items, np.float64)
    history = []
    for _ in range(epochs):
        w, h = pairwise_epoch(data, w, h, solver=solver, cg_steps=cg_steps)
        history.append(data.loss(w, h).total)
    return w, h, history
