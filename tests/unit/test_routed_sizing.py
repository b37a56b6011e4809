"""Routed block sizing: a routed task's bytes are bounded by its block (not the data), and gather's one-copy order."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from gramian.train import routed
from gramian.train.blocks import SideLayout

D = 32


def power_law_pairs(n_users: int, n_items: int, nnz: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs with Zipf-like activity and popularity, ids shuffled."""
    rng = np.random.default_rng(seed)
    pu = np.arange(1, n_users + 1) ** -0.6
    pi = np.arange(1, n_items + 1) ** -0.9
    u = rng.choice(n_users, size=2 * nnz, p=pu / pu.sum())
    i = rng.choice(n_items, size=2 * nnz, p=pi / pi.sum())
    keys = np.unique(u.astype(np.int64) * n_items + i)[:nnz]
    keys = rng.permutation(keys)
    return rng.permutation(n_users)[keys // n_items], rng.permutation(n_items)[keys % n_items]


def exact_task_bytes(rows: np.ndarray, cols: np.ndarray, layout: SideLayout, other: SideLayout) -> float:
    """The largest task of `rows`' side as the trainer builds it from these pairs: as a destination (CSR, own and
    new rows, the distinct other rows its block references) and as a source (its rows and the slices cut for every
    block of the other side), counted from the pairs themselves."""
    block = layout.block_of(rows)
    other_block = other.block_of(cols)
    row_bytes = 4 * D + 4
    worst = 0.0
    for b in range(layout.num_blocks):
        start, stop = layout.bounds(b)
        n, mine = stop - start, block == b
        dst = mine.sum() * 20 + n * 8 + 2 * n * 4 * D + len(np.unique(cols[mine])) * row_bytes
        sliced = len(np.unique(rows[mine].astype(np.int64) * other.num_blocks + other_block[mine]))
        worst = max(worst, dst, n * 4 * D + sliced * row_bytes)
    return float(worst)


def sized(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, budget: float,
          fixed: dict[str, bool] | None = None, blocks: int = 2) -> dict[str, SideLayout]:
    counts = {"user": np.bincount(users, minlength=n_users), "item": np.bincount(items, minlength=n_items)}
    return routed.sized_layouts(counts, D, budget, {"user": blocks, "item": blocks},
                                fixed or {"user": False, "item": False}, step=2)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return power_law_pairs(6000, 1500, 60_000)


@pytest.mark.parametrize("budget_mib", [0.3, 0.6, 1.0])
def test_every_routed_task_of_the_chosen_layout_fits_the_budget_counted_from_the_pairs(data, budget_mib):
    users, items = data
    budget = budget_mib * 2**20
    default = sized(users, items, 6000, 1500, float("inf"))
    assert max(exact_task_bytes(users, items, default["user"], default["item"]),
               exact_task_bytes(items, users, default["item"], default["user"])) > budget, "too generous a budget"
    layouts = sized(users, items, 6000, 1500, budget)
    counts = {"user": np.bincount(users, minlength=6000), "item": np.bincount(items, minlength=1500)}
    for side, rows, cols, other in (("user", users, items, "item"), ("item", items, users, "user")):
        got = exact_task_bytes(rows, cols, layouts[side], layouts[other])
        assert got <= budget * 1.05, (side, layouts[side].num_blocks, got / budget)
        # and not by a wide margin: the count grows by half a step at a time
        estimate = routed.task_bytes(counts[side], counts[other], layouts[side], layouts[other].num_blocks, D)
        assert estimate > budget / 3 or layouts[side].num_blocks == 2


def test_a_routed_tasks_bytes_stay_bounded_when_the_data_grows_more_blocks_take_it(data):
    """Four times the users, items and interactions at the same budget: more blocks, the same bound per task."""
    small = power_law_pairs(3000, 750, 30_000, seed=1)
    big = power_law_pairs(12_000, 3000, 120_000, seed=1)
    budget = 1.0 * 2**20
    worst, blocks = [], []
    for (users, items), nu, ni in ((small, 3000, 750), (big, 12_000, 3000)):
        layouts = sized(users, items, nu, ni, budget)
        blocks.append(layouts["user"].num_blocks + layouts["item"].num_blocks)
        worst.append(max(exact_task_bytes(users, items, layouts["user"], layouts["item"]),
                         exact_task_bytes(items, users, layouts["item"], layouts["user"])))
    assert blocks[1] >= 3 * blocks[0]
    assert max(worst) <= budget * 1.05
    default = {s: SideLayout.balanced(np.bincount(big[k], minlength=n), 2, D)
               for s, k, n in (("user", 0, 12_000), ("item", 1, 3000))}
    assert exact_task_bytes(big[0], big[1], default["user"], default["item"]) > 2 * budget  # what it would hold


def test_a_side_given_its_block_count_keeps_it(data):
    users, items = data
    layouts = sized(users, items, 6000, 1500, 0.6 * 2**20, fixed={"user": True, "item": False}, blocks=3)
    assert layouts["user"].num_blocks == 3
    assert layouts["item"].num_blocks > 3


def test_task_budget_is_a_share_of_executor_memory_per_core():
    class Conf:
        def __init__(self, values: dict[str, str]) -> None:
            self.values = values

        def get(self, key: str, default: str | None = None) -> str | None:
            return self.values.get(key, default)

    class Session:
        def __init__(self, values: dict[str, str]) -> None:
            self.conf = Conf(values)

    cluster = Session({"spark.executor.memory": "3g", "spark.executor.cores": "2"})
    assert routed.task_budget(cluster, local=False) == 3 * 2**30 / 2 * routed.TASK_MEMORY_SHARE
    assert routed.task_budget(Session({"spark.executor.memory": "1536"}), local=False) == \
        1536 * 2**20 * routed.TASK_MEMORY_SHARE
    assert [routed.size_bytes(x) for x in ("512k", "800m", "2G", "1t")] == [2**19, 800 * 2**20, 2**31, 2**40]


def slice_table(slices: list[tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    return pa.table({"rows": pa.array([r.astype(np.int32).tobytes() for r, _ in slices], pa.binary()),
                     "vecs": pa.array([v.astype(np.float32).tobytes() for _, v in slices], pa.binary())})


def test_gather_orders_slices_of_disjoint_runs_and_falls_back_to_a_sort_otherwise():
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(1000, 300, replace=False))
    vecs = rng.standard_normal((300, 4)).astype(np.float32)
    runs = [(rows[a:a + 40], vecs[a:a + 40]) for a in range(0, 300, 40)]  # chunks of source blocks
    shuffled = [runs[k] for k in rng.permutation(len(runs))]
    got_rows, got_vecs = routed.gather(slice_table(shuffled), 4)
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_array_equal(got_vecs, vecs)
    picked_rows, _ = routed.gather(slice_table(shuffled), 4, [0, 2])
    np.testing.assert_array_equal(picked_rows, np.sort(np.concatenate([shuffled[0][0], shuffled[2][0]])))
    interleaved = [(rows[0::2], vecs[0::2]), (rows[1::2], vecs[1::2])]  # runs that overlap: sorted the long way
    got_rows, got_vecs = routed.gather(slice_table(interleaved), 4)
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_array_equal(got_vecs, vecs)


def test_routed_factors_off_a_local_master_without_a_store_are_refused_with_the_remedy():
    """Routed steps live in a store every executor reads; off a local master, fitting without one is refused
    (no executor-memory checkpoint that dies with its executor), naming how to pass a store."""
    from gramian.errors import ConfigError
    from gramian.train.als import routed_steps

    class Conf:
        def __init__(self, master):
            self.master = master

        def get(self, key, default=None):
            return self.master if key == "spark.master" else default

    class Session:
        def __init__(self, master):
            self.conf = Conf(master)

    assert routed_steps(Session("spark://127.0.0.1:7077"), None, False) is None  # whole factors need none
    with pytest.raises(ConfigError, match=r"need a store every executor reads.*exchange=<Store>"):
        routed_steps(Session("spark://127.0.0.1:7077"), None, True)
    steps = routed_steps(Session("local[2]"), None, True)  # a local master: a scratch folder of this machine
    try:
        assert steps.store.is_local and os.path.isdir(steps.store.path())
    finally:
        steps.close()
    assert not os.path.exists(steps.store.path())
