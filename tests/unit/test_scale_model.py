"""The scale model's restated rules agree with the trainer's, and its fitting and counting do what they say."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import scale_model as sm
from gramian.config import load_config
from gramian.train.als import default_num_blocks


def _session(parallelism: int) -> SimpleNamespace:
    """What default_num_blocks reads from a classic session: the conf and the context's parallelism."""
    return SimpleNamespace(conf=SimpleNamespace(get=lambda key: str(parallelism)),
                           sparkContext=SimpleNamespace(defaultParallelism=parallelism))


@pytest.mark.parametrize("parallelism", [2, 200, 800])
@pytest.mark.parametrize("nnz", [810_128, 10_000_000, 1_000_000_000, 4_000_001])
def test_default_blocks_match_the_trainer(parallelism: int, nnz: int) -> None:
    assert sm.default_num_blocks(parallelism, nnz) == default_num_blocks(_session(parallelism), nnz)


def test_routing_threshold_is_the_configured_default() -> None:
    cfg = load_config()
    assert sm.BROADCAST_MAX_MB == cfg.train.broadcast_max_mb
    assert cfg.model.cg_steps == sm.CG_STEPS
    limit_rows = cfg.train.broadcast_max_mb * 2**20 // (64 * 4)  # users + items whose d=64 factors fill the limit
    assert sm.exchange_mode(limit_rows - 10, 10, 64) == "store"
    assert sm.exchange_mode(limit_rows, 10, 64) == "routed"


def test_fit_recovers_known_constants() -> None:
    a, b = 2.0e-9, 3.0e-10
    points = [{"run": f"p{i}", "nnz": nnz, "rows": rows, "d": d, "seconds": a * nnz * d + b * rows * d * d}
              for i, (nnz, rows, d) in enumerate([(80_000, 943, 64), (74_265, 15_425, 64), (810_128, 29_858, 128)])]
    fit = sm.fit_kernel(points)
    assert fit["a_s_per_nnz_d"] == pytest.approx(a, rel=1e-9)
    assert fit["b_s_per_row_d2"] == pytest.approx(b, rel=1e-9)
    assert max(abs(p["error"]) for p in fit["points"]) < 1e-9


def test_expected_distinct_matches_sampling() -> None:
    weights = sm.zipf_weights(2_000, 0.9)
    draws = 1_500
    rng = np.random.default_rng(0)
    counts = [len(np.unique(rng.choice(len(weights), size=draws, p=weights))) for _ in range(300)]
    # Poisson approximation of draws with replacement: within 1% of the sampled mean
    assert sm.expected_distinct(draws, weights) == pytest.approx(np.mean(counts), rel=0.01)


def test_routed_sizing_rules_restate_the_trainers() -> None:
    from types import SimpleNamespace

    from gramian.train import routed

    assert (sm.TASK_MEMORY_SHARE, sm.MAX_BLOCKS) == (routed.TASK_MEMORY_SHARE, routed.MAX_BLOCKS)
    assert sm.CSR_BYTES_PER_NNZ == routed.CSR_BYTES_PER_NNZ
    for blocks, step, rows in ((4, 2, 10**6), (400, 200, 10**8), (7, 3, 9), (60_000, 800, 10**8)):
        assert sm.grow(blocks, step, rows) == routed.grow(blocks, step, rows)
    session = SimpleNamespace(conf=SimpleNamespace(get=lambda key, default=None: {
        "spark.executor.memory": "32g", "spark.executor.cores": "4"}.get(key, default)))
    assert sm.task_budget(sm.Cluster(executors=50)) == routed.task_budget(session, local=False)


def test_the_typical_task_estimate_is_the_trainers_on_expected_counts() -> None:
    """The model's typical block estimate against routed.block_task_bytes on the scenario's expected counts."""
    from gramian.train import routed
    from gramian.train.blocks import SideLayout

    sc = sm.Scenario(interactions=2e6, users=200_000, items=20_000)
    cu = np.round(sc.interactions * sm.zipf_weights(sc.users, sc.user_exponent)).astype(np.int64)
    ci = np.round(sc.interactions * sm.zipf_weights(sc.items, sc.item_exponent)).astype(np.int64)
    shapes = sm.side_shapes(sc, 8, 8)
    for side, counts, other in (("user", cu, ci), ("item", ci, cu)):
        layout = SideLayout.balanced(counts, 8, 64)
        per_block = routed.block_task_bytes(counts, other, layout, 8, 64)
        assert sm.task_estimate(shapes, side, 64)["typical"] == pytest.approx(np.median(per_block), rel=0.35)
