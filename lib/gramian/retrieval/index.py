"""The item index (paper §6.2): a ScaNN searcher over item factors, or exact scoring for small catalogues.

Scores are raw dot products <user, item> with no normalisation: an item factor's norm carries its
popularity, and normalising would turn maximum inner product search into a different ranking.
An index lives in one folder of the artifact store (gramian.storage): each build in a subfolder named by its
token (meta.json, item_factors.npy, item_ids.npy and, for ScaNN, the serialized searcher under scann/) and a
CURRENT file naming the live build, swapped atomically. Searchers do not pickle, so Spark tasks receive only
the store and token, and `load_index` keeps one loaded copy per Python worker process, keyed by both
(fetched from the store into a local temp dir when the store is remote). At most GRAMIAN_INDEX_CACHE_SIZE
indexes (default 2; set it in the executors' environment, e.g. spark.executorEnv.GRAMIAN_INDEX_CACHE_SIZE)
stay loaded per process, least recently used evicted first: a notebook or a long-lived worker publishing run
after run would otherwise hold every run's factors.

Top-n excluding a user's training items asks the searcher for n + min(32, history length rounded up to a
power of two) neighbours and filters, then asks again with n + the rounded history length for users left
short (a user's history does not all rank in their own top list: on Gowalla 4% need the second pass).
Only the n-based share of a search is re-scored widely (`reorder_factor` x n candidates, plus one per
extra neighbour), so long histories do not multiply the exact re-scoring work. Users with histories
longer than `exact_history_above`, or whose filtered list still comes back short, are scored exactly by
`kernels.ranking.topk_excluding`.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from gramian.config import PublishConfig
from gramian.errors import ConfigError, InputDataError
from gramian.kernels.ranking import topk_excluding
from gramian.storage import Store, as_store

META = "meta.json"
FACTORS = "item_factors.npy"
IDS = "item_ids.npy"
SEARCHER = "scann"
CURRENT = "CURRENT"
MIN_LEAF_SIZE = 400  # items per partition the automatic leaf count keeps to (small catalogues)
# quantize=auto scores the searched leaves exactly (no quantisation, no re-scoring pass) while a query
# visits at most this many items: on Gowalla's 41k items (d=64) exact leaf scoring of 3-10k items is
# faster than anisotropic hashing plus re-scoring 400 candidates, and loses no recall to quantisation
EXACT_SCORING_UP_TO = 10_000


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
    about sqrt(n) leaves (ScaNN's rule of thumb) but at least `MIN_LEAF_SIZE` items per leaf (below ~160k
    items sqrt(n) leaves are so small that a user's best items straddle many partition boundaries: on
    Gowalla's 41k items 202 leaves searched at 5% reach recall@100 ~0.955, 102 leaves searched at 8 ~0.98,
    at the same speed), a fixed share of them searched (at least 8). Items in the searched leaves are
    scored exactly while that is at most `EXACT_SCORING_UP_TO` per query, else with anisotropic
    quantisation and exact re-scoring of the best candidates.
    """
    if n_items <= 0:
        raise InputDataError(f"item factors must hold at least one item, got {n_items}. Train a model first.")
    if n_items < cfg.brute_force_below and cfg.num_leaves == 0:
        return IndexParams(kind="brute")
    leaves = cfg.num_leaves or int(min(max(min(round(math.sqrt(n_items)), n_items // MIN_LEAF_SIZE), 16), 4000))
    leaves = min(leaves, n_items)
    search = cfg.num_leaves_to_search or max(8, int(math.ceil(leaves * cfg.search_fraction)))
    if search > leaves:
        raise ConfigError(f"publish.num_leaves_to_search must be <= num_leaves ({leaves}), got {search}. "
                          f"Lower it or raise publish.num_leaves.")
    searched_points = n_items * search / leaves
    quantize = cfg.quantize if cfg.quantize != "auto" else (
        "ah" if dim >= 8 and searched_points > EXACT_SCORING_UP_TO else "none")
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

    def search(self, queries: np.ndarray, k: int, base: int | None = None,
               threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Raw top-k item rows (int64, -1 where missing) and scores for each query, no exclusion.

        The quantised searcher re-scores exactly max(reorder, reorder_factor x base) candidates plus one per
        neighbour beyond `base` (default k): the k - base extra neighbours asked for to cover a user's
        history need no wider margin than the n wanted. `threads` > 1 splits the batch over that many
        ScaNN threads (a Spark task keeps 1: tasks already run one per core).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.n_items)
        if self.searcher is None or len(q) == 0:
            empty = np.zeros(1, dtype=np.int64)
            items, scores = topk_excluding(q, self.item_factors, np.arange(len(q)), np.zeros(len(q) + 1, np.int64),
                                           empty[:0], k)
            return items.astype(np.int64), scores
        base = k if base is None else min(base, k)
        pre = max(self.params.reorder, int(self.params.reorder_factor * base), base) + (k - base)
        kw = {"final_num_neighbors": k}
        if self.params.quantize == "ah":
            kw["pre_reorder_num_neighbors"] = pre
        if threads > 1:
            self.searcher.set_num_threads(threads)
            nb, dist = self.searcher.search_batched_parallel(q, **kw)
        else:
            nb, dist = self.searcher.search_batched(q, **kw)
        nb = np.asarray(nb, dtype=np.int64)
        dist = np.asarray(dist, dtype=np.float32)
        bad = ~np.isfinite(dist) | (nb < 0) | (nb >= self.n_items)
        nb[bad] = -1
        return nb, dist


def build_index(item_factors: np.ndarray, item_ids: np.ndarray, path: Store | str | os.PathLike[str],
                cfg: PublishConfig, k: int, meta: dict[str, Any] | None = None) -> ItemIndex:
    """Build and serialize an index for top-`k` queries into `path` (a Store, URI or local path), replacing it.

    The build is written in a local scratch folder, then copied to `<path>/<token>/` in the store; the
    CURRENT pointer switches last, so readers see the old build or the new one.
    """
    h = np.ascontiguousarray(item_factors, dtype=np.float32)
    if h.ndim != 2:
        raise InputDataError(f"item factors must be a 2-D matrix, got shape {h.shape}. Check the item_factors table.")
    if not np.isfinite(h).all():
        raise InputDataError("item factors must be finite, got NaN or inf: the model diverged (raise model.reg).")
    ids = np.asarray(item_ids).astype(str)
    if len(ids) != len(h):
        raise InputDataError(f"item_ids must give one id per factor row ({len(h)}), got {len(ids)}.")
    params = choose_params(len(h), h.shape[1], cfg)
    store = as_store(path)
    token = uuid.uuid4().hex
    searcher = None
    with tempfile.TemporaryDirectory(prefix="gramian-index-") as scratch:
        target = Path(scratch)
        if params.kind == "scann":
            searcher = build_searcher(h, params, k)
            (target / SEARCHER).mkdir()
            searcher.serialize(str(target / SEARCHER))
            relocatable(target / SEARCHER)
        np.save(target / FACTORS, h)
        np.save(target / IDS, ids)
        full_meta = {"token": token, "params": asdict(params), "n_items": len(h), "dim": int(h.shape[1]), "k": k,
                     **(meta or {})}
        (target / META).write_text(json.dumps(full_meta, indent=2, default=str))
        try:
            store.upload(scratch, token)
            store.write_text(token, CURRENT)  # readers see the old token or the new one
        except BaseException:
            store.delete(token)
            raise
    for old in store.listdir():  # earlier builds: processes that loaded them keep their in-memory copy
        if old != token and old != CURRENT and not old.startswith("."):
            store.delete(old)
    index = ItemIndex(store.uri, token, params, h, ids, searcher, full_meta)
    with _LOCK:
        _CACHE.put((store.uri, token), index)
    return index


def relocatable(searcher_dir: Path) -> None:
    """Make a serialized ScaNN searcher loadable from any folder: its asset paths relative to the folder.

    ScaNN writes the serialize() folder into scann_assets.pbtxt and load_searcher joins the load folder with
    it, so a copy fetched to an executor's temp dir would look for the driver's path.
    """
    assets = searcher_dir / "scann_assets.pbtxt"
    if assets.is_file():
        assets.write_text(re.sub(r'asset_path: "[^"]*/([^"/]+)"', r'asset_path: "\1"', assets.read_text()))


def index_exists(path: Store | str | os.PathLike[str]) -> bool:
    """Whether an index has been built at `path` (its CURRENT pointer is there)."""
    return as_store(path).exists(CURRENT)


def _cache_size() -> int:
    """GRAMIAN_INDEX_CACHE_SIZE, a positive number of indexes (default 2)."""
    raw = os.environ.get("GRAMIAN_INDEX_CACHE_SIZE", "2")
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"GRAMIAN_INDEX_CACHE_SIZE must be a whole number >= 1, got {raw!r} (environment). "
                          f"Unset it for the default of 2.")
    return int(raw)


class IndexCache:
    """Loaded indexes by (store URI, token), at most `size`, least recently used evicted first (callers hold
    _LOCK to add; a lookup is one dict access and a reorder)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], ItemIndex] = OrderedDict()

    def get(self, key: tuple[str, str]) -> ItemIndex | None:
        index = self._items.get(key)
        if index is not None:
            self._items.move_to_end(key)
        return index

    def put(self, key: tuple[str, str], index: ItemIndex) -> None:
        self._items[key] = index
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every loaded index (the next load reads the files again)."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


_CACHE = IndexCache(_cache_size())
_LOCK = threading.Lock()


def load_index(path: Store | str | os.PathLike[str], token: str | None = None) -> ItemIndex:
    """The index serialized at `path`, loaded once per process (ScaNN searchers do not pickle).

    `token` (from meta.json at build time) keys the cache, so a Python worker reused across publishes
    never serves a searcher that was rebuilt since it was loaded. On a remote store each Python worker
    fetches the build from the store into a local temp dir once (gramian.storage), never from the driver.
    """
    store = as_store(path)
    p = store.uri
    if token is not None:
        with _LOCK:
            cached = _CACHE.get((p, token))
        if cached is not None:
            return cached
    with _LOCK:
        if not store.exists(CURRENT):
            raise InputDataError(f"item index must exist at {p!r}, found no {CURRENT} pointer. Run "
                                 f"`gramian publish` for this run first.")
        current = store.read_text(CURRENT).strip()
        if token is not None and current != token:
            raise InputDataError(f"item index at {p!r} was rebuilt while in use (token {current!r}, "
                                 f"expected {token!r}). Re-run the publish.")
        key = (p, current)
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        d = Path(store.local_dir(current))
        meta = json.loads((d / META).read_text())
        params = IndexParams(**meta["params"])
        searcher = None
        if params.kind == "scann":
            import scann

            searcher = scann.scann_ops_pybind.load_searcher(str(d / SEARCHER))
        index = ItemIndex(p, current, params, np.load(d / FACTORS), np.load(d / IDS), searcher, meta)
        _CACHE.put(key, index)
        return index


FIRST_PASS_EXTRA = 32


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


@njit(cache=True, nogil=True)
def _drop_history(nb, dist, indptr, indices, rows, n_items, items, scores, got):  # pragma: no cover - jitted
    """For each searched row r (user rows[r]): the first n of its neighbours nb[r] that are not in its
    history, in the searcher's order, into items/scores[rows[r]]; got[r] = how many there were.

    One scratch mark per item, set for a user's history and cleared after it: O(k + history) per user.
    """
    n = items.shape[1]
    mark = np.zeros(n_items, dtype=np.bool_)
    for r in range(len(rows)):
        u = rows[r]
        for j in range(indptr[u], indptr[u + 1]):
            it = indices[j]
            if 0 <= it < n_items:
                mark[it] = True
        c = 0
        for j in range(nb.shape[1]):
            if c == n:
                break
            it = nb[r, j]
            if it < 0 or mark[it]:
                continue
            items[u, c] = it
            scores[u, c] = dist[r, j]
            c += 1
        got[r] = c
        for j in range(indptr[u], indptr[u + 1]):
            it = indices[j]
            if 0 <= it < n_items:
                mark[it] = False


def with_blocked(ip: np.ndarray, ix: np.ndarray, blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR histories (ip, ix) with the `blocked` item rows appended to every row (once: dropped from ix first)."""
    if len(blocked) == 0:
        return ip, ix
    ix = ix[ip[0]:ip[-1]]
    keep = ~np.isin(ix, blocked)
    m, b = len(ip) - 1, len(blocked)
    owner = np.repeat(np.arange(m), np.diff(ip))[keep]
    kept = np.bincount(owner, minlength=m).astype(np.int64)
    new_ip = np.concatenate([[0], np.cumsum(kept + b)]).astype(np.int64)
    out = np.empty(int(new_ip[-1]), dtype=np.int64)
    within = np.arange(len(owner)) - np.repeat(np.cumsum(kept) - kept, kept)
    out[new_ip[owner] + within] = ix[keep]
    tail = np.repeat(new_ip[:-1] + kept, b) + np.tile(np.arange(b), m)
    out[tail] = np.tile(blocked, m)
    return new_ip, out


def topn_excluding(index: ItemIndex, queries: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n: int,
                   exact_history_above: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-n item rows per query excluding that query's history (CSR rows over item rows), best first.

    Returns (items int32 [m, n] with -1 where the catalogue runs out, scores float32 [m, n], exact bool
    [m]: which rows were scored exhaustively), best first, equal scores by item row. Scores are exact
    float32 dot products: the searcher's own re-scored values (the quantised searcher re-scores its
    final candidates exactly; gathering the n item vectors per user again would cost a third of the
    search time) or exact scoring's.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    ip = np.asarray(indptr, dtype=np.int64)
    ix = np.asarray(indices, dtype=np.int64)
    m = len(q)
    hlen = np.diff(ip)
    items = np.full((m, n), -1, dtype=np.int32)
    scores = np.full((m, n), -np.inf, dtype=np.float32)
    exact = (hlen > exact_history_above) if index.searcher is not None else np.ones(m, dtype=bool)
    rows_left = np.flatnonzero(~exact)
    full = _bucket(hlen[rows_left])
    # two passes: about half of a user's history ranks in their own top n + |history|, so the first pass asks
    # for at most FIRST_PASS_EXTRA extra neighbours; users it leaves short are searched again with the full
    # n + bucket(|history|), and users still short are scored exactly
    for first in (True, False):
        width = np.minimum(full, FIRST_PASS_EXTRA) if first else full
        short = np.zeros(len(rows_left), dtype=bool)
        for b in np.unique(width):
            sel = np.flatnonzero(width == b)
            rows = rows_left[sel]
            items[rows], scores[rows] = -1, -np.inf
            nb, dist = index.search(q[rows], n + int(b), base=n, threads=threads)
            got = np.zeros(len(rows), dtype=np.int64)
            _drop_history(nb, dist, ip, ix, rows, index.n_items, items, scores, got)
            short[sel] = got < np.minimum(n, index.n_items - hlen[rows])
        retry = short & (full > width)  # a wider search can still fill these
        exact[rows_left[short & ~retry]] = True  # the searcher came back short at full width: score exactly
        rows_left, full = rows_left[retry], full[retry]
    exact_rows = np.flatnonzero(exact)
    if len(exact_rows):
        sub_ip = np.concatenate([[0], np.cumsum(hlen[exact_rows])])
        _, sub_ix = _gather_rows(ip, ix, exact_rows)
        top, top_scores = topk_excluding(q[exact_rows], index.item_factors, np.arange(len(exact_rows)), sub_ip,
                                         sub_ix, n)
        items[exact_rows] = top
        scores[exact_rows] = np.where(top >= 0, top_scores, -np.inf)
    scores[items < 0] = -np.inf
    # best first, equal scores by item row: the searcher returns its lists sorted by score, so only rows with
    # ties or out of order (none, in practice) are sorted again
    valid = items >= 0
    nxt, cur = scores[:, 1:], scores[:, :-1]
    fix = np.flatnonzero(((nxt > cur) | ((nxt == cur) & valid[:, 1:])).any(axis=1)) if n > 1 else np.zeros(0, int)
    if len(fix):
        sub_items, sub_scores = items[fix], scores[fix]
        order = np.lexsort((np.where(sub_items >= 0, sub_items, np.iinfo(np.int32).max), -sub_scores), axis=1)
        items[fix] = np.take_along_axis(sub_items, order, axis=1)
        scores[fix] = np.take_along_axis(sub_scores, order, axis=1)
    return items, scores, exact


def index_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |approx ∩ exact| / |exact| (ignoring -1 padding); rows with empty exact lists skipped."""
    vals = []
    for a, e in zip(approx, exact, strict=True):
        e = e[e >= 0]
        if len(e):
            vals.append(len(np.intersect1d(a[a >= 0], e)) / len(e))
    return float(np.mean(vals)) if vals else 1.0
