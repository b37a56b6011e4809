"""Block-distributed iALS on Spark (paper §5.1, Algorithm 4): the alternating driver.

One Spark job per half-iteration: every block task solves its rows against the fixed side's
factors and Gramian, and returns its new factor rows together with its share of the next Gramian
and of the loss, so the Gramian of the side just solved never costs a second pass.
How factors reach the tasks and the new rows come back is the factor exchange's business, chosen once per
trainer (gramian.train.exchange): memory-mapped files on a local master; on a cluster, the artifact store
(written once per half-step, read once per Python worker, CSR kept in the worker) or the task closure; routed
rows when the factors are too big for one executor. The half-step itself has one code path.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
    store_reader,
    write_local_blocks_from_pairs,
    write_store_blocks_from_pairs,
)
from gramian.train.exchange import FactorExchange, FactorSpec, RoutedRows, choose
from gramian.train.handoff import Handoff, is_local_master
from gramian.train.init import init_factors  # noqa: F401  (re-exported: tests and benchmarks import it here)

if TYPE_CHECKING:
    from gramian.storage import Store

log = logging.getLogger(__name__)

SIDE_COLUMNS = {"user": ("user_idx", "item_idx"), "item": ("item_idx", "user_idx")}  # (row, other) columns
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
                 loss_after: bool) -> pa.RecordBatch:
    """Solve one block's rows and summarise them (runs inside a task, or on the driver).

    `b.indices` index rows of `other`; the result row carries the new float32 factors, their Gramian, and the
    block's observed-loss and regularisation terms (both measured on the float32 factors).
    """
    lam = regularization_weights(p.reg, p.nu, b.counts, p.alpha0, p.n_other, reg_counts=p.reg_counts)
    x = solve_side(b.indptr, b.indices, b.alpha, b.target, other, gram_other, p.alpha0, lam, x0,
                   solver=p.solver, cg_steps=p.cg_steps, solver_block_size=p.block_size).astype(np.float32)
    finite = np.isfinite(x).all(axis=1)
    bad = -1 if finite.all() else int(b.row_start + np.argmin(finite))
    observed = observed_loss(b.indptr, b.indices, b.alpha, b.target, x, other) if loss_after and bad < 0 else 0.0
    return pa.RecordBatch.from_pydict({
        "block": pa.array([b.block], pa.int32()), "row_start": pa.array([b.row_start], pa.int32()),
        "n_rows": pa.array([b.n_rows], pa.int32()),
        "factors": pa.array([x.tobytes()], pa.binary()),
        "gram": pa.array([gramian(x).tobytes()], pa.binary()),
        "observed": pa.array([float(observed)], pa.float64()),
        "reg": pa.array([regularization_term(lam, x)], pa.float64()),
        "bad_row": pa.array([bad], pa.int32()),
    })


@dataclass(frozen=True)
class SolveTask:
    """The iALS block task: solve a block's rows against the other side's rows and the shared Gramian ("gram").

    Equal by value, so a local master's planned job is reused for every half-step of a side.
    """

    params: SolveParams
    loss_after: bool

    def __call__(self, b: Block, other: np.ndarray, x0: np.ndarray,
                 shared: Mapping[str, np.ndarray]) -> pa.RecordBatch:
        return _solve_block(b, other, shared["gram"], x0, self.params, self.loss_after)


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


def collect_pairs(train_df: Any, n_users: int | None, n_items: int | None) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
    """(user_idx, item_idx, weight) on the driver in one Arrow job (a local master, whose executors share its
    RAM, or a table small enough: train.driver_pairs_max). A size None checks only that indices are not negative
    (for a caller that learns the size at the same time and checks it, as with row_counts)."""
    from pyspark.sql import functions as F

    return pairs_of(train_df.select(F.col("user_idx").cast("int"), F.col("item_idx").cast("int"),
                                    F.col("weight").cast("double")).toArrow(), n_users, n_items)


def pairs_of(t: pa.Table, n_users: int | None, n_items: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_idx, item_idx, weight) arrays of an Arrow table of train rows, indices checked as collect_pairs does."""
    for name in ("user_idx", "item_idx"):
        if t.column(name).null_count:
            raise InputDataError(f"{name} must not be null, got {t.column(name).null_count} train rows without one. "
                                 f"The train table was not written by `gramian split`: re-run it.")
    u = t.column("user_idx").to_numpy().astype(np.int64)
    i = t.column("item_idx").to_numpy().astype(np.int64)
    w = t.column("weight").to_numpy().astype(np.float64)
    top = np.iinfo(np.int64).max
    _check_range("user_idx", u, top if n_users is None else n_users)
    _check_range("item_idx", i, top if n_items is None else n_items)
    return u, i, w


def row_counts(train_df: Any, n_users: int | None, n_items: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Interactions per user and per item in one pass (they drive the balanced block layouts): one scan and one
    small aggregation in the JVM (no Python worker starts), its (side, index, count) rows collected through Arrow.
    A size None counts up to the largest index seen: for a caller that learns the size at the same time (and
    checks it)."""
    from pyspark.sql import functions as F

    sides = F.explode(F.array(*(F.struct(F.lit(k).alias("side"), F.col(c).cast("long").alias("idx"))
                                for k, c in enumerate(("user_idx", "item_idx")))))
    t = (train_df.select(sides.alias("p")).select("p.side", "p.idx").groupBy("side", "idx")
         .agg(F.count(F.lit(1)).alias("n")).toArrow())
    side = t.column("side").to_numpy()
    out = []
    for k, (name, n) in enumerate((("user_idx", n_users), ("item_idx", n_items))):
        mine = side == k
        idx = t.column("idx").filter(pa.array(mine))
        if idx.null_count:
            raise InputDataError(f"{name} must not be null, got train rows without one. The train table was not "
                                 f"written by `gramian split`: re-run it.")
        idx = idx.to_numpy()
        _check_range(name, idx, np.iinfo(np.int64).max if n is None else n)
        counts = t.column("n").filter(pa.array(mine)).to_numpy()
        out.append(np.bincount(idx, weights=counts, minlength=n or 0).astype(np.int64))
    return out[0], out[1]


def add_counts(total: np.ndarray, more: np.ndarray) -> np.ndarray:
    """`total + more` for count vectors of any lengths (the shorter one padded with zeros)."""
    if len(more) > len(total):
        total = np.concatenate([total, np.zeros(len(more) - len(total), total.dtype)])
    total[:len(more)] += more
    return total


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


def routed_steps(spark: Any, store: Store | None, routed_rows: bool) -> routed.StepStore | None:
    """Where routed factor rows and routes live: a folder of the store every executor reads (the train stage gives
    one), or a scratch folder on a local master; None for whole factors."""
    if not routed_rows:
        return None
    if store is None and not is_local_master(spark):
        raise ConfigError("routed factors (train.routing routed, or auto with factors over train.broadcast_max_mb) "
                          "need a store every executor reads, got none (fitting outside the train stage). Pass "
                          "exchange=<Store> to fit (gramian.storage.open_store('s3a://...', spark)), or run the train "
                          "stage, which uses storage.artifacts.")
    return routed.StepStore(store)


class BlockTrainer:
    """Runs alternating half-steps over cached user and item blocks of one training set."""

    def __init__(self, spark: Any, train_df: Any, n_users: int, n_items: int, model: ModelConfig,
                 train: TrainConfig, exchange: Store | None = None,
                 counts: tuple[np.ndarray, np.ndarray] | None = None,
                 pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        if n_users <= 0 or n_items <= 0:
            raise InputDataError(f"train set must have users and items, got {n_users} users and "
                                 f"{n_items} items. Check the split stage's output.")
        self.spark, self.model, self.train_cfg = spark, model, train
        self.n_users, self.n_items = n_users, n_items
        # On a local master the pairs come to the driver once (one Arrow job) and the CSR blocks are cut there:
        # no counting pass and no shuffle; so off it when the caller brought them (`pairs`: the train stage does
        # for a small table, train.driver_pairs_max) and whole factors go through the store. Elsewhere counts
        # come from one pass (or the caller's `counts`, e.g. the train stage's) and blocks from one shuffle per side.
        local = train.local_file_handoff and is_local_master(spark)
        if pairs is None and local and train.routing != "routed":
            pairs = collect_pairs(train_df, n_users, n_items)
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
        factor_mb = (n_users + n_items) * model.dim * 4 / 2**20
        # On a local master the factors reach tasks as memory-mapped files (nothing copied per task), so
        # whole factors stay cheap at any size; elsewhere every task receives them, hence the size limit.
        self.routed = train.routing == "routed" or (
            train.routing == "auto" and not local and factor_mb > train.broadcast_max_mb)
        log.info("factors %.1f MiB: %s", factor_mb, "routed to the blocks that need them" if self.routed
                 else "memory-mapped by every block (local master)" if local else "sent whole to every block")
        self.layouts = self._layouts(user_counts, item_counts)
        self.blocks: dict[str, Any] = {}  # cached block DataFrames (closure exchange)
        self.nonempty: dict[str, frozenset[int]] = {}  # blocks with interactions (store and routed exchanges)
        self.routes: dict[str, routed.RouteFiles] = {}
        store = exchange_store(train, exchange, local, self.routed)
        self.steps = routed_steps(spark, exchange, self.routed)
        self.handoff = Handoff(spark, enabled=train.local_file_handoff and not self.routed, store=store)
        if self.handoff.store is not None:
            log.info("factors and block CSR go through the store %s, read once per Python worker", store)
        try:  # scratch files, cached blocks and routes must not outlive a failed setup
            self._build_blocks(train_df, pairs)
        except BaseException:
            self.release()
            self.close_steps()
            raise
        self.exchange: FactorExchange = choose(  # the one way factors reach this trainer's tasks
            spark, self.routed, self.handoff, self.layouts, FactorSpec(model.dim, model.init_scale, model.seed),
            self.blocks, self.nonempty, self.routes, self.steps)

    def _layouts(self, user_counts: np.ndarray, item_counts: np.ndarray) -> dict[str, SideLayout]:
        """Both sides' block layouts: train.num_*_blocks, else enough blocks for the cores and ~4M interactions
        each; routed, as many more as keep every block task within its share of executor memory."""
        spark, train, dim = self.spark, self.train_cfg, self.model.dim
        nub = train.num_user_blocks or default_num_blocks(spark, self.nnz)
        nib = train.num_item_blocks or default_num_blocks(spark, self.nnz)
        if not self.routed:
            return {"user": SideLayout.balanced(user_counts, nub, dim),
                    "item": SideLayout.balanced(item_counts, nib, dim)}
        budget = routed.task_budget(spark, is_local_master(spark))
        layouts = routed.sized_layouts({"user": user_counts, "item": item_counts}, dim, budget,
                                       {"user": nub, "item": nib},
                                       {"user": bool(train.num_user_blocks), "item": bool(train.num_item_blocks)},
                                       default_num_blocks(spark, 1))
        log.info("routed blocks sized to %.0f MiB per task: %d user, %d item", budget / 2**20,
                 layouts["user"].num_blocks, layouts["item"].num_blocks)
        return layouts

    def _build_blocks(self, train_df: Any, pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
        """Both sides' CSR blocks (memory-mapped files on a local master, the store, or cached DataFrames; routed:
        the step store, with the routes). Cut on the driver when it holds the pairs; else each side is one shuffle
        job: both run at once (run_together)."""
        if self.routed:
            self._build_routed(train_df, pairs)
            return
        model = self.model

        def build(side: str, row_col: str, other_col: str) -> None:
            rows, cols = (None, None) if pairs is None else (pairs[0], pairs[1]) if side == "user" else (pairs[1],
                                                                                                      pairs[0])
            if self.handoff.enabled and pairs is not None:  # local master: memory-mapped block files
                sizes = write_local_blocks_from_pairs(rows, cols, pairs[2], self.layouts[side],
                                                      str(self.handoff.folder), side, model.alpha0, model.confidence)
            elif self.handoff.store is not None and pairs is not None:  # cut on the driver, written to the store
                written = write_store_blocks_from_pairs(rows, cols, pairs[2], self.layouts[side], self.handoff.store,
                                                        side, model.alpha0, model.confidence)
                self.nonempty[side] = frozenset(written)
                sizes = [len(ind) for ind in written.values()]
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
        if pairs is not None and (self.handoff.enabled or self.handoff.store is not None):  # driver work only
            for side, cols in SIDE_COLUMNS.items():
                build(side, *cols)
        else:
            run_together(self.spark, {side: functools.partial(build, side, *cols)
                                      for side, cols in SIDE_COLUMNS.items()})

    def _build_routed(self, train_df: Any, pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
        """Routed blocks: both sides' CSR and routes in the step store. With the pairs on the driver both are cut
        and written there (no Spark job); else each side is one shuffle job writing its CSR, then one job routing
        it (the sides at once)."""
        assert self.steps is not None
        model, steps = self.model, self.steps
        csr = steps.store.child(routed.CSR_FOLDER)

        def build(side: str, row_col: str, other_col: str) -> None:
            other = "item" if side == "user" else "user"
            layout, into = self.layouts[side], steps.store.child("routes", side)
            if pairs is not None:
                rows, cols = (pairs[0], pairs[1]) if side == "user" else (pairs[1], pairs[0])
                indices = write_store_blocks_from_pairs(rows, cols, pairs[2], layout, csr, side, model.alpha0,
                                                        model.confidence)
                sizes = {block: len(ind) for block, ind in indices.items()}
                self.nonempty[side] = frozenset(sizes)
                self.routes[side], per_block = routed.write_routes_from(indices, self.layouts[other], into)
            else:
                built = build_side_blocks(train_df, layout, row_col, other_col, model.alpha0, model.confidence, csr,
                                          side).select("block", "nnz").collect()
                sizes = {r["block"]: r["nnz"] for r in built}
                self.nonempty[side] = nonempty = frozenset(sizes)
                self.routes[side], per_block = routed.write_routes(
                    self.spark, store_reader(csr, side, layout, nonempty), layout, self.layouts[other], into)
            log.info("%s side: %d blocks, interactions per block min %d max %d; %d rows routed per half-step, at "
                     "most %d to one block", side, layout.num_blocks, min(sizes.values(), default=0),
                     max(sizes.values(), default=0), sum(per_block.values()), max(per_block.values(), default=0))
        if pairs is not None:
            for side, cols in SIDE_COLUMNS.items():
                build(side, *cols)
        else:
            run_together(self.spark, {side: functools.partial(build, side, *cols)
                                      for side, cols in SIDE_COLUMNS.items()})

    def other_size(self, side: str) -> int:
        return self.n_items if side == "user" else self.n_users

    def initial_state(self) -> FitState:
        """N(0, σ/√d) factors on both sides, in the exchange's representation (arrays or factor blocks)."""
        return FitState(self.exchange.initial("user"), self.exchange.initial("item"))

    def adopt(self, state: FitState) -> FitState:
        """A resumed or warm-start state converted to this trainer's representation (arrays or factor blocks)."""
        ex = self.exchange
        return FitState(ex.adopt("user", state.user_factors), ex.adopt("item", state.item_factors), state.epoch,
                        state.history)

    def half_step(self, side: str, current: Any, other: Any, gram_other: np.ndarray, epoch: int,
                  loss_after: bool) -> tuple[Any, np.ndarray, float, float]:
        """Solve every row of `side`; return its factors, Gramian, observed and regularisation terms."""
        task = SolveTask(SolveParams.of(self.model, self.other_size(side)), loss_after)
        result = self.exchange.step(side, task, current, other, {"gram": gram_other}, STEP_SCHEMA)
        summary, d = result.summary, self.model.dim
        gram, observed, reg = np.zeros((d, d)), 0.0, 0.0
        cols = {name: summary.column(name).to_pylist() for name in ("block", "bad_row", "observed", "reg")}
        for k in range(summary.num_rows):
            check_rows_finite(side, epoch, cols["block"][k], cols["bad_row"][k])
            gram += np.frombuffer(summary.column("gram")[k].as_buffer(), np.float64).reshape(d, d)
            observed += cols["observed"][k]
            reg += cols["reg"][k]
        return result.factors, gram, observed, reg

    def map_blocks(self, side: str, per_block: Callable[[Block], pa.RecordBatch], schema: str) -> pa.Table:
        """One Spark job applying `per_block` to the CSR of every block of `side` wherever it lives (blocks without
        interactions may be left out); the table without the timing columns."""
        return self.exchange.map_blocks(side, per_block, schema)

    def take_timing(self) -> dict[str, float]:
        """The fetch and kernel seconds of block tasks since the last call, as EpochStats fields."""
        return self.exchange.take_timing()

    def gram_of(self, side: str, factors: Any) -> np.ndarray:
        """The Gramian of one side's current factors."""
        return self.exchange.gramian(factors)

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

    def finish_steps(self, state: FitState) -> None:
        """A fit is done: only the routed steps its final factors are read from stay (routes, older steps go)."""
        if self.steps is None or not isinstance(self.exchange, RoutedRows):
            return
        final = [self.exchange.known(f) for f in (state.user_factors, state.item_factors)]
        self.steps.finish([f for f in final if isinstance(f, routed.StepFiles)])

    def close_steps(self) -> None:
        """Delete the routed steps and routes (a fit that failed or stopped: no model will read them)."""
        if self.steps is not None:
            self.steps.close()

    def release(self) -> None:
        """Drop the cached blocks, planned jobs and scratch files (routed steps stay: the model reads them)."""
        if hasattr(self, "exchange"):
            self.exchange.release()
        for df in self.blocks.values():
            df.unpersist()
        self.handoff.close()
