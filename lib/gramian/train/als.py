"""Block-distributed iALS on Spark (paper §5.1, Algorithm 4): the alternating driver.

One Spark job per half-iteration: every block task solves its rows against the fixed side's
factors and Gramian, and returns its new factor rows together with its share of the next Gramian
and of the loss, so the Gramian of the side just solved never costs a second pass.
The fixed side's factors reach the tasks whole (captured in the task closure, which works on
classic Spark and on Spark Connect alike); the block CSR never moves after it is built.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from gramian.config import ModelConfig, TrainConfig
from gramian.errors import InputDataError, SolverError
from gramian.kernels import gramian, observed_loss, regularization_weights, solve_side
from gramian.train.blocks import Block, SideLayout, build_side_blocks, decode_blocks, empty_block

log = logging.getLogger(__name__)

STEP_SCHEMA = ("block int, row_start int, n_rows int, factors binary, gram binary, observed double, "
               "reg double, bad_row int")


@dataclass
class EpochStats:
    """What one epoch cost and where the loss stands after it (eq. 26 via the Gramian trick)."""

    epoch: int
    loss: float
    observed: float
    gramian: float
    regularization: float
    user_seconds: float
    item_seconds: float


@dataclass
class FitState:
    """Factors, Gramians and history of a fit in progress (what a checkpoint holds)."""

    user_factors: np.ndarray
    item_factors: np.ndarray
    epoch: int = 0
    history: list[EpochStats] = field(default_factory=list)


def _solve_fn(other: np.ndarray, gram_other: np.ndarray, current: np.ndarray, n_other: int,
              model: ModelConfig, loss_after: bool) -> Callable[[Iterator[pa.RecordBatch]],
                                                             Iterator[pa.RecordBatch]]:
    """The per-block task: solve rows, then emit factors, Gramian partial and loss partials."""
    alpha0, reg, nu = model.alpha0, model.reg, model.nu
    solver, cg_steps, bsize = model.solver, model.cg_steps, model.solver_block_size

    def step(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for b in decode_blocks(batch):
                yield _solve_block(b, other, gram_other, current, n_other, alpha0, reg, nu, solver,
                                   cg_steps, bsize, loss_after)

    return step


def _solve_block(b: Block, other: np.ndarray, gram_other: np.ndarray, current: np.ndarray, n_other: int,
                 alpha0: float, reg: float, nu: float, solver: str, cg_steps: int, bsize: int | None,
                 loss_after: bool) -> pa.RecordBatch:
    """Solve one block's rows and summarise them (runs inside a task, or on the driver)."""
    lam = regularization_weights(reg, nu, b.counts, alpha0, n_other)
    x0 = current[b.row_start:b.row_start + b.n_rows]
    x = solve_side(b.indptr, b.indices, b.alpha, b.target, other, gram_other, alpha0, lam, x0,
                   solver=solver, cg_steps=cg_steps, solver_block_size=bsize).astype(np.float32)
    finite = np.isfinite(x).all(axis=1)
    bad = -1 if finite.all() else int(b.row_start + np.argmin(finite))
    observed = observed_loss(b.indptr, b.indices, b.alpha, b.target, x, other) if loss_after else 0.0
    return pa.RecordBatch.from_pydict({
        "block": pa.array([b.block], pa.int32()), "row_start": pa.array([b.row_start], pa.int32()),
        "n_rows": pa.array([b.n_rows], pa.int32()),
        "factors": pa.array([x.tobytes()], pa.binary()),
        "gram": pa.array([gramian(x).tobytes()], pa.binary()),
        "observed": pa.array([float(observed)], pa.float64()),
        "reg": pa.array([float(np.dot(lam, np.einsum("ij,ij->i", x, x, dtype=np.float64)))], pa.float64()),
        "bad_row": pa.array([bad], pa.int32()),
    })


def default_num_blocks(spark: Any, nnz: int) -> int:
    """Enough blocks to keep every core busy, and blocks of at most ~4M interactions."""
    try:
        parallelism = int(spark.conf.get("spark.default.parallelism"))
    except Exception:
        parallelism = 2
    try:  # classic sessions know their cores; Connect does not expose them
        parallelism = spark.sparkContext.defaultParallelism
    except Exception:
        pass
    return max(1, parallelism, math.ceil(nnz / 4_000_000))


def row_counts(train_df: Any, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Interactions per user and per item in one pass (they drive the balanced block layouts)."""

    def count(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        cu = np.zeros(n_users, np.int64)
        ci = np.zeros(n_items, np.int64)
        for b in batches:
            u = b.column("user_idx").to_numpy(zero_copy_only=False)
            i = b.column("item_idx").to_numpy(zero_copy_only=False)
            for name, idx, n in (("user_idx", u, n_users), ("item_idx", i, n_items)):
                bad = (idx < 0) | (idx >= n)
                if bad.any():
                    raise InputDataError(f"{name} must be in [0, {n}), got {int(idx[bad][0])}. The train "
                                         f"table and the id maps disagree: re-run `gramian split`.")
            cu += np.bincount(u, minlength=n_users)
            ci += np.bincount(i, minlength=n_items)
        yield pa.RecordBatch.from_pydict({"users": [cu.tobytes()], "items": [ci.tobytes()]})

    parts = train_df.select("user_idx", "item_idx").mapInArrow(count, "users binary, items binary").toArrow()
    users = np.zeros(n_users, np.int64)
    items = np.zeros(n_items, np.int64)
    for k in range(parts.num_rows):
        users += np.frombuffer(parts.column("users")[k].as_buffer(), np.int64)
        items += np.frombuffer(parts.column("items")[k].as_buffer(), np.int64)
    return users, items


def init_factors(n: int, dim: int, scale: float, seed: int, side: int) -> np.ndarray:
    """N(0, σ/√d) initial factors, seeded per side so the two sides differ."""
    rng = np.random.default_rng([seed, side])
    return rng.normal(0.0, scale / math.sqrt(dim), size=(n, dim)).astype(np.float32)


class BlockTrainer:
    """Runs alternating half-steps over cached user and item blocks of one training set."""

    def __init__(self, spark: Any, train_df: Any, n_users: int, n_items: int, model: ModelConfig,
                 train: TrainConfig) -> None:
        if n_users <= 0 or n_items <= 0:
            raise InputDataError(f"train set must have users and items, got {n_users} users and "
                                 f"{n_items} items. Check the split stage's output.")
        self.spark, self.model, self.train_cfg = spark, model, train
        self.n_users, self.n_items = n_users, n_items
        user_counts, item_counts = row_counts(train_df, n_users, n_items)
        self.nnz = nnz = int(user_counts.sum())
        if nnz == 0:
            raise InputDataError("train set must not be empty, got 0 interactions. Check ingest's "
                                 "quarantine table and the split settings.")
        nub = train.num_user_blocks or default_num_blocks(spark, nnz)
        nib = train.num_item_blocks or default_num_blocks(spark, nnz)
        self.layouts = {"user": SideLayout.balanced(user_counts, nub, model.dim),
                        "item": SideLayout.balanced(item_counts, nib, model.dim)}
        self.blocks = {}
        for side, row_col, other_col in (("user", "user_idx", "item_idx"), ("item", "item_idx", "user_idx")):
            df = build_side_blocks(train_df, self.layouts[side], row_col, other_col, model.alpha0,
                                   model.confidence).cache()
            sizes = [r["nnz"] for r in df.select("nnz").collect()]  # materialises the cache
            log.info("%s side: %d blocks, interactions per block min %d max %d", side,
                     self.layouts[side].num_blocks, min(sizes, default=0), max(sizes, default=0))
            self.blocks[side] = df

    def half_step(self, side: str, current: np.ndarray, other: np.ndarray, epoch: int,
                  loss_after: bool) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Solve every row of `side`; return its factors, Gramian, observed and regularisation terms."""
        layout = self.layouts[side]
        n_other = other.shape[0]
        gram_other = gramian(other)
        fn = _solve_fn(other, gram_other, current, n_other, self.model, loss_after)
        result = self.blocks[side].mapInArrow(fn, STEP_SCHEMA).toArrow()
        x = np.empty_like(current)
        gram = np.zeros((current.shape[1], current.shape[1]))
        observed = reg = 0.0
        seen = set()
        cols = result.to_pydict()
        for k in range(result.num_rows):
            start, n, bad = cols["row_start"][k], cols["n_rows"][k], cols["bad_row"][k]
            if bad >= 0:
                raise SolverError(f"{side} factors must stay finite, got NaN/inf at epoch {epoch}, "
                                  f"block {cols['block'][k]}, row {bad}. Increase model.reg or lower "
                                  f"the confidence scale (model.confidence.beta).")
            x[start:start + n] = np.frombuffer(cols["factors"][k], np.float32).reshape(n, -1)
            gram += np.frombuffer(cols["gram"][k], np.float64).reshape(gram.shape)
            observed += cols["observed"][k]
            reg += cols["reg"][k]
            seen.add(cols["block"][k])
        for block in set(range(layout.num_blocks)) - seen:  # blocks whose rows have no interactions
            rec = _solve_block(empty_block(layout, block), other, gram_other, current, n_other,
                               self.model.alpha0, self.model.reg, self.model.nu, self.model.solver,
                               self.model.cg_steps, self.model.solver_block_size, False)
            start, n = layout.bounds(block)
            x[start:start + n] = np.frombuffer(rec.column("factors")[0].as_py(), np.float32).reshape(n, -1)
            gram += np.frombuffer(rec.column("gram")[0].as_py(), np.float64).reshape(gram.shape)
            reg += rec.column("reg")[0].as_py()
        return x, gram, observed, reg

    def epoch(self, state: FitState) -> EpochStats:
        """One user half-step then one item half-step; the loss is measured after the item step."""
        e = state.epoch + 1
        t0 = time.perf_counter()
        w, gram_w, _, reg_w = self.half_step("user", state.user_factors, state.item_factors, e, False)
        t1 = time.perf_counter()
        h, gram_h, observed, reg_h = self.half_step("item", state.item_factors, w, e, True)
        t2 = time.perf_counter()
        gram_term = self.model.alpha0 * float(np.sum(gram_w * gram_h))
        stats = EpochStats(e, observed + gram_term + reg_w + reg_h, observed, gram_term, reg_w + reg_h,
                           t1 - t0, t2 - t1)
        state.user_factors, state.item_factors, state.epoch = w, h, e
        state.history.append(stats)
        return stats

    def release(self) -> None:
        """Drop the cached blocks."""
        for df in self.blocks.values():
            df.unpersist()
