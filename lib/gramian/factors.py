"""A run's rows of a factor table (`user_factors`, `item_factors`) as numpy, for the stages that read them back."""

from __future__ import annotations

from typing import Any

import numpy as np

from gramian import tables
from gramian.config import StorageConfig
from gramian.runs import run_rows


def factor_rows(spark: Any, st: StorageConfig, table: str, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(idx int64, factors float32 (rows, d)) of run_id in `table`; empty arrays when the run has no rows."""
    t = tables.read(spark, st, table).filter(run_rows(run_id)).select("idx", "factors").toArrow()
    idx = np.asarray(t.column("idx"), dtype=np.int64)
    if len(idx) == 0:
        return idx, np.zeros((0, 0), np.float32)
    flat = np.asarray(t.column("factors").combine_chunks().flatten(), dtype=np.float32)
    return idx, flat.reshape(len(idx), -1)
