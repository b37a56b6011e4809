"""Benchmark datasets read straight from the shared files (numpy/pandas), independent of the ingest stage.

Every loader returns a `Split`: dense 0-based ids, train triples and a test CSR by user; test items never
seen in train are dropped (no CF method can rank them), so every item id has training data. ml-100k and
lastfm-2k are split by the product's split stage (conf/<name>.yaml; benchmarks/pipeline_split.py), so
`gramian tune` and the peers see the same train, validation and test pairs; Gowalla keeps its given split,
and its validation is the tune stage's carve of that train (CARVED).
dense-ml1m and dense-2k are drawn by the product's generator (gramian.data.synthetic, conf/<name>.yaml) and
split the same way: dense sets with long histories (MovieLens-1M's shape; 2,000 x 1,000 at 300 per user)
for the package defaults' choice (benchmarks/defaults_bench.py).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

DATASETS = ("gowalla", "ml-100k", "lastfm-2k", "synthetic10m")  # the training benchmark's default set
DENSE = ("dense-ml1m", "dense-2k")  # generated dense sets (conf/<name>.yaml), for the defaults' choice


def data_root() -> Path:
    """$GRAMIAN_DATA, else /work/shared/data."""
    return Path(os.environ.get("GRAMIAN_DATA") or "/work/shared/data")


@dataclass
class Split:
    """One train/test split with dense ids: train as (user, item, weight) triples, test as a CSR."""

    name: str
    n_users: int
    n_items: int
    train_users: np.ndarray  # int32
    train_items: np.ndarray  # int32
    train_weights: np.ndarray  # float64
    test_indptr: np.ndarray  # int64, n_users + 1
    test_indices: np.ndarray  # int32
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        return len(self.train_users)

    @property
    def n_test(self) -> int:
        return len(self.test_indices)

    def train_csr(self, values: np.ndarray | None = None) -> sp.csr_matrix:
        """users x items CSR of the train pairs (values default to the weights), indices sorted."""
        v = self.train_weights if values is None else values
        m = sp.csr_matrix((v, (self.train_users, self.train_items)), shape=(self.n_users, self.n_items))
        m.sort_indices()
        return m

    def summary(self) -> dict[str, int | str]:
        return {"name": self.name, "users": self.n_users, "items": self.n_items, "train": self.nnz,
                "test": self.n_test, **self.notes}


def _csr_from_pairs(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((items, users))
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items[order].astype(np.int32)


def holdout(users: np.ndarray, fraction: float, seed: int, min_interactions: int = 2) -> np.ndarray:
    """Boolean mask of held-out pairs: round(fraction * n_u) (at least 1, at most n_u - 1) per user.

    Users with fewer than `min_interactions` pairs keep all of them in train. Pairs are drawn by a
    seeded random key per pair, sorted within the user: no hashing, reproducible for a given order.
    """
    users = np.asarray(users, dtype=np.int64)
    n_users = int(users.max()) + 1 if len(users) else 0
    counts = np.bincount(users, minlength=n_users)
    n_out = np.clip(np.floor(fraction * counts + 0.5).astype(np.int64), 1, None)
    n_out = np.minimum(n_out, counts - 1)
    n_out[counts < min_interactions] = 0
    key = np.random.default_rng(seed).random(len(users))
    order = np.lexsort((key, users))
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - starts[users[order]]
    return rank < n_out[users]


def _from_pairs(name: str, users: np.ndarray, items: np.ndarray, weights: np.ndarray, test_mask: np.ndarray,
                notes: dict[str, str]) -> Split:
    """Dense-remap ids over train, drop test pairs of items (or users) absent from train."""
    tr = ~test_mask
    uniq_u, u_tr = np.unique(users[tr], return_inverse=True)
    uniq_i, i_tr = np.unique(items[tr], return_inverse=True)
    te_u, te_i = users[test_mask], items[test_mask]
    pos_u = np.searchsorted(uniq_u, te_u).clip(0, len(uniq_u) - 1)
    pos_i = np.searchsorted(uniq_i, te_i).clip(0, len(uniq_i) - 1)
    known = (uniq_u[pos_u] == te_u) & (uniq_i[pos_i] == te_i)
    dropped = int((~known).sum())
    indptr, indices = _csr_from_pairs(pos_u[known], pos_i[known], len(uniq_u))
    notes = dict(notes)
    if dropped:
        notes["test_dropped_unseen_item"] = str(dropped)
    return Split(name, len(uniq_u), len(uniq_i), u_tr.astype(np.int32), i_tr.astype(np.int32),
                 weights[tr].astype(np.float64), indptr, indices, notes)


def _read_adjacency(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """LightGCN format: one line per user, `user item item ...`."""
    opener = gzip.open if path.suffix == ".gz" else open
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    with opener(path, "rt") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            ids = np.array(parts, dtype=np.int64)
            users.append(np.full(len(ids) - 1, ids[0]))
            items.append(ids[1:])
    return np.concatenate(users), np.concatenate(items)


def load_gowalla(root: Path | None = None) -> Split:
    """The NGCF/LightGCN Gowalla split as given (29,858 users, 40,981 items, 810,128 / 217,242)."""
    d = (root or data_root()) / "gowalla"
    tr_u, tr_i = _read_adjacency(d / "train.txt.gz")
    te_u, te_i = _read_adjacency(d / "test.txt")
    n_users = int(max(tr_u.max(), te_u.max())) + 1
    n_items = int(max(tr_i.max(), te_i.max())) + 1
    indptr, indices = _csr_from_pairs(te_u, te_i, n_users)
    return Split("gowalla", n_users, n_items, tr_u.astype(np.int32), tr_i.astype(np.int32),
                 np.ones(len(tr_u)), indptr, indices, {"split": "given (LightGCN)", "weight": "1"})


def power_law_interactions(n_users: int, n_items: int, n_interactions: int, seed: int = 0,
                           user_exponent: float = 0.6, item_exponent: float = 0.9
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs with Zipf-like user activity and item popularity, vectorised."""
    rng = np.random.default_rng(seed)
    pu = np.arange(1, n_users + 1, dtype=np.float64) ** -user_exponent
    pi = np.arange(1, n_items + 1, dtype=np.float64) ** -item_exponent
    cu, ci = np.cumsum(pu / pu.sum()), np.cumsum(pi / pi.sum())
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < n_interactions:  # oversample once; popular pairs repeat, top up if short
        draw = int((n_interactions - len(keys)) * 1.25) + 16
        u = np.searchsorted(cu, rng.random(draw), side="right").clip(0, n_users - 1)
        i = np.searchsorted(ci, rng.random(draw), side="right").clip(0, n_items - 1)
        keys = np.unique(np.concatenate([keys, u.astype(np.int64) * n_items + i]))
    keys = rng.permutation(keys)[:n_interactions]
    # Shuffle ids so popularity is not sorted by id (block layouts must not benefit from it).
    perm_u, perm_i = rng.permutation(n_users), rng.permutation(n_items)
    return perm_u[keys // n_items].astype(np.int32), perm_i[keys % n_items].astype(np.int32)


def _cache_dir() -> Path:
    return Path(os.environ.get("GRAMIAN_BENCH_CACHE") or "/tmp/gramian-bench-cache")


def load_synthetic10m(seed: int = 0, n_interactions: int = 10_000_000) -> Split:
    """10M distinct power-law pairs (1M users x 200k items), binary weight; timing/memory only.

    gramian.data.synthetic did not exist when this was written; the generator above stands in.
    The pairs are cached as .npy under $GRAMIAN_BENCH_CACHE (default /tmp/gramian-bench-cache).
    """
    cache = _cache_dir() / f"synthetic-{n_interactions}-{seed}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            users, items = z["users"], z["items"]
    else:
        users, items = power_law_interactions(1_000_000, 200_000, n_interactions, seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, users=users, items=items)
        tmp.replace(cache)
    mask = np.zeros(len(users), dtype=bool)  # no test set: time and memory only
    return _from_pairs("synthetic10m", users, items, np.ones(len(users)), mask,
                       {"split": "none (train only)", "weight": "1",
                        "generator": "benchmarks.datasets.power_law_interactions"})


def validation_split(split: Split, fraction: float = 0.1, seed: int = 0) -> Split:
    """The validation split peers are tuned on: for a dataset split by the product (PIPELINE) or with a given
    test split the product keeps (CARVED), the pairs `gramian tune` carves from the same train
    (pipeline_split); otherwise `fraction` of each user's train pairs, seed `seed` (ids kept)."""
    if split.name in PIPELINE:
        return _pipeline_validation(split)
    if split.name in CARVED:
        return _carved_validation(split)
    return holdout_validation(split, fraction, seed)


def holdout_validation(split: Split, fraction: float = 0.1, seed: int = 0) -> Split:
    """`fraction` of each user's train pairs (seed `seed`) held out as the validation 'test', ids kept: the
    benchmark's earlier validation of every dataset (gowalla_d.py's d sweep keeps it on Gowalla)."""
    mask = holdout(split.train_users, fraction, seed)
    tr = ~mask
    indptr, indices = _csr_from_pairs(split.train_users[mask].astype(np.int64),
                                      split.train_items[mask].astype(np.int64), split.n_users)
    return Split(f"{split.name}/val", split.n_users, split.n_items, split.train_users[tr],
                 split.train_items[tr], split.train_weights[tr], indptr, indices,
                 {"split": f"validation: {fraction:.0%} of each user's train pairs, seed {seed}"})


# Datasets whose benchmark split is the product's own (split stage + tune carve, benchmarks/pipeline_split.py).
PIPELINE = ("ml-100k", "lastfm-2k", "dense-ml1m", "dense-2k")
# Datasets that keep their given split here (their loader) but whose validation is the tune stage's carve: the
# split stage runs `split.method: given` on the same files (benchmarks/pipeline_split.py exports its train, the
# same pairs as the loader's), so peers are tuned on the pairs `gramian tune` tunes on.
CARVED = ("gowalla",)
WEIGHT_NOTES = {"ml-100k": "rating", "lastfm-2k": "play count", "dense-ml1m": "1 (generated, binary)",
                "dense-2k": "1 (generated, binary)"}


def load_pipeline(name: str) -> Split:
    """`name` as the split stage splits it (conf/<name>.yaml), ids dense over train; test pairs of items
    absent from train dropped (no CF method can rank them)."""
    from benchmarks.pipeline_split import load_export

    z = load_export(name)
    users = np.concatenate([z["train_users"], z["test_users"]]).astype(np.int64)
    items = np.concatenate([z["train_items"], z["test_items"]]).astype(np.int64)
    weights = np.concatenate([z["train_weights"], np.zeros(len(z["test_users"]))])
    test = np.zeros(len(users), dtype=bool)
    test[len(z["train_users"]):] = True
    return _from_pairs(name, users, items, weights, test, {"split": str(z["split"]), "weight": WEIGHT_NOTES[name]})


def _pipeline_validation(split: Split) -> Split:
    """The tune stage's carve of `split`'s train (its held-out part as the 'test'), in `split`'s dense ids."""
    from benchmarks.pipeline_split import load_export

    z = load_export(split.name)
    part = z["val_part"]
    if len(part) != split.nnz:
        raise ValueError(f"{split.name}: export has {len(part)} train pairs, the split {split.nnz}; rebuild it")
    held, fit = part == 1, part == 0  # train pairs keep the export's order in _from_pairs
    indptr, indices = _csr_from_pairs(split.train_users[held].astype(np.int64),
                                      split.train_items[held].astype(np.int64), split.n_users)
    return Split(f"{split.name}/val", split.n_users, split.n_items, split.train_users[fit],
                 split.train_items[fit], split.train_weights[fit], indptr, indices,
                 {"split": str(z["validation"])})


def _carved_validation(split: Split) -> Split:
    """The tune stage's carve of a CARVED dataset's train, matched pair by pair (the export's ids are the
    split stage's; they must hold the same train pairs as `split`)."""
    from benchmarks.pipeline_split import load_export

    z = load_export(split.name)
    shift = np.int64(1) << 32
    key = split.train_users.astype(np.int64) * shift + split.train_items
    ekey = z["train_users"].astype(np.int64) * shift + z["train_items"]
    order = np.argsort(ekey)
    pos = np.searchsorted(ekey[order], key).clip(0, len(ekey) - 1)
    if len(ekey) != len(key) or not np.array_equal(ekey[order][pos], key):
        raise ValueError(f"{split.name}: the export's train pairs are not the loader's; rebuild it")
    part = z["val_part"][order][pos]
    held, fit = part == 1, part == 0
    indptr, indices = _csr_from_pairs(split.train_users[held].astype(np.int64),
                                      split.train_items[held].astype(np.int64), split.n_users)
    return Split(f"{split.name}/val", split.n_users, split.n_items, split.train_users[fit],
                 split.train_items[fit], split.train_weights[fit], indptr, indices,
                 {"split": str(z["validation"])})


LOADERS = {"gowalla": load_gowalla, "ml-100k": lambda: load_pipeline("ml-100k"),
           "lastfm-2k": lambda: load_pipeline("lastfm-2k"), "synthetic10m": load_synthetic10m,
           "dense-ml1m": lambda: load_pipeline("dense-ml1m"), "dense-2k": lambda: load_pipeline("dense-2k")}


def load(name: str) -> Split:
    """The named benchmark split."""
    if name not in LOADERS:
        raise ValueError(f"dataset must be one of {tuple(LOADERS)}, got {name!r}")
    return LOADERS[name]()
