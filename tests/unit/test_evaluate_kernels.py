"""Held-out ranks, metrics from ranks and sampled-metric corrections (kernels) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gramian.kernels.ranking import heldout_ranks, metrics_from_ranks, ranking_metrics, topk_excluding
from gramian.kernels.sampled import (
    binomial_rank_matrix,
    corrected_values,
    item_metric,
    negative_weights,
    nonnegative_quadratic,
    sampled_ranks,
)
from tests.oracles import list_metrics, topk_list_metrics


def _csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    return indptr, np.array([i for r in rows for i in r], dtype=np.int64)


# Six items scored 3, 1, 2, 2, 5, 0 by every user (d = 1, user vector [1]).
ITEMS = np.array([[3.0], [1.0], [2.0], [2.0], [5.0], [0.0]])
USERS = np.ones((3, 1))
HISTORY = [[4], [], [1]]
TEST = [[3, 1], [4, 0, 2], []]


def test_heldout_ranks_exclude_history_and_break_ties_by_lower_item_id():
    ranks, n_cand = heldout_ranks(USERS, ITEMS, *_csr(HISTORY), *_csr(TEST), item_block=4)
    # user 0: candidates 0,1,2,3,5 -> 0 (3), 2 (2), 3 (2, tie lost to item 2), 1 (1), 5 (0)
    # user 1: no history -> 4, 0, 2, 3, 1, 5
    assert ranks.tolist() == [3, 4, 1, 2, 3]
    assert n_cand.tolist() == [5, 6, 5]


def test_metrics_from_ranks_match_hand_computed_values():
    ip, _ = _csr(TEST)
    m = metrics_from_ranks(ip, np.array([3, 4, 1, 2, 3]), np.array([5, 6, 5]), [1, 3])
    # user 0, ranks {3, 4} of 5 candidates
    assert m["precision@1"][0] == 0 and m["recall@1"][0] == 0 and m["ndcg@1"][0] == 0 and m["ap@1"][0] == 0
    assert m["precision@3"][0] == pytest.approx(1 / 3)
    assert m["recall@3"][0] == pytest.approx(1 / 2)
    assert m["recall_min@3"][0] == pytest.approx(1 / 2)
    assert m["ap@3"][0] == pytest.approx((1 / 3) / 2)  # precision at rank 3 is 1/3, over min(2, 3)
    assert m["ndcg@3"][0] == pytest.approx((1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert m["auc"][0] == pytest.approx(2 / 6)  # both held-out items beat only item 5
    # user 1: three held-out items at ranks 1, 2, 3; k = 1 < |T| = 3
    assert m["precision@1"][1] == 1 and m["recall@1"][1] == pytest.approx(1 / 3) and m["recall_min@1"][1] == 1
    assert m["ap@1"][1] == 1 and m["ndcg@1"][1] == pytest.approx(1.0) and m["auc"][1] == 1
    assert m["recall@3"][1] == 1 and m["ap@3"][1] == pytest.approx(1.0)
    # user 2 has no held-out items: NaN, never 0
    assert all(np.isnan(v[2]) for v in m.values())


def test_metrics_from_ranks_reject_non_positive_k():
    with pytest.raises(ValueError, match="positive cut-offs"):
        metrics_from_ranks(np.array([0, 1]), np.array([1]), np.array([5]), [0, 10])


def _brute_ranks(uf, itf, hist, test):
    out = []
    scores = uf @ itf.T
    for u, items in enumerate(test):
        cand = [i for i in range(itf.shape[0]) if i not in set(hist[u])]
        order = sorted(cand, key=lambda i: (-float(scores[u, i]), i))
        out += [order.index(i) + 1 for i in items]
    return out


def test_heldout_ranks_equal_brute_force_and_metrics_equal_topk_lists():
    rng = np.random.default_rng(3)
    n_users, n_items, d = 40, 57, 5
    uf, itf = rng.normal(size=(n_users, d)), rng.normal(size=(n_items, d))
    itf[7] = itf[3]  # a tie between two items
    hist, test = [], []
    for _ in range(n_users):
        perm = rng.permutation(n_items)
        a, b = rng.integers(0, 20), rng.integers(0, 15)
        hist.append(sorted(perm[:a].tolist()))
        test.append(sorted(perm[a:a + b].tolist()))
    ranks, n_cand = heldout_ranks(uf, itf, *_csr(hist), *_csr(test), item_block=16)
    assert ranks.tolist() == _brute_ranks(uf, itf, hist, test)
    assert n_cand.tolist() == [n_items - len(h) for h in hist]
    ks = [1, 5, 10]
    per_user = metrics_from_ranks(_csr(test)[0], ranks, n_cand, ks)
    top, _ = topk_excluding(uf, itf, np.arange(n_users), *_csr(hist), max(ks))
    ref = topk_list_metrics(top, *_csr(test), ks)  # the slow twin, row by row off the lists
    lists = ranking_metrics(top, *_csr(test), ks)  # the kernel reading ranks off the same lists
    for k in ks:
        for name in ("recall", "recall_min", "precision", "ndcg"):
            assert np.nanmean(per_user[f"{name}@{k}"]) == pytest.approx(ref[f"{name}@{k}"], abs=1e-12)
            assert lists[f"{name}@{k}"] == pytest.approx(ref[f"{name}@{k}"], abs=1e-12)
    oracle = list_metrics(uf, itf, [np.array(h, np.int64) for h in hist], [np.array(t, np.int64) for t in test], ks)
    has = np.array([len(t) > 0 for t in test])
    for key, values in oracle.items():
        np.testing.assert_allclose(per_user[key][has], values[has], atol=1e-12, err_msg=key)


def test_binomial_rank_matrix_rows_are_distributions_with_the_right_mean():
    a = binomial_rank_matrix(50, 10)
    assert a.shape == (51, 11)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-12)
    means = a @ np.arange(11)
    np.testing.assert_allclose(means, 10 * np.arange(51) / 50, atol=1e-10)
    assert a[0, 0] == pytest.approx(1.0) and a[50, 10] == pytest.approx(1.0)  # best never beaten, worst always


def test_corrected_recall_has_much_less_bias_than_naive_over_all_ranks():
    n, m, k = 2000, 100, 10
    a = binomial_rank_matrix(n, m)
    exact = item_metric("item_recall", k, np.arange(1, n + 2), n)
    naive = item_metric("item_recall", k, np.arange(1, m + 2), m)
    corr = corrected_values("item_recall", k, n, m, gamma=0.01)
    bias_naive = np.abs(a @ naive - exact).mean()
    bias_corr = np.abs(a @ corr - exact).mean()
    assert bias_corr < bias_naive / 5, (bias_corr, bias_naive)


def test_sampled_ranks_respect_extremes_positives_and_seed():
    itf = np.arange(20, dtype=np.float64)[:, None]  # item i scores i
    uv = np.ones((2, 1))
    pos_ip, pos_ix = _csr([[19, 0, 5], [3]])
    t_ip, t_ix = _csr([[19, 0], [3]])
    w = negative_weights("uniform", np.zeros(20), np.ones(20, bool))
    s, ips, n_neg = sampled_ranks(uv, itf, np.array([7, 8]), pos_ip, pos_ix, t_ip, t_ix, w, 30, seed=1)
    assert n_neg.tolist() == [17, 19]
    assert s[0] == 1 and s[1] == 31  # best item never beaten, worst always beaten by all 30 negatives
    assert ips[0] == 1.0 and ips[1] == pytest.approx(1 + 17)  # importance weights recover the exact rank
    again = sampled_ranks(uv[1:], itf, np.array([8]), *_csr([[3]]), *_csr([[3]]), w, 30, seed=1)
    assert again[0][0] == s[2]  # a user's sample does not depend on the batch it is in


def test_popularity_weights_are_add_one_counts_and_zero_for_absent_items():
    w = negative_weights("popularity", np.array([0, 4, 2]), np.array([True, True, False]))
    assert w.tolist() == [1.0, 5.0, 0.0]
    with pytest.raises(ValueError, match="sampler"):
        negative_weights("zipf", np.zeros(3), np.ones(3, bool))


def test_rank_grid_correction_matches_the_exact_sum_over_all_ranks():
    from gramian.kernels.sampled import corrected_table, rank_grid

    ranks, weight = rank_grid(30000, exact_up_to=500, points=500)
    assert len(ranks) == 1000 and weight.sum() == pytest.approx(30001)
    metrics = [("item_recall", 10), ("item_ndcg", 20), ("item_auc", None)]
    coarse = corrected_table(metrics, 30000, 50, 0.01)
    a = binomial_rank_matrix(30000, 50)  # every rank: the objective as written in the paper
    b = np.stack([item_metric(n, k, np.arange(1, 30002), 30000) for n, k in metrics], axis=1)
    lhs = 0.99 * (a.T @ a) + 0.01 * np.diag(a.sum(axis=0))
    full = np.stack([nonnegative_quadratic(lhs, a.T @ b[:, j]) for j in range(b.shape[1])], axis=1)
    np.testing.assert_allclose(a @ coarse, a @ full, atol=2e-3)  # same expected corrected value at every rank


def _unconstrained(name, k, n_neg, m, gamma):
    """The bias-variance correction as written in Krichene & Rendle (no sign constraint), every rank."""
    a = binomial_rank_matrix(n_neg, m)
    b = item_metric(name, k, np.arange(1, n_neg + 2), n_neg)
    lhs = (1 - gamma) * (a.T @ a) + gamma * np.diag(a.sum(axis=0))
    return np.linalg.solve(lhs, a.T @ b)


def test_corrected_values_are_never_negative_and_unchanged_where_the_unconstrained_ones_are_not():
    n_neg, m, gamma = 1500, 100, 0.01
    for name, k in (("item_ap", 10), ("item_recall", 20), ("item_ndcg", 10)):
        free = _unconstrained(name, k, n_neg, m, gamma)
        assert free.min() < -0.05, (name, free.min())  # the unconstrained estimator goes negative here
        got = corrected_values(name, k, n_neg, m, gamma)
        assert got.min() >= 0.0, (name, got.min())
        # still an estimator: its expectation follows the exact metric over the ranks
        exact = item_metric(name, k, np.arange(1, n_neg + 2), n_neg)
        assert np.abs(binomial_rank_matrix(n_neg, m) @ got - exact).mean() < 0.01
    free = _unconstrained("item_auc", None, n_neg, m, gamma)
    assert free.min() >= 0
    np.testing.assert_allclose(corrected_values("item_auc", None, n_neg, m, gamma), free, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_nonnegative_quadratic_equals_brute_force_over_every_support(seed):
    """The active-set NNLS against its slow twin: the best non-negative stationary point over all 2^n supports."""
    import itertools

    rng = np.random.default_rng(seed)
    n = 7
    a = rng.normal(size=(12, n))
    q, c = a.T @ a + 0.01 * np.eye(n), a.T @ rng.normal(size=12)
    best, best_obj = np.zeros(n), 0.0
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            s = list(support)
            z = np.zeros(n)
            z[s] = np.linalg.solve(q[np.ix_(s, s)], c[s])
            obj = 0.5 * z @ q @ z - c @ z
            if z.min() >= 0 and obj < best_obj:
                best, best_obj = z, obj
    free = np.linalg.solve(q, c)
    for start in (None, free):
        np.testing.assert_allclose(nonnegative_quadratic(q, c, start), best, atol=1e-9)
