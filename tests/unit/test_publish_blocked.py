"""Unavailable items are excluded like history: with_blocked's CSR rows against a per-row reference."""

from __future__ import annotations

import numpy as np

from gramian.retrieval.index import IndexParams, ItemIndex, topn_excluding, with_blocked


def test_every_row_gains_the_blocked_items_once_and_keeps_its_own_history():
    rng = np.random.default_rng(0)
    lens = np.array([0, 3, 1, 0, 5])
    ip = np.concatenate([[0], np.cumsum(lens)])
    ix = rng.integers(0, 12, size=ip[-1])
    blocked = np.array([2, 7, 11])
    new_ip, new_ix = with_blocked(ip, ix, blocked)
    for r in range(len(lens)):
        got = list(new_ix[new_ip[r]:new_ip[r + 1]])
        own = [i for i in ix[ip[r]:ip[r + 1]] if i not in blocked]
        assert got == own + list(blocked)
    assert with_blocked(ip, ix, np.zeros(0, np.int64))[1] is ix


def test_an_exact_index_never_returns_a_blocked_item():
    rng = np.random.default_rng(1)
    h = rng.standard_normal((30, 4)).astype(np.float32)
    index = ItemIndex("mem", "t", IndexParams(kind="brute"), h, np.array([f"i{j}" for j in range(30)]))
    q = rng.standard_normal((6, 4)).astype(np.float32)
    scores = q @ h.T
    blocked = np.argsort(-scores[0])[:3]  # user 0's three best items
    ip, ix = with_blocked(np.zeros(7, np.int64), np.zeros(0, np.int64), blocked)
    items, _, _ = topn_excluding(index, q, ip, ix, 5, 500)
    assert not np.isin(items, blocked).any()
    assert (items >= 0).all()
