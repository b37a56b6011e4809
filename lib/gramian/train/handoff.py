"""How the driver hands a factor matrix to block tasks: in the task closure, or through a local file.

A closure works everywhere (classic Spark, Spark Connect, clusters) but sends the whole matrix through
py4j and the task binary on every job. In local mode the tasks share the driver's disk, so a
memory-mapped `.npy` per half-step is the same data for a fraction of the cost.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FileRef:
    """A factor matrix saved where every task can memory-map it."""

    path: str


def resolve(ref: Any) -> np.ndarray:
    """The array behind a handoff reference (inside a task or on the driver)."""
    return np.load(ref.path, mmap_mode="r") if isinstance(ref, FileRef) else ref


def is_local_master(spark: Any) -> bool:
    """True when the executors run on this machine (local[*] master, classic or Connect)."""
    try:
        return str(spark.conf.get("spark.master")).startswith("local")
    except Exception:
        return False


class Handoff:
    """Packs arrays for tasks; files live in a private temp folder removed by `close`."""

    def __init__(self, spark: Any, enabled: bool = True) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="gramian-handoff-")) if enabled and is_local_master(spark) else None
        self._count = 0

    def pack(self, array: np.ndarray) -> Any:
        """A picklable reference to `array` (the array itself when files cannot be shared)."""
        if self.folder is None:
            return array
        self._count += 1
        path = self.folder / f"m{self._count}.npy"
        np.save(path, array)
        return FileRef(str(path))

    def release(self, ref: Any) -> None:
        """Delete a packed file once its job is done."""
        if isinstance(ref, FileRef):
            Path(ref.path).unlink(missing_ok=True)

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
