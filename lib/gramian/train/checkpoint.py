"""Factor checkpoints every k epochs so a stopped run resumes where it was (`--resume`).

The driver already holds both factor matrices between half-steps, so a checkpoint is one atomic
file write; Spark lineage never grows because each half-step starts from the cached blocks.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np

from gramian.train.als import EpochStats, FitState


class Checkpointer:
    """Writes and reads the latest FitState of one run under `folder`."""

    def __init__(self, folder: str | Path, fingerprint: str = "") -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    @property
    def path(self) -> Path:
        return self.folder / "latest.npz"

    def save(self, state: FitState) -> None:
        """Atomically replace the latest checkpoint with `state`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        meta = {"epoch": state.epoch, "fingerprint": self.fingerprint,
                "history": [dataclasses.asdict(h) for h in state.history]}
        np.savez(buf, user=state.user_factors, item=state.item_factors, meta=np.array(json.dumps(meta)))
        tmp = self.folder / f".latest.{os.getpid()}.tmp"
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, self.path)

    def load(self) -> FitState | None:
        """The latest checkpoint, or None; a checkpoint of a different configuration is ignored."""
        if not self.path.is_file():
            return None
        with np.load(self.path) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("fingerprint", "") != self.fingerprint:
                return None
            return FitState(z["user"], z["item"], int(meta["epoch"]),
                            [EpochStats(**h) for h in meta["history"]])
