"""The benchmark's item-item peers against their definitions on tiny data (brute force, dense)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from benchmarks.datasets import Split
from benchmarks.evaluation import evaluate
from benchmarks.item_item import ease_dual_scorer, ease_weights, fit_ease, fit_rp3beta, rp3beta_weights


def _random_history(n_users=30, n_items=12, density=0.3, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float32)
    x[:, 0] = 1.0  # a popular item
    return sp.csr_matrix(x)


def test_ease_weights_solve_the_constrained_ridge_problem():
    x = _random_history()
    reg = 5.0
    b = ease_weights(x, reg).astype(np.float64)
    g = (x.T @ x).toarray().astype(np.float64)
    assert np.allclose(np.diag(b), 0.0)
    # KKT of min ||X - XB||^2 + reg ||B||^2 s.t. diag(B) = 0: (G + reg I) B - G is diagonal
    kkt = (g + reg * np.eye(len(g))) @ b - g
    off = kkt - np.diag(np.diag(kkt))
    assert np.abs(off).max() < 1e-4 * np.abs(g).max()


def test_ease_beats_a_perturbed_b_on_its_own_objective():
    x = _random_history(seed=1)
    reg = 2.0
    b = ease_weights(x, reg).astype(np.float64)
    xd = x.toarray().astype(np.float64)

    def objective(m):
        return np.sum((xd - xd @ m) ** 2) + reg * np.sum(m ** 2)

    rng = np.random.default_rng(0)
    for _ in range(5):
        e = rng.normal(scale=1e-2, size=b.shape)
        np.fill_diagonal(e, 0.0)
        assert objective(b) < objective(b + e)


def test_ease_through_the_user_side_scores_as_the_item_side_b():
    x = _random_history(n_users=8, n_items=20, density=0.4, seed=4)  # fewer users than items: the dual's case
    reg = 1.5
    b = ease_weights(x, reg).astype(np.float64)
    users = np.array([0, 3, 7, 5])
    dual = ease_dual_scorer(x, reg)(users)
    primal = x[users].toarray().astype(np.float64) @ b
    assert np.allclose(dual, primal, atol=1e-4 * np.abs(primal).max())
    assert not np.allclose(ease_dual_scorer(x, 2 * reg)(users), primal, atol=1e-4 * np.abs(primal).max())


def test_rp3beta_equals_its_dense_definition():
    x = _random_history(seed=2)
    alpha, beta, topk = 0.8, 0.4, 5
    w = rp3beta_weights(x, alpha, beta, topk, block=5).toarray()
    e = (x.toarray() > 0).astype(np.float64)
    p_ui = e / e.sum(axis=1, keepdims=True)
    p_iu = e.T / e.T.sum(axis=1, keepdims=True)
    dense = (p_iu ** alpha) @ (p_ui ** alpha) * (e.sum(axis=0) ** -beta)[None, :]
    np.fill_diagonal(dense, 0.0)
    for i, row in enumerate(dense):
        keep = np.argsort(-row, kind="stable")[:topk]
        expect = np.zeros_like(row)
        expect[keep] = row[keep]
        expect /= expect.sum()
        assert np.allclose(w[i], expect, atol=1e-6), i
    assert ((w > 0).sum(axis=1) <= topk).all()


def _split_of(x: sp.csr_matrix, test_items: list[list[int]]) -> Split:
    coo = x.tocoo()
    test = sp.lil_matrix(x.shape)
    for u, items in enumerate(test_items):
        for i in items:
            test[u, i] = 1
    test = test.tocsr()
    return Split("tiny", x.shape[0], x.shape[1], coo.row.astype(np.int32), coo.col.astype(np.int32),
                 np.ones(len(coo.row)), test.indptr.astype(np.int64), test.indices.astype(np.int32))


def test_item_item_scorers_rank_exactly_like_their_dense_scores():
    rng = np.random.default_rng(3)
    x = _random_history(n_users=20, n_items=15, seed=3)
    held = [[int(rng.choice(np.flatnonzero(x[u].toarray()[0] == 0)))] for u in range(20)]
    split = _split_of(x, held)
    fits = (fit_ease(split, {"reg": 3.0}), fit_rp3beta(split, {"alpha": 1.0, "beta": 0.2, "topk": 6}))
    for r in fits:
        scores = r.scorer(np.arange(20))
        via_factors = evaluate(split, scores.astype(np.float64), np.eye(15), ks=(5,))  # S @ I.T = S
        via_scorer = evaluate(split, r.user_factors, r.item_factors, ks=(5,), scorer=r.scorer)
        assert via_scorer["recall@5"] == via_factors["recall@5"]
        assert via_scorer["ndcg@5"] == via_factors["ndcg@5"]


def test_rp3beta_steps_move_one_axis_at_a_time_and_stay_in_range() -> None:
    """The climb's neighbours differ from the start in exactly one key; beta never goes below 0, topk stays int."""
    from benchmarks.tune import rp3beta_steps

    start = {"alpha": 0.75, "beta": 0.0, "topk": 100, "weights": "binary"}
    steps = rp3beta_steps(start)
    assert all(sum(s[k] != start[k] for k in start) == 1 for s in steps)
    assert {(k, s[k]) for s in steps for k in start if s[k] != start[k]} == {
        ("alpha", 0.625), ("alpha", 0.875), ("beta", 0.1), ("topk", 50), ("topk", 200)}
    assert all(isinstance(s["topk"], int) for s in steps)
