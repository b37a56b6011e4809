"""How the driver hands factor matrices to block tasks and gets new ones back: closure/Arrow, or local files.

A closure works everywhere (classic Spark, Spark Connect, clusters) but sends the whole matrix through
py4j and the task binary on every job, and the new rows come back through the JVM. In local mode the
tasks share the driver's memory-backed disk (/dev/shm when present), so memory-mapped `.npy` files
carry the same data both ways for a fraction of the cost, at stable paths so a job's plan can be reused.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHM = Path("/dev/shm")


@dataclass(frozen=True)
class FileRef:
    """A factor matrix saved where every task can memory-map it."""

    path: str


def resolve(ref: Any) -> np.ndarray:
    """The array behind a handoff reference (inside a task or on the driver).

    Mapped copy-on-write: the array is writeable, so the kernels' canonical-array check (C, writeable)
    takes it as is instead of copying the whole matrix in every task; nothing writes to it.
    """
    return np.load(ref.path, mmap_mode="c") if isinstance(ref, FileRef) else ref


def writable(ref: FileRef) -> np.ndarray:
    """The output matrix behind `ref`, mapped for tasks to write their rows into."""
    return np.load(ref.path, mmap_mode="r+")


def is_local_master(spark: Any) -> bool:
    """True when the executors run on this machine (local[*] master, classic or Connect)."""
    try:
        return str(spark.conf.get("spark.master")).startswith("local")
    except Exception:
        return False


def _scratch_root() -> str | None:
    """Memory-backed /dev/shm when it is there and writable (tmpfs: no disk I/O), else the temp dir."""
    return str(SHM) if SHM.is_dir() and os.access(SHM, os.W_OK) else None


class Handoff:
    """Packs arrays for tasks; files live in a private scratch folder removed by `close`."""

    def __init__(self, spark: Any, enabled: bool = True) -> None:
        self.folder = (Path(tempfile.mkdtemp(prefix="gramian-handoff-", dir=_scratch_root()))
                       if enabled and is_local_master(spark) else None)
        self._count = 0
        if self.folder is not None:  # /dev/shm is memory: never leave it behind, even on an error exit
            atexit.register(self.close)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def pack(self, array: np.ndarray) -> Any:
        """A picklable reference to `array` (the array itself when files cannot be shared)."""
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

    def release(self, ref: Any) -> None:
        """Delete a packed file once its job is done."""
        if isinstance(ref, FileRef):
            Path(ref.path).unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the scratch folder (and the exit hook, which would otherwise keep this object alive)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            atexit.unregister(self.close)
