"""How the driver hands factor matrices to block tasks and gets new ones back: closure, store or local files.

A closure works everywhere (classic Spark, Spark Connect, clusters) but sends the whole matrix through
py4j and the task binary on every job, and the new rows come back through the JVM. In local mode the
tasks share the driver's memory-backed disk (/dev/shm when present), so memory-mapped `.npy` files
carry the same data both ways for a fraction of the cost, at stable paths so a job's plan can be reused.
On a cluster with an artifact store (`train.exchange: store`) the driver writes each factor matrix to
the store once, and every Python worker reads it once into a small process cache (`StoreRef`): nothing
large rides in the closure, and block CSR read from the store stays in the worker between half-steps.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gramian.storage import Store

SHM = Path("/dev/shm")


@dataclass(frozen=True)
class FileRef:
    """A factor matrix saved where every task can memory-map it."""

    path: str


@dataclass(frozen=True)
class StoreRef:
    """A factor matrix written once to the artifact store, read once per Python worker (see `resolve`)."""

    store: Store
    name: str


@runtime_checkable
class WholeRef(Protocol):
    """A reference a task turns into the whole matrix itself (the store exchange's block files, say)."""

    def whole(self) -> np.ndarray: ...


class WorkerCache:
    """Arrays a Python worker has read from the store, least recently used evicted first.

    Python workers are reused across tasks (spark.python.worker.reuse), so a matrix or a block's CSR read
    in one half-step serves every later task of this worker that needs it.
    """

    def __init__(self, size: int, max_bytes: float | None = None, weigh: Any = None) -> None:
        self.size, self.max_bytes, self.weigh = size, max_bytes, weigh  # weigh(value) -> bytes, with max_bytes
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._bytes: dict[Any, float] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, load: Any) -> Any:
        """The cached value of `key`, else `load()` (cached)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        t0 = time.perf_counter()
        value = load()
        FETCH.add(time.perf_counter() - t0)
        self.put(key, value)
        return value

    def put(self, key: Any, value: Any) -> None:
        """Keep `value` under `key` (the least recently used go past the size or the bytes)."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            self._bytes[key] = self.weigh(value) if self.weigh is not None else 0.0
            while len(self._items) > self.size or (
                    self.max_bytes is not None and len(self._items) > 1
                    and sum(self._bytes.values()) > self.max_bytes):
                old, _ = self._items.popitem(last=False)
                self._bytes.pop(old, None)

    def pop(self, key: Any) -> Any:
        """Forget `key`; its value, else None."""
        with self._lock:
            self._bytes.pop(key, None)
            return self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class FetchClock:
    """Seconds this Python worker has spent reading arrays from the store, writing its new rows there (or
    decoding shipped rows): the task wrappers report each block's share, so a half-step splits into fetch (the
    exchange), kernel and the rest."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        """Count `seconds` of fetching."""
        with self._lock:
            self.seconds += seconds


FETCH = FetchClock()
FACTORS = WorkerCache(4)  # the fixed side and the current rows of a half-step, plus the previous pair
# store exchange: factor blocks this Python worker made, kept until a later half-step reads their side whole
OWN_BLOCKS = WorkerCache(64, float(os.environ.get("GRAMIAN_OWN_BLOCKS_MB", "512")) * 2**20, lambda x: x.nbytes)
# CSR blocks, both sides: at most 64 blocks and 1 GiB per Python worker by default
BLOCKS = WorkerCache(int(os.environ.get("GRAMIAN_BLOCK_CACHE_SIZE", "64")),
                     float(os.environ.get("GRAMIAN_BLOCK_CACHE_MB", "1024")) * 2**20,
                     lambda b: sum(getattr(b, name).nbytes for name in ("indptr", "indices", "alpha", "target")))
# routed: source blocks' routes (a Python worker's cutting tasks read each once), at most 256 MiB by default
ROUTES = WorkerCache(1 << 16, float(os.environ.get("GRAMIAN_ROUTE_CACHE_MB", "256")) * 2**20,
                     lambda routes: sum(rows.nbytes for _, rows in routes))


def load_npy(store: Store, *parts: str) -> np.ndarray:
    """One `.npy` from the store (a writeable array, which the kernels take without copying)."""
    with store.open_input(*parts) as f:
        return np.lib.format.read_array(f)


def resolve(ref: Any) -> np.ndarray:
    """The array behind a handoff reference (inside a task or on the driver).

    Mapped copy-on-write: the array is writeable, so the kernels' canonical-array check (C, writeable)
    takes it as is instead of copying the whole matrix in every task; nothing writes to it.
    """
    if isinstance(ref, FileRef):
        return np.load(ref.path, mmap_mode="c")
    if isinstance(ref, StoreRef):
        return FACTORS.get((ref.store.uri, ref.name), lambda: load_npy(ref.store, ref.name))
    if isinstance(ref, WholeRef):
        return ref.whole()
    return ref


def writable(ref: FileRef) -> np.ndarray:
    """The output matrix behind `ref`, mapped for tasks to write their rows into."""
    return np.load(ref.path, mmap_mode="r+")


def is_local_master(spark: Any) -> bool:
    """True when the executors run on this machine (local[*] master, classic or Connect)."""
    try:
        return str(spark.conf.get("spark.master")).startswith("local")
    except Exception:
        return False


def scratch_root() -> str | None:
    """Memory-backed /dev/shm when it is there and writable (tmpfs: no disk I/O), else the temp dir."""
    return str(SHM) if SHM.is_dir() and os.access(SHM, os.W_OK) else None


class Handoff:
    """Packs arrays for tasks; files live in a private scratch folder (local master) or a folder of the
    artifact store (`store`), removed by `close`."""

    def __init__(self, spark: Any, enabled: bool = True, store: Store | None = None) -> None:
        self.folder = (Path(tempfile.mkdtemp(prefix="gramian-handoff-", dir=scratch_root()))
                       if enabled and is_local_master(spark) else None)
        self.store = store.child(f"exchange-{uuid.uuid4().hex[:12]}") if store is not None and not self.folder \
            else None
        self._count = 0
        # id(array) -> (array, where tasks find it): the last KEEP packed or remembered (held, so ids stay theirs)
        self._packed: OrderedDict[int, tuple[np.ndarray, Any]] = OrderedDict()
        if self.folder is not None or self.store is not None:  # never leave scratch behind, even on an error exit
            atexit.register(self.close)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def pack(self, array: np.ndarray) -> Any:
        """A picklable reference to `array` (the array itself when files cannot be shared).

        In the store, an array packed again while it is one of the last KEEP packed or remembered is not written again
        (the user step's current rows are the previous item step's fixed side).
        """
        if self.store is not None:
            return self._pack_store(array)
        if self.folder is None:
            return array
        self._count += 1
        path = self.folder / f"m{self._count}.npy"
        np.save(path, array)
        return FileRef(str(path))

    def publish(self, name: str, array: np.ndarray) -> FileRef:
        """Write `array` at the stable path for `name`, atomically (readers of the old file keep it)."""
        assert self.folder is not None, "publish needs a local master (Handoff.enabled)"
        path = self.folder / f"{name}.npy"
        tmp = self.folder / f".{name}.tmp.npy"
        np.save(tmp, array)
        os.replace(tmp, path)
        return FileRef(str(path))

    def output(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> FileRef:
        """A fresh zero matrix at the stable path for `name` that tasks fill with `writable`."""
        assert self.folder is not None, "output needs a local master (Handoff.enabled)"
        path = self.folder / f"{name}.npy"
        tmp = self.folder / f".{name}.tmp.npy"
        np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).flush()
        os.replace(tmp, path)
        return FileRef(str(path))

    KEEP = 4  # both sides' current rows, the previous pair (a user step reads the last item step's fixed side)

    def remember(self, array: np.ndarray, ref: Any) -> None:
        """Let `pack(array)` answer `ref`, files someone else wrote (a half-step's block files), while `array` is
        one of the last KEEP packed or remembered; their writer deletes them, and calls `forget` when it does."""
        assert self.store is not None, "remember is for the store exchange (a handoff with a store folder)"
        self._keep(array, ref)

    def forget(self) -> None:
        """Drop the remembered references (their files are gone); the arrays written here stay packed."""
        for key in [k for k, (_, ref) in self._packed.items() if not isinstance(ref, StoreRef)]:
            del self._packed[key]

    def _pack_store(self, array: np.ndarray) -> Any:
        """Write `array` to the store once, unless it is one of the last KEEP packed or remembered."""
        assert self.store is not None
        hit = self._packed.get(id(array))
        if hit is not None and hit[0] is array:
            self._packed.move_to_end(id(array))
            return hit[1]
        self._count += 1
        ref = StoreRef(self.store, f"m{self._count}.npy")
        with self.store.open_output(ref.name) as out:
            np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
        self._keep(array, ref)
        return ref

    def _keep(self, array: np.ndarray, ref: Any) -> None:
        """Answer `ref` for `array` from now on; the oldest entry past KEEP goes (its file too, if written here)."""
        assert self.store is not None
        self._packed[id(array)] = (array, ref)
        while len(self._packed) > self.KEEP:
            _, (_, old) = self._packed.popitem(last=False)
            if isinstance(old, StoreRef):
                self.store.delete(old.name)

    def release(self, ref: Any) -> None:
        """Delete a packed local file once its job is done (store files go when they leave the last KEEP)."""
        if isinstance(ref, FileRef):
            Path(ref.path).unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the scratch folder (and the exit hook, which would otherwise keep this object alive)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        if self.store is not None:
            self._packed.clear()
            try:
                self.store.delete()
            except Exception:  # scratch left in the store is only space; the fit's outcome stands
                pass
        if self.folder is not None or self.store is not None:
            atexit.unregister(self.close)
