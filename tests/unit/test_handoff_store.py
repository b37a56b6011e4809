"""The store exchange's driver and worker halves: each matrix written once, read once per Python worker."""

from __future__ import annotations

import numpy as np

from gramian.storage import open_store
from gramian.train import blocks as blocks_module
from gramian.train import handoff
from gramian.train.handoff import Handoff, StoreRef, WorkerCache, resolve


class _NoMaster:
    """A session stand-in whose master is not local (what a cluster driver sees)."""

    class conf:  # noqa: N801
        @staticmethod
        def get(key):
            return "spark://127.0.0.1:7077"


def test_a_matrix_packed_again_is_not_written_again_and_only_the_last_keep_stay(tmp_path):
    h = Handoff(_NoMaster(), enabled=True, store=open_store(str(tmp_path)))
    assert h.folder is None and h.store is not None
    arrays = [np.full((5, 3), k, np.float32) for k in range(Handoff.KEEP + 1)]
    first = h.pack(arrays[0])
    assert h.pack(arrays[0]) == first  # the user step's current rows: the previous item step's fixed side
    refs = [first] + [h.pack(a) for a in arrays[1:]]
    assert len({r.name for r in refs}) == Handoff.KEEP + 1
    assert sorted(h.store.listdir()) == sorted(r.name for r in refs[1:])  # the oldest left the store
    np.testing.assert_array_equal(handoff.load_npy(h.store, refs[-1].name), arrays[-1])
    h.close()
    assert not (tmp_path / h.store.uri.rsplit("/", 1)[-1]).exists()


def test_a_worker_reads_a_stored_matrix_once_then_serves_it_from_its_cache(tmp_path, monkeypatch):
    store = open_store(str(tmp_path))
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    with store.open_output("m1.npy") as out:
        np.lib.format.write_array(out, x)
    reads = []
    real = handoff.load_npy
    monkeypatch.setattr(handoff, "load_npy", lambda s, name: reads.append(name) or real(s, name))
    monkeypatch.setattr(handoff, "FACTORS", WorkerCache(4))
    ref = StoreRef(store, "m1.npy")
    a, b = resolve(ref), resolve(ref)
    assert a is b and reads == ["m1.npy"]
    np.testing.assert_array_equal(a, x)
    assert a.flags.writeable and a.flags.c_contiguous  # the kernels take it without a copy


def test_worker_cache_evicts_the_least_recently_used():
    cache = WorkerCache(2)
    loads = []
    for key in ("a", "b", "a", "c", "b"):
        cache.get(key, lambda k=key: loads.append(k) or k.upper())
    assert loads == ["a", "b", "c", "b"] and len(cache) == 2  # "b" was evicted by "c" (after "a" was used)


def test_the_csr_block_cache_is_bounded_by_bytes_too(tmp_path, monkeypatch):
    """Python workers keep CSR blocks read from the store (store and routed exchanges) up to
    GRAMIAN_BLOCK_CACHE_MB: blocks weigh their arrays' bytes, and a block past the bound evicts the oldest."""
    from gramian.train.blocks import SideLayout, store_block, write_store_block

    store = open_store(str(tmp_path / "csr"))
    layout = SideLayout((0, 10, 20, 30))
    for block in range(3):
        write_store_block(store, "user", block, {
            "indptr": np.arange(11, dtype=np.int64) * 100, "indices": np.zeros(1000, np.int32),
            "alpha": np.ones(1000), "target": np.ones(1000)})
    weight = 11 * 8 + 1000 * (4 + 8 + 8)
    assert handoff.BLOCKS.max_bytes == 1024 * 2**20
    cache = WorkerCache(64, 2.5 * weight, handoff.BLOCKS.weigh)
    monkeypatch.setattr(blocks_module, "BLOCKS", cache)
    got = [store_block(store, "user", layout, b, frozenset(range(3))) for b in range(3)]
    assert handoff.BLOCKS.weigh(got[0]) == weight
    assert len(cache) == 2 and store_block(store, "user", layout, 2, frozenset(range(3))) is got[2]


def test_a_worker_reads_back_only_the_factor_blocks_other_workers_made(tmp_path, monkeypatch):
    """Store exchange: a block task publishes its new rows as the step's block file and keeps them; the next
    half-step's whole side in that worker reads only the other blocks from the store, and the kept block is
    dropped once it is in the whole (which the worker keeps)."""
    import pyarrow as pa

    from gramian.train import exchange, routed

    monkeypatch.setattr(exchange, "FACTORS", WorkerCache(4))
    monkeypatch.setattr(exchange, "OWN_BLOCKS", WorkerCache(64, 2**20, lambda x: x.nbytes))
    store = open_store(str(tmp_path / "steps"))
    files = routed.StepFiles(store, (0, 3, 5, 9), 2)
    x = np.arange(18, dtype=np.float32).reshape(9, 2)
    rows = exchange.BlockRows(files)
    rows.publish(0, pa.RecordBatch.from_pydict({"factors": pa.array([x[:3].tobytes()], pa.binary())}))
    for block, (a, b) in ((1, (3, 5)), (2, (5, 9))):  # made by other workers
        files.write(block, x[a:b])
    assert sorted(store.listdir()) == [f"block-{b:05d}.f32" for b in range(3)]
    read = []
    real = routed.StepFiles.rows
    monkeypatch.setattr(routed.StepFiles, "rows", lambda self, b: read.append(b) or real(self, b))
    whole = rows.whole()
    np.testing.assert_array_equal(whole, x)
    assert read == [1, 2] and len(exchange.OWN_BLOCKS) == 0
    assert rows.whole() is whole and read == [1, 2]  # kept: the next use reads nothing


def test_a_remembered_step_answers_pack_its_files_stay_its_makers_and_resolve_makes_it_whole(tmp_path):
    """The store exchange remembers a half-step's rows as the block files its tasks wrote: packing those rows
    again writes nothing, leaving the last KEEP deletes no file of theirs (their step store does), `forget`
    drops them, and a task's `resolve` turns the reference into the whole matrix."""
    h = Handoff(_NoMaster(), enabled=True, store=open_store(str(tmp_path)))

    class Made:
        def __init__(self, x):
            self.x = x

        def whole(self):
            return self.x

    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    made = Made(x)
    h.remember(x, made)
    assert h.pack(x) is made and h._count == 0 and h.store.listdir() == []
    assert resolve(h.pack(x)) is x
    others = [np.full((2, 2), k, np.float32) for k in range(Handoff.KEEP)]
    refs = [h.pack(a) for a in others]  # x leaves the last KEEP: nothing of its own is deleted, the packed stay
    assert sorted(h.store.listdir()) == sorted(r.name for r in refs)
    assert isinstance(h.pack(x), StoreRef) and h._count == Handoff.KEEP + 1  # no longer answered: written now
    y = np.ones((3, 2), np.float32)
    h.remember(y, Made(y))
    h.forget()
    assert isinstance(h.pack(y), StoreRef)
    h.close()
