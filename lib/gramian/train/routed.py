"""Half-steps for factor tables too large to travel whole: each block receives only the rows it needs.

Routing, in one example: user block 0 rates items {3, 7, 12}; with item blocks [0, 5) [5, 10) [10, 15)
its routes are (dst 0, src 0, rows [3]), (dst 0, src 1, rows [7]), (dst 0, src 2, rows [12]). A
half-step joins the routes with the item factor blocks on src, slices out those rows, groups the
slices by dst and cogroups them with user block 0's CSR and current factors; the task re-indexes
the CSR into the gathered rows and solves. Routes are built once; only factor rows move.
Factor blocks are DataFrames of (block, row_start, n_rows, factors binary float32 row-major).
"""

from __future__ import annotations

import atexit
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from gramian.kernels import gramian
from gramian.kernels.pairwise import move_rows
from gramian.train.blocks import Block, SideLayout, decode_blocks
from gramian.train.init import init_factors

if TYPE_CHECKING:
    from gramian.storage import Store

ROUTE_SCHEMA = "dst_block int, src_block int, rows binary"
FACTOR_COLUMNS = ("block", "row_start", "n_rows", "factors")
PAYLOAD_SCHEMA = "pkey int, dst_block int, own boolean, rows binary, vecs binary"


def build_routes(blocks_df: Any, other: SideLayout) -> Any:
    """For every block, the sorted rows of the other side it references, split by the other side's blocks."""
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

    return blocks_df.mapInArrow(route, ROUTE_SCHEMA)


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


def route_payload(joined: Any, dst_keys: list[int], dim: int) -> Any:
    """The other side's factor rows each destination block needs, sliced out of their source blocks.

    `joined` holds the routes beside their source block's row_start and factors; each slice is keyed by its
    destination block's partition key (`dst_keys`) and marked as not the block's own rows.
    """

    def slice_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for k in range(batch.num_rows):
                rows = np.frombuffer(batch.column("rows")[k].as_buffer(), np.int32)
                start, dst = batch.column("row_start")[k].as_py(), batch.column("dst_block")[k].as_py()
                x = np.frombuffer(batch.column("factors")[k].as_buffer(), np.float32).reshape(-1, dim)
                yield pa.RecordBatch.from_pydict({
                    "pkey": pa.array([dst_keys[dst]], pa.int32()), "dst_block": pa.array([dst], pa.int32()),
                    "own": pa.array([False]), "rows": pa.array([rows.tobytes()], pa.binary()),
                    "vecs": pa.array([np.ascontiguousarray(x[rows - start]).tobytes()], pa.binary())})

    return joined.select("dst_block", "rows", "row_start", "factors").mapInArrow(slice_rows, PAYLOAD_SCHEMA)


def gather(payload: pa.Table, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate a block's routed slices into (sorted global row ids, their factor rows)."""
    if payload.num_rows == 0:
        return np.zeros(0, np.int32), np.zeros((0, dim), np.float32)
    rows = [np.frombuffer(payload.column("rows")[k].as_buffer(), np.int32) for k in range(payload.num_rows)]
    vecs = [np.frombuffer(payload.column("vecs")[k].as_buffer(), np.float32).reshape(-1, dim)
            for k in range(payload.num_rows)]
    all_rows, all_vecs = np.concatenate(rows), np.concatenate(vecs)
    order = np.argsort(all_rows, kind="stable")
    return all_rows[order], all_vecs[order]


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
    """Routed steps' factor blocks written to the store as Parquet and read back, so the next step's lineage
    starts there: a lost executor costs only its tasks' retry (a local checkpoint lives in executor memory and
    dies with its executor), and old steps do not pile up in executor memory, slowing late epochs.

    Without a store (fitting outside the train stage), `persist` falls back to a local checkpoint. The last
    `keep` outputs stay (both sides' current factors, the step being made and RankALS's direction); the
    folder goes at interpreter exit, since a fitted model reads its final factor blocks from it lazily.
    """

    def __init__(self, store: Store | None, keep: int = 6) -> None:
        self.store = None if store is None else store.child(f"routed-{uuid.uuid4().hex[:12]}")
        self.keep = keep
        self._count = 0
        self._written: list[str] = []
        if self.store is not None:
            atexit.register(self.close)

    def persist(self, df: Any) -> Any:
        """`df` computed once, written, and read back as a DataFrame whose lineage begins in the store."""
        if self.store is None:
            return df.localCheckpoint()
        self._count += 1
        name = f"step{self._count:05d}"
        uri = self.store.uri_of(name)
        df.write.mode("overwrite").parquet(uri)
        self._written.append(name)
        for old in self._written[:-self.keep]:
            self.store.delete(old)
        self._written = self._written[-self.keep:]
        return df.sparkSession.read.parquet(uri)

    def close(self) -> None:
        """Delete every step written (and the exit hook)."""
        if self.store is not None:
            try:
                self.store.delete()
            except Exception:  # scratch left in the store is only space
                pass
            atexit.unregister(self.close)
