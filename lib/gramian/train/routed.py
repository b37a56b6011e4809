"""Half-steps for factor tables too large to travel whole: each block receives only the rows it needs.

Routing, in one example: user block 0 rates items {3, 7, 12}; with item blocks [0, 5) [5, 10) [10, 15)
its routes are (dst 0, src 0, rows [3]), (dst 0, src 1, rows [7]), (dst 0, src 2, rows [12]). A
half-step cogroups the routes with the item factor blocks on src (one task per item block), slices out
those rows, sends the slices to their dst and cogroups them with user block 0's CSR and current factors;
the task re-indexes the CSR into the gathered rows and solves. Routes are built once; only factor rows move.
Factor blocks are DataFrames of (block, row_start, n_rows, factors binary float32 row-major).

Memory: every task holds one block's data, never a whole side (task_bytes); the trainer picks block counts
that keep the largest task within its share of executor memory (sized_layouts, task_budget).
"""

from __future__ import annotations

import atexit
import logging
import math
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from gramian.kernels import gramian
from gramian.kernels.pairwise import move_rows
from gramian.train.blocks import Block, SideLayout, decode_blocks, spark_partition_keys
from gramian.train.init import init_factors

if TYPE_CHECKING:
    from gramian.storage import Store

log = logging.getLogger(__name__)

ROUTE_SCHEMA = "dst_block int, src_block int, rows binary"
# A routed block task's estimated bytes (task_bytes) may be this share of its executor's memory per core: the
# routed rows exist about four times at once (the JVM's sort buffer and Arrow batch, the Arrow table and its
# gathered copy in Python) beside the executor's share of the cached CSR and routes.
TASK_MEMORY_SHARE = 1 / 8
MAX_BLOCKS = 65_536  # sized_layouts stops growing a side here (a block per row comes first on small sides)
CSR_BYTES_PER_NNZ = 4 + 8 + 8  # indices int32, alpha and target float64 (blocks.BLOCK_ARRAYS)
FACTOR_COLUMNS = ("block", "row_start", "n_rows", "factors")
PAYLOAD_SCHEMA = "pkey int, dst_block int, own boolean, rows binary, vecs binary"


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
    (slice_sources): its factor rows and the slices cut from them, a row of c interactions going to about
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
    block b in partition b, and Spark knows it (a cogroup on pkey with it shuffles nothing)."""
    return df.withColumn("pkey", partition_key(spark_partition_keys(num_blocks), column)).repartition(
        num_blocks, "pkey")


def build_routes(blocks_df: Any, other: SideLayout) -> Any:
    """For every block, the sorted rows of the other side it references, split by the other side's blocks;
    keyed by their source block (`keyed`), so a half-step's slicing cogroup shuffles only the factor rows."""
    bounds = np.asarray(other.bounds_array)

    def route(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for b in decode_blocks(batch):
                needed = np.unique(b.indices)
                cuts = np.searchsorted(needed, bounds)
                for src in range(len(bounds) - 1):
                    rows = needed[cuts[src]:cuts[src + 1]]
                    if len(rows):
                        yield pa.RecordBatch.from_pydict({
                            "dst_block": pa.array([b.block], pa.int32()), "src_block": pa.array([src], pa.int32()),
                            "rows": pa.array([rows.astype(np.int32).tobytes()], pa.binary())})

    return keyed(blocks_df.mapInArrow(route, ROUTE_SCHEMA), "src_block", other.num_blocks)


def routed_rows(routes: Any) -> dict[int, int]:
    """Rows each destination block receives per half-step, from a routes DataFrame (build_routes)."""
    from pyspark.sql import functions as F

    got = routes.groupBy("dst_block").agg((F.sum(F.length("rows")) / 4).cast("long").alias("n")).collect()
    return {r["dst_block"]: r["n"] for r in got}


def init_blocks(spark: Any, layout: SideLayout, dim: int, scale: float, seed: int, side: int) -> Any:
    """Initial factor blocks generated inside tasks (identical rows to the driver-side init)."""
    n, bounds = layout.n_rows, layout.bounds_array

    def make(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for block in batch.column(0).to_pylist():
                start, stop = bounds[block], bounds[block + 1]
                x = init_factors(n, dim, scale, seed, side, start, stop)
                yield pa.RecordBatch.from_pydict({
                    "block": pa.array([block], pa.int32()), "row_start": pa.array([start], pa.int32()),
                    "n_rows": pa.array([stop - start], pa.int32()), "factors": pa.array([x.tobytes()], pa.binary())})

    ids = spark.range(0, layout.num_blocks, 1, layout.num_blocks).selectExpr("cast(id as int) as block")
    return ids.mapInArrow(make, "block int, row_start int, n_rows int, factors binary")


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


def move_blocks(factors_df: Any, delta_df: Any, t: float, dim: int) -> Any:
    """Factor blocks moved by t times a direction of the same layout: rows h + t Delta (RankALS's line step)."""

    def move(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for k in range(batch.num_rows):
                x = move_rows(np.frombuffer(batch.column("factors")[k].as_buffer(), np.float32),
                              np.frombuffer(batch.column("delta")[k].as_buffer(), np.float32), t)
                yield pa.RecordBatch.from_pydict({
                    "block": pa.array([batch.column("block")[k].as_py()], pa.int32()),
                    "row_start": pa.array([batch.column("row_start")[k].as_py()], pa.int32()),
                    "n_rows": pa.array([batch.column("n_rows")[k].as_py()], pa.int32()),
                    "factors": pa.array([x.tobytes()], pa.binary())})

    joined = factors_df.join(delta_df.select("block", delta_df.factors.alias("delta")), "block")
    return joined.mapInArrow(move, "block int, row_start int, n_rows int, factors binary")


SLICE_BYTES = 32 * 2**20  # the most factor bytes one routed slice row carries: JVM rows and Arrow cells stay small


def slice_rows_per_row(dim: int) -> int:
    """Factor rows per routed slice row at rank `dim` (at most SLICE_BYTES of float32)."""
    return max(1, SLICE_BYTES // (4 * dim))


def slice_sources(routes: Any, factors: Any, dst_keys: list[int], dim: int) -> Any:
    """The other side's factor rows each destination block needs, cut from their source blocks.

    `routes` and `factors` both carry `pkey`, the source block's partition key; they are cogrouped on it, so one
    task per source block holds that block's factor rows once (not once per destination, as a join would copy
    them) and emits slices of at most `slice_rows_per_row(dim)` rows, keyed by their destination block's
    partition key (`dst_keys`) and marked as not the block's own rows. A task holds its block and the slices it
    cuts from it (at most its block's interactions' rows): bounded by the block, not by the data.
    """
    step = slice_rows_per_row(dim)
    schema = payload_arrow_schema()

    def cut(routes_t: pa.Table, factors_t: pa.Table) -> pa.Table:
        if routes_t.num_rows == 0 or factors_t.num_rows == 0:
            return schema.empty_table()
        start = factors_t.column("row_start")[0].as_py()
        x = np.frombuffer(factors_t.column("factors")[0].as_buffer(), np.float32).reshape(-1, dim)
        dsts = routes_t.column("dst_block").to_pylist()
        out = []
        for k, dst in enumerate(dsts):
            rows = np.frombuffer(routes_t.column("rows")[k].as_buffer(), np.int32)
            for a in range(0, len(rows), step):
                part = rows[a:a + step]
                out.append(pa.RecordBatch.from_pydict({
                    "pkey": pa.array([dst_keys[dst]], pa.int32()), "dst_block": pa.array([dst], pa.int32()),
                    "own": pa.array([False]), "rows": pa.array([part.tobytes()], pa.binary()),
                    "vecs": pa.array([np.ascontiguousarray(x[part - start]).tobytes()], pa.binary())}, schema=schema))
        return pa.Table.from_batches(out, schema=schema)

    return (routes.select("pkey", "dst_block", "rows").groupBy("pkey")
            .cogroup(factors.select("pkey", "row_start", "factors").groupBy("pkey"))
            .applyInArrow(cut, PAYLOAD_SCHEMA))


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


def array_to_blocks(spark: Any, x: np.ndarray, layout: SideLayout) -> Any:
    """Cut a driver-side factor array into a factor-block DataFrame of `layout`."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bounds = layout.bounds_array
    table = pa.table({
        "block": pa.array(range(layout.num_blocks), pa.int32()),
        "row_start": pa.array(bounds[:-1], pa.int32()),
        "n_rows": pa.array(np.diff(bounds), pa.int32()),
        "factors": pa.array([x[a:b].tobytes() for a, b in zip(bounds[:-1], bounds[1:], strict=True)], pa.binary()),
    })
    return spark.createDataFrame(table).repartition(layout.num_blocks, "block")


class StepStore:
    """Routed steps' outputs written to the store as Parquet and read back, so the next step's lineage starts there:
    a lost executor costs only its tasks' retry (a local checkpoint lives in executor memory and dies with its
    executor), old steps do not pile up in executor memory, and plans stay shallow (a chain of cached steps would
    make every step's planning slower than the last).

    A written step is one Spark action (its write): it is read back with the schema it was written with (no
    inference job) and its summary columns are read by the driver from the written files (no summary job). Without
    a store (fitting
    outside the train stage), `persist` falls back to a local checkpoint. The last `keep` outputs stay (both sides'
    current factors, the step being made and RankALS's direction); the folder goes at interpreter exit, since a
    fitted model reads its final factor blocks from it lazily.
    """

    def __init__(self, store: Store | None, keep: int = 6) -> None:
        self.store = None if store is None else store.child(f"routed-{uuid.uuid4().hex[:12]}")
        self.keep = keep
        self._count = 0
        self._written: list[str] = []
        if self.store is not None:
            atexit.register(self.close)

    def persist(self, df: Any, columns: tuple[str, ...] | None = None,
                summary: bool = False) -> tuple[Any, pa.Table | None]:
        """`df` computed once, written, and read back as a DataFrame whose lineage begins in the store: its `columns`
        (default all) and, with `summary`, its other columns but `factors` as an Arrow table (read from the written
        files by the driver; collected by a Spark job without a store)."""
        if self.store is None:
            out = df.localCheckpoint()
            table = out.drop("factors").toArrow() if summary else None
            return out if columns is None else out.select(*columns), table
        self._count += 1
        name = f"step{self._count:05d}"
        uri = self.store.uri_of(name)
        df.write.mode("overwrite").option("compression", "none").parquet(uri)  # float rows: nothing to gain
        self._written.append(name)
        for old in self._written[:-self.keep]:
            self.store.delete(old)
        self._written = self._written[-self.keep:]
        out = df.sparkSession.read.schema(df.schema).parquet(uri)
        return out if columns is None else out.select(*columns), self._summary(name, df.schema) if summary else None

    def _summary(self, name: str, schema: Any) -> pa.Table:
        """Every column of step `name`'s files but `factors`, read by the driver through the store (a file per
        task: read concurrently, since on an object store each is a round trip)."""
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow.parquet as pq

        wanted = [f.name for f in schema.fields if f.name != "factors"]

        def read(file: str) -> pa.Table:
            with self.store.open_input(name, file) as f:
                return pq.read_table(f, columns=wanted)

        files = sorted(f for f in self.store.listdir(name) if f.endswith(".parquet"))
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(files)))) as pool:
            parts = list(pool.map(read, files))
        return pa.concat_tables(parts) if parts else pa.table({c: [] for c in wanted})

    def close(self) -> None:
        """Delete every step written (and the exit hook)."""
        if self.store is not None:
            try:
                self.store.delete()
            except Exception:  # scratch left in the store is only space
                pass
            atexit.unregister(self.close)
