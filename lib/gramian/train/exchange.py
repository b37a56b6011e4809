"""The factor exchange: how a half-step's block tasks read the fixed side's factors and hand back the new side.

One interface, `FactorExchange`, chosen once per trainer (`choose`) from train.routing, train.exchange and the master:

  LocalFiles   local master: the fixed side, the current rows and small shared arrays are memory-mapped files in
               /dev/shm and tasks write their new rows into one shared output file; a job is planned once per
               side and task and re-run
  StoreFiles   off a local master with an artifact store: each half-step's tasks write their new rows to the
               store, a file per block, and keep them; the next half-steps' Python workers read the blocks others
               made, once each; block CSR comes from the store
  Closure      anywhere else: the factors ride in the task closure over cached CSR block DataFrames
  RoutedRows   factors too big for one executor: block files in the store, each block task receiving only the rows
               its CSR references (gramian.train.routed), blocks sized so a task's rows fit its share of executor
               memory; tasks write their new rows to the store themselves (routed.StepFiles); CSR and routes are
               in the store too

A half-step is `step(side, task, current, other, shared, schema)`: `task(block, other rows, own current rows,
shared)` runs once per block (indices of the block index the other rows it is given) and returns one record with
at least block, row_start, n_rows, factors (float32 row-major, or empty when the task makes no rows) and bad_row.
Whole-factor exchanges keep factors as driver arrays; the routed one as factor-block DataFrames.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gramian.kernels import gramian
from gramian.kernels.pairwise import move_rows
from gramian.storage import Store
from gramian.train import routed
from gramian.train.blocks import (
    Block,
    SideLayout,
    decode_blocks,
    empty_block,
    read_local_block,
    spark_partition_keys,
    store_reader,
)
from gramian.train.handoff import FACTORS, FETCH, OWN_BLOCKS, FileRef, Handoff, resolve, writable
from gramian.train.init import init_factors

TIMING_SCHEMA = ", fetch_seconds double, kernel_seconds double"  # appended by every block task (see timed)
TIMING_COLUMNS = ["fetch_seconds", "kernel_seconds"]
SIDE_IDS = {"user": 0, "item": 1}  # the init stream of each side (init_factors)

BlockTask = Callable[[Block, np.ndarray, np.ndarray, Mapping[str, np.ndarray]], pa.RecordBatch]
BlockFn = Callable[[Block], pa.RecordBatch]
PartialFn = Callable[[int, np.ndarray], np.ndarray]  # (first row, factor rows) -> a float64 partial sum


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
class StepResult:
    """A half-step's new side (an array, a factor-block DataFrame, or None when its task makes no rows) and one
    summary row per block, every block included (the task's record without `factors`)."""

    factors: Any
    summary: pa.Table


@dataclass(frozen=True)
class FactorSpec:
    """What an exchange needs to make a side's initial factors: the model's dim, init scale and seed."""

    dim: int
    init_scale: float
    seed: int


class FactorExchange(ABC):
    """Hands the fixed side's factors to the block tasks of a half-step and collects the new side's rows."""

    routed: bool = False  # factors are factor-block DataFrames (else arrays on the driver)

    def __init__(self, spark: Any, layouts: dict[str, SideLayout], spec: FactorSpec) -> None:
        self.spark, self.layouts, self.spec = spark, layouts, spec
        self.timing: dict[str, list[float]] = {}  # side -> [fetch, kernel] seconds of its block tasks

    @abstractmethod
    def step(self, side: str, task: BlockTask, current: Any, other: Any, shared: Mapping[str, np.ndarray],
             schema: str, new_rows: bool = True) -> StepResult:
        """Run `task` on every block of `side` in one Spark job; `new_rows` False: the task makes no rows."""

    @abstractmethod
    def map_blocks(self, side: str, fn: BlockFn, schema: str) -> pa.Table:
        """One Spark job applying `fn` to the CSR of every block of `side` that has interactions (at least)."""

    @abstractmethod
    def initial(self, side: str) -> Any:
        """N(0, σ/√d) factors of `side` (identical rows in every exchange)."""

    @abstractmethod
    def adopt(self, side: str, factors: Any) -> Any:
        """Factors of another exchange (a checkpoint, a warm start) in this one's representation."""

    @abstractmethod
    def gramian(self, factors: Any) -> np.ndarray:
        """Σ x xᵀ over the rows of `factors` (eq. 25)."""

    @abstractmethod
    def partials(self, factors: Any, fn: PartialFn) -> list[np.ndarray]:
        """fn(first row, rows) over `factors`: once over all rows for arrays, once per block for routed blocks."""

    @abstractmethod
    def move(self, side: str, factors: Any, delta: Any, t: float) -> Any:
        """The rows factors + t·delta of `side` (RankALS's exact line step), in this exchange's representation."""

    def release(self) -> None:  # noqa: B027  (most exchanges plan nothing ahead)
        """Forget planned jobs (scratch files and cached blocks are the trainer's to release)."""

    def note_timing(self, side: str, table: pa.Table) -> pa.Table:
        """Add a job's per-block fetch and kernel seconds to `side`'s count; the table without them."""
        acc = self.timing.setdefault(side, [0.0, 0.0])
        for k, name in enumerate(TIMING_COLUMNS):
            acc[k] += float(sum(x for x in table.column(name).to_pylist() if x is not None))
        return table.drop_columns(TIMING_COLUMNS)

    def take_timing(self) -> dict[str, float]:
        """The fetch and kernel seconds counted since the last call, as EpochStats fields; the count restarts."""
        out = {f"{side}_{name}_seconds": self.timing.get(side, [0.0, 0.0])[k]
               for side in ("user", "item") for k, name in enumerate(("fetch", "kernel"))}
        self.timing = {}
        return out


def _by_id(spark: Any, layout: SideLayout, read: Callable[[int], Block], fn: BlockFn, schema: str) -> Any:
    """The job applying `fn` to every block of `layout`, block b read by `read(b)` in partition b."""

    def by_id(block: int) -> Iterator[pa.RecordBatch]:
        yield timed(lambda: fn(read(block)))

    return routed.over_blocks(spark, layout.num_blocks, by_id, schema + TIMING_SCHEMA)


def _by_row(blocks_df: Any, fn: BlockFn, schema: str) -> Any:
    """The job applying `fn` to every block of a cached CSR block DataFrame (decoding counted as fetch time)."""

    def by_row(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            t0 = time.perf_counter()
            blocks = list(decode_blocks(batch))
            decode = (time.perf_counter() - t0) / max(len(blocks), 1)
            for b in blocks:
                yield timed(lambda b=b: fn(b), decode)

    return blocks_df.mapInArrow(by_row, schema + TIMING_SCHEMA)


def _rows_of(table: pa.Table, n: int, d: int) -> np.ndarray:
    """The float32 factor rows a step's records carry, assembled in row order."""
    x = np.empty((n, d), np.float32)
    starts, sizes = table.column("row_start").to_pylist(), table.column("n_rows").to_pylist()
    for k, (start, m) in enumerate(zip(starts, sizes, strict=True)):
        x[start:start + m] = np.frombuffer(table.column("factors")[k].as_buffer(), np.float32).reshape(m, d)
    return x


class WholeFactors(FactorExchange):
    """Factors travel whole, as arrays on the driver: what the local-file, store and closure exchanges share."""

    def initial(self, side: str) -> np.ndarray:
        s = self.spec
        return init_factors(self.layouts[side].n_rows, s.dim, s.init_scale, s.seed, SIDE_IDS[side])

    def adopt(self, side: str, factors: Any) -> np.ndarray:
        return factors if isinstance(factors, np.ndarray) else routed.blocks_to_array(factors, self.spec.dim)

    def gramian(self, factors: np.ndarray) -> np.ndarray:
        return gramian(factors)

    def partials(self, factors: np.ndarray, fn: PartialFn) -> list[np.ndarray]:
        return [fn(0, factors)]

    def move(self, side: str, factors: np.ndarray, delta: np.ndarray, t: float) -> np.ndarray:
        return move_rows(factors, delta, t)

    def step(self, side: str, task: BlockTask, current: np.ndarray, other: np.ndarray,
             shared: Mapping[str, np.ndarray], schema: str, new_rows: bool = True) -> StepResult:
        table, x = self._run(side, task, current, other, shared, schema, new_rows)
        if x is None and new_rows:
            x = _rows_of(table, current.shape[0], current.shape[1])
        return StepResult(x if new_rows else None, table.drop_columns(["factors"]))

    @abstractmethod
    def _run(self, side: str, task: BlockTask, current: np.ndarray, other: np.ndarray,
             shared: Mapping[str, np.ndarray], schema: str, new_rows: bool) -> tuple[pa.Table, np.ndarray | None]:
        """The step's records of every block (timing noted) and the new rows if they did not come back in them."""


class LocalFiles(WholeFactors):
    """Local master: inputs at stable memory-mapped paths, new rows written by the tasks into one shared file.

    Stable paths make the closure, hence the planned job, the same for every half-step of a side and task.
    """

    def __init__(self, spark: Any, layouts: dict[str, SideLayout], spec: FactorSpec, handoff: Handoff) -> None:
        super().__init__(spark, layouts, spec)
        assert handoff.folder is not None, "LocalFiles needs a local master's scratch folder"
        self.handoff, self.folder = handoff, handoff.folder
        self._jobs: OrderedDict[Any, Any] = OrderedDict()  # planned jobs, least recently used dropped first

    def _read(self, side: str) -> Callable[[int], Block]:
        folder, layout = str(self.folder), self.layouts[side]
        return lambda block: read_local_block(folder, side, layout, block)

    def map_blocks(self, side: str, fn: BlockFn, schema: str) -> pa.Table:
        return self.note_timing(side, _by_id(self.spark, self.layouts[side], self._read(side), fn, schema).toArrow())

    def _run(self, side: str, task: BlockTask, current: np.ndarray, other: np.ndarray,
             shared: Mapping[str, np.ndarray], schema: str, new_rows: bool) -> tuple[pa.Table, np.ndarray | None]:
        job, out = self._job(side, task, tuple(sorted(shared)), schema, new_rows)
        self.handoff.publish(f"{side}-other", other)
        self.handoff.publish(f"{side}-current", current)
        for name, value in shared.items():
            self.handoff.publish(f"{side}-shared-{name}", value)
        if out is not None:
            self.handoff.output(f"{side}-new", current.shape)
        table = self.note_timing(side, job.toArrow())
        return table, None if out is None else np.array(resolve(out))

    def _job(self, side: str, task: BlockTask, names: tuple[str, ...], schema: str,
             new_rows: bool) -> tuple[Any, FileRef | None]:
        """The planned job of (side, task), made on first use (tasks equal by value share one plan)."""
        key = (side, task, names, schema, new_rows)
        try:
            hit = self._jobs.get(key)
        except TypeError:  # an unhashable task: plan afresh
            key, hit = None, None
        if hit is not None:
            self._jobs.move_to_end(key)
            return hit
        ref = {name: FileRef(str(self.folder / f"{side}-{name}.npy")) for name in ("other", "current")}
        shared = {name: FileRef(str(self.folder / f"{side}-shared-{name}.npy")) for name in names}
        out = FileRef(str(self.folder / f"{side}-new.npy")) if new_rows else None
        read = self._read(side)

        def solve(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            other_rows, current_rows = resolve(ref["other"]), resolve(ref["current"])
            arrays = {name: np.array(resolve(r)) for name, r in shared.items()}
            new = None if out is None else writable(out)

            def one(block: int) -> pa.RecordBatch:
                b = read(block)
                rec = task(b, other_rows, np.array(current_rows[b.row_start:b.row_start + b.n_rows]), arrays)
                if new is None:
                    return rec
                new[b.row_start:b.row_start + b.n_rows] = np.frombuffer(
                    rec.column("factors")[0].as_buffer(), np.float32).reshape(b.n_rows, -1)
                return rec.set_column(rec.schema.get_field_index("factors"), "factors", pa.array([b""], pa.binary()))

            for batch in batches:
                for block in batch.column("id").to_pylist():
                    yield timed(lambda block=block: one(block))
            if new is not None:
                new.flush()

        layout = self.layouts[side]
        ids = self.spark.range(0, layout.num_blocks, 1, layout.num_blocks)  # block b in partition b
        planned = (ids.mapInArrow(solve, schema + TIMING_SCHEMA), out)
        if key is not None:
            self._jobs[key] = planned
            while len(self._jobs) > 8:
                self._jobs.popitem(last=False)
        return planned

    def release(self) -> None:
        self._jobs.clear()


@dataclass(frozen=True)
class BlockRows:
    """A half-step's new side as the block files its tasks wrote (routed.StepFiles), read whole by the next
    half-steps' Python workers: each takes the blocks it made itself from memory (OWN_BLOCKS, until the whole is
    made) and reads only the others from the store."""

    files: routed.StepFiles

    def whole(self) -> np.ndarray:
        """Every block's rows in one array (kept by the worker, as a packed matrix is)."""
        f = self.files

        def load() -> np.ndarray:
            x = np.empty((f.bounds[-1], f.dim), np.float32)
            for b in range(len(f.bounds) - 1):
                own = OWN_BLOCKS.pop((f.store.uri, b))  # in the whole from now on
                x[f.bounds[b]:f.bounds[b + 1]] = own if own is not None else f.rows(b)
            return x

        return FACTORS.get(("blocks", f.store.uri), load)

    def publish(self, block: int, rec: pa.RecordBatch) -> None:
        """Write the rows a task made for `block` (its record's `factors`) and keep them in this worker."""
        t0 = time.perf_counter()
        buf = rec.column("factors")[0].as_buffer()
        self.files.write(block, buf)
        n = self.files.bounds[block + 1] - self.files.bounds[block]
        OWN_BLOCKS.put((self.files.store.uri, block), np.frombuffer(buf, np.float32).reshape(n, self.files.dim))
        FETCH.add(time.perf_counter() - t0)


class StoreFiles(WholeFactors):
    """Off a local master with an artifact store: block CSR read from the store (and kept by the worker); factors
    reach the tasks through the store, each version read once per Python worker.

    A half-step's tasks write their new rows to the store themselves, a file per block (BlockRows), and keep them:
    the next half-steps' workers read only the blocks other workers made. The driver still assembles the rows
    from the tasks' records (for the loss, checkpoints and the model) but writes nothing on the way between
    half-steps: per half-step the store moves the side once in and once out, not once in and once per worker
    out, and no driver write sits between two jobs. Arrays made elsewhere (the initial draw, a checkpoint,
    RankALS's moved rows) are written once by the driver (Handoff.pack).
    """

    def __init__(self, spark: Any, layouts: dict[str, SideLayout], spec: FactorSpec, handoff: Handoff,
                 nonempty: dict[str, frozenset[int]]) -> None:
        super().__init__(spark, layouts, spec)
        assert handoff.store is not None, "StoreFiles needs the handoff's store folder"
        self.handoff, self.store, self.nonempty = handoff, handoff.store, nonempty
        # both sides' current rows, the step being made and one spare; inside the handoff's folder (closed with it).
        # A step the handoff still answers for is one of its last KEEP remembered, so its files are kept.
        self.steps = routed.StepStore(self.store, keep=handoff.KEEP + 1, prefix="steps")

    def _read(self, side: str) -> Callable[[int], Block]:
        return store_reader(self.store, side, self.layouts[side], self.nonempty.get(side, frozenset()))

    def map_blocks(self, side: str, fn: BlockFn, schema: str) -> pa.Table:
        return self.note_timing(side, _by_id(self.spark, self.layouts[side], self._read(side), fn, schema).toArrow())

    def release(self) -> None:
        """Delete the step files (the model holds its factors as arrays)."""
        self.handoff.forget()
        self.steps.close()

    def _run(self, side: str, task: BlockTask, current: np.ndarray, other: np.ndarray,
             shared: Mapping[str, np.ndarray], schema: str, new_rows: bool) -> tuple[pa.Table, np.ndarray | None]:
        """One job; the new rows are the files the tasks wrote, so the handoff answers them for the next steps."""
        refs = self.handoff.pack(other), self.handoff.pack(current)
        out = BlockRows(self.steps.new(self.layouts[side], self.spec.dim)) if new_rows else None
        arrays = dict(shared)

        def solve(b: Block) -> pa.RecordBatch:
            other_rows, current_rows = resolve(refs[0]), resolve(refs[1])
            rec = task(b, other_rows, np.array(current_rows[b.row_start:b.row_start + b.n_rows]), arrays)
            if out is not None:
                out.publish(b.block, rec)
            return rec

        table = self.map_blocks(side, solve, schema)
        if out is None:
            return table, None
        x = _rows_of(table, current.shape[0], current.shape[1])
        self.handoff.remember(x, out)
        return table, x


class Closure(WholeFactors):
    """Factors in the task closure over cached CSR block DataFrames; blocks without interactions (not cached)
    are solved on the driver."""

    def __init__(self, spark: Any, layouts: dict[str, SideLayout], spec: FactorSpec, blocks: dict[str, Any]) -> None:
        super().__init__(spark, layouts, spec)
        self.blocks = blocks

    def map_blocks(self, side: str, fn: BlockFn, schema: str) -> pa.Table:
        return self.note_timing(side, _by_row(self.blocks[side], fn, schema).toArrow())

    def _run(self, side: str, task: BlockTask, current: np.ndarray, other: np.ndarray,
             shared: Mapping[str, np.ndarray], schema: str, new_rows: bool) -> tuple[pa.Table, np.ndarray | None]:
        arrays = dict(shared)

        def solve(b: Block) -> pa.RecordBatch:
            return task(b, other, np.array(current[b.row_start:b.row_start + b.n_rows]), arrays)

        table = self.map_blocks(side, solve, schema)
        layout, done = self.layouts[side], set(table.column("block").to_pylist())
        extra = [solve(empty_block(layout, blk)) for blk in range(layout.num_blocks) if blk not in done]
        if extra:
            table = pa.concat_tables([table, pa.Table.from_batches(extra, schema=table.schema)])
        return table, None


class RoutedRows(FactorExchange):
    """Factor rows as block files in the store (routed.StepFiles); each block task gets the other side's rows its
    CSR references, and writes its new rows itself (a half-step is one Spark action: the summary's collect).

    A half-step is one shuffle between two stages: one task per block of the other side reads its rows and routes
    from the store and cuts the slices each destination needs (routed.cut_slices); the slices go to their block's
    partition (hash-partitioned on the block's partition key, `spark_partition_keys`: block b in partition b),
    where the solving task reads its block's CSR from the store (kept by the Python worker, as StoreFiles keeps it)
    and its current rows. Nothing is cached in Spark: a lost executor costs a retry of its tasks. Every task holds
    one block's data (routed.task_bytes; the trainer sizes the blocks to fit executor memory,
    routed.sized_layouts).

    Outside, factors are factor-block DataFrames (routed.blocks_frame); the ones this exchange hands out are
    remembered with their rows' source, so a step reads them without another pass; any other (a checkpoint read
    back, say) is written to the store once when first used.
    """

    routed = True

    def __init__(self, spark: Any, layouts: dict[str, SideLayout], spec: FactorSpec, csr: Store,
                 nonempty: dict[str, frozenset[int]], routes: dict[str, routed.RouteFiles],
                 steps: routed.StepStore) -> None:
        super().__init__(spark, layouts, spec)
        self.csr, self.nonempty, self.routes, self.steps = csr, nonempty, routes, steps
        self.keys = {side: spark_partition_keys(layout.num_blocks) for side, layout in layouts.items()}
        self._sources: dict[int, tuple[Any, routed.RowSource]] = {}  # id(frame) -> (frame, where its rows are)

    def _read(self, side: str) -> Callable[[int], Block]:
        return store_reader(self.csr, side, self.layouts[side], self.nonempty.get(side, frozenset()))

    def _frame(self, source: routed.RowSource) -> Any:
        """The factor-block DataFrame of `source`, remembered (steps no longer kept are forgotten)."""
        self._sources = {k: v for k, v in self._sources.items()
                         if not isinstance(v[1], routed.StepFiles) or self.steps.live(v[1])}
        frame = routed.blocks_frame(self.spark, source)
        self._sources[id(frame)] = (frame, source)
        return frame

    def known(self, factors: Any) -> routed.RowSource | None:
        """Where the rows of a factor-block DataFrame this exchange handed out are (None: not one of those)."""
        got = self._sources.get(id(factors))
        return got[1] if got is not None and got[0] is factors else None

    def source(self, side: str, factors: Any) -> routed.RowSource:
        """Where the rows of `factors` (a factor-block DataFrame of `side`) are: remembered, else written now."""
        got = self.known(factors)
        if got is not None:
            return got
        files = self.steps.persist(factors, self.layouts[side], self.spec.dim)
        self._sources[id(factors)] = (factors, files)
        return files

    def initial(self, side: str) -> Any:
        # drawn again by every task that reads it (deterministic, cheap): nothing to write
        s, layout = self.spec, self.layouts[side]
        return self._frame(routed.InitRows(layout.n_rows, s.dim, s.init_scale, s.seed, SIDE_IDS[side],
                                           layout.bounds_array))

    def adopt(self, side: str, factors: Any) -> Any:
        if not isinstance(factors, np.ndarray):
            return factors
        out = self.steps.new(self.layouts[side], self.spec.dim)  # the driver writes each block once
        for block in range(self.layouts[side].num_blocks):
            start, stop = self.layouts[side].bounds(block)
            out.write(block, factors[start:stop])
        return self._frame(out)

    def gramian(self, factors: Any) -> np.ndarray:
        source = self.known(factors)
        if isinstance(source, routed.InitRows) and source.n * source.dim <= routed.DRIVER_DRAW_MAX:
            # the initial rows drawn on the driver block by block, as the tasks draw them: no Spark job (whose
            # first tasks wait for cold Python workers) before the first epoch
            return sum((gramian(source.rows(b)) for b in range(len(source.bounds) - 1)),
                       np.zeros((self.spec.dim, self.spec.dim)))
        return routed.factor_gramian(factors, self.spec.dim)

    def partials(self, factors: Any, fn: PartialFn) -> list[np.ndarray]:
        return routed.block_partials(factors, self.spec.dim, fn)

    def move(self, side: str, factors: Any, delta: Any, t: float) -> Any:
        moved = self.steps.new(self.layouts[side], self.spec.dim)
        routed.move_files(self.spark, self.source(side, factors), self.source(side, delta), t, moved)
        return self._frame(moved)

    def map_blocks(self, side: str, fn: BlockFn, schema: str) -> pa.Table:
        return self.note_timing(side, _by_id(self.spark, self.layouts[side], self._read(side), fn, schema).toArrow())

    def step(self, side: str, task: BlockTask, current: Any, other: Any, shared: Mapping[str, np.ndarray],
             schema: str, new_rows: bool = True) -> StepResult:
        out = self.steps.new(self.layouts[side], self.spec.dim) if new_rows else None
        table = self.job(side, task, current, other, shared, schema, out).drop("factors").toArrow()
        summary = self.note_timing(side, table).sort_by("block")  # sums in block order
        return StepResult(None if out is None else self._frame(out), summary)

    def job(self, side: str, task: BlockTask, current: Any, other: Any, shared: Mapping[str, np.ndarray],
            schema: str, out: routed.StepFiles | None = None) -> Any:
        """The half-step's DataFrame: one row per block of `side` (the task's record; its rows written to `out`,
        not carried), block b in partition b."""
        d, arrays, read = self.spec.dim, dict(shared), self._read(side)
        other_side = "item" if side == "user" else "user"
        own = self.source(side, current)
        sliced = routed.cut_slices(self.spark, self.source(other_side, other), self.routes[side], self.keys[side], d)
        payload = sliced.unionByName(routed.block_markers(self.spark, self.keys[side]))

        def solve(rows_in: pa.Table) -> pa.Table:
            t0 = time.perf_counter()
            mine = rows_in.column("own").to_pylist()  # rows are read in place: no filtered copy of the payload
            block = rows_in.column("dst_block")[mine.index(True)].as_py()
            x_init, b = own.rows(block), read(block)
            rows, vecs = routed.gather(rows_in, d, [k for k, m in enumerate(mine) if not m])
            rec = timed(lambda: task(routed.localise(b, rows), vecs, x_init, arrays), time.perf_counter() - t0)
            if out is not None:  # published by this task: the driver and Spark never carry the rows
                k = rec.schema.get_field_index("factors")
                out.write(block, rec.column(k)[0].as_buffer())
                rec = rec.set_column(k, "factors", pa.array([b""], pa.binary()))
            return pa.Table.from_batches([rec])

        # block b's payload in partition b (keys[b]); the grouping reuses that partitioning: one shuffle
        return (payload.repartition(self.layouts[side].num_blocks, "pkey").groupBy("pkey")
                .applyInArrow(solve, schema + TIMING_SCHEMA))


def choose(spark: Any, routed_rows: bool, handoff: Handoff, layouts: dict[str, SideLayout], spec: FactorSpec,
           blocks: dict[str, Any], nonempty: dict[str, frozenset[int]], routes: dict[str, routed.RouteFiles],
           steps: routed.StepStore | None) -> FactorExchange:
    """The one exchange a trainer uses, from where its setup put the CSR blocks (local files, store, cache)."""
    if routed_rows:
        assert steps is not None, "routed rows need the trainer's step store"
        return RoutedRows(spark, layouts, spec, steps.store.child(routed.CSR_FOLDER), nonempty, routes, steps)
    if handoff.folder is not None:
        return LocalFiles(spark, layouts, spec, handoff)
    if handoff.store is not None:
        return StoreFiles(spark, layouts, spec, handoff, nonempty)
    return Closure(spark, layouts, spec, blocks)
