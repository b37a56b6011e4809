"""Slow, obviously-correct twins of the ranking metrics (kernels.ranking.metrics_from_ranks is the product's one
implementation): tests hold the product equal to these, never to itself."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def list_metrics(user_vectors: np.ndarray, item_factors: np.ndarray, history: Sequence[np.ndarray],
                 test: Sequence[np.ndarray], ks: Iterable[int]) -> dict[str, np.ndarray]:
    """Per user (one list per row): sort every non-history item by score (ties: lower id first) and read
    precision, recall (|T| and min(k,|T|)), AP, NDCG @k and AUC off the sorted list, one user at a time."""
    ks = sorted(ks)
    out: dict[str, list[float]] = {f"{n}@{k}": [] for n in ("precision", "recall", "recall_min", "ap", "ndcg")
                                   for k in ks}
    out["auc"] = []
    for uv, hist, rel_items in zip(user_vectors, history, test, strict=True):
        scores = item_factors @ uv
        cand = np.setdiff1d(np.arange(len(item_factors)), hist)
        order = cand[np.lexsort((cand, -scores[cand]))]
        rel = np.isin(order, rel_items).astype(float)
        t = len(set(rel_items.tolist()) - set(hist.tolist()))
        if t == 0:  # no held-out candidate: every metric undefined
            for values in out.values():
                values.append(float("nan"))
            continue
        for k in ks:
            top = rel[:k]
            cap = min(k, t)
            out[f"precision@{k}"].append(top.sum() / k)
            out[f"recall@{k}"].append(top.sum() / t)
            out[f"recall_min@{k}"].append(top.sum() / cap)
            prec = np.cumsum(top) / np.arange(1, len(top) + 1)
            out[f"ap@{k}"].append(float((prec * top).sum() / cap))
            dcg = sum(r / np.log2(j + 2) for j, r in enumerate(top))
            out[f"ndcg@{k}"].append(dcg / sum(1 / np.log2(j + 2) for j in range(cap)))
        n_irr = len(rel) - t
        below = [n_irr - (~rel[:j].astype(bool)).sum() for j in range(len(rel)) if rel[j]]
        out["auc"].append(sum(below) / (t * n_irr) if n_irr else float("nan"))
    return {k: np.array(v) for k, v in out.items()}


def topk_list_metrics(topk_items: np.ndarray, test_indptr: np.ndarray, test_indices: np.ndarray,
                      ks: Iterable[int], users: np.ndarray | None = None) -> dict[str, float]:
    """Mean recall@k, recall_min@k, precision@k, ndcg@k over users with a test item, read off top-k lists row by
    row (row r ranks user users[r]; -1 pads); "users" is how many were averaged."""
    top = np.asarray(topk_items)
    rows = np.arange(len(top)) if users is None else np.asarray(users)
    sums: dict[str, float] = {}
    n = 0
    for r, u in enumerate(rows):
        rel_items = set(test_indices[test_indptr[u]:test_indptr[u + 1]].tolist())
        if not rel_items:
            continue
        n += 1
        for k in ks:
            hits = [1.0 if (it >= 0 and it in rel_items) else 0.0 for it in top[r, :k]]
            cap = min(k, len(rel_items))
            vals = {"recall": sum(hits) / len(rel_items), "recall_min": sum(hits) / cap, "precision": sum(hits) / k,
                    "ndcg": sum(h / np.log2(j + 2) for j, h in enumerate(hits))
                    / sum(1 / np.log2(j + 2) for j in range(cap))}
            for name, v in vals.items():
                sums[f"{name}@{k}"] = sums.get(f"{name}@{k}", 0.0) + v
    out = {key: v / n for key, v in sums.items()}
    out["users"] = float(n)
    return out
