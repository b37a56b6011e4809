"""Factor checkpoints every k epochs so a stopped run resumes where it was (`--resume`).

Checkpoints live in the artifact store (gramian.storage), so a retried driver on another host finds them.
Driver-side factors go to one `.npz`; routed factor blocks go to Parquet written by the tasks through Spark.
`latest.json` is written last (a rename locally, one PUT on an object store), so a crash mid-save leaves the
previous checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from gramian.storage import Store, as_store
from gramian.train.als import EpochStats, FitState

POINTER = "latest.json"


class Checkpointer:
    """Writes and reads the latest FitState of one run under `folder` (a Store, a URI or a local path)."""

    def __init__(self, folder: Store | str | os.PathLike[str], fingerprint: str = "") -> None:
        self.store = as_store(folder)
        self.fingerprint = fingerprint

    @property
    def pointer(self) -> str:
        """Where the latest checkpoint's metadata is (URI or path)."""
        return self.store.uri_of(POINTER)

    def save(self, state: FitState) -> None:
        """Write `state` beside the previous checkpoint, then switch `latest.json` to it."""
        name = f"epoch-{state.epoch:05d}"
        self.store.delete(name)
        if state.routed:
            for side, df in (("user", state.user_factors), ("item", state.item_factors)):
                df.write.mode("overwrite").parquet(self.store.uri_of(name, side))
            fmt = "parquet"
        else:
            with self.store.open_output(name, "factors.npz") as out:
                np.savez(out, user=state.user_factors, item=state.item_factors)
            fmt = "npz"
        meta = {"epoch": state.epoch, "fingerprint": self.fingerprint, "format": fmt, "dir": name,
                "history": [dataclasses.asdict(h) for h in state.history]}
        previous = self._meta()
        self.store.write_text(json.dumps(meta), POINTER)
        if previous and previous.get("dir") != name:
            self.store.delete(previous["dir"])

    def _meta(self) -> dict[str, Any] | None:
        if not self.store.exists(POINTER):
            return None
        return json.loads(self.store.read_text(POINTER))

    def load(self, spark: Any = None) -> FitState | None:
        """The latest checkpoint, or None; a checkpoint of a different configuration is ignored."""
        meta = self._meta()
        if meta is None or meta.get("fingerprint", "") != self.fingerprint:
            return None
        history = [EpochStats(**h) for h in meta["history"]]
        name = meta["dir"]
        if meta["format"] == "npz":
            with self.store.open_input(name, "factors.npz") as f, np.load(f) as z:
                return FitState(z["user"], z["item"], int(meta["epoch"]), history)
        if spark is None:
            raise ValueError("a routed checkpoint needs a Spark session to be read")
        return FitState(spark.read.parquet(self.store.uri_of(name, "user")),
                        spark.read.parquet(self.store.uri_of(name, "item")), int(meta["epoch"]), history)
