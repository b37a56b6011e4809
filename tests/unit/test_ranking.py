"""Exact top-k and ranking metrics (kernels/ranking.py) against brute force and hand-computed lists."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gramian.kernels.ranking import ranking_metrics, topk_excluding
from tests.oracles import topk_list_metrics


def _csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int64)
    return indptr, indices


def _random_split(rng: np.random.Generator, n_users: int, n_items: int) -> tuple[list, list]:
    train, test = [], []
    for _ in range(n_users):
        perm = rng.permutation(n_items)
        n_tr, n_te = rng.integers(0, n_items // 2), rng.integers(0, n_items // 3)
        train.append(sorted(perm[:n_tr].tolist()))
        test.append(sorted(perm[n_tr:n_tr + n_te].tolist()))
    return train, test


def _brute_topk(uf, itf, train_rows, users, k):
    """Double loop: score every (user, item), drop train items, sort descending."""
    out = []
    for u in users:
        scored = []
        for i in range(itf.shape[0]):
            if i in set(train_rows[u]):
                continue
            scored.append((float(np.dot(uf[u].astype(np.float64), itf[i].astype(np.float64))), i))
        scored.sort(key=lambda t: (-t[0], t[1]))  # equal scores: lower item id first
        out.append([i for _, i in scored[:k]] + [-1] * max(0, k - len(scored)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_size", [1, 3, 2048])
@pytest.mark.parametrize("n_items", [13, 300])  # 300 > 8k: the chunk-maximum prefilter path
def test_topk_excluding_matches_brute_force_double_loop(seed: int, batch_size: int, n_items: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, d, k = 9, 4, 5
    uf = rng.normal(size=(n_users, d))
    itf = rng.normal(size=(n_items, d))
    train, _ = _random_split(rng, n_users, n_items)
    indptr, indices = _csr(train)
    users = rng.permutation(n_users)[:7]
    items, scores = topk_excluding(uf, itf, users, indptr, indices, k, batch_size=batch_size)
    assert items.dtype == np.int32 and items.shape == (7, k)
    assert items.tolist() == _brute_topk(uf, itf, train, users, k)
    for row, u in enumerate(users):
        valid = items[row] >= 0
        np.testing.assert_allclose(scores[row][valid], itf[items[row][valid]] @ uf[u], rtol=1e-12)
        assert np.all(np.isneginf(scores[row][~valid]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_match_brute_force_on_random_lists(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items, k_max = 20, 15, 10
    uf, itf = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    train, test = _random_split(rng, n_users, n_items)
    tr_ptr, tr_ix = _csr(train)
    te_ptr, te_ix = _csr(test)
    users = np.arange(n_users)
    items, _ = topk_excluding(uf, itf, users, tr_ptr, tr_ix, k_max)
    got = ranking_metrics(items, te_ptr, te_ix, [1, 3, 10])
    for k in (1, 3, 10):
        want = topk_list_metrics(items, te_ptr, te_ix, [k], users)
        for key in (f"recall@{k}", f"recall_min@{k}", f"precision@{k}", f"ndcg@{k}", "users"):
            assert got[key] == pytest.approx(want[key], rel=1e-12), key


@pytest.mark.parametrize("n_items", [12, 400])
def test_topk_excluding_breaks_ties_by_item_id_like_the_brute_force(n_items: int) -> None:
    rng = np.random.default_rng(7)
    uf = rng.integers(-2, 3, size=(6, 2)).astype(np.float64)
    itf = rng.integers(-2, 3, size=(n_items, 2)).astype(np.float64)  # many exactly equal scores
    train, _ = _random_split(rng, 6, n_items)
    indptr, indices = _csr(train)
    items, _ = topk_excluding(uf, itf, np.arange(6), indptr, indices, k=4)
    assert items.tolist() == _brute_topk(uf, itf, train, np.arange(6), 4)


def test_topk_excluding_pads_users_with_almost_every_item_in_train_on_a_wide_catalogue() -> None:
    rng = np.random.default_rng(3)
    uf, itf = rng.normal(size=(1, 3)), rng.normal(size=(100, 3))
    indptr, indices = _csr([list(range(2, 100))])
    items, scores = topk_excluding(uf, itf, np.array([0]), indptr, indices, k=5)
    assert sorted(items[0, :2].tolist()) == [0, 1] and items[0, 2:].tolist() == [-1, -1, -1]
    assert np.isneginf(scores[0, 2:]).all() and scores[0, 0] >= scores[0, 1]


def test_topk_excluding_rejects_non_finite_factors() -> None:
    with pytest.raises(ValueError, match="finite"):
        topk_excluding(np.array([[np.nan]]), np.ones((3, 1)), np.array([0]), np.array([0, 0]),
                       np.array([], dtype=np.int64), k=1)


def test_topk_excluding_never_returns_a_training_item_and_pads_exhausted_users() -> None:
    uf = np.array([[1.0], [1.0]])
    itf = np.array([[3.0], [2.0], [1.0]])
    indptr, indices = _csr([[0, 1], []])
    items, scores = topk_excluding(uf, itf, np.array([0, 1]), indptr, indices, k=4)
    assert items.tolist() == [[2, -1, -1, -1], [0, 1, 2, -1]]
    assert scores[0, 0] == 1.0 and np.isneginf(scores[0, 1:]).all() and np.isneginf(scores[1, 3])


def test_ranking_metrics_hand_computed_user_with_more_test_items_than_k() -> None:
    # User 0: ranking [5, 1, 7], test {1, 5, 8, 9} (4 > k=3): hits at ranks 1 and 2.
    # User 1: ranking [2, 3, 4], test {4}: hit at rank 3.  User 2: no test items, skipped.
    top = np.array([[5, 1, 7], [2, 3, 4], [0, 1, 2]])
    indptr, indices = _csr([[1, 5, 8, 9], [4], []])
    m = ranking_metrics(top, indptr, indices, ks=[3])
    assert m["users"] == 2
    assert m["recall@3"] == pytest.approx((2 / 4 + 1 / 1) / 2)
    assert m["recall_min@3"] == pytest.approx((2 / 3 + 1 / 1) / 2)
    assert m["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    ndcg0 = (1 + 1 / math.log2(3)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    ndcg1 = (1 / math.log2(4)) / 1.0
    assert m["ndcg@3"] == pytest.approx((ndcg0 + ndcg1) / 2)


def test_ranking_metrics_reads_test_rows_of_the_given_users() -> None:
    top = np.array([[4, 0], [1, 2]])
    indptr, indices = _csr([[0], [], [2], [], [9]])
    m = ranking_metrics(top, indptr, indices, ks=[1, 2], users=np.array([4, 2]))
    # user 4 (test {9}): no hit; user 2 (test {2}): hit at rank 2.
    assert m["users"] == 2
    assert m["recall@1"] == 0.0 and m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((0 + 1 / math.log2(3)) / 2)


def test_ranking_metrics_never_counts_padding_as_a_hit() -> None:
    indptr, indices = _csr([[0, 2]])
    m = ranking_metrics(np.array([[2, -1, -1]]), indptr, indices, ks=[3])
    assert m["recall@3"] == pytest.approx(0.5) and m["precision@3"] == pytest.approx(1 / 3)


def test_ranking_metrics_rejects_k_beyond_the_computed_list() -> None:
    with pytest.raises(ValueError, match="largest k=5"):
        ranking_metrics(np.zeros((1, 3), dtype=np.int32), np.array([0, 1]), np.array([0]), ks=[5])


def test_topk_excluding_rejects_users_outside_the_factor_rows() -> None:
    with pytest.raises(ValueError, match="users must index rows"):
        topk_excluding(np.ones((2, 1)), np.ones((3, 1)), np.array([2]), np.array([0, 0, 0]),
                       np.array([], dtype=np.int64), k=1)
