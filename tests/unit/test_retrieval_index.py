"""The item index against exact scoring: exhaustive ScaNN equals exact, history never returned, cache, params."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gramian.config import PublishConfig
from gramian.errors import ConfigError, InputDataError
from gramian.kernels.ranking import topk_excluding
from gramian.retrieval.index import build_index, choose_params, index_recall, load_index, topn_excluding

EXHAUSTIVE = PublishConfig(brute_force_below=0, num_leaves=20, num_leaves_to_search=20, quantize="none",
                           training_sample_size=2000)


def _factors(n_users: int = 300, n_items: int = 2000, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_users, d)).astype(np.float32)
    # popularity in the norms, as trained iALS item factors carry it
    h = (rng.standard_normal((n_items, d)) * rng.lognormal(0, 0.5, (n_items, 1))).astype(np.float32)
    return w, h


def _histories(n_users: int, n_items: int, seed: int = 1, max_len: int = 60):
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, max_len, n_users)
    lens[:3] = [0, 1, min(700, n_items // 2)]  # empty, single, and one long history (exact fallback)
    rows = [np.sort(rng.choice(n_items, size=k, replace=False)) for k in lens]
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return indptr, np.concatenate(rows).astype(np.int64)


def test_exhaustive_scann_top_n_equals_exact_top_n(tmp_path):
    w, h = _factors()
    ip, ix = _histories(len(w), len(h))
    index = build_index(h, np.arange(len(h)).astype(str), tmp_path / "ix", EXHAUSTIVE, k=20)
    assert index.params.kind == "scann" and index.searcher is not None
    items, scores, exact = topn_excluding(index, w, ip, ix, 20, exact_history_above=500)
    truth, truth_scores = topk_excluding(w, h, np.arange(len(w)), ip, ix, 20)
    assert exact.sum() == 1 and exact[2]  # only the 700-item history went the exact way
    np.testing.assert_array_equal(items, truth)
    np.testing.assert_allclose(scores, truth_scores, rtol=1e-5, atol=1e-5)


def test_no_history_item_is_ever_returned_and_lists_are_best_first(tmp_path):
    w, h = _factors(seed=3)
    ip, ix = _histories(len(w), len(h), seed=4, max_len=300)
    cfg = dataclasses.replace(EXHAUSTIVE, num_leaves_to_search=2, quantize="ah", dims_per_block=2)
    index = build_index(h, np.arange(len(h)).astype(str), tmp_path / "ix", cfg, k=50)
    items, scores, _ = topn_excluding(index, w, ip, ix, 50, exact_history_above=100)
    for u in range(len(w)):
        hist = set(ix[ip[u]:ip[u + 1]].tolist())
        got = items[u][items[u] >= 0]
        assert len(got) == 50 and len(set(got.tolist())) == 50
        assert not hist & set(got.tolist()), f"user {u} got a training item"
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    np.testing.assert_allclose(scores, np.einsum("ud,und->un", w, h[items]), rtol=1e-5, atol=1e-5)


def test_searcher_that_comes_back_short_falls_back_to_exact(tmp_path):
    w, h = _factors(n_users=40, n_items=600)
    ip, ix = _histories(len(w), len(h), max_len=30)
    # one leaf of 60 searched (~10 of 600 items) can never supply 100 neighbours
    cfg = dataclasses.replace(EXHAUSTIVE, num_leaves=60, num_leaves_to_search=1)
    index = build_index(h, np.arange(len(h)).astype(str), tmp_path / "ix", cfg, k=100)
    items, _, exact = topn_excluding(index, w[:40], ip, ix, 100, exact_history_above=10_000)
    truth, _ = topk_excluding(w[:40], h, np.arange(40), ip, ix, 100)
    assert exact.all()
    np.testing.assert_array_equal(items, truth)


def test_small_catalogue_is_scored_exactly_and_recall_is_one(tmp_path):
    w, h = _factors(n_items=500)
    ip, ix = _histories(len(w), len(h), max_len=20)
    index = build_index(h, np.arange(len(h)).astype(str), tmp_path / "ix", PublishConfig(), k=10)
    assert index.params.kind == "brute" and index.searcher is None
    items, _, exact = topn_excluding(index, w, ip, ix, 10, exact_history_above=500)
    truth, _ = topk_excluding(w, h, np.arange(len(w)), ip, ix, 10)
    assert exact.all() and index_recall(items, truth) == 1.0


def test_loaded_index_is_cached_per_process_and_reloaded_after_a_rebuild(tmp_path):
    _, h = _factors(n_items=3000)
    path = tmp_path / "ix"
    first = build_index(h, np.arange(len(h)).astype(str), path, EXHAUSTIVE, k=10)
    assert load_index(path, first.token) is first
    second = build_index(h * 2, np.arange(len(h)).astype(str), path, EXHAUSTIVE, k=10)
    assert second.token != first.token
    loaded = load_index(path)
    assert loaded.token == second.token
    np.testing.assert_array_equal(loaded.item_factors, h * 2)
    with pytest.raises(InputDataError, match="rebuilt while in use"):
        load_index(path, "stale-token")


def test_index_cache_keeps_the_most_recently_used_indexes_only(tmp_path, monkeypatch):
    from gramian.retrieval import index as index_module

    monkeypatch.setattr(index_module, "_CACHE", index_module.IndexCache(2))
    _, h = _factors(n_items=300, d=4)
    built = [build_index(h + i, np.arange(len(h)).astype(str), tmp_path / f"ix{i}", PublishConfig(), k=5)
             for i in range(2)]
    assert load_index(tmp_path / "ix0", built[0].token) is built[0]  # ix0 is now the most recent
    third = build_index(h + 2, np.arange(len(h)).astype(str), tmp_path / "ix2", PublishConfig(), k=5)
    assert len(index_module._CACHE) == 2
    assert load_index(tmp_path / "ix0", built[0].token) is built[0]
    assert load_index(tmp_path / "ix2", third.token) is third
    reloaded = load_index(tmp_path / "ix1", built[1].token)  # evicted (least recently used): read again
    assert reloaded is not built[1] and reloaded.token == built[1].token
    np.testing.assert_array_equal(reloaded.item_factors, h + 1)
    assert len(index_module._CACHE) == 2 and load_index(tmp_path / "ix0", built[0].token) is not built[0]


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_index_cache_size_from_the_environment_must_be_positive(monkeypatch, value):
    from gramian.retrieval import index as index_module

    monkeypatch.setenv("GRAMIAN_INDEX_CACHE_SIZE", value)
    with pytest.raises(ConfigError, match=r"GRAMIAN_INDEX_CACHE_SIZE must be a whole number >= 1, got"):
        index_module._cache_size()
    monkeypatch.setenv("GRAMIAN_INDEX_CACHE_SIZE", "5")
    assert index_module._cache_size() == 5


def test_index_params_follow_catalogue_size_with_config_overrides():
    assert choose_params(19_999, 64, PublishConfig()).kind == "brute"
    big = choose_params(1_000_000, 64, PublishConfig())
    assert big.kind == "scann" and big.num_leaves == 1000 and big.quantize == "ah"
    assert big.num_leaves_to_search == int(np.ceil(1000 * PublishConfig().search_fraction))
    small = choose_params(40_981, 64, PublishConfig())  # Gowalla: >= 400 items a leaf, searched leaves scored exactly
    assert (small.num_leaves, small.num_leaves_to_search, small.quantize) == (102, 8, "none")
    over = choose_params(1_000_000, 64, PublishConfig(num_leaves=500, num_leaves_to_search=500, quantize="none"))
    assert (over.num_leaves, over.num_leaves_to_search, over.quantize) == (500, 500, "none")
    with pytest.raises(ConfigError, match="num_leaves_to_search must be <= num_leaves"):
        choose_params(1_000_000, 64, PublishConfig(num_leaves=10, num_leaves_to_search=11))


def test_index_recall_counts_overlap_and_ignores_padding():
    exact = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    approx = np.array([[1, 2, 9, 8], [6, 5, -1, -1]])
    assert index_recall(approx, exact) == pytest.approx((0.5 + 1.0) / 2)
