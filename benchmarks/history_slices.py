"""Recall@20 by the length of a user's history: tuned gramian against the tuned peers, bucket by bucket.

    python -m benchmarks.history_slices                      # ml-100k, lastfm-2k, gowalla
    python -m benchmarks.history_slices --datasets ml-100k --refit ml-100k

A data set's mean hides where a model wins. Dense data (a few thousand items, well over a hundred pairs per user:
issue 17) is mostly long histories, where item-item models such as EASE are strongest, so this splits each data
set's test users by their number of train pairs (BUCKETS) and gives each run's Recall@20 and the paired per-user
difference of every gramian row against every tuned peer in each bucket, with a normal 95% interval.

The runs are the training benchmark's (`train_bench.plan`: same settings, same split). Per-user figures come from
train_bench's per-user files while they hold the recorded run (their mean equals train.json's Recall@20); a data
set named in --refit has its missing ones re-fitted from the same spec in a subprocess, kept in
benchmarks/work/history_slices (train_bench's own files are never written). Results: results/history_slices.*.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import datasets as D
from benchmarks import train_bench as TB
from benchmarks.evaluation import paired_difference

RESULTS = Path(__file__).parent / "results"
OWN = TB.PER_USER.parent / "history_slices"  # re-fitted per-user files (not committed)
BUCKETS: tuple[tuple[int, int | None], ...] = ((0, 30), (30, 100), (100, None))  # train pairs per user, [lo, hi)
GRAMIAN_LABELS = (TB.TUNE_STAGE, "gramian (defaults)")
METHODS = ["gramian", "mllib", "implicit_als", "implicit_bpr", "ease", "rp3beta"]
log = logging.getLogger("benchmarks.history_slices")


def bucket_name(lo: int, hi: int | None) -> str:
    return f">= {lo}" if hi is None else f"{lo}-{hi - 1}"


def history_lengths(split: D.Split) -> np.ndarray:
    """Train pairs of each user with a test item, in the order of the per-user metric arrays (evaluate_by_user)."""
    users = np.flatnonzero(np.diff(split.test_indptr) > 0)
    return np.diff(split.train_csr().indptr)[users]


def recorded(dataset: str) -> dict[str, dict[str, Any]]:
    """train.json's runs of `dataset` by label (the figures a per-user file must reproduce)."""
    runs = json.loads(TB.TRAIN_JSON.read_text()).get("runs", []) if TB.TRAIN_JSON.is_file() else []
    return {r["label"]: r for r in runs if r.get("dataset") == dataset and "error" not in r}


def per_user(dataset: str, spec: dict[str, Any], record: dict[str, Any] | None, refit: bool, n_users: int,
             timeout: float) -> tuple[np.ndarray | None, str]:
    """The run's per-user Recall@20 and where it came from."""
    path = TB.per_user_path(dataset, spec["label"])
    if record is not None and path.is_file():
        x = np.load(path)
        if len(x) == n_users and abs(float(x.mean()) - record["metrics"]["recall@20"]) < 1e-6:
            return x, "train_bench's run (train.json)"
    own = OWN / path.name
    if own.is_file() and own.with_suffix(".json").is_file():
        x = np.load(own)
        return x, json.loads(own.with_suffix(".json").read_text())["source"]
    if not refit:
        return None, "no per-user file of the recorded run"
    OWN.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "benchmarks.history_slices", "--fit", json.dumps({**spec, "dataset": dataset}),
           "--out", str(own)]
    subprocess.run(cmd, check=True, timeout=timeout)
    x = np.load(own)
    source = (f"re-fit {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({time.perf_counter() - t0:.0f} s, load "
              f"{os.getloadavg()[0]:.1f}); Recall@20 {x.mean():.4f}"
              + (f", train.json {record['metrics']['recall@20']:.4f}" if record else ""))
    own.with_suffix(".json").write_text(json.dumps({"source": source}))
    return x, source


def fit_one(spec: dict[str, Any], out: Path) -> None:
    """Subprocess: train_bench's worker on `spec`, its per-user file written into this benchmark's folder."""
    TB.PER_USER = out.parent  # the worker writes its pending file there; never train_bench's folder
    TB.worker(spec)
    TB.pending_path(spec["dataset"], spec["label"]).replace(out)


def slices(dataset: str, refit: bool, timeout: float) -> dict[str, Any]:
    """Every run's Recall@20 per bucket and the paired differences of the gramian rows against the peers."""
    split = D.load(dataset)
    hist = history_lengths(split)
    masks = [(bucket_name(lo, hi), (hist >= lo) & (hist < (hi if hi is not None else np.inf)))
             for lo, hi in BUCKETS]
    rec = recorded(dataset)
    runs: dict[str, dict[str, Any]] = {}
    for spec in TB.plan(dataset, METHODS):
        if spec["method"] == "gramian" and spec["label"] not in GRAMIAN_LABELS:
            continue
        x, source = per_user(dataset, spec, rec.get(spec["label"]), refit, len(hist), timeout)
        runs[spec["label"]] = {"method": spec["method"], "source": source, "recall": None if x is None else {
            "all": float(x.mean()), **{name: float(x[m].mean()) for name, m in masks if m.any()}}, "_x": x}
    comparisons = []
    for g in GRAMIAN_LABELS:
        for p, run in runs.items():
            if g not in runs or run["method"] == "gramian" or runs[g]["_x"] is None or run["_x"] is None:
                continue
            for name, m in [("all", np.ones_like(hist, bool)), *masks]:
                if m.sum() >= 2:
                    comparisons.append({"gramian": g, "peer": p, "bucket": name,
                                        **paired_difference(runs[g]["_x"][m], run["_x"][m])})
    for run in runs.values():
        run.pop("_x")
    return {"users": {"all": len(hist), **{name: int(m.sum()) for name, m in masks}},
            "median_history": float(np.median(hist)), "runs": runs, "comparisons": comparisons}


def write_md(doc: dict[str, Any]) -> str:
    """The report: per data set, Recall@20 by bucket, then the gramian rows' paired differences."""
    out = ["# Recall@20 by history length (issue 17)", "",
           f"- **Date**: {doc['date']}; load before {doc['load_before']}, after {doc['load_after']}", "",
           (__doc__ or "").split("\n\n", 2)[2].strip(), ""]
    for ds, d in doc["datasets"].items():
        names = [bucket_name(lo, hi) for lo, hi in BUCKETS]
        out += [f"## {ds}", "", f"Test users {d['users']['all']} (median train history {d['median_history']:.0f} "
                f"pairs): " + ", ".join(f"{n} pairs: {d['users'][n]}" for n in names), "",
                "| run | all | " + " | ".join(f"{n} pairs" for n in names) + " | per-user figures |",
                "|---|---|" + "---|" * len(names) + "---|"]
        for label, r in d["runs"].items():
            cells = ["—"] * (len(names) + 1) if r["recall"] is None else \
                [f"{r['recall']['all']:.4f}"] + [f"{r['recall'][n]:.4f}" if n in r["recall"] else "—" for n in names]
            out.append(f"| {label} | " + " | ".join(cells) + f" | {r['source']} |")
        out += ["", "Paired per-user difference, gramian minus peer (95% interval):", "",
                "| gramian | peer | all | " + " | ".join(f"{n} pairs" for n in names) + " |",
                "|---|---|---|" + "---|" * len(names)]
        by = {(c["gramian"], c["peer"], c["bucket"]): c for c in d["comparisons"]}
        for g, p in dict.fromkeys((c["gramian"], c["peer"]) for c in d["comparisons"]):
            cells = [by.get((g, p, b)) for b in ["all", *names]]
            out.append(f"| {g} | {p} | " + " | ".join(
                "—" if c is None else f"{c['mean']:+.4f} ({c['low']:+.4f}..{c['high']:+.4f})" for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-100k,lastfm-2k,gowalla")
    ap.add_argument("--refit", default="ml-100k,lastfm-2k", help="data sets whose missing per-user runs are re-fit")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds per re-fit")
    ap.add_argument("--fit", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.fit:
        fit_one(json.loads(args.fit), Path(args.out))
        return 0
    refit = set(filter(None, args.refit.split(",")))
    doc: dict[str, Any] = {"date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
                           "load_before": [round(x, 1) for x in os.getloadavg()], "datasets": {}}
    for ds in filter(None, args.datasets.split(",")):
        doc["datasets"][ds] = slices(ds, ds in refit, args.timeout)
        log.info("%s done", ds)
    doc["load_after"] = [round(x, 1) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "history_slices.json").write_text(json.dumps(doc, indent=1))
    (RESULTS / "history_slices.md").write_text(write_md(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
