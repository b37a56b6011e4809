"""Training rows: a run gets a user factor row only for the users that have training interactions.

A strong split (or a given test file) leaves some users of the `users` id map without any `train` row.
A row solved from no data is no model of that user (its exact solve is 0; a few warm-started CG steps
leave it near 0, so it scores every item alike), and it would still enter the user Gramian of the item
step and the |U| that scales alpha0. So training runs on the dense positions of the user indices present
in `train`, and the factors are written back under their `users` indices: held-out users get no row,
and evaluate folds them in from their `foldin` history (paper §6.3).

Example: train holds users {0, 2, 5} of a 6-user map -> rows = [0, 2, 5]; the trainer sees users 0, 1, 2
(3 rows) and its row 2 is written as user 5. When every user has training rows, nothing is remapped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa


def is_identity(rows: np.ndarray, n: int) -> bool:
    """True when `rows` is 0..n-1 (every index trained): positions and indices coincide."""
    return len(rows) == n and (n == 0 or (rows[0] == 0 and rows[-1] == n - 1))


def _replace_column(frame: Any, column: str, mapping: Any) -> Any:
    """`frame` with `column` (int32) mapped batch by batch inside tasks (same schema, Connect-safe)."""
    schema = frame.schema

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            i = batch.schema.get_field_index(column)
            values = np.asarray(batch.column(i).fill_null(-1), dtype=np.int64)
            yield batch.set_column(i, column, pa.array(mapping(values).astype(np.int32), pa.int32()))

    return frame.mapInArrow(task, schema)


def to_positions(train_df: Any, rows: np.ndarray, column: str = "user_idx") -> Any:
    """`train_df` with `column` replaced by its position in `rows` (every value must be in `rows`)."""
    rows = np.asarray(rows, dtype=np.int64)
    return _replace_column(train_df, column, lambda v: np.searchsorted(rows, v))


def to_indices(factors_df: Any, rows: np.ndarray, column: str = "idx") -> Any:
    """A factor frame (idx = trainer position) with `idx` mapped back to the `users` index it stands for."""
    rows = np.asarray(rows, dtype=np.int64)
    return _replace_column(factors_df, column, lambda v: rows[v])
