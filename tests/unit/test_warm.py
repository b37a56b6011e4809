"""warm_rows: source factor rows land at the trainer's positions; rows the source lacks keep their init."""

from __future__ import annotations

import numpy as np

from gramian.train.warm import warm_rows


def slow_warm_rows(init, idx, rows, positions):
    out = init.copy()
    where = {int(v): p for p, v in enumerate(positions)} if positions is not None else None
    for i, r in zip(idx, rows, strict=True):
        p = int(i) if where is None else where.get(int(i))
        if p is not None and p < len(out):
            out[p] = r
    return out


def test_rows_copy_at_indices_and_new_rows_keep_their_init():
    rng = np.random.default_rng(0)
    init = rng.normal(size=(10, 3)).astype(np.float32)
    idx = np.array([7, 0, 3, 12])  # 12: not in this catalogue (a shrunk map is never written, but is ignored)
    rows = rng.normal(size=(4, 3)).astype(np.float32)
    expect = slow_warm_rows(init, idx, rows, None)
    got = init.copy()
    assert warm_rows(got, idx, rows) == 3
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(got[[1, 2, 4, 5, 6, 8, 9]], init[[1, 2, 4, 5, 6, 8, 9]])


def test_rows_map_through_trainer_positions_and_skip_users_without_a_position():
    rng = np.random.default_rng(1)
    positions = np.array([1, 4, 5, 9, 20])  # users with train rows now (a strong split)
    init = rng.normal(size=(5, 2)).astype(np.float32)
    idx = np.array([0, 4, 9, 21, 20, 6])
    rows = rng.normal(size=(6, 2)).astype(np.float32)
    got = init.copy()
    assert warm_rows(got, idx, rows, positions) == 3
    np.testing.assert_array_equal(got, slow_warm_rows(init, idx, rows, positions))
    np.testing.assert_array_equal(got[1], rows[1])  # user 4 is trainer row 1
    np.testing.assert_array_equal(got[4], rows[4])  # user 20 is trainer row 4


def test_no_source_rows_change_nothing():
    init = np.ones((3, 2), np.float32)
    assert warm_rows(init, np.zeros(0, np.int64), np.zeros((0, 0), np.float32)) == 0
    assert (init == 1).all()
