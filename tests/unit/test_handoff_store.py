"""The store exchange's driver and worker halves: each matrix written once, read once per Python worker."""

from __future__ import annotations

import numpy as np

from gramian.storage import open_store
from gramian.train import handoff
from gramian.train.handoff import Handoff, StoreRef, WorkerCache, resolve


class _NoMaster:
    """A session stand-in whose master is not local (what a cluster driver sees)."""

    class conf:  # noqa: N801
        @staticmethod
        def get(key):
            return "spark://127.0.0.1:7077"


def test_a_matrix_packed_again_is_not_written_again_and_only_the_last_three_stay(tmp_path):
    h = Handoff(_NoMaster(), enabled=True, store=open_store(str(tmp_path)))
    assert h.folder is None and h.store is not None
    arrays = [np.full((5, 3), k, np.float32) for k in range(4)]
    first = h.pack(arrays[0])
    assert h.pack(arrays[0]) == first  # the user step's current rows: the previous item step's fixed side
    refs = [first] + [h.pack(a) for a in arrays[1:]]
    assert len({r.name for r in refs}) == 4
    assert sorted(h.store.listdir()) == sorted(r.name for r in refs[1:])  # the oldest left the store
    np.testing.assert_array_equal(handoff.load_npy(h.store, refs[3].name), arrays[3])
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
