"""Sampled ranking metrics and their correction (Krichene & Rendle 2020, "On Sampled Metrics"), pure numpy.

Protocol (leave-one-out style, per held-out item): each held-out item i of user u is ranked against m
negatives drawn for u (items outside u's history and held-out set), with the same tie rule as the exact
ranks (equal scores: lower item id first). Its sampled rank is s = 1 + #{sampled negatives beating i}.
The exact counterpart ranks i against *all* negatives: rho = 1 + #{negatives beating i}; it follows from
the exact full-list ranks as rho_j = r_j - (j - 1) for the j-th best held-out item.

With uniform negatives drawn with replacement, s - 1 ~ Binomial(m, (rho - 1) / n_neg): the correction
chooses per-sampled-rank values M~(s) minimising bias^2 + gamma * variance over rho = 1..n_neg + 1
(the paper's bias-variance estimator; gamma -> 0 is its minimal-bias least squares). Popularity
negatives have no such closed form; there the rank is estimated by importance weighting,
rho^ = 1 + (1/m) sum_l [negative l beats i] / q(l), and the metric is taken at rho^.
"""

from __future__ import annotations

import numpy as np

ITEM_METRICS = ("item_recall", "item_ndcg", "item_ap")  # @k; plus "item_auc"


def item_metric(name: str, k: int | None, ranks: np.ndarray, n_neg: np.ndarray | int) -> np.ndarray:
    """A single held-out item's metric at (possibly fractional) rank `ranks` among `n_neg` negatives + itself.

    item_recall@k = [r <= k]; item_ndcg@k = [r <= k] / log2(r + 1); item_ap@k = [r <= k] / r;
    item_auc = share of the negatives ranked below = (n_neg - (r - 1)) / n_neg.
    """
    r = np.asarray(ranks, dtype=np.float64)
    if name == "item_auc":
        n = np.asarray(n_neg, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(n > 0, (n - (r - 1.0)) / n, np.nan)
    if k is None or k <= 0:
        raise ValueError(f"k must be a positive cut-off for {name}, got {k!r}")
    hit = r <= k
    if name == "item_recall":
        return hit.astype(np.float64)
    if name == "item_ndcg":
        return np.where(hit, 1.0 / np.log2(r + 1.0), 0.0)
    if name == "item_ap":
        return np.where(hit, 1.0 / r, 0.0)
    raise ValueError(f"metric must be one of {ITEM_METRICS} or 'item_auc', got {name!r}")


def binomial_rank_matrix(n_neg: int, m: int, ranks: np.ndarray | None = None) -> np.ndarray:
    """A[rho - 1, s - 1] = P(sampled rank s | exact rank rho) for m uniform negatives drawn with replacement.

    Rows are exact ranks 1..n_neg + 1, or the given `ranks` (one row each).
    """
    if n_neg <= 0 or m <= 0:
        raise ValueError(f"n_neg and m must be positive, got n_neg={n_neg!r}, m={m!r}")
    rho = np.arange(1, n_neg + 2, dtype=np.float64) if ranks is None else np.asarray(ranks, dtype=np.float64)
    p = (rho - 1.0) / n_neg  # chance one negative beats an item at rank rho
    x = np.arange(m + 1, dtype=np.float64)
    log_c = np.concatenate([[0.0], np.cumsum(np.log((m - x[1:] + 1.0) / x[1:]))])
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = np.where(x[None, :] > 0, x[None, :] * np.log(p[:, None]), 0.0)
        lq = np.where(m - x[None, :] > 0, (m - x[None, :]) * np.log1p(-p[:, None]), 0.0)
    return np.exp(log_c[None, :] + lp + lq)


def corrected_values(name: str, k: int | None, n_neg: int, m: int, gamma: float) -> np.ndarray:
    """M~(s) for s = 1..m+1: the bias-variance corrected value of a sampled rank (Krichene & Rendle §5).

    Minimises sum_rho [(E[M~ | rho] - M(rho))^2 + gamma Var[M~ | rho]] over exact ranks rho = 1..n_neg + 1:
    x = ((1 - gamma) A^T A + gamma diag(A^T 1))^-1 A^T b, with A from `binomial_rank_matrix`, subject to
    x >= 0 (a metric is never negative): where that solution has negative entries, the same objective is
    minimised over x >= 0 (`nonnegative_quadratic`); elsewhere it is returned unchanged.
    """
    return corrected_table([(name, k)], n_neg, m, gamma)[:, 0]


def corrected_table(metrics: list[tuple[str, int | None]], n_neg: int, m: int, gamma: float) -> np.ndarray:
    """`corrected_values` of several metrics at once, shape (m + 1, len(metrics)): one A^T A, many right sides."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    ranks, weight = rank_grid(n_neg)
    a = binomial_rank_matrix(n_neg, m, ranks)
    b = np.stack([item_metric(name, k, ranks, n_neg) for name, k in metrics], axis=1)
    aw = a * weight[:, None]
    lhs = (1.0 - gamma) * (aw.T @ a) + gamma * np.diag(aw.sum(axis=0))
    rhs = aw.T @ b
    x = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    for j in np.flatnonzero((x < 0).any(axis=0)):  # a metric is never negative: constrain only where needed
        x[:, j] = nonnegative_quadratic(lhs, rhs[:, j], x[:, j])
    return x


def nonnegative_quadratic(q: np.ndarray, c: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """argmin over x >= 0 of x^T q x / 2 - c^T x, q symmetric positive semi-definite (non-negative least squares).

    Lawson & Hanson's active-set NNLS written on the normal equations (q = A^T A, c = A^T b), warm-started
    from the positive entries of `start` (the unconstrained solution): the corrected sampled-metric values
    minimise the same bias-variance objective as `corrected_table`, restricted to values >= 0. At most
    3n + 10 entries join the passive set (each join lowers the objective), and x >= 0 after every step.
    """
    q = np.asarray(q, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    n = len(c)
    tol = 1e-12 * max(1.0, float(np.abs(c).max(initial=0.0)), float(np.abs(q).max(initial=0.0)))

    def solve_on(passive: np.ndarray) -> np.ndarray:
        z = np.zeros(n)
        if passive.any():
            z[passive] = np.linalg.lstsq(q[np.ix_(passive, passive)], c[passive], rcond=None)[0]
        return z

    passive = np.zeros(n, bool) if start is None else np.asarray(start) > 0
    z = solve_on(passive)
    while (z[passive] <= 0).any():  # a feasible start: drop entries until the passive solve is positive
        passive &= z > 0
        z = solve_on(passive)
    x = z
    for _ in range(3 * n + 10):
        grad = c - q @ x  # minus the gradient: > 0 where raising a zero entry lowers the objective
        free = ~passive & (grad > tol)
        if not free.any():
            return x
        passive[int(np.argmax(np.where(free, grad, -np.inf)))] = True
        while True:
            z = solve_on(passive)
            if (z[passive] > 0).all():
                x = z
                break
            hit = np.flatnonzero(passive & (z <= 0))
            ratios = x[hit] / (x[hit] - z[hit])
            x = x + float(ratios.min()) * (z - x)
            x[hit[np.argmin(ratios)]] = 0.0  # the entry that reached the bound leaves, exactly
            passive &= x > tol
            x[~passive] = 0.0
    return x  # not reached in practice; x is feasible (>= 0) at every step


def rank_grid(n_neg: int, exact_up_to: int = 2048, points: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact ranks 1..n_neg+1 with unit weights, or, for large catalogues, every rank up to `exact_up_to`
    and then `points` evenly spaced ranks weighted by the ranks they stand for (the objective's sum over
    rho is smooth there: the metrics are flat and the binomial moves by well under one sampled rank)."""
    top = n_neg + 1
    if top <= exact_up_to + points:
        return np.arange(1, top + 1, dtype=np.float64), np.ones(top)
    head = np.arange(1, exact_up_to + 1, dtype=np.float64)
    edges = np.linspace(exact_up_to + 0.5, top + 0.5, points + 1)
    tail = np.round((edges[:-1] + edges[1:]) / 2.0)
    return np.concatenate([head, tail]), np.concatenate([np.ones(exact_up_to), np.diff(edges)])


def negative_weights(sampler: str, item_counts: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Unnormalised draw weight of every item: 1 (uniform) or train count + 1 (popularity); 0 when absent."""
    present = np.asarray(present, dtype=bool)
    if sampler == "uniform":
        w = np.ones(len(present))
    elif sampler == "popularity":
        w = np.asarray(item_counts, dtype=np.float64) + 1.0  # add-one: every item can be drawn, IPS stays finite
    else:
        raise ValueError(f"sampler must be 'uniform' or 'popularity', got {sampler!r}")
    return np.where(present, w, 0.0)


def sampled_ranks(
    user_vectors: np.ndarray,
    item_factors: np.ndarray,
    user_ids: np.ndarray,
    positive_indptr: np.ndarray,
    positive_indices: np.ndarray,
    test_indptr: np.ndarray,
    test_indices: np.ndarray,
    weights: np.ndarray,
    m: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampled rank and importance-weighted rank estimate of every held-out item, and each user's n_neg.

    Negatives for user row r are m draws with replacement, P(j) proportional to `weights[j]` over items
    outside row r of `positive_indptr/indices` (history and held-out items); the generator is seeded by
    (seed, user id), so a user's sample does not depend on how users were batched.
    """
    if m <= 0:
        raise ValueError(f"m must be a positive sample size, got {m!r}")
    uv = np.asarray(user_vectors, dtype=np.float64)
    itf = np.asarray(item_factors, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    cum = np.cumsum(w)
    total = cum[-1] if len(cum) else 0.0
    pp, px = np.asarray(positive_indptr, np.int64), np.asarray(positive_indices, np.int64)
    tp, tx = np.asarray(test_indptr, np.int64), np.asarray(test_indices, np.int64)
    n_rows = uv.shape[0]
    s_rank = np.zeros(len(tx), dtype=np.int64)
    ips = np.zeros(len(tx), dtype=np.float64)
    n_neg = np.zeros(n_rows, dtype=np.int64)
    positive_count = int((w > 0).sum())
    for r in range(n_rows):
        pos = np.unique(px[pp[r]:pp[r + 1]])
        pos_w = w[pos].sum()
        n_neg[r] = positive_count - int((w[pos] > 0).sum())
        lo, hi = tp[r], tp[r + 1]
        if hi == lo or n_neg[r] == 0:
            continue
        rng = np.random.default_rng([int(seed), int(user_ids[r])])
        neg = np.empty(0, dtype=np.int64)
        while len(neg) < m:  # rejection: draw from the whole catalogue, drop the user's positives
            draw = np.searchsorted(cum, rng.random(2 * m + 8) * total, side="right").clip(0, len(w) - 1)
            draw = draw[w[draw] > 0]
            neg = np.concatenate([neg, draw[~np.isin(draw, pos)]])
        neg = neg[:m]
        q = w[neg] / (total - pos_w)
        neg_scores = itf[neg] @ uv[r]
        items = tx[lo:hi]
        t_scores = itf[items] @ uv[r]
        beats = (neg_scores[None, :] > t_scores[:, None]) | (
            (neg_scores[None, :] == t_scores[:, None]) & (neg[None, :] < items[:, None]))
        s_rank[lo:hi] = 1 + beats.sum(axis=1)
        ips[lo:hi] = 1.0 + (beats / q[None, :]).sum(axis=1) / m
    return s_rank, ips, n_neg
