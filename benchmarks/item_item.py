"""Item-item peers for the benchmarks: EASE (Steck 2019) and RP3beta (Paudel et al. 2017).

Neither is a factor model: a user's scores are her history row times an item x item matrix, so each fit
returns a `FitResult` whose `scorer` maps a batch of users to their dense score rows (evaluation.py
ranks those exactly, like factor scores). Both are strong baselines on dense catalogues (Dacrema et al.
2019, Anelli et al. 2022), which is why issue 17 asks gramian to beat them after tuning.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmarks.datasets import Split
from benchmarks.memory import PeakRSS
from benchmarks.peers import FitResult, _attach, transform_weights

EASE_MAX_ITEMS = 20_000  # B is a dense |I| x |I| matrix; past this its inverse costs too much here


def _history(split: Split, how: str) -> sp.csr_matrix:
    """users x items history matrix X with the chosen feedback transform (raw, log1p, binary)."""
    return split.train_csr(transform_weights(split.train_weights, how)).astype(np.float32)


def ease_weights(x: sp.csr_matrix, reg: float) -> np.ndarray:
    """EASE's B = I - P diagMat(1/diag(P)) with P = (X^T X + reg I)^-1, diag(B) = 0 (Steck 2019, eq. 8)."""
    from scipy.linalg import lapack

    if reg <= 0:
        raise ValueError(f"EASE reg must be > 0, got {reg}")
    g = (x.T @ x).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += reg
    chol, info = lapack.dpotrf(g, lower=False, overwrite_a=True)  # X^T X + reg I is symmetric positive definite
    if info != 0:
        raise ValueError(f"EASE Gram matrix is not positive definite (dpotrf info {info}): raise reg")
    p, info = lapack.dpotri(chol, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"EASE inverse failed (dpotri info {info}): raise reg")
    p = np.triu(p) + np.triu(p, 1).T  # dpotri fills the upper triangle only
    b = p / (-np.diag(p))[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b.astype(np.float32)


def ease_dual_scorer(x: sp.csr_matrix, reg: float) -> Any:
    """EASE's exact scores through the user side, for catalogues larger than the user base (Woodbury).

    P = (X^T X + reg I)^-1 = (I - X^T K^-1 X) / reg with K = X X^T + reg I (|U| x |U|), so
    diag(P)_i = (1 - x_i^T K^-1 x_i) / reg and x_u P = (x_u - (x_u X^T) K^-1 X) / reg; a user's scores
    x_u B = x_u - (x_u P) / diag(P) (Steck 2019, eq. 8: same B, never formed). Costs |U|^2 |I| instead of |I|^3.
    """
    from scipy.linalg import cho_factor, cho_solve

    if reg <= 0:
        raise ValueError(f"EASE reg must be > 0, got {reg}")
    x64 = sp.csr_matrix(x, dtype=np.float64)
    k = (x64 @ x64.T).toarray()
    k[np.diag_indices_from(k)] += reg
    factor = cho_factor(k, lower=False, overwrite_a=True, check_finite=False)
    xt = x64.T.tocsr()  # items x users
    xt_m = np.asarray(cho_solve(factor, x64.toarray(), check_finite=False)).T  # X^T K^-1: items x users
    diag_p = (1.0 - np.asarray(xt.multiply(xt_m).sum(axis=1)).ravel()) / reg

    def scores(users: np.ndarray) -> np.ndarray:
        xu = x64[users]
        xu_p = (xu.toarray() - (xt @ (xu @ xt_m).T).T) / reg
        return np.asarray(xu.toarray() - xu_p / diag_p[None, :], dtype=np.float32)

    return scores


def fit_ease(split: Split, params: dict[str, Any]) -> FitResult:
    """EASE with L2 weight `reg` on the item-item matrix (catalogues up to EASE_MAX_ITEMS items); solved on the
    smaller side: |I| x |I| (B formed) when |I| <= |U|, else |U| x |U| (ease_dual_scorer, same scores)."""
    how = params.get("weights", "binary")
    if split.n_items > EASE_MAX_ITEMS:
        raise ValueError(f"EASE runs on catalogues of at most {EASE_MAX_ITEMS} items, got {split.n_items}")
    dual = split.n_users < split.n_items
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        x = _history(split, how)
        if dual:
            scorer = ease_dual_scorer(x, float(params["reg"]))
        else:
            b = ease_weights(x, float(params["reg"]))
            scorer = lambda users: np.asarray(x[users] @ b)  # noqa: E731
        fit_s = time.perf_counter() - t0
    return _attach(FitResult("ease", {"reg": params["reg"], "weights": how}, np.zeros((0, 0), np.float32),
                             np.zeros((0, 0), np.float32), fit_s, 1, [], mem.start, mem.peak,
                             {"solved_on": "users (Woodbury)" if dual else "items"}, scorer=scorer), mem)


def rp3beta_weights(x: sp.csr_matrix, alpha: float, beta: float, topk: int, block: int = 1024) -> sp.csr_matrix:
    """RP3beta's item x item matrix: W = (P_iu^alpha P_ui^alpha) / pop(j)^beta, top-k per row, rows l1-normalised.

    P_ui and P_iu are the row-normalised user->item and item->user transition matrices of the bipartite
    graph (binary edges, as in Paudel et al.; Dacrema et al.'s reference implementation); the self-loop
    W[i, i] is dropped. Rows are built `block` items at a time so only block x |I| floats are dense.
    """
    if topk <= 0:
        raise ValueError(f"RP3beta topk must be > 0, got {topk}")
    edges = x.copy()
    edges.data[:] = 1.0
    p_ui = _row_normalise(edges).power(alpha).tocsr()
    item_user = edges.T.tocsr()
    p_iu = _row_normalise(item_user).power(alpha).tocsr()
    pop = np.asarray(item_user.sum(axis=1)).ravel()
    pop_factor = np.zeros_like(pop, dtype=np.float64)
    pop_factor[pop > 0] = pop[pop > 0] ** -beta
    n = x.shape[1]
    k = min(topk, n)
    rows, cols, vals = [], [], []
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        dense = np.asarray((p_iu[lo:hi] @ p_ui).toarray(), dtype=np.float64) * pop_factor[None, :]
        dense[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        top = np.argpartition(-dense, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (hi - lo, 1))
        v = np.take_along_axis(dense, top, axis=1)
        keep = v > 0
        rows.append(np.repeat(np.arange(lo, hi), keep.sum(axis=1)))
        cols.append(top[keep])
        vals.append(v[keep])
    w = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return _row_normalise(w).astype(np.float32)


def _row_normalise(m: sp.spmatrix) -> sp.csr_matrix:
    """Rows scaled to sum 1 (empty rows stay empty)."""
    m = sp.csr_matrix(m, dtype=np.float64)
    sums = np.asarray(m.sum(axis=1)).ravel()
    inv = np.zeros_like(sums)
    inv[sums > 0] = 1.0 / sums[sums > 0]
    return sp.diags(inv) @ m


def fit_rp3beta(split: Split, params: dict[str, Any]) -> FitResult:
    """RP3beta graph random walk with popularity penalty beta and top-k neighbours."""
    how = params.get("weights", "binary")
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        x = _history(split, how)
        w = rp3beta_weights(x, float(params["alpha"]), float(params["beta"]), int(params["topk"]))
        fit_s = time.perf_counter() - t0
    p = {"alpha": params["alpha"], "beta": params["beta"], "topk": params["topk"], "weights": how}
    return _attach(FitResult("rp3beta", p, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), fit_s, 1,
                             [], mem.start, mem.peak, {"nnz": int(w.nnz)},
                             scorer=lambda users: np.asarray((x[users] @ w).toarray())), mem)
