"""Recommendations for a user the model never saw (paper §6.3): fold in the history, then query the index.

The embedding is the exact iALS user-row solve (`kernels.foldin.fold_in_one`) against the run's item
factors and their Gramian, with the run's own model config (confidence mapping, reg, nu, alpha0), so a
training user's own history gives back (nearly) their trained embedding. Everything needed is in the
run's index directory written by `gramian publish`; without one, the index is built from the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gramian.config import Config, ModelConfig, _build
from gramian.errors import InputDataError, PublishError
from gramian.kernels.foldin import fold_in_one
from gramian.kernels.loss import gramian as gramian_of
from gramian.retrieval.index import ItemIndex, build_index, index_exists, load_index, topn_excluding, with_blocked
from gramian.retrieval.refresh import UNAVAILABLE

log = logging.getLogger(__name__)


@dataclass
class Recommendation:
    """Top-n (item id, score) for one folded-in history, the ids that were not in the catalogue, the embedding."""

    items: list[str]
    scores: list[float]
    unknown: list[str] = field(default_factory=list)
    embedding: np.ndarray | None = None
    run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "items": self.items, "scores": self.scores, "unknown": self.unknown}


def _model_of(index: ItemIndex) -> ModelConfig:
    model = (index.meta or {}).get("model")
    if not model:
        raise PublishError(f"the index at {index.path!r} must record the run's model config for fold-in, got "
                           f"none (its `runs` row was missing at publish time). Re-run `gramian train` and "
                           f"`gramian publish`.")
    cfg = _build(ModelConfig, model, {k: f"{index.path}/meta.json" for k in model}, "model.")
    if cfg.name != "ials":
        raise PublishError(f"fold-in solves the iALS user step, so the run must have model.name 'ials', got "
                           f"{cfg.name!r} (index {index.path!r}). Recommend from an iALS run.")
    return cfg.resolved(index.n_items)  # runs rows record alpha0 resolved already; older ones may hold null


def _gramian(index: ItemIndex) -> np.ndarray:
    """The item Gramian H^T H, computed once per loaded index."""
    g = getattr(index, "_gramian", None)
    if g is None:
        g = gramian_of(np.asarray(index.item_factors, dtype=np.float64))
        index._gramian = g  # type: ignore[attr-defined]
    return g


def _blocked_rows(index: ItemIndex, lookup: dict[str, int]) -> np.ndarray:
    """Item rows the index's publication excluded (left the catalogue or flagged by publish.item_filter)."""
    ids = (index.meta or {}).get(UNAVAILABLE) or []
    return np.asarray(sorted(lookup[i] for i in ids if i in lookup), dtype=np.int64)


def recommend_from_index(index: ItemIndex, history_item_ids: Sequence[str], weights: Sequence[float] | None = None,
                         n: int = 10, exact_history_above: int = 500) -> Recommendation:
    """Fold in `history_item_ids` (optional raw `weights`) and return the n best items not in the history,
    never an item the index's publication marked unavailable."""
    if n <= 0:
        raise InputDataError(f"n must be a positive integer, got {n!r}. Ask for at least one item.")
    ids = [str(i) for i in history_item_ids]
    if not ids:
        raise InputDataError("history_item_ids must hold at least one item id, got none. Pass the user's items.")
    if weights is not None and len(weights) != len(ids):
        raise InputDataError(f"weights must give one value per history item ({len(ids)}), got {len(weights)}.")
    lookup = getattr(index, "_lookup", None)
    if lookup is None:
        lookup = {str(v): i for i, v in enumerate(index.item_ids)}
        index._lookup = lookup  # type: ignore[attr-defined]
    rows, w, unknown = [], [], []
    for pos, item in enumerate(ids):
        row = lookup.get(item)
        if row is None:
            unknown.append(item)
        else:
            rows.append(row)
            w.append(1.0 if weights is None else float(weights[pos]))
    if unknown:
        log.warning("%d of %d history item ids are not in the catalogue and were ignored: %s", len(unknown),
                    len(ids), ", ".join(unknown[:10]))
    if not rows:
        raise InputDataError(f"history_item_ids must contain at least one known item id, got only unknown ids "
                             f"{unknown[:10]}. Check the ids against the `items` table of run "
                             f"{(index.meta or {}).get('run_id')!r}.")
    # repeated ids: one history entry each, weights summed (as ingest does with duplicates=sum)
    uniq, inv = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    summed = np.bincount(inv, weights=np.asarray(w, dtype=np.float64))
    model = _model_of(index)
    emb = fold_in_one(uniq, None if weights is None else summed, index.item_factors, model, _gramian(index))
    ip, ix = with_blocked(np.array([0, len(uniq)], dtype=np.int64), uniq, _blocked_rows(index, lookup))
    items, scores, _ = topn_excluding(index, emb[None, :].astype(np.float32), ip, ix, n, exact_history_above)
    keep = items[0] >= 0
    return Recommendation(items=[str(index.item_ids[i]) for i in items[0][keep]],
                          scores=[float(s) for s in scores[0][keep]], unknown=unknown, embedding=emb,
                          run_id=str((index.meta or {}).get("run_id", "")))


def recommend(history_item_ids: Sequence[str], weights: Sequence[float] | None = None, n: int | None = None,
              cfg: Config | None = None, run_id: str | None = None, spark: Any = None) -> Recommendation:
    """Top-n for a new user's history under run `run_id` (default: the current publication), §6.3 fold-in.

    Reads the run's index directory; builds it from the factor tables when the run was never published.
    """
    from gramian.config import load_config
    from gramian.retrieval.publish import current_publication, index_path, item_matrix, run_model_config
    from gramian.retrieval.refresh import unavailable_items

    cfg = cfg or load_config()
    n = n or cfg.publish.n
    if run_id is not None and index_exists(index_path(cfg, run_id, spark)):
        index = load_index(index_path(cfg, run_id, spark))
    else:
        if spark is None:
            from gramian.spark import get_session

            spark = get_session(cfg.spark)
        if run_id is None:
            pub = current_publication(spark, cfg.storage)
            if pub is None:
                raise PublishError("a run must be published (or --run-id given) to recommend, got no current "
                                   "publication. Run `gramian publish --run-id <run>` first.")
            run_id = str(pub["run_id"])
        path = index_path(cfg, run_id, spark)
        if index_exists(path):
            index = load_index(path)
        else:
            h, ids = item_matrix(spark, cfg, run_id)
            model = run_model_config(spark, cfg.storage, run_id)
            blocked = unavailable_items(spark, cfg, run_id, ids)
            meta = {"run_id": run_id, "model": dataclasses.asdict(model) if model else None,
                    UNAVAILABLE: [str(i) for i in ids[blocked]]}
            index = build_index(h, ids, path, cfg.publish, cfg.publish.n, meta=meta)
    return recommend_from_index(index, history_item_ids, weights, n, cfg.publish.exact_history_above)


def add_recommend_args(p: argparse.ArgumentParser) -> None:
    """The `gramian recommend` arguments beyond the common ones."""
    p.add_argument("--items", required=True, help="comma-separated item ids of the user's history")
    p.add_argument("--weights", default=None, help="comma-separated raw weights, one per item (default all 1)")
    p.add_argument("-n", "--n", dest="n", type=int, default=None, help="how many items (default publish.n)")


def main(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """`gramian recommend --items a,b,c [--run-id R]`: fold in the history and return the top-n."""
    items = [s.strip() for s in args.items.split(",") if s.strip()]
    weights = None
    if args.weights:
        try:
            weights = [float(s) for s in args.weights.split(",")]
        except ValueError as e:
            raise InputDataError(f"--weights must be comma-separated numbers, got {args.weights!r}.") from e
    rec = recommend(items, weights, args.n, cfg=cfg, run_id=args.run_id)
    out = rec.to_dict()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        if rec.unknown:
            print(f"unknown item ids (ignored): {', '.join(rec.unknown)}")
        for rank, (item, score) in enumerate(zip(rec.items, rec.scores, strict=True), start=1):
            print(f"{rank}\t{item}\t{score:.6g}")
    return out
