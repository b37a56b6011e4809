"""Half-steps for factor tables too large to travel whole: each block receives only the rows it needs.

Routing, in one example: user block 0 rates items {3, 7, 12}; with item blocks [0, 5) [5, 10) [10, 15)
its routes are (dst 0, src 0, rows [3]), (dst 0, src 1, rows [7]), (dst 0, src 2, rows [12]). Routes are
built once and written to the store, a file per source block (cut on the driver when it holds the pairs), beside
both sides' CSR blocks. A half-step runs one task per item block that reads the block's factor rows and its
routes straight from the store, cuts out the rows each user block needs and sends the slices to their dst (the
one shuffle); there the task reads user block 0's CSR (kept by the Python worker) and current rows from the
store, re-indexes the CSR into the gathered rows, solves and writes its new rows to the store itself. Only
factor rows move, once; nothing is cached in Spark.
Factor blocks are files of float32 rows (StepFiles), seen by the rest of the package as DataFrames of
(block, row_start, n_rows, factors binary float32 row-major) read from them (blocks_frame).

Memory: every task holds one block's data, never a whole side (task_bytes); the trainer picks block counts
that keep the largest task within its share of executor memory (sized_layouts, task_budget).
"""

from __future__ import annotations

import atexit
import logging
import math
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gramian.errors import ConfigError
from gramian.kernels import gramian
from gramian.kernels.pairwise import move_rows
from gramian.storage import Store
from gramian.train.blocks import Block, SideLayout, spark_partition_keys
from gramian.train.handoff import ROUTES, scratch_root
from gramian.train.init import init_factors

log = logging.getLogger(__name__)

ROUTE_SCHEMA = "dst_block int, src_block int, rows binary"
# A routed block task's estimated bytes (task_bytes) may be this share of its executor's memory per core: the
# routed rows exist about four times at once (the JVM's sort buffer and Arrow batch, the Arrow table and its
# gathered copy in Python) beside the CSR blocks and routes its Python workers keep (handoff.BLOCKS, ROUTES).
TASK_MEMORY_SHARE = 1 / 8
MAX_BLOCKS = 65_536  # sized_layouts stops growing a side here (a block per row comes first on small sides)
CSR_BYTES_PER_NNZ = 4 + 8 + 8  # indices int32, alpha and target float64 (blocks.BLOCK_ARRAYS)
PAYLOAD_SCHEMA = "pkey int, dst_block int, own boolean, rows binary, vecs binary"
DRIVER_DRAW_MAX = 2**26  # initial factor values the driver draws itself for their Gramian (~1 s); more: a Spark job
CSR_FOLDER = "csr"  # the folder of a routed fit's step store holding both sides' CSR blocks (blocks.store_block)


def task_bytes(counts: np.ndarray, other_counts: np.ndarray, layout: SideLayout, other_blocks: int,
               dim: int) -> float:
    """Estimated bytes of the largest routed block task of this side (block_task_bytes)."""
    return float(block_task_bytes(counts, other_counts, layout, other_blocks, dim).max())


def block_task_bytes(counts: np.ndarray, other_counts: np.ndarray, layout: SideLayout, other_blocks: int,
                     dim: int) -> np.ndarray:
    """Estimated bytes of each block's largest routed task, over both roles a block plays.

    As a destination (its solve task): its CSR, its current and new rows, and the other side's rows its
    interactions reference; m interactions, drawn in proportion to the other side's counts c, reference about
    sum(1 - exp(-m c / nnz)) distinct rows (at most m, at most the rows with interactions). As a source
    (cut_slices): its factor rows and the slices cut from them, a row of c interactions going to about
    B (1 - (1 - 1/B)^c) of the other side's B blocks. Every term grows with the block, none with the data.
    """
    bounds = np.asarray(layout.bounds_array)
    cum = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
    nnz, rows = cum[bounds[1:]] - cum[bounds[:-1]], np.diff(bounds).astype(np.float64)
    values, mult = np.unique(other_counts[other_counts > 0], return_counts=True)
    total = max(cum[-1], 1.0)
    routed_in = np.array([np.dot(mult, -np.expm1(-m * values / total)) for m in nnz])
    c = np.asarray(counts, np.float64)
    reach = np.minimum(c, 1.0) if other_blocks <= 1 else -np.expm1(c * np.log1p(-1.0 / other_blocks)) * other_blocks
    cum_reach = np.concatenate([[0.0], np.cumsum(reach)])
    routed_out = cum_reach[bounds[1:]] - cum_reach[bounds[:-1]]
    row_bytes = 4 * dim + 4  # a float32 row and its int32 id
    dst = nnz * CSR_BYTES_PER_NNZ + rows * 8 + 2 * rows * 4 * dim + routed_in * row_bytes
    src = rows * 4 * dim + routed_out * row_bytes
    return np.maximum(dst, src)


def sized_layouts(counts: dict[str, np.ndarray], dim: int, budget: float, blocks: dict[str, int],
                  fixed: dict[str, bool], step: int) -> dict[str, SideLayout]:
    """Balanced layouts of both sides with the fewest blocks (from `blocks`, growing by half, in multiples of
    `step`) whose largest routed task fits `budget` bytes (task_bytes); a side in `fixed` keeps its count.

    A side stops growing once only single-row blocks are over the budget (a row is never split: a popular row's
    own interactions are what is left of its task; logged), or at MAX_BLOCKS.
    """
    other = {"user": "item", "item": "user"}
    n = {side: blocks[side] for side in counts}
    warned: set[str] = set()
    while True:
        layouts = {side: SideLayout.balanced(counts[side], n[side], dim) for side in counts}
        over = []
        for side in counts:
            layout = layouts[side]
            need = block_task_bytes(counts[side], counts[other[side]], layout, layouts[other[side]].num_blocks, dim)
            big = need > budget
            if fixed[side] or not big.any():
                continue
            if (np.diff(layout.bounds_array)[big] > 1).any() and grow(n[side], step, len(counts[side])) > n[side]:
                over.append(side)
            elif side not in warned:
                warned.add(side)
                worst = int(np.argmax(need))
                log.warning("routed %s block %d (row %d, %d interactions) needs about %.0f MiB, over the %.0f MiB "
                            "task budget, and a row is never split: give executors more memory (spark.executor."
                            "memory) or fewer cores", side, worst, layout.bounds(worst)[0],
                            int(counts[side][layout.bounds(worst)[0]]), need[worst] / 2**20, budget / 2**20)
        if not over:
            return layouts
        for side in over:
            n[side] = grow(n[side], step, len(counts[side]))


def grow(blocks: int, step: int, rows: int) -> int:
    """The next block count sized_layouts tries: half again, a multiple of `step`, at most a block per row
    and MAX_BLOCKS."""
    return min(step * math.ceil(max(blocks + 1, math.ceil(blocks * 1.5)) / step), rows, MAX_BLOCKS)


def task_budget(spark: Any, local: bool) -> float:
    """Bytes one routed block task may hold: TASK_MEMORY_SHARE of an executor's memory per core
    (spark.executor.memory over spark.executor.cores; a local master's tasks share the driver's memory)."""
    def conf(key: str, default: str) -> str:
        try:
            return str(spark.conf.get(key, default) or default)
        except Exception:  # a Connect session may not show static settings
            return default

    if local:
        memory = size_bytes(conf("spark.driver.memory", "1g"))
        try:
            cores = int(spark.sparkContext.defaultParallelism)
        except Exception:
            cores = 2
    else:
        memory, cores = size_bytes(conf("spark.executor.memory", "1g")), int(conf("spark.executor.cores", "1"))
    return memory / max(cores, 1) * TASK_MEMORY_SHARE


def size_bytes(text: str) -> int:
    """A Spark memory size ("3g", "800m", "512k", "2t"; a bare number is MiB, as spark.executor.memory reads it)."""
    t = text.strip().lower().removesuffix("b")
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(float(t) * 2**20)


def partition_key(keys: list[int], column: str) -> Any:
    """The partition key of block `column` (a Spark Column): keys[b], which hashes to partition b
    (blocks.spark_partition_keys)."""
    from pyspark.sql import functions as F

    return F.element_at(F.array(*[F.lit(k) for k in keys]), F.col(column) + 1)


def keyed(df: Any, column: str, num_blocks: int) -> Any:
    """`df` with `pkey`, the partition key of block `column` among `num_blocks`, hash-partitioned on it: row of
    block b in partition b, and Spark knows it (a grouping on pkey after it shuffles nothing more)."""
    return df.withColumn("pkey", partition_key(spark_partition_keys(num_blocks), column)).repartition(
        num_blocks, "pkey")


# ---------------------------------------------------------------- factor rows where tasks read them


def block_file(block: int) -> str:
    """The file of one block's factor rows in a step folder."""
    return f"block-{block:05d}.f32"


@dataclass(frozen=True)
class StepFiles:
    """One side's factor rows as a file per block in the store (float32, row-major, no header).

    The block tasks that make the rows write them (one PUT on an object store, a rename on a disk: no commit
    protocol, no driver in the path) and the next half-step's tasks read the blocks they need straight from the
    store: a lost executor loses no step, and a step is one Spark action. A retried or speculative attempt of a
    task writes the same bytes (the kernels are deterministic, single-threaded per task), so whichever attempt's
    file stays matches the summary Spark kept.
    """

    store: Store
    bounds: tuple[int, ...]
    dim: int

    def rows(self, block: int) -> np.ndarray:
        """Block `block`'s factor rows (read-only)."""
        n = self.bounds[block + 1] - self.bounds[block]
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.frombuffer(self.store.read_bytes(block_file(block)), np.float32).reshape(n, self.dim)

    def write(self, block: int, data: Any) -> None:
        """Publish block `block`'s rows (a float32 array or its bytes); a retried task writes the same bytes."""
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data, np.float32).tobytes()
        self.store.write_bytes(data, block_file(block))


@dataclass(frozen=True)
class InitRows:
    """The initial factor rows of one side (init_factors), drawn inside the task that needs a block."""

    n: int
    dim: int
    scale: float
    seed: int
    side: int
    bounds: tuple[int, ...]

    def rows(self, block: int) -> np.ndarray:
        """Block `block`'s initial rows."""
        return init_factors(self.n, self.dim, self.scale, self.seed, self.side, self.bounds[block],
                            self.bounds[block + 1])


RowSource = StepFiles | InitRows
FACTOR_SCHEMA = "block int, row_start int, n_rows int, factors binary"


def over_blocks(spark: Any, num_blocks: int, fn: Callable[[int], Iterator[pa.RecordBatch]], schema: str) -> Any:
    """The DataFrame of fn(b)'s batches for every block id b, one task per block, block b in partition b."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for block in batch.column(0).to_pylist():
                yield from fn(block)

    return spark.range(0, num_blocks, 1, num_blocks).mapInArrow(run, schema)


def blocks_frame(spark: Any, source: RowSource) -> Any:
    """The factor-block DataFrame of `source` (block, row_start, n_rows, factors): one task per block reads or
    draws its rows, so the frame's lineage starts in the store (or the seed), never in executor memory."""
    bounds = source.bounds

    def make(block: int) -> Iterator[pa.RecordBatch]:
        x = source.rows(block)
        yield pa.RecordBatch.from_pydict({
            "block": pa.array([block], pa.int32()), "row_start": pa.array([bounds[block]], pa.int32()),
            "n_rows": pa.array([len(x)], pa.int32()), "factors": pa.array([x.tobytes()], pa.binary())})

    return over_blocks(spark, len(bounds) - 1, make, FACTOR_SCHEMA)


# ---------------------------------------------------------------- routes


def block_routes(dst: int, indices: np.ndarray, bounds: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(source block, sorted int32 rows) of every block of the other side (cut at `bounds`) whose rows block `dst`'s
    CSR `indices` reference."""
    needed = np.unique(indices).astype(np.int32)
    cuts = np.searchsorted(needed, bounds)
    for src in range(len(bounds) - 1):
        if cuts[src + 1] > cuts[src]:
            yield src, needed[cuts[src]:cuts[src + 1]]


def build_routes(spark: Any, read: Callable[[int], Block], layout: SideLayout, other: SideLayout) -> Any:
    """For every block of `layout` (its CSR read by `read`), the sorted rows of the other side it references, split
    by the other side's blocks; keyed by their source block (`keyed`): partition s holds what source block s sends."""
    bounds = np.asarray(other.bounds_array)

    def route(block: int) -> Iterator[pa.RecordBatch]:
        for src, rows in block_routes(block, read(block).indices, bounds):
            yield pa.RecordBatch.from_pydict({
                "dst_block": pa.array([block], pa.int32()), "src_block": pa.array([src], pa.int32()),
                "rows": pa.array([rows.tobytes()], pa.binary())})

    return keyed(over_blocks(spark, layout.num_blocks, route, ROUTE_SCHEMA), "src_block", other.num_blocks)


def route_file(src: int) -> str:
    """The file of the routes out of source block `src`."""
    return f"src-{src:05d}.arrow"


@dataclass(frozen=True)
class RouteFiles:
    """One side's routes in the store, a file per source block of the other side: (dst_block, rows) for every
    block of this side that needs rows of that source block. A cutting task reads its source block's file once
    per Python worker (handoff.ROUTES)."""

    store: Store
    sources: frozenset[int]

    def of(self, src: int) -> list[tuple[int, np.ndarray]]:
        """(destination block, sorted rows) pairs of source block `src`, by destination."""
        if src not in self.sources:
            return []
        return ROUTES.get((self.store.uri, src), lambda: self._read(src))

    def _read(self, src: int) -> list[tuple[int, np.ndarray]]:
        with self.store.open_input(route_file(src)) as f:
            t = pa.ipc.open_file(f).read_all()
        rows = t.column("rows")
        return [(dst, np.frombuffer(rows[k].as_buffer(), np.int32))
                for k, dst in enumerate(t.column("dst_block").to_pylist())]


def _write_route_file(store: Store, src: int, routes: pa.Table) -> None:
    """Source block `src`'s routes, a table of (dst_block int32, rows binary) sorted by dst_block, as its file."""
    with store.open_output(route_file(src)) as out, pa.ipc.new_file(out, routes.schema) as w:
        w.write_table(routes)


def write_routes(spark: Any, read: Callable[[int], Block], layout: SideLayout, other: SideLayout,
                 store: Store) -> tuple[RouteFiles, dict[int, int]]:
    """Every block's routes (build_routes) written to `store` by the executors, a file per source block, in one
    job; with the rows each destination block receives per half-step."""
    import pyarrow.compute as pc

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = [b for b in batches if b.num_rows]
        if not parts:
            return
        t = pa.Table.from_batches(parts)
        for src in sorted(set(t.column("src_block").to_pylist())):
            mine = t.filter(pc.equal(t["src_block"], src)).select(["dst_block", "rows"]).sort_by("dst_block")
            _write_route_file(store, src, mine)
            yield pa.RecordBatch.from_pydict({
                "src_block": pa.array([src] * mine.num_rows, pa.int32()),
                "dst_block": mine.column("dst_block").combine_chunks(),
                "n": pa.array([len(r) // 4 for r in mine.column("rows").to_pylist()], pa.int64())})

    got = (build_routes(spark, read, layout, other).select("dst_block", "src_block", "rows")
           .mapInArrow(write, "src_block int, dst_block int, n long").toArrow())
    per_dst: dict[int, int] = {}
    for dst, n in zip(got.column("dst_block").to_pylist(), got.column("n").to_pylist(), strict=True):
        per_dst[dst] = per_dst.get(dst, 0) + n
    return RouteFiles(store, frozenset(got.column("src_block").to_pylist())), per_dst


def write_routes_from(indices: dict[int, np.ndarray], other: SideLayout,
                      store: Store) -> tuple[RouteFiles, dict[int, int]]:
    """The routes of blocks whose CSR column indices the driver holds ({block: indices}, blocks cut there), cut
    and written by the driver: the files write_routes' executors write, with no Spark job."""
    bounds = np.asarray(other.bounds_array)
    by_src: dict[int, list[tuple[int, np.ndarray]]] = {}
    per_dst: dict[int, int] = {}
    for dst in sorted(indices):
        for src, rows in block_routes(dst, indices[dst], bounds):
            by_src.setdefault(src, []).append((dst, rows))
            per_dst[dst] = per_dst.get(dst, 0) + len(rows)
    for src, routes in by_src.items():
        _write_route_file(store, src, pa.table({
            "dst_block": pa.array([d for d, _ in routes], pa.int32()),
            "rows": pa.array([r.tobytes() for _, r in routes], pa.binary())}))
    return RouteFiles(store, frozenset(by_src)), per_dst


def factor_gramian(factors_df: Any, dim: int) -> np.ndarray:
    """Σ x xᵀ over a factor-block DataFrame, as partial sums reduced on the driver (eq. 25)."""

    def part(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        g = np.zeros((dim, dim))
        for batch in batches:
            for k in range(batch.num_rows):
                x = np.frombuffer(batch.column("factors")[k].as_buffer(), np.float32).reshape(-1, dim)
                g += gramian(x)
        yield pa.RecordBatch.from_pydict({"gram": [g.tobytes()]})

    out = factors_df.select("factors").mapInArrow(part, "gram binary").toArrow()
    return sum((np.frombuffer(out.column("gram")[k].as_buffer(), np.float64).reshape(dim, dim)
                for k in range(out.num_rows)), np.zeros((dim, dim)))


def block_partials(factors_df: Any, dim: int, fn: Callable[[int, np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """fn(row_start, rows) of every factor block, computed in its task (float64 partial sums, block order kept)."""

    def part(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for k in range(batch.num_rows):
                start, n = batch.column("row_start")[k].as_py(), batch.column("n_rows")[k].as_py()
                x = np.frombuffer(batch.column("factors")[k].as_buffer(), np.float32).reshape(n, dim)
                yield pa.RecordBatch.from_pydict({"part": [np.asarray(fn(start, x), np.float64).tobytes()]})

    out = factors_df.select("row_start", "n_rows", "factors").mapInArrow(part, "part binary").toArrow()
    return [np.frombuffer(out.column("part")[k].as_buffer(), np.float64) for k in range(out.num_rows)]


def move_files(spark: Any, factors: RowSource, delta: RowSource, t: float, out: StepFiles) -> None:
    """Rows h + t Delta of every block written to `out` (RankALS's line step), one task per block, no shuffle."""

    def move(block: int) -> Iterator[pa.RecordBatch]:
        out.write(block, move_rows(factors.rows(block), delta.rows(block), t))
        yield pa.RecordBatch.from_pydict({"block": pa.array([block], pa.int32())})

    over_blocks(spark, len(out.bounds) - 1, move, "block int").toArrow()


SLICE_BYTES = 32 * 2**20  # the most factor bytes one routed slice row carries: JVM rows and Arrow cells stay small


def slice_rows_per_row(dim: int) -> int:
    """Factor rows per routed slice row at rank `dim` (at most SLICE_BYTES of float32)."""
    return max(1, SLICE_BYTES // (4 * dim))


def cut_slices(spark: Any, source: RowSource, routes: RouteFiles, dst_keys: list[int], dim: int) -> Any:
    """The other side's factor rows each destination block needs, cut where they are read.

    One task per source block reads (or draws) that block's rows once, with its routes from the store, and emits
    slices of at most `slice_rows_per_row(dim)` rows keyed by their destination block's partition key (`dst_keys`),
    marked as not the block's own rows: a narrow stage, then the half-step's one shuffle. A task holds its block and
    the slices it cuts from it: bounded by the block, not by the data.
    """
    step, bounds, schema = slice_rows_per_row(dim), source.bounds, payload_arrow_schema()

    def cut(src: int) -> Iterator[pa.RecordBatch]:
        wanted = routes.of(src)
        if not wanted:
            return
        x, start = source.rows(src), bounds[src]
        cols: dict[str, list[Any]] = {"pkey": [], "dst_block": [], "rows": [], "vecs": []}
        held = 0
        for dst, rows in wanted:
            for a in range(0, len(rows), step):
                part = rows[a:a + step]
                cols["pkey"].append(dst_keys[dst])
                cols["dst_block"].append(dst)
                cols["rows"].append(part.tobytes())
                cols["vecs"].append(np.ascontiguousarray(x[part - start]).tobytes())
                held += len(part) * (4 * dim + 4)
                if held >= SLICE_BYTES:
                    yield _slices(cols, schema)
                    cols, held = {k: [] for k in cols}, 0
        if cols["pkey"]:
            yield _slices(cols, schema)

    return over_blocks(spark, len(bounds) - 1, cut, PAYLOAD_SCHEMA)


def _slices(cols: dict[str, list[Any]], schema: pa.Schema) -> pa.RecordBatch:
    n = len(cols["pkey"])
    return pa.RecordBatch.from_pydict({
        "pkey": pa.array(cols["pkey"], pa.int32()), "dst_block": pa.array(cols["dst_block"], pa.int32()),
        "own": pa.array([False] * n), "rows": pa.array(cols["rows"], pa.binary()),
        "vecs": pa.array(cols["vecs"], pa.binary())}, schema=schema)


def block_markers(spark: Any, keys: list[int]) -> Any:
    """One payload row per block of a side (`own`, no rows): every block gets its solving task, also a block
    without interactions, which receives no slices."""
    from pyspark.sql import functions as F

    ids = spark.range(0, len(keys), 1, 1).select(F.col("id").cast("int").alias("dst_block"))
    return ids.select(partition_key(keys, "dst_block").alias("pkey"), "dst_block", F.lit(True).alias("own"),
                      F.lit(bytearray()).alias("rows"), F.lit(bytearray()).alias("vecs"))


def payload_arrow_schema() -> pa.Schema:
    """PAYLOAD_SCHEMA as an Arrow schema."""
    return pa.schema([("pkey", pa.int32()), ("dst_block", pa.int32()), ("own", pa.bool_()), ("rows", pa.binary()),
                      ("vecs", pa.binary())])


def gather(payload: pa.Table, dim: int, picks: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate a block's routed slices (rows `picks` of `payload`, default all) into (sorted global row ids,
    their factor rows), with one copy of the rows.

    Every slice is an ascending run of one source block's rows and slices never overlap, so ordering the slices by
    their first row orders the rows (a general sort, which copies the rows twice, is the fallback).
    """
    picks = list(range(payload.num_rows)) if picks is None else picks
    rows = [np.frombuffer(payload.column("rows")[k].as_buffer(), np.int32) for k in picks]
    keep = [k for k, r in enumerate(rows) if len(r)]
    if not keep:
        return np.zeros(0, np.int32), np.zeros((0, dim), np.float32)
    keep.sort(key=lambda k: rows[k][0])
    all_rows = np.concatenate([rows[k] for k in keep])
    all_vecs = np.concatenate([np.frombuffer(payload.column("vecs")[picks[k]].as_buffer(), np.float32)
                               .reshape(-1, dim) for k in keep])
    if len(all_rows) > 1 and not (all_rows[1:] > all_rows[:-1]).all():
        order = np.argsort(all_rows, kind="stable")
        all_rows, all_vecs = all_rows[order], all_vecs[order]
    return all_rows, all_vecs


def localise(b: Block, rows: np.ndarray) -> Block:
    """The block with its column indices re-pointed into the gathered `rows`."""
    local = np.searchsorted(rows, b.indices).astype(np.int32)
    return Block(b.block, b.row_start, b.n_rows, b.indptr, local, b.alpha, b.target)


def blocks_to_array(blocks_df: Any, dim: int) -> np.ndarray:
    """Collect a factor-block DataFrame into one array (rows in index order)."""
    t = blocks_df.select("row_start", "n_rows", "factors").toArrow()
    starts, sizes = t.column("row_start").to_pylist(), t.column("n_rows").to_pylist()
    out = np.zeros((max((a + m for a, m in zip(starts, sizes, strict=True)), default=0), dim), np.float32)
    for k, (a, m) in enumerate(zip(starts, sizes, strict=True)):
        out[a:a + m] = np.frombuffer(t.column("factors")[k].as_buffer(), np.float32).reshape(m, dim)
    return out


class StepStore:
    """Where a routed fit's steps live: a folder per step of block files (StepFiles) and the routes, under one
    folder of the store (or, fitting on a local master without one, a scratch folder).

    The last `keep` steps stay (both sides' current factors, the step being made and RankALS's direction); the
    folder goes at interpreter exit, since a fitted model reads its final factor blocks from it lazily.
    """

    def __init__(self, store: Store | None, keep: int = 6, prefix: str = "routed") -> None:
        if store is None:  # local master only (the trainer checks): executors share this machine's disk
            self.store = Store(tempfile.mkdtemp(prefix=f"gramian-{prefix}-", dir=scratch_root()))
        else:
            self.store = store.child(f"{prefix}-{uuid.uuid4().hex[:12]}")
        self.keep = keep
        self._count = 0
        self._written: list[str] = []
        atexit.register(self.close)

    def new(self, layout: SideLayout, dim: int) -> StepFiles:
        """The folder of the next step's block files (old steps past `keep` deleted)."""
        self._count += 1
        name = f"step{self._count:05d}"
        self._written.append(name)
        for old in self._written[:-self.keep]:
            self.store.delete(old)
        self._written = self._written[-self.keep:]
        return StepFiles(self.store.child(name), layout.bounds_array, dim)

    def live(self, files: StepFiles) -> bool:
        """Whether `files` is one of the steps still kept."""
        return any(files.store.uri == self.store.uri_of(name) for name in self._written)

    def persist(self, factors_df: Any, layout: SideLayout, dim: int) -> StepFiles:
        """Any factor-block DataFrame (a checkpoint read back, say) written as a step, one job; its blocks must be
        `layout`'s."""
        out = self.new(layout, dim)

        def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                for k in range(batch.num_rows):
                    block, start, n = (batch.column(c)[k].as_py() for c in ("block", "row_start", "n_rows"))
                    if 0 <= block < len(layout.bounds_array) - 1 and layout.bounds(block) == (start, start + n):
                        out.write(block, batch.column("factors")[k].as_buffer())
                    yield pa.RecordBatch.from_pydict({"block": pa.array([block], pa.int32()),
                                                      "row_start": pa.array([start], pa.int32()),
                                                      "n_rows": pa.array([n], pa.int32())})

        got = factors_df.select("block", "row_start", "n_rows", "factors").mapInArrow(
            write, "block int, row_start int, n_rows int").toArrow()
        cols = (got.column(c).to_pylist() for c in ("block", "row_start", "n_rows"))
        have = sorted((b, a, a + n) for b, a, n in zip(*cols, strict=True))
        want = [(b, *layout.bounds(b)) for b in range(layout.num_blocks)]
        if have != want:
            raise ConfigError(f"routed factor blocks (block, first row, end row) must be the trainer's {want[:4]}"
                              f"{'...' if len(want) > 4 else ''} ({len(want)} blocks), got {have[:4]}"
                              f"{'...' if len(have) > 4 else ''} ({len(have)}): a checkpoint written with other "
                              f"block counts. Resume with the same train.num_user_blocks/num_item_blocks and "
                              f"executor memory, or start without --resume.")
        return out

    def finish(self, final: list[StepFiles]) -> None:
        """A fit is done: delete the routes and every step but the `final` ones (what its model reads)."""
        keep = {f.store.uri for f in final}
        for name in self.store.listdir():
            if self.store.uri_of(name) not in keep:
                self.store.delete(name)
        self._written = [n for n in self._written if self.store.uri_of(n) in keep]

    def close(self) -> None:
        """Delete every step written, the routes (and the exit hook)."""
        try:
            self.store.delete()
        except Exception:  # scratch left in the store is only space
            pass
        atexit.unregister(self.close)
