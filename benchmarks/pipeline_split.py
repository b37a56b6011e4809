"""The product's own split and validation carve, exported for the benchmarks (issue 17: one split for all).

    python -m benchmarks.pipeline_split --datasets ml-100k,lastfm-2k

For a dataset with a conf (conf/<name>.yaml) this runs `gramian ingest` and `gramian split` into
benchmarks/work/pipeline/<name> (the storage root `gramian tune` is then pointed at), and calls the tune
stage's own carve (gramian.tune.validation.carve: the split stage's assign_parts on `train`, seed
split.seed + 1, fraction tune.validation_fraction or split.test_fraction). The train/test pairs and each
train pair's validation part are saved to <root>/export.npz, which `datasets.load` and
`datasets.validation_split` read: peers are then fit on the pairs `gramian tune` fits and scored on the
pairs it scores, and everyone is tested on the split stage's test set.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "benchmarks" / "work" / "pipeline"
PARTS = {"train": 0, "test": 1, "foldin": 2}  # validation part codes of the train pairs

log = logging.getLogger("benchmarks.pipeline_split")


def conf_path(name: str) -> Path:
    return REPO / "conf" / f"{name}.yaml"


def storage_root(name: str) -> Path:
    """Where the dataset's pipeline tables live (pass as --set storage.root=... to gramian stages)."""
    return WORK / name


def export_path(name: str) -> Path:
    return storage_root(name) / "export.npz"


def conf_digest(name: str, root: Path | str | None = None) -> str:
    """A hash of what the export depends on: the ingest and split stages' config sections (their pipeline
    fingerprint) and the carve's fraction. An export made under other split settings is rebuilt; a change of
    the model defaults is not such a change. The storage root enters the fingerprint as a fixed placeholder
    path (`root` None), not this checkout's absolute one: a worktree or clone reading the same benchmarks/work
    finds the export valid instead of rebuilding it; `root` given: the digest as it was computed before
    (absolute root), which load_export still accepts for this checkout's root and for the path it resolves to
    (a worktree whose benchmarks/work links to the checkout that built the export)."""
    from gramian.pipeline import ORDER, fingerprint

    cfg = config(name, root if root is not None else f"/benchmarks/work/pipeline/{name}")  # fixed, never used
    text = f"{fingerprint(cfg, ORDER, 'split')} {cfg.tune.validation_fraction!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config(name: str, root: Path | str | None = None) -> Any:
    from gramian.config import load_config

    return load_config(conf_path(name), overrides=[f"storage.root={root or storage_root(name)}"])


def build(name: str) -> Path:
    """Ingest + split with conf/<name>.yaml, carve validation as the tune stage does, save export.npz."""
    from gramian.data import ingest, split
    from gramian.spark import get_session
    from gramian.tune.validation import carve

    cfg = config(name)
    spark = get_session(cfg.spark)
    ingest.run(spark, cfg, "bench-ingest")
    split.run(spark, cfg, "bench-split")
    train = _pairs(spark, cfg, "train", with_weight=True)
    test = _pairs(spark, cfg, "test", with_weight=False)
    val = carve(spark, cfg)
    try:
        part = np.zeros(len(train["user_idx"]), dtype=np.int8)
        key = train["user_idx"].astype(np.int64) * (1 << 32) + train["item_idx"]
        for pname in ("test", "foldin"):
            t = val.parts[pname].select("user_idx", "item_idx").toArrow()
            k = t.column("user_idx").to_numpy().astype(np.int64) * (1 << 32) + t.column("item_idx").to_numpy()
            part[np.isin(key, k)] = PARTS[pname]
        summary = dict(val.summary)
    finally:
        val.release()
    out = export_path(name)
    np.savez(out, train_users=train["user_idx"], train_items=train["item_idx"], train_weights=train["weight"],
             val_part=part, test_users=test["user_idx"], test_items=test["item_idx"],
             digest=np.array(conf_digest(name)), validation=np.array(_describe(summary)),
             split=np.array(_split_text(cfg)))
    log.info("%s: %d train (%d validation held out), %d test pairs -> %s", name, len(part),
             int((part == 1).sum()), len(test["user_idx"]), out)
    return out


def _pairs(spark: Any, cfg: Any, table: str, with_weight: bool) -> dict[str, np.ndarray]:
    """The stage table's (user_idx, item_idx[, weight]) as numpy, sorted by (user, item)."""
    from gramian import tables

    cols = ["user_idx", "item_idx"] + (["weight"] if with_weight else [])
    t = tables.read(spark, cfg.storage, table).select(*cols).toArrow()
    out = {c: t.column(c).to_numpy() for c in cols}
    order = np.lexsort((out["item_idx"], out["user_idx"]))
    return {c: v[order] for c, v in out.items()}


def _split_text(cfg: Any) -> str:
    s = cfg.split
    return f"split stage ({s.method}, test_fraction {s.test_fraction}, seed {s.seed}; conf/{cfg.data.name}.yaml)"


def _describe(s: dict[str, Any]) -> str:
    return (f"gramian tune's carve: split.method {s['method']}, fraction {s['fraction']}, seed {s['seed']} on the "
            f"split stage's train ({s['validation_train']} pairs fit, {s['validation_test']} held out, "
            f"{s['validation_users']} users)")


def load_export(name: str) -> dict[str, Any]:
    """export.npz of `name`, built first when missing or made under another conf."""
    path = export_path(name)
    if path.is_file():
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        old = {conf_digest(name, root) for root in {storage_root(name), storage_root(name).resolve()}}
        if str(data["digest"]) in {conf_digest(name)} | old:  # resolved: benchmarks/work linked from a worktree
            return data
        log.info("%s: conf changed since %s was built; rebuilding", name, path)
    build(name)
    return load_export(name)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-100k,lastfm-2k")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in args.datasets.split(","):
        build(name)


if __name__ == "__main__":
    main()
