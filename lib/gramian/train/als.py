"""Block-distributed iALS on Spark (paper §5.1, Algorithm 4): the alternating driver.

One Spark job per half-iteration: every block task solves its rows against the fixed side's
factors and Gramian, and returns its new factor rows together with its share of the next Gramian
and of the loss, so the Gramian of the side just solved never costs a second pass.
How factors and CSR reach the tasks is the handoff's business (gramian.train.handoff): memory-mapped
files on a local master; on a cluster, the artifact store (written once per half-step, read once per
Python worker, CSR kept in the worker) or the task closure; routed rows when the factors are too big.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from gramian.config import ModelConfig, TrainConfig
from gramian.errors import ConfigError, InputDataError, SolverError
from gramian.kernels import (
    gramian,
    gramian_term,
    observed_loss,
    regularization_term,
    regularization_weights,
    solve_side,
)
from gramian.spark import run_together
from gramian.train import routed
from gramian.train.blocks import (
    Block,
    SideLayout,
    build_side_blocks,
    decode_blocks,
    empty_block,
    read_local_block,
    store_block,
    write_local_blocks_from_pairs,
)
from gramian.train.handoff import FETCH, FileRef, Handoff, is_local_master, resolve, writable
from gramian.train.init import init_factors

if TYPE_CHECKING:
    from gramian.storage import Store

log = logging.getLogger(__name__)

STEP_SCHEMA = ("block int, row_start int, n_rows int, factors binary, gram binary, observed double, "
               "reg double, bad_row int")
TIMING_SCHEMA = ", fetch_seconds double, kernel_seconds double"  # appended by every block task (see timed)


def timed(produce: Callable[[], pa.RecordBatch], fetch_before: float = 0.0) -> pa.RecordBatch:
    """produce()'s one-row record with its fetch seconds (the worker's FETCH clock, plus `fetch_before`)
    and the rest of its seconds as kernel seconds appended (TIMING_SCHEMA)."""
    f0, t0 = FETCH.seconds, time.perf_counter()
    rec = produce()
    fetched = FETCH.seconds - f0
    kernel = time.perf_counter() - t0 - fetched
    return (rec.append_column("fetch_seconds", pa.array([fetched + fetch_before], pa.float64()))
            .append_column("kernel_seconds", pa.array([kernel], pa.float64())))


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
    # where a half-step's time went: summed over its block tasks (CPU seconds, not wall), the seconds spent
    # reading factors and CSR (store reads, shipped-row decoding) and in the kernels; the rest of the wall
    # time is Spark scheduling, closure shipping and the driver's share
    user_fetch_seconds: float = 0.0
    user_kernel_seconds: float = 0.0
    item_fetch_seconds: float = 0.0
    item_kernel_seconds: float = 0.0


@dataclass
class FitState:
    """Factors and history of a fit in progress (what a checkpoint holds).

    Factors are numpy arrays when they travel whole, factor-block DataFrames when routed.
    """

    user_factors: Any
    item_factors: Any
    epoch: int = 0
    history: list[EpochStats] = field(default_factory=list)
    grams: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def routed(self) -> bool:
        return not isinstance(self.user_factors, np.ndarray)


@dataclass(frozen=True)
class SolveParams:
    """What every block task needs besides data: the model's solver settings and the other side's size."""

    alpha0: float
    reg: float
    nu: float
    solver: str
    cg_steps: int
    block_size: int | None
    n_other: int
    reg_counts: str

    @classmethod
    def of(cls, model: ModelConfig, n_other: int) -> SolveParams:
        return cls(model.alpha0, model.reg, model.nu, model.solver, model.cg_steps, model.solver_block_size,
                   n_other, model.reg_counts)


def _solve_block(b: Block, other: np.ndarray, gram_other: np.ndarray, x0: np.ndarray, p: SolveParams,
                 loss_after: bool, out: np.ndarray | None = None) -> pa.RecordBatch:
    """Solve one block's rows and summarise them (runs inside a task, or on the driver).

    `b.indices` index rows of `other`; the result row carries the new float32 factors (or writes them
    into rows row_start.. of `out`, a shared local file, leaving `factors` empty), their Gramian, and the
    block's observed-loss and regularisation terms (both measured on the float32 factors).
    """
    lam = regularization_weights(p.reg, p.nu, b.counts, p.alpha0, p.n_other, reg_counts=p.reg_counts)
    x = solve_side(b.indptr, b.indices, b.alpha, b.target, other, gram_other, p.alpha0, lam, x0,
                   solver=p.solver, cg_steps=p.cg_steps, solver_block_size=p.block_size).astype(np.float32)
    finite = np.isfinite(x).all(axis=1)
    bad = -1 if finite.all() else int(b.row_start + np.argmin(finite))
    observed = observed_loss(b.indptr, b.indices, b.alpha, b.target, x, other) if loss_after and bad < 0 else 0.0
    if out is not None:
        out[b.row_start:b.row_start + b.n_rows] = x
    return pa.RecordBatch.from_pydict({
        "block": pa.array([b.block], pa.int32()), "row_start": pa.array([b.row_start], pa.int32()),
        "n_rows": pa.array([b.n_rows], pa.int32()),
        "factors": pa.array([x.tobytes() if out is None else b""], pa.binary()),
        "gram": pa.array([gramian(x).tobytes()], pa.binary()),
        "observed": pa.array([float(observed)], pa.float64()),
        "reg": pa.array([regularization_term(lam, x)], pa.float64()),
        "bad_row": pa.array([bad], pa.int32()),
    })


def _local_fn(side: str, layout: SideLayout, other: FileRef, current: FileRef, gram: FileRef, out: FileRef,
              p: SolveParams, loss_after: bool) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The per-block task on a local master: block CSR, inputs and new rows all go through local files.

    The task's input is just the block ids; stable paths make the closure, hence the planned job, the
    same for every half-step of a side.
    """
    folder = str(Path(out.path).parent)

    def step(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        other_rows, current_rows = resolve(other), resolve(current)
        gram_other, new_rows = np.array(resolve(gram)), writable(out)
        for batch in batches:
            for block in batch.column("id").to_pylist():
                b = read_local_block(folder, side, layout, block)
                x0 = np.array(current_rows[b.row_start:b.row_start + b.n_rows])
                yield timed(lambda b=b, x0=x0: _solve_block(b, other_rows, gram_other, x0, p, loss_after, new_rows))
        new_rows.flush()

    return step


def check_rows_finite(side: str, epoch: int, block: int, bad_row: int) -> None:
    """Raise SolverError naming the epoch, block and first row when a block task reported non-finite rows."""
    if bad_row >= 0:
        raise SolverError(f"{side} factors must stay finite, got NaN/inf at epoch {epoch}, block {block}, row "
                          f"{bad_row}. Increase model.reg or lower the confidence scale (model.confidence.beta).")


def default_num_blocks(spark: Any, nnz: int) -> int:
    """Enough blocks to keep every core busy, blocks of at most ~4M interactions, a multiple of the cores."""
    try:
        parallelism = int(spark.conf.get("spark.default.parallelism"))
    except Exception:
        parallelism = 2
    try:  # classic sessions know their cores; Connect does not expose them
        parallelism = spark.sparkContext.defaultParallelism
    except Exception:
        pass
    parallelism = max(1, parallelism)
    return parallelism * math.ceil(max(1, math.ceil(nnz / 4_000_000)) / parallelism)


def _check_range(name: str, idx: np.ndarray, n: int) -> None:
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise InputDataError(f"{name} must be in [0, {n}), got {int(idx[bad][0])}. The train "
                             f"table and the id maps disagree: re-run `gramian split`.")


def collect_pairs(train_df: Any, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_idx, item_idx, weight) on the driver in one Arrow job (local master: the executors share its RAM)."""
    from pyspark.sql import functions as F

    t = train_df.select(F.col("user_idx").cast("int"), F.col("item_idx").cast("int"),
                        F.col("weight").cast("double")).toArrow()
    u = t.column("user_idx").to_numpy().astype(np.int64)
    i = t.column("item_idx").to_numpy().astype(np.int64)
    w = t.column("weight").to_numpy()
    _check_range("user_idx", u, n_users)
    _check_range("item_idx", i, n_items)
    return u, i, w


def row_counts(train_df: Any, n_users: int | None, n_items: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Interactions per user and per item in one pass (they drive the balanced block layouts). A size None
    counts up to the largest index seen: for a caller that learns the size at the same time (and checks it)."""

    def count(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        cu = np.zeros(n_users or 0, np.int64)
        ci = np.zeros(n_items or 0, np.int64)
        for b in batches:
            u = b.column("user_idx").to_numpy(zero_copy_only=False)
            i = b.column("item_idx").to_numpy(zero_copy_only=False)
            for name, idx, n in (("user_idx", u, n_users), ("item_idx", i, n_items)):
                _check_range(name, idx, np.iinfo(np.int64).max if n is None else n)
            cu = add_counts(cu, np.bincount(u))
            ci = add_counts(ci, np.bincount(i))
        yield pa.RecordBatch.from_pydict({"users": [cu.tobytes()], "items": [ci.tobytes()]})

    parts = train_df.select("user_idx", "item_idx").mapInArrow(count, "users binary, items binary").toArrow()
    users = np.zeros(n_users or 0, np.int64)
    items = np.zeros(n_items or 0, np.int64)
    for k in range(parts.num_rows):
        users = add_counts(users, np.frombuffer(parts.column("users")[k].as_buffer(), np.int64))
        items = add_counts(items, np.frombuffer(parts.column("items")[k].as_buffer(), np.int64))
    return users, items


def add_counts(total: np.ndarray, more: np.ndarray) -> np.ndarray:
    """`total + more` for count vectors of any lengths (the shorter one padded with zeros)."""
    if len(more) > len(total):
        total = np.concatenate([total, np.zeros(len(more) - len(total), total.dtype)])
    total[:len(more)] += more
    return total


def out_name(side: str) -> str:
    """Handoff name of the file a local half-step of `side` writes its new rows into."""
    return f"{side}-new"


def exchange_store(train: TrainConfig, store: Store | None, local: bool, routed: bool) -> Store | None:
    """The store whole factors and CSR go through (train.exchange), or None for the closure/local files/routes.

    `auto` takes the store off a local master whenever the caller gave one (the train stage gives the
    artifact store); `store` insists on it; `closure` never uses it.
    """
    if train.exchange == "store" and store is None:
        raise ConfigError("train.exchange: store needs an artifact store, got none (fitting outside the train "
                          "stage). Pass exchange=<Store> to fit, or set train.exchange to auto or closure.")
    if train.exchange == "closure" or local or routed:
        return None
    return store


class BlockTrainer:
    """Runs alternating half-steps over cached user and item blocks of one training set."""

    def __init__(self, spark: Any, train_df: Any, n_users: int, n_items: int, model: ModelConfig,
                 train: TrainConfig, exchange: Store | None = None,
                 counts: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        if n_users <= 0 or n_items <= 0:
            raise InputDataError(f"train set must have users and items, got {n_users} users and "
                                 f"{n_items} items. Check the split stage's output.")
        self.spark, self.model, self.train_cfg = spark, model, train
        self.n_users, self.n_items = n_users, n_items
        # On a local master the pairs come to the driver once (one Arrow job) and the CSR blocks are cut there:
        # no counting pass and no shuffle. Elsewhere counts come from one pass (or the caller's `counts`, per user
        # and item, e.g. the train stage's) and blocks from one shuffle per side.
        local = train.local_file_handoff and is_local_master(spark)
        pairs = collect_pairs(train_df, n_users, n_items) if local and train.routing != "routed" else None
        if pairs is not None:
            user_counts = np.bincount(pairs[0], minlength=n_users)
            item_counts = np.bincount(pairs[1], minlength=n_items)
        elif counts is not None:
            user_counts, item_counts = counts
        else:
            user_counts, item_counts = row_counts(train_df, n_users, n_items)
        log.info("interactions per user and item counted (%s)", "pairs on the driver" if pairs is not None
                 else "by the caller" if counts is not None else "one pass")
        self.nnz = nnz = int(user_counts.sum())
        if nnz == 0:
            raise InputDataError("train set must not be empty, got 0 interactions. Check ingest's "
                                 "quarantine table and the split settings.")
        nub = train.num_user_blocks or default_num_blocks(spark, nnz)
        nib = train.num_item_blocks or default_num_blocks(spark, nnz)
        self.layouts = {"user": SideLayout.balanced(user_counts, nub, model.dim),
                        "item": SideLayout.balanced(item_counts, nib, model.dim)}
        factor_mb = (n_users + n_items) * model.dim * 4 / 2**20
        # On a local master the factors reach tasks as memory-mapped files (nothing copied per task), so
        # whole factors stay cheap at any size; elsewhere every task receives them, hence the size limit.
        self.routed = train.routing == "routed" or (
            train.routing == "auto" and not local and factor_mb > train.broadcast_max_mb)
        log.info("factors %.1f MiB: %s", factor_mb, "routed to the blocks that need them" if self.routed
                 else "memory-mapped by every block (local master)" if local else "sent whole to every block")
        self.blocks: dict[str, Any] = {}  # cached block DataFrames (closure or routed exchange)
        self.nonempty: dict[str, frozenset[int]] = {}  # blocks with interactions (store exchange)
        self.timing: dict[str, list[float]] = {}  # side -> [fetch, kernel] seconds of its block tasks (take_timing)
        self.routes: dict[str, Any] = {}
        self._local_jobs: dict[tuple[str, bool], tuple[Any, FileRef]] = {}
        store = exchange_store(train, exchange, local, self.routed)
        self.steps = routed.StepStore(exchange if self.routed else None)  # routed outputs: reliable in the store
        self.handoff = Handoff(spark, enabled=train.local_file_handoff and not self.routed, store=store)
        if self.handoff.store is not None:
            log.info("factors and block CSR go through the store %s, read once per Python worker", store)
        try:  # scratch files and cached blocks must not outlive a failed setup
            self._build_blocks(train_df, pairs)
        except BaseException:
            self.release()
            raise

    def _build_blocks(self, train_df: Any, pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
        """Both sides' CSR blocks (memory-mapped files on a local master, else cached DataFrames) and routes.
        Off the local files each side is one shuffle job: both run at once (run_together)."""
        model = self.model

        def build(side: str, row_col: str, other_col: str) -> None:
            if self.handoff.enabled and pairs is not None:  # local master: memory-mapped block files
                rows, cols = (pairs[0], pairs[1]) if side == "user" else (pairs[1], pairs[0])
                sizes = write_local_blocks_from_pairs(rows, cols, pairs[2], self.layouts[side],
                                                      str(self.handoff.folder), side, model.alpha0, model.confidence)
            elif self.handoff.store is not None:  # the CSR goes to the store; tasks keep what they read
                built = build_side_blocks(train_df, self.layouts[side], row_col, other_col, model.alpha0,
                                          model.confidence, self.handoff.store, side).select("block", "nnz").collect()
                self.nonempty[side] = frozenset(r["block"] for r in built)
                sizes = [r["nnz"] for r in built]
            else:
                df = build_side_blocks(train_df, self.layouts[side], row_col, other_col, model.alpha0,
                                       model.confidence).cache()
                self.blocks[side] = df  # registered before it is materialised, so release() finds it
                sizes = [r["nnz"] for r in df.select("nnz").collect()]  # materialises the cache
            log.info("%s side: %d blocks, interactions per block min %d max %d", side,
                     self.layouts[side].num_blocks, min(sizes, default=0), max(sizes, default=0))
        sides = {"user": ("user_idx", "item_idx"), "item": ("item_idx", "user_idx")}
        if self.handoff.enabled and pairs is not None:
            for side, cols in sides.items():
                build(side, *cols)
        else:
            run_together(self.spark, {side: functools.partial(build, side, *cols) for side, cols in sides.items()})
        if self.routed:
            for side, other in (("user", "item"), ("item", "user")):
                self.routes[side] = routed.build_routes(self.blocks[side], self.layouts[other]).cache()
                self.routes[side].count()
                log.info("%s side: routes built", side)

    def other_size(self, side: str) -> int:
        return self.n_items if side == "user" else self.n_users

    def initial_state(self) -> FitState:
        """N(0, σ/√d) factors on both sides: arrays on the driver, or factor blocks in tasks."""
        m = self.model
        if not self.routed:
            return FitState(init_factors(self.n_users, m.dim, m.init_scale, m.seed, 0),
                            init_factors(self.n_items, m.dim, m.init_scale, m.seed, 1))
        user = routed.init_blocks(self.spark, self.layouts["user"], m.dim, m.init_scale, m.seed, 0)
        item = routed.init_blocks(self.spark, self.layouts["item"], m.dim, m.init_scale, m.seed, 1)
        return FitState(self.steps.persist(user), self.steps.persist(item))

    def adopt(self, state: FitState) -> FitState:
        """A resumed state converted to this trainer's representation (arrays or factor blocks)."""
        d = self.model.dim
        if self.routed:
            convert = {side: routed.array_to_blocks(self.spark, np.asarray(f), self.layouts[side])
                       for side, f in (("user", state.user_factors), ("item", state.item_factors))}
        else:
            convert = {side: routed.blocks_to_array(f, d)
                       for side, f in (("user", state.user_factors), ("item", state.item_factors))}
        return FitState(convert["user"], convert["item"], state.epoch, state.history)

    def half_step(self, side: str, current: Any, other: Any, gram_other: np.ndarray, epoch: int,
                  loss_after: bool) -> tuple[Any, np.ndarray, float, float]:
        """Solve every row of `side`; return its factors, Gramian, observed and regularisation terms."""
        p = SolveParams.of(self.model, self.other_size(side))
        new_rows: np.ndarray | None = None
        if self.routed:
            result = self._routed_step(side, current, other, gram_other, p, loss_after)
            summary = self.note_timing(side, result.select("block", "row_start", "n_rows", "gram", "observed", "reg",
                                                           "bad_row", "fetch_seconds", "kernel_seconds").toArrow())
        elif self.handoff.enabled:
            job, out = self._local_job(side, p, loss_after)
            self.handoff.publish(f"{side}-other", other)
            self.handoff.publish(f"{side}-current", current)
            self.handoff.publish(f"{side}-gram", gram_other)
            self.handoff.output(out_name(side), current.shape)
            summary = result = self.note_timing(side, job.toArrow())
            new_rows = np.array(resolve(out))
        else:
            refs = self.handoff.pack(other), self.handoff.pack(current)

            def solve(b: Block) -> pa.RecordBatch:
                x0 = np.array(resolve(refs[1])[b.row_start:b.row_start + b.n_rows])
                return _solve_block(b, resolve(refs[0]), gram_other, x0, p, loss_after)

            try:
                summary = result = self.map_blocks(side, solve, STEP_SCHEMA)
            finally:
                for ref in refs:
                    self.handoff.release(ref)
        d = self.model.dim
        gram, observed, reg = np.zeros((d, d)), 0.0, 0.0
        cols = {name: summary.column(name).to_pylist() for name in ("block", "row_start", "n_rows", "bad_row",
                                                                     "observed", "reg")}
        for k in range(summary.num_rows):
            check_rows_finite(side, epoch, cols["block"][k], cols["bad_row"][k])
            gram += np.frombuffer(summary.column("gram")[k].as_buffer(), np.float64).reshape(d, d)
            observed += cols["observed"][k]
            reg += cols["reg"][k]
        if self.routed:
            return result.drop("fetch_seconds", "kernel_seconds"), gram, observed, reg
        x = np.empty_like(current) if new_rows is None else new_rows
        for k in range(summary.num_rows if new_rows is None else 0):
            start, n = cols["row_start"][k], cols["n_rows"][k]
            x[start:start + n] = np.frombuffer(summary.column("factors")[k].as_buffer(), np.float32).reshape(n, d)
        layout = self.layouts[side]
        for block in set(range(layout.num_blocks)) - set(cols["block"]):  # no interactions in the whole block
            start, stop = layout.bounds(block)
            rec = _solve_block(empty_block(layout, block), other, gram_other, current[start:stop], p, False)
            x[start:stop] = np.frombuffer(rec.column("factors")[0].as_buffer(), np.float32).reshape(-1, d)
            gram += np.frombuffer(rec.column("gram")[0].as_buffer(), np.float64).reshape(d, d)
            reg += rec.column("reg")[0].as_py()
        return x, gram, observed, reg

    def map_blocks(self, side: str, per_block: Callable[[Block], pa.RecordBatch], schema: str) -> pa.Table:
        """One Spark job applying `per_block` to every block of `side`, wherever its CSR lives.

        Local master and store: the job runs over block ids (block b in partition b) and each task maps its
        block's files or reads its block from the store (once per Python worker); otherwise it runs over the
        cached block DataFrame (blocks without interactions are not in it: callers solve those themselves).
        """
        layout, store = self.layouts[side], self.handoff.store
        if self.handoff.folder is not None or store is not None:
            folder, nonempty = str(self.handoff.folder), self.nonempty.get(side, frozenset())

            def by_id(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                for batch in batches:
                    for block in batch.column("id").to_pylist():
                        yield timed(lambda block=block: per_block(
                            read_local_block(folder, side, layout, block) if store is None
                            else store_block(store, side, layout, block, nonempty)))

            ids = self.spark.range(0, layout.num_blocks, 1, layout.num_blocks)
            return self.note_timing(side, ids.mapInArrow(by_id, schema + TIMING_SCHEMA).toArrow())

        def by_row(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                t0 = time.perf_counter()
                blocks = list(decode_blocks(batch))
                decode = (time.perf_counter() - t0) / max(len(blocks), 1)
                for b in blocks:
                    yield timed(lambda b=b: per_block(b), decode)

        return self.note_timing(side, self.blocks[side].mapInArrow(by_row, schema + TIMING_SCHEMA).toArrow())

    def note_timing(self, side: str, table: pa.Table) -> pa.Table:
        """Add a job's per-block fetch and kernel seconds (TIMING_SCHEMA) to `side`'s count; the table without them."""
        acc = self.timing.setdefault(side, [0.0, 0.0])
        for k, name in enumerate(("fetch_seconds", "kernel_seconds")):
            acc[k] += float(sum(x for x in table.column(name).to_pylist() if x is not None))
        return table.drop_columns(["fetch_seconds", "kernel_seconds"])

    def take_timing(self) -> dict[str, float]:
        """The fetch and kernel seconds counted since the last call, as EpochStats fields; the count restarts."""
        out = {f"{side}_{name}_seconds": self.timing.get(side, [0.0, 0.0])[k]
               for side in ("user", "item") for k, name in enumerate(("fetch", "kernel"))}
        self.timing = {}
        return out

    def _local_job(self, side: str, p: SolveParams, loss_after: bool) -> tuple[Any, FileRef]:
        """The half-step job of `side` on a local master, planned once and re-run every half-step."""
        key = (side, loss_after)
        if key not in self._local_jobs:
            folder = self.handoff.folder
            assert folder is not None
            ref = {name: FileRef(str(folder / f"{side}-{name}.npy")) for name in ("other", "current", "gram")}
            out = FileRef(str(folder / f"{out_name(side)}.npy"))
            layout = self.layouts[side]
            fn = _local_fn(side, layout, ref["other"], ref["current"], ref["gram"], out, p, loss_after)
            ids = self.spark.range(0, layout.num_blocks, 1, layout.num_blocks)  # block b in partition b
            self._local_jobs[key] = (ids.mapInArrow(fn, STEP_SCHEMA + TIMING_SCHEMA), out)
        return self._local_jobs[key]

    def _routed_step(self, side: str, current: Any, other: Any, gram_other: np.ndarray, p: SolveParams,
                     loss_after: bool) -> Any:
        """Cogroup each block's CSR and current rows with the routed rows it needs; solve; persist."""

        def solve(b: Block, rows: np.ndarray, vecs: np.ndarray, x_init: np.ndarray) -> pa.RecordBatch:
            return _solve_block(routed.localise(b, rows), vecs, gram_other, x_init, p, loss_after)

        return self.routed_map(side, current, other, solve, STEP_SCHEMA)

    def routed_map(self, side: str, current: Any, other: Any,
                   per_block: Callable[[Block, np.ndarray, np.ndarray, np.ndarray], pa.RecordBatch],
                   schema: str) -> Any:
        """Run per_block(block, routed row ids, their rows, current rows) on every block of `side`; persist.

        Each block's CSR and current factor rows are cogrouped with the other side's rows it references
        (routes built once); blocks without interactions still run, with an empty CSR.
        """
        d, layout = self.model.dim, self.layouts[side]
        payload = routed.route_payload(self.routes[side], other, d)
        x0 = current.select("block", current.row_start.alias("x_start"), current.n_rows.alias("x_rows"),
                            current.factors.alias("x0"))
        solving = x0.join(self.blocks[side].drop("row_start", "n_rows"), "block", "left")

        def solve(left: pa.Table, right: pa.Table) -> pa.Table:
            t0 = time.perf_counter()
            row = left.slice(0, 1)
            block = row.column("block")[0].as_py()
            start, n = row.column("x_start")[0].as_py(), row.column("x_rows")[0].as_py()
            x_init = np.frombuffer(row.column("x0")[0].as_buffer(), np.float32).reshape(n, d)
            if row.column("indptr")[0].as_py() is None:
                b = empty_block(layout, block)
            else:
                b = next(decode_blocks(row.select(["block", "indptr", "indices", "alpha", "target"]).append_column(
                    "row_start", pa.array([start], pa.int32())).append_column("n_rows", pa.array([n], pa.int32()))
                    .to_batches()[0]))
            rows, vecs = routed.gather(right, d)
            return pa.Table.from_batches([timed(lambda: per_block(b, rows, vecs, x_init), time.perf_counter() - t0)])

        result = (solving.groupBy("block").cogroup(payload.groupBy("dst_block"))
                  .applyInArrow(solve, schema + TIMING_SCHEMA))
        return self.steps.persist(result)

    def gram_of(self, side: str, factors: Any) -> np.ndarray:
        """The Gramian of one side's current factors."""
        return gramian(factors) if not self.routed else routed.factor_gramian(factors, self.model.dim)

    def epoch(self, state: FitState) -> EpochStats:
        """One user half-step then one item half-step; the loss is measured after the item step."""
        e = state.epoch + 1
        gram_h = state.grams.get("item")
        if gram_h is None:
            gram_h = self.gram_of("item", state.item_factors)
        t0 = time.perf_counter()
        w, gram_w, _, reg_w = self.half_step("user", state.user_factors, state.item_factors, gram_h, e, False)
        t1 = time.perf_counter()
        h, gram_h, observed, reg_h = self.half_step("item", state.item_factors, w, gram_w, e, True)
        t2 = time.perf_counter()
        gram_term = gramian_term(self.model.alpha0, gram_w, gram_h)
        stats = EpochStats(e, observed + gram_term + reg_w + reg_h, observed, gram_term, reg_w + reg_h,
                           t1 - t0, t2 - t1, **self.take_timing())
        state.user_factors, state.item_factors, state.epoch = w, h, e
        state.grams = {"user": gram_w, "item": gram_h}
        state.history.append(stats)
        return stats

    def release(self) -> None:
        """Drop the cached blocks and routes."""
        for df in (*self.blocks.values(), *self.routes.values()):
            df.unpersist()
        self.handoff.close()
