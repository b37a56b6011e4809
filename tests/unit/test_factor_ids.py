"""Factor rows get their ids on the driver (train.job.with_ids) exactly as the left join with the id map would."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gramian.train.job import with_ids


def test_driver_ids_equal_a_dictionary_left_join_with_missing_indices_null():
    rng = np.random.default_rng(3)
    factors = rng.standard_normal((6, 4)).astype(np.float32)
    rows = np.array([9, 0, 4, 7, 2, 11])  # trainer position k is id-map index rows[k] (a strong split's users)
    ids = pa.table({"idx": pa.array([4, 0, 9, 2, 7, 5], pa.int32()),  # 11 is absent: its id must be null
                    "id": pa.array(["d", "a", "j", "c", "h", "f"])})
    out = with_ids("r1", factors, rows, ids)
    by_idx = dict(zip(ids["idx"].to_pylist(), ids["id"].to_pylist(), strict=True))
    assert out.column_names == ["run_id", "idx", "id", "factors"]
    assert out["idx"].to_pylist() == rows.tolist()
    assert out["id"].to_pylist() == [by_idx.get(int(i)) for i in rows]
    assert out["id"].to_pylist()[-1] is None and out["run_id"].to_pylist() == ["r1"] * 6
    np.testing.assert_array_equal(np.array(out["factors"].to_pylist(), np.float32), factors)


def test_without_a_row_map_position_k_is_index_k():
    factors = np.arange(6, dtype=np.float32).reshape(3, 2)
    ids = pa.table({"idx": pa.array([2, 1, 0], pa.int32()), "id": pa.array(["z", "y", "x"])})
    out = with_ids("r", factors, None, ids)
    assert out["idx"].to_pylist() == [0, 1, 2] and out["id"].to_pylist() == ["x", "y", "z"]
