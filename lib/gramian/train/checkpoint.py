"""Factor checkpoints every k epochs so a stopped run resumes where it was (`--resume`).

Driver-side factors go to one `.npz`; routed factor blocks go to Parquet written by the tasks.
`latest.json` is replaced last and atomically, so a crash mid-save leaves the previous checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from gramian.train.als import EpochStats, FitState


class Checkpointer:
    """Writes and reads the latest FitState of one run under `folder`."""

    def __init__(self, folder: str | Path, fingerprint: str = "", inputs: dict[str, int] | None = None) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.inputs = inputs  # Delta versions of the tables trained on (gramian.runs.INPUTS)

    @property
    def pointer(self) -> Path:
        return self.folder / "latest.json"

    def save(self, state: FitState) -> None:
        """Write `state` beside the previous checkpoint, then switch `latest.json` to it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{state.epoch:05d}"
        target = self.folder / name
        if target.exists():
            shutil.rmtree(target)
        if state.routed:
            for side, df in (("user", state.user_factors), ("item", state.item_factors)):
                df.write.mode("overwrite").parquet(str(target / side))
            fmt = "parquet"
        else:
            target.mkdir(parents=True)
            np.savez(target / "factors.npz", user=state.user_factors, item=state.item_factors)
            fmt = "npz"
        meta = {"epoch": state.epoch, "fingerprint": self.fingerprint, "format": fmt, "dir": name,
                "history": [dataclasses.asdict(h) for h in state.history], "inputs": self.inputs}
        tmp = self.folder / f".latest.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta))
        previous = self._meta()
        os.replace(tmp, self.pointer)
        if previous and previous.get("dir") != name:
            shutil.rmtree(self.folder / previous["dir"], ignore_errors=True)

    def _meta(self) -> dict[str, Any] | None:
        if not self.pointer.is_file():
            return None
        return json.loads(self.pointer.read_text())

    def saved_inputs(self) -> dict[str, int] | None:
        """The input versions of the checkpoint `load` would resume (None: none, or none recorded)."""
        meta = self._meta()
        return meta.get("inputs") if meta and meta.get("fingerprint", "") == self.fingerprint else None

    def load(self, spark: Any = None) -> FitState | None:
        """The latest checkpoint, or None; a checkpoint of a different configuration is ignored."""
        meta = self._meta()
        if meta is None or meta.get("fingerprint", "") != self.fingerprint:
            return None
        history = [EpochStats(**h) for h in meta["history"]]
        target = self.folder / meta["dir"]
        if meta["format"] == "npz":
            with np.load(target / "factors.npz") as z:
                return FitState(z["user"], z["item"], int(meta["epoch"]), history)
        if spark is None:
            raise ValueError("a routed checkpoint needs a Spark session to be read")
        return FitState(spark.read.parquet(str(target / "user")), spark.read.parquet(str(target / "item")),
                        int(meta["epoch"]), history)
