"""The package-defaults benchmark (benchmarks/defaults_bench.py) on a small generated split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import defaults_bench as B
from benchmarks.datasets import _from_pairs, holdout
from gramian.data.synthetic import generate


@pytest.fixture
def results(tmp_path, monkeypatch):
    """defaults.json, the per-user files and tuning.json pointed at a temporary folder."""
    monkeypatch.setattr(B, "OUT_JSON", tmp_path / "defaults.json")
    monkeypatch.setattr(B, "WORK", tmp_path / "work")
    monkeypatch.setattr(B.T, "load_results", lambda: [])
    return tmp_path


def _split(name: str = "gen"):
    g = generate(300, 150, 6000, rank=4, signal=3.0, counts=False, timestamps=False, seed=1)
    users, items = g["user"].astype(np.int64), g["item"].astype(np.int64)
    mask = holdout(users, 0.2, seed=0)
    return _from_pairs(name, users, items, g["weight"], mask, {"split": "random 20% per user, seed 0"})


def test_candidates_are_size_scaled_rules_holding_the_old_defaults():
    cands = B.candidates()
    assert B.BEFORE in cands
    assert len({json.dumps(c, sort_keys=True) for c in cands}) == len(cands)
    assert all(c["alpha0"] is None and c["alpha0_scale_by"] == "geometric" and c["reg_counts"] == "observed"
               for c in cands)
    assert cands[0] == B.BEFORE  # the old defaults first: a run cut short still has the reference
    assert {(p["dim"], p["epochs"]) for p in cands} == {(64, 15), (128, 15), (64, 25)}


def test_peers_include_ease_only_where_its_item_matrix_fits():
    small = [m for _, m, _ in B.peer_settings("ml-100k", 1682)]
    large = [m for _, m, _ in B.peer_settings("gowalla", 40981)]
    assert small.count("mllib") == 2 and "implicit_als" in small and small.count("ease") == 2
    assert "ease" not in large
    assert all(p["weights"] == "binary" for _, _, p in B.peer_settings("lastfm-2k", 100))  # weighted set


def test_rank_orders_candidates_by_their_worst_ratio_to_the_best_peer(results):
    val = _split()
    B.D_ITEMS["gen"] = val.n_items
    label, method, params = next(s for s in B.peer_settings("gen", val.n_items) if s[1] == "implicit_als")
    peer = B.run(val, "gen", method, params, None, label)
    weak = {**B.BEFORE, "epochs": 1, "dim": 2}
    fitted = [B.run(val, "gen", "gramian", p, None) for p in (B.BEFORE, weak)]
    assert all(np.isfinite(t["metrics"]["recall@20"]) for t in [peer, *fitted])
    ranked = B.rank(B.load_doc()["trials"], {"gen": val.notes["split"]})
    assert len(ranked) == 2 and ranked[0]["worst"] >= ranked[1]["worst"]
    by_dim = {r["params"]["dim"]: r for r in ranked}
    assert by_dim[64]["worst"] == pytest.approx(fitted[0]["metrics"]["recall@20"] / peer["metrics"]["recall@20"])
    assert by_dim[64]["worst"] > by_dim[2]["worst"]  # 15 epochs at d=64 beat one epoch at d=2
    again = B.run(val, "gen", "gramian", B.BEFORE, None)  # cached: the stored entry, not a second fit
    assert again["date"] == fitted[0]["date"] and again["wall_seconds"] == fitted[0]["wall_seconds"]


def test_test_phase_entries_keep_per_user_recall_for_paired_intervals(results):
    split = _split()
    a = B.run(split, "gen", "gramian", B.BEFORE, None, "a", per_user=True)
    b = B.run(split, "gen", "gramian", {**B.BEFORE, "epochs": 1, "dim": 2}, None, "b", per_user=True)
    p = B.paired(a, b)
    assert p is not None and p["users"] == int((np.diff(split.test_indptr) > 0).sum())
    assert p["mean"] == pytest.approx(a["metrics"]["recall@20"] - b["metrics"]["recall@20"], abs=1e-9)


def test_the_defaults_stay_unless_a_candidate_beats_their_worst_ratio_by_more_than_the_margin():
    other = {**B.BEFORE, "reg": 0.1}
    ranked = [{"params": other, "worst": 0.999}, {"params": B.BEFORE, "worst": 0.996}]
    assert B.chosen(ranked)["params"] == B.BEFORE  # +0.003: within the noise margin
    ranked[0]["worst"] = 0.996 + B.MARGIN + 0.001
    assert B.chosen(ranked)["params"] == other
    assert B.chosen([{"params": other, "worst": 0.9}])["params"] == other  # the old defaults not fitted everywhere
