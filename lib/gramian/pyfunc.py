"""The trained model as an MLflow pyfunc: a user's item history in, fold-in top-n (item ids, scores) out.

Fold-in (paper §6.3) is the exact iALS user-row solve against the item factors and their Gramian
(`kernels.foldin.fold_in`), so a model loaded with `mlflow.pyfunc.load_model` predicts with numpy
alone: no Spark session. The model directory holds item_factors.npy, item_ids.json and model.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FACTORS, IDS, META = "item_factors.npy", "item_ids.json", "model.json"


def write_model_files(folder: Path, item_factors: np.ndarray, item_ids: list[str | None],
                      model: dict[str, Any], n_users: int, run_id: str) -> dict[str, str]:
    """Write what FoldInModel loads into `folder`; returns the pyfunc artifacts mapping."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / FACTORS, np.ascontiguousarray(item_factors, dtype=np.float32))
    (folder / IDS).write_text(json.dumps(item_ids))
    (folder / META).write_text(json.dumps({"model": model, "n_users": n_users, "run_id": run_id}, default=str))
    return {"factors": str(folder / FACTORS), "ids": str(folder / IDS), "meta": str(folder / META)}


def signature() -> Any:
    """Input: items (list of ids), optional weights; output: item_ids and scores (best first); param n."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(Array("string"), "items"), ColSpec(Array("double"), "weights", required=False)])
    outputs = Schema([ColSpec(Array("string"), "item_ids"), ColSpec(Array("double"), "scores")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("n", "long", 10)]))


class FoldInScorer:
    """Fold-in top-n over one item factor matrix (the numpy part of the pyfunc, testable without MLflow)."""

    def __init__(self, item_factors: np.ndarray, item_ids: list[str | None], model: dict[str, Any],
                 n_users: int) -> None:
        from gramian.config import ModelConfig, _build
        from gramian.kernels.loss import gramian

        self.h = np.asarray(item_factors, dtype=np.float32)
        self.ids = item_ids
        self.lookup = {str(v): i for i, v in enumerate(item_ids) if v is not None}
        self.model = _build(ModelConfig, model, {k: META for k in model}, "model.")
        self.n_users = n_users
        self.g = gramian(self.h.astype(np.float64))

    def top_n(self, histories: list[list[str]], weights: list[list[float] | None], n: int
              ) -> tuple[list[list[str]], list[list[float]]]:
        """Top-n item ids and scores per history; unknown ids are ignored, history items never returned."""
        from gramian.kernels.foldin import fold_in
        from gramian.kernels.ranking import topk_excluding

        indptr, rows, w = [0], [], []
        for items, wts in zip(histories, weights, strict=True):
            if wts is not None and len(wts) != len(items):
                from gramian.errors import InputDataError

                raise InputDataError(f"weights must give one value per history item ({len(items)}), got "
                                     f"{len(wts)} (row {len(indptr) - 1}). Pass one weight per item, or none.")
            merged: dict[int, float] = {}
            for pos, item in enumerate(items):
                row = self.lookup.get(str(item))
                if row is not None:
                    merged[row] = merged.get(row, 0.0) + (1.0 if wts is None else float(wts[pos]))
            keys = sorted(merged)
            rows += keys
            w += [merged[r] for r in keys]
            indptr.append(len(rows))
        ip, ix = np.asarray(indptr, np.int64), np.asarray(rows, np.int64)
        emb = fold_in(ip, ix, np.asarray(w), self.h, self.model, self.g, self.n_users).astype(np.float32)
        top, scores = topk_excluding(emb, self.h, np.arange(len(histories)), ip, ix, n)
        out_ids = [[str(self.ids[i]) for i in r if i >= 0] for r in top]
        out_scores = [[float(s) for s, i in zip(sr, r, strict=True) if i >= 0]
                      for sr, r in zip(scores, top, strict=True)]
        return out_ids, out_scores


try:
    from mlflow.pyfunc import PythonModel as _Base
except ImportError:  # mlflow missing: the scorer still works, the pyfunc wrapper is unavailable
    _Base = object  # type: ignore[assignment,misc]


class FoldInModel(_Base):  # type: ignore[misc,valid-type]
    """MLflow PythonModel around FoldInScorer: rows of (items, weights) -> rows of (item_ids, scores)."""

    def load_context(self, context: Any) -> None:
        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        ids = json.loads(Path(context.artifacts["ids"]).read_text())
        self.scorer = FoldInScorer(np.load(context.artifacts["factors"]), ids, meta["model"], meta["n_users"])

    # a pd.DataFrame hint (not Any): MLflow warns on a missing hint and rejects Any; the signature is explicit
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        histories = [list(v) if v is not None else [] for v in frame["items"]]
        if "weights" in frame.columns:
            weights = [None if v is None or (np.isscalar(v) and pd.isna(v)) else list(v) for v in frame["weights"]]
        else:
            weights = [None] * len(histories)
        n = int((params or {}).get("n", 10))
        ids, scores = self.scorer.top_n(histories, weights, n)
        return pd.DataFrame({"item_ids": ids, "scores": scores})
