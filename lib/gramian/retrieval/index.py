"""The item index (paper §6.2): a ScaNN searcher over item factors, or exact scoring for small catalogues.

Scores are raw dot products <user, item> with no normalisation: an item factor's norm carries its
popularity, and normalising would turn maximum inner product search into a different ranking.
An index lives in one directory: each build in a subfolder named by its token (meta.json,
item_factors.npy, item_ids.npy and, for ScaNN, the serialized searcher under scann/) and a CURRENT file
naming the live build, swapped atomically. Searchers do not pickle, so Spark tasks receive only the path
and token, and `load_index` keeps one loaded copy per Python worker process, keyed by both.

Top-n excluding a user's training items asks the searcher for n + (history length rounded up to a
power of two) neighbours and filters; users with histories longer than `exact_history_above`, or
whose filtered list comes back short, are scored exactly by `kernels.ranking.topk_excluding`.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gramian.config import PublishConfig
from gramian.errors import ConfigError, InputDataError
from gramian.kernels.ranking import topk_excluding

META = "meta.json"
FACTORS = "item_factors.npy"
IDS = "item_ids.npy"
SEARCHER = "scann"
CURRENT = "CURRENT"


@dataclass(frozen=True)
class IndexParams:
    """How the searcher is built: `kind` brute (exact numpy) or scann (tree partitions + scoring)."""

    kind: str
    num_leaves: int = 0
    num_leaves_to_search: int = 0
    training_sample_size: int = 0
    quantize: str = "none"  # ah (anisotropic hashing, reordered exactly) | none (exact scores inside leaves)
    dims_per_block: int = 2
    anisotropic_threshold: float = 0.2
    reorder: int = 0  # minimum exact re-scoring candidates per query (also at least `reorder_factor` x k)
    reorder_factor: float = 4.0


def choose_params(n_items: int, dim: int, cfg: PublishConfig) -> IndexParams:
    """Searcher parameters from the catalogue size, each overridable in the publish config (0/auto = chosen).

    Below `brute_force_below` items exact scoring is cheap enough and returns the true top-n. Above it:
    about sqrt(n) leaves (ScaNN's rule of thumb), a fixed share of them searched, anisotropic
    quantisation with exact re-scoring of the best candidates.
    """
    if n_items <= 0:
        raise InputDataError(f"item factors must hold at least one item, got {n_items}. Train a model first.")
    if n_items < cfg.brute_force_below and cfg.num_leaves == 0:
        return IndexParams(kind="brute")
    leaves = cfg.num_leaves or int(min(max(round(math.sqrt(n_items)), 16), 4000))
    leaves = min(leaves, n_items)
    search = cfg.num_leaves_to_search or max(8, int(math.ceil(leaves * cfg.search_fraction)))
    if search > leaves:
        raise ConfigError(f"publish.num_leaves_to_search must be <= num_leaves ({leaves}), got {search}. "
                          f"Lower it or raise publish.num_leaves.")
    quantize = cfg.quantize if cfg.quantize != "auto" else ("ah" if dim >= 8 else "none")
    sample = min(n_items, cfg.training_sample_size)
    return IndexParams(kind="scann", num_leaves=leaves, num_leaves_to_search=search, training_sample_size=sample,
                       quantize=quantize, dims_per_block=cfg.dims_per_block,
                       anisotropic_threshold=cfg.anisotropic_threshold, reorder=cfg.reorder,
                       reorder_factor=cfg.reorder_factor)


def build_searcher(item_factors: np.ndarray, params: IndexParams, k: int) -> Any:
    """A ScaNN dot-product searcher over the rows of `item_factors` (float32, not normalised)."""
    import scann

    db = np.ascontiguousarray(item_factors, dtype=np.float32)
    b = scann.scann_ops_pybind.builder(db, k, "dot_product")
    b = b.tree(num_leaves=params.num_leaves, num_leaves_to_search=params.num_leaves_to_search,
               training_sample_size=params.training_sample_size)
    if params.quantize == "ah":
        b = b.score_ah(params.dims_per_block, anisotropic_quantization_threshold=params.anisotropic_threshold)
        b = b.reorder(max(params.reorder, int(params.reorder_factor * k), k))
    else:
        b = b.score_brute_force()
    return b.build()


@dataclass
class ItemIndex:
    """A loaded index: item factors and ids, and the searcher (None when exact)."""

    path: str
    token: str
    params: IndexParams
    item_factors: np.ndarray
    item_ids: np.ndarray
    searcher: Any = None
    meta: dict[str, Any] | None = None

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw top-k item rows (int64, -1 where missing) and scores for each query, no exclusion."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.n_items)
        if self.searcher is None or len(q) == 0:
            empty = np.zeros(1, dtype=np.int64)
            items, scores = topk_excluding(q, self.item_factors, np.arange(len(q)), np.zeros(len(q) + 1, np.int64),
                                           empty[:0], k)
            return items.astype(np.int64), scores
        pre = max(self.params.reorder, int(self.params.reorder_factor * k), k)
        if self.params.quantize == "ah":
            nb, dist = self.searcher.search_batched(q, final_num_neighbors=k, pre_reorder_num_neighbors=pre)
        else:
            nb, dist = self.searcher.search_batched(q, final_num_neighbors=k)
        nb = np.asarray(nb, dtype=np.int64)
        dist = np.asarray(dist, dtype=np.float32)
        bad = ~np.isfinite(dist) | (nb < 0) | (nb >= self.n_items)
        nb[bad] = -1
        return nb, dist


def build_index(item_factors: np.ndarray, item_ids: np.ndarray, path: str | Path, cfg: PublishConfig,
                k: int, meta: dict[str, Any] | None = None) -> ItemIndex:
    """Build and serialize an index for top-`k` queries into `path` (replacing what was there)."""
    h = np.ascontiguousarray(item_factors, dtype=np.float32)
    if h.ndim != 2:
        raise InputDataError(f"item factors must be a 2-D matrix, got shape {h.shape}. Check the item_factors table.")
    if not np.isfinite(h).all():
        raise InputDataError("item factors must be finite, got NaN or inf: the model diverged (raise model.reg).")
    ids = np.asarray(item_ids).astype(str)
    if len(ids) != len(h):
        raise InputDataError(f"item_ids must give one id per factor row ({len(h)}), got {len(ids)}.")
    params = choose_params(len(h), h.shape[1], cfg)
    root = Path(path)
    token = uuid.uuid4().hex
    target = root / token  # ScaNN records absolute asset paths: build in place, never move
    target.mkdir(parents=True)
    searcher = None
    try:
        if params.kind == "scann":
            searcher = build_searcher(h, params, k)
            (target / SEARCHER).mkdir()
            searcher.serialize(str(target / SEARCHER))
        np.save(target / FACTORS, h)
        np.save(target / IDS, ids)
        full_meta = {"token": token, "params": asdict(params), "n_items": len(h), "dim": int(h.shape[1]), "k": k,
                     **(meta or {})}
        (target / META).write_text(json.dumps(full_meta, indent=2, default=str))
        pointer = root / f".{CURRENT}.{token}"
        pointer.write_text(token)
        pointer.replace(root / CURRENT)  # atomic: readers see the old token or the new one
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    for old in root.iterdir():  # earlier builds: processes that loaded them keep their in-memory copy
        if old.is_dir() and old.name != token:
            shutil.rmtree(old, ignore_errors=True)
    index = ItemIndex(str(root), token, params, h, ids, searcher, full_meta)
    with _LOCK:
        _CACHE[(str(root), token)] = index
    return index


_CACHE: dict[tuple[str, str], ItemIndex] = {}
_LOCK = threading.Lock()


def load_index(path: str | Path, token: str | None = None) -> ItemIndex:
    """The index serialized at `path`, loaded once per process (ScaNN searchers do not pickle).

    `token` (from meta.json at build time) keys the cache, so a Python worker reused across publishes
    never serves a searcher that was rebuilt since it was loaded.
    """
    p = Path(path)
    if token is not None and (str(p), token) in _CACHE:
        return _CACHE[(str(p), token)]
    with _LOCK:
        pointer = p / CURRENT
        if not pointer.is_file():
            raise InputDataError(f"item index must exist at {str(p)!r}, found no {CURRENT} pointer. Run "
                                 f"`gramian publish` for this run first.")
        current = pointer.read_text().strip()
        if token is not None and current != token:
            raise InputDataError(f"item index at {str(p)!r} was rebuilt while in use (token {current!r}, "
                                 f"expected {token!r}). Re-run the publish.")
        key = (str(p), current)
        if key in _CACHE:
            return _CACHE[key]
        d = p / current
        meta = json.loads((d / META).read_text())
        params = IndexParams(**meta["params"])
        searcher = None
        if params.kind == "scann":
            import scann

            searcher = scann.scann_ops_pybind.load_searcher(str(d / SEARCHER))
        index = ItemIndex(str(p), current, params, np.load(d / FACTORS), np.load(d / IDS), searcher, meta)
        _CACHE[key] = index
        return index


def _bucket(h: np.ndarray) -> np.ndarray:
    """History lengths rounded up to a power of two (0 stays 0): users in one bucket share one search width."""
    out = np.zeros_like(h)
    pos = h > 0
    out[pos] = 1 << np.ceil(np.log2(h[pos])).astype(np.int64)
    return out


def _gather_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in `rows`, column) of every entry of the CSR rows `rows`, in row order, without a loop."""
    lo = indptr[rows]
    counts = indptr[rows + 1] - lo
    owner = np.repeat(np.arange(len(rows)), counts)
    starts = np.cumsum(counts) - counts
    offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts - lo, counts)
    return owner, indices[offsets]


def topn_excluding(index: ItemIndex, queries: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n: int,
                   exact_history_above: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-n item rows per query excluding that query's history (CSR rows over item rows), best first.

    Returns (items int32 [m, n] with -1 where the catalogue runs out, scores float32 [m, n] recomputed as
    exact dot products, exact bool [m]: which rows were scored exhaustively).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    ip = np.asarray(indptr, dtype=np.int64)
    ix = np.asarray(indices, dtype=np.int64)
    m = len(q)
    hlen = np.diff(ip)
    items = np.full((m, n), -1, dtype=np.int32)
    scores = np.full((m, n), -np.inf, dtype=np.float32)
    exact = (hlen > exact_history_above) if index.searcher is not None else np.ones(m, dtype=bool)
    approx_rows = np.flatnonzero(~exact)
    buckets = _bucket(hlen[approx_rows])
    for b in np.unique(buckets):
        rows = approx_rows[buckets == b]
        k = n + int(b)
        nb, _ = index.search(q[rows], k)
        # drop each row's history items: one membership test on (row, item) keys
        width = index.n_items + 1
        hist_rows, hist_items = _gather_rows(ip, ix, rows)
        keys = np.arange(len(rows))[:, None] * width + nb
        keep = (nb >= 0) & ~np.isin(keys, hist_rows * width + hist_items)
        rank = np.cumsum(keep, axis=1) - 1
        sel = keep & (rank < n)
        r_idx, c_idx = np.nonzero(sel)
        items[rows[r_idx], rank[r_idx, c_idx]] = nb[r_idx, c_idx]
        got = sel.sum(axis=1)
        want = np.minimum(n, index.n_items - hlen[rows])
        exact[rows[got < want]] = True  # the searcher came back short: score these exactly
    exact_rows = np.flatnonzero(exact)
    if len(exact_rows):
        sub_ip = np.concatenate([[0], np.cumsum(hlen[exact_rows])])
        _, sub_ix = _gather_rows(ip, ix, exact_rows)
        top, _ = topk_excluding(q[exact_rows], index.item_factors, np.arange(len(exact_rows)), sub_ip, sub_ix, n)
        items[exact_rows] = top
    # exact scores for what was selected, and best-first order by them
    valid = items >= 0
    gathered = index.item_factors[np.where(valid, items, 0)]
    s = np.einsum("md,mnd->mn", q, gathered, dtype=np.float32)
    s[~valid] = -np.inf
    order = np.lexsort((np.where(valid, items, np.iinfo(np.int32).max), -s), axis=1) if m else np.zeros((0, n), int)
    items = np.take_along_axis(items, order, axis=1)
    scores = np.take_along_axis(s, order, axis=1).astype(np.float32)
    return items, scores, exact


def index_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |approx ∩ exact| / |exact| (ignoring -1 padding); rows with empty exact lists skipped."""
    vals = []
    for a, e in zip(approx, exact, strict=True):
        e = e[e >= 0]
        if len(e):
            vals.append(len(np.intersect1d(a[a >= 0], e)) / len(e))
    return float(np.mean(vals)) if vals else 1.0
