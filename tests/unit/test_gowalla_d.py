"""The Gowalla d-sweep benchmark (benchmarks/gowalla_d.py) on a small planted split."""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks import gowalla_d as G
from benchmarks.datasets import Split, _csr_from_pairs, validation_split


def _planted(n_users: int = 300, n_items: int = 120, per_user: int = 12, seed: int = 0) -> Split:
    """Users draw items from one of four item clusters: a rank-4 structure any d >= 4 model can find."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        cluster = u % 4
        pool = np.arange(cluster * (n_items // 4), (cluster + 1) * (n_items // 4))
        chosen = rng.choice(pool, per_user, replace=False)
        users += [u] * per_user
        items += list(chosen)
    u, i = np.array(users, np.int32), np.array(items, np.int32)
    indptr, indices = _csr_from_pairs(u[:0].astype(np.int64), i[:0].astype(np.int64), n_users)
    return Split("planted", n_users, n_items, u, i, np.ones(len(u)), indptr, indices)


def _args(**kw: object) -> argparse.Namespace:
    base = {"dims": "8,16", "alpha0": "0.01", "reg": "0.003,0.01", "nu": "1.0", "epochs": 3, "solver": "cg",
            "cg_steps": 3, "block_size": ""}
    return argparse.Namespace(**{**base, **kw})


def test_grid_is_the_product_of_the_axes_and_clamps_the_block_size() -> None:
    g = G.grid(_args())
    assert [(p["dim"], p["reg"]) for p in g] == [(8, 0.003), (8, 0.01), (16, 0.003), (16, 0.01)]
    assert all(p["reg_counts"] == "all" and "solver_block_size" not in p for p in g)
    s = G.grid(_args(solver="subspace", block_size="4,32", reg="0.003"))
    assert [(p["dim"], p["solver_block_size"]) for p in s] == [(8, 4), (8, 8), (16, 4), (16, 16)]


def test_run_point_scores_the_planted_structure_well_above_chance() -> None:
    val = validation_split(_planted(), fraction=0.2, seed=0)
    p = G.grid(_args(dims="8", reg="0.003", epochs=8))[0]
    rec = G.run_point(val, p)
    chance = 20 / val.n_items  # Recall@20 of a random ranking
    assert rec["val_metrics"]["recall@20"] > 3 * chance  # cluster items fill the top 20 of 30 candidates
    assert rec["seconds_per_epoch"] > 0 and 0 < rec["cpu_seconds"] and rec["peak_rss_mib"] > 0
    assert rec["params"] == p


def test_report_puts_the_test_figure_on_the_shipped_profile_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(G, "RESULTS", tmp_path)
    monkeypatch.setattr(G, "OUT_JSON", tmp_path / "gowalla_d.json")
    monkeypatch.setattr(G, "OUT_MD", tmp_path / "gowalla_d.md")
    pts = []
    for d, r in ((8, 0.11), (16, 0.22)):
        pts.append({"params": {**G.grid(_args(dims=str(d), reg="0.003"))[0]}, "val_metrics": {"recall@20": r},
                    "fit_seconds": 1.0, "seconds_per_epoch": 0.5, "user_half_step_s": 0.2, "item_half_step_s": 0.3,
                    "peak_rss_mib": 10.0, "load_before": [1.0, 1.0, 1.0]})
    G.save_points(pts[:1])
    G.save_points(pts)  # merging keeps one record per setting
    assert len(G.load_points()) == 2
    conf = {**pts[1]["params"], "init_scale": 0.1, "seed": 0}  # the conf row carries every ModelConfig key
    run = {"dataset": "gowalla", "label": "gramian (conf)", "params": conf, "metrics": {"recall@20": 0.1875},
           "fit_seconds": 9.0, "seconds_per_epoch": 0.6, "peak_rss_mib": 20.0, "load_before": [2.0, 2.0, 2.0]}
    (tmp_path / "train.json").write_text(json.dumps({"runs": [run]}))
    rows = [ln for ln in G.write_md(G.load_points()).read_text().splitlines() if ln.startswith("| 8 ")
            or ln.startswith("| 16 ")]
    assert "0.1875" not in rows[0] and "| 0.2200 | 0.1875 |" in rows[1]


def test_points_scored_during_one_fit_match_separate_fits_of_those_epochs(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(G, "RESULTS", tmp_path)
    monkeypatch.setattr(G, "OUT_JSON", tmp_path / "gowalla_d.json")
    monkeypatch.setattr(G, "OUT_MD", tmp_path / "gowalla_d.md")
    val = validation_split(_planted(), fraction=0.2, seed=0)
    p = G.grid(_args(dims="8", reg="0.003", epochs=4))[0]
    during = G.run_points_at(val, p, [2, 4])
    assert [r["params"]["epochs"] for r in during] == [2, 4]
    for rec in during:  # same seed, same trajectory: what a fit of that many epochs scores
        alone = G.run_point(val, {**p, "epochs": rec["params"]["epochs"]})
        assert rec["val_metrics"]["recall@20"] == alone["val_metrics"]["recall@20"]
        assert rec["cpu_seconds_per_epoch"] > 0 and rec["fit_seconds"] > 0 and rec["peak_rss_mib"] > 0
    assert {json.dumps(r["params"], sort_keys=True) for r in G.load_points()} == \
        {json.dumps(r["params"], sort_keys=True) for r in during}  # saved as scored
    assert "(" in [ln for ln in G.write_md(G.load_points()).read_text().splitlines() if ln.startswith("| 8 ")][0]
