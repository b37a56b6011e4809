"""RankALS (pairwise square loss, docs/rankals.md) beside gramian iALS: seconds per epoch at the same d, and quality.

    python -m benchmarks.rankals_bench                        # ml-100k, lastfm-2k, gowalla
    python -m benchmarks.rankals_bench --datasets ml-100k --epochs 5

Both run the package kernels in one process with one BLAS thread, back to back on the same split, so their
times compare even on a shared machine (Spark overhead is the same job structure for both and is left out).
RankALS: CG user rows (3 steps, as iALS) and the descent item step (the default; the exact one is run at the
chosen settings for reference); alpha = 1 (confidence 'constant').
Its reg x support_power are chosen on a validation split carved from train (benchmarks.datasets.validation_split),
then refit on train and evaluated on test by the same exact top-k code as the training benchmark.
iALS uses the package defaults (conf/defaults.yaml). Correctness first: loss non-increasing, finite factors.
Results: benchmarks/results/rankals.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import datasets as D

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("benchmarks.rankals_bench")

GRID = {"ml-100k": {"reg": [0.01, 0.03, 0.1, 0.3], "support_power": [0.0, 0.5]},
        "lastfm-2k": {"reg": [0.01, 0.03, 0.1, 0.3], "support_power": [0.0, 0.5]},
        "gowalla": {"reg": [0.003, 0.01, 0.03, 0.1], "support_power": [0.0, 0.5]}}


def fit_rankals(split: D.Split, reg: float, support_power: float, dim: int, epochs: int,
                nu: float = 1.0, item_step_kind: str = "descent") -> dict[str, Any]:
    """RankALS epochs with the pairwise kernels; per-epoch user/item seconds and loss (loss time excluded).

    item_step_kind: "exact" (joint minimiser, model.solver=cholesky) or "descent" (one CG direction per item and
    an exact joint step along it, model.solver=cg: what the Spark trainer runs by default).
    """
    from gramian.kernels.pairwise import (
        PairwiseData,
        item_descent,
        item_moments,
        item_step,
        row_sums,
        solve_users,
        user_moments,
        user_side_partials,
    )
    from gramian.train.als import init_factors

    t0 = time.perf_counter()
    data = PairwiseData.from_coo(split.train_users, split.train_items, np.ones(split.nnz), split.n_users,
                                 split.n_items, reg=reg, nu=nu, support_power=support_power)
    user_sums = row_sums(data.user_indptr, data.user_alpha)
    w = init_factors(split.n_users, dim, 0.1, 0, 0)
    h = init_factors(split.n_items, dim, 0.1, 0, 1)
    setup = time.perf_counter() - t0
    user_s, item_s, loss = [], [], []
    im = item_moments(h, data.support)
    for _ in range(epochs):
        t1 = time.perf_counter()
        w = solve_users(data.user_indptr, data.user_indices, data.user_alpha, h, im, data.reg_users, w,
                        solver="cg", cg_steps=3).astype(np.float32)
        if item_step_kind == "descent":  # what the Spark user job also returns: (A, b, G^C) and (sq, v0) shares
            um = user_moments(data.user_indptr, data.user_alpha, w)
            _, v0 = user_side_partials(data.user_indptr, data.user_indices, data.user_alpha, w, h)
        t2 = time.perf_counter()
        if item_step_kind == "exact":
            h = item_step(data.item_indptr, data.item_indices, data.item_alpha, w, data.support, data.reg_items,
                          user_sums).astype(np.float32)
            im = item_moments(h, data.support)
        else:
            delta, part = item_descent(data.item_indptr, data.item_indices, data.item_alpha, w, h, data.support,
                                       data.reg_items, um, im, v0, cg_steps=3)
            t = part.step(um, im, v0)
            h = (h + t * delta).astype(np.float32)
            im = part.moved(im, t)
        t3 = time.perf_counter()
        user_s.append(t2 - t1)
        item_s.append(t3 - t2)
        loss.append(data.loss(w, h).total)
    return {"w": w, "h": h, "user_seconds": user_s, "item_seconds": item_s, "loss": loss, "setup_seconds": setup,
            "params": {"dim": dim, "epochs": epochs, "reg": reg, "nu": nu, "support_power": support_power,
                       "user_solver": "cg", "cg_steps": 3, "item_step": item_step_kind}}


def fit_ials(split: D.Split, dim: int) -> dict[str, Any]:
    """gramian iALS in one process with the package defaults (benchmarks.peers.fit_gramian_numpy)."""
    from benchmarks.peers import fit_gramian_numpy
    from benchmarks.train_bench import gramian_defaults

    params = {**gramian_defaults(), "dim": dim}
    r = fit_gramian_numpy(split, params)
    return {"w": r.user_factors, "h": r.item_factors, "user_seconds": r.extra["user_seconds"],
            "item_seconds": r.extra["item_seconds"], "loss": r.extra["loss"], "params": r.params}


def summary(fit: dict[str, Any]) -> dict[str, Any]:
    """Seconds per epoch (mean of epochs after the first: JIT), monotone loss, finite factors."""
    u, i = np.asarray(fit["user_seconds"]), np.asarray(fit["item_seconds"])
    tail = slice(1, None) if len(u) > 1 else slice(None)
    loss = fit["loss"]
    worst = max(((b - a) / abs(a) for a, b in zip(loss[:-1], loss[1:], strict=True)), default=0.0)
    return {"user_seconds": float(u[tail].mean()), "item_seconds": float(i[tail].mean()),
            "seconds_per_epoch": float((u + i)[tail].mean()), "loss_first": loss[0], "loss_last": loss[-1],
            "largest_relative_loss_increase": float(worst),
            "finite": bool(np.isfinite(fit["w"]).all() and np.isfinite(fit["h"]).all()), "params": fit["params"]}


def run_dataset(name: str, dim: int, epochs: int) -> dict[str, Any]:
    """Validation grid for RankALS, then RankALS (best) and iALS on the test split, back to back."""
    from benchmarks.evaluation import evaluate

    split = D.load(name)
    val = D.validation_split(split)
    trials = []
    g = GRID[name]
    for reg in g["reg"]:
        for power in g["support_power"]:
            fit = fit_rankals(val, reg, power, dim, epochs)
            m = evaluate(val, fit["w"], fit["h"], (20,))
            trials.append({"reg": reg, "support_power": power, "val_recall@20": m["recall@20"],
                           "val_ndcg@20": m["ndcg@20"]})
            log.info("%s val reg=%g power=%g recall@20 %.4f", name, reg, power, m["recall@20"])
    best = max(trials, key=lambda t: t["val_recall@20"])
    rank = fit_rankals(split, best["reg"], best["support_power"], dim, epochs)
    ials = fit_ials(split, dim)
    exact = fit_rankals(split, best["reg"], best["support_power"], dim, epochs, item_step_kind="exact")
    out = {"dataset": name, "split": split.summary(), "validation": val.notes["split"], "trials": trials, "runs": {},
           "epochs": epochs,
           "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "load": [round(x, 1) for x in os.getloadavg()]}
    for label, fit in (("RankALS (val-tuned)", rank), ("gramian iALS (defaults)", ials),
                       ("RankALS, exact item step (same settings)", exact)):
        m = evaluate(split, fit["w"], fit["h"], (20,))
        out["runs"][label] = {**summary(fit), "recall@20": m["recall@20"], "ndcg@20": m["ndcg@20"]}
        log.info("%s %s: %.3f s/epoch recall@20 %.4f ndcg@20 %.4f", name, label,
                 out["runs"][label]["seconds_per_epoch"], m["recall@20"], m["ndcg@20"])
    r, i = out["runs"]["RankALS (val-tuned)"], out["runs"]["gramian iALS (defaults)"]
    out["epoch_ratio_rankals_vs_ials"] = r["seconds_per_epoch"] / i["seconds_per_epoch"]
    out["epoch_ratio_exact_vs_ials"] = (out["runs"]["RankALS, exact item step (same settings)"]["seconds_per_epoch"]
                                        / i["seconds_per_epoch"])
    return out


def write_md(doc: dict[str, Any]) -> None:
    """benchmarks/results/rankals.md: machine, then one table per dataset."""
    lines = ["# RankALS vs gramian iALS (single process, one BLAS thread)", "",
             f"- **Date**: {doc['date']}; machine {doc['machine']}; load average before {doc['load_before']}, "
             f"after {doc['load_after']}",
             "- Timings were taken while other jobs shared the 2 cores: compare the two methods only within a dataset "
             "(they ran back to back), not with other tables.",
             "- RankALS: CG user rows (3 steps) and the one-pass descent item step (3 CG steps per item, exact joint "
             "line search; docs/rankals.md), alpha = 1, nu = 1; reg and support_power chosen on a validation split "
             "carved from train. The exact item step (model.solver=cholesky) runs at the same settings for "
             "reference. iALS: package defaults. User-step time includes the partial sums the Spark user job "
             "returns for the item step.",
             "- Seconds per epoch: mean over epochs 2..n (epoch 1 includes numba JIT).", ""]
    for ds in doc["datasets"]:
        s = ds["split"]
        lines += [f"## {ds['dataset']}", "", f"{s}; run {ds.get('date', '?')}, load {ds.get('load', '?')}", "",
                  f"Validation (reg and support_power chosen on): {ds.get('validation', 'not recorded')}", "",
                  "| method | Recall@20 | NDCG@20 | s/epoch | user s | item s | loss monotone | settings |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, r in ds["runs"].items():
            worst = r["largest_relative_loss_increase"]
            mono = "yes" if worst <= 1e-6 else f"no ({worst:.1e})"
            settings = ", ".join(f"{k}={v}" for k, v in r["params"].items() if k not in ("confidence",))
            lines.append(f"| {label} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {r['seconds_per_epoch']:.3f} | "
                         f"{r['user_seconds']:.3f} | {r['item_seconds']:.3f} | {mono} | {settings} |")
        ratio = ds["epoch_ratio_rankals_vs_ials"]
        lines += ["", f"RankALS / iALS seconds per epoch: **{ratio:.2f}x** (target <= 1.5x); with the exact item "
                  f"step {ds.get('epoch_ratio_exact_vs_ials', float('nan')):.1f}x",
                  "", "Validation trials (RankALS): " + "; ".join(
                      f"reg={t['reg']}, power={t['support_power']}: recall@20 {t['val_recall@20']:.4f}"
                      for t in ds["trials"]), ""]
    (RESULTS / "rankals.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-100k,lastfm-2k,gowalla")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--fresh", action="store_true", help="do not keep other datasets from rankals.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from threadpoolctl import threadpool_limits

    doc: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                           "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
                           "load_before": [round(x, 1) for x in os.getloadavg()], "datasets": []}
    path = RESULTS / "rankals.json"
    if path.is_file() and not args.fresh:  # keep other datasets' results; replace the ones run now
        names = {d for d in args.datasets.split(",") if d}
        old = json.loads(path.read_text())
        doc["datasets"] = [d for d in old.get("datasets", []) if d["dataset"] not in names]
    with threadpool_limits(1):
        for name in [d for d in args.datasets.split(",") if d]:
            doc["datasets"].append(run_dataset(name, args.dim, args.epochs))
            doc["load_after"] = [round(x, 1) for x in os.getloadavg()]
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "rankals.json").write_text(json.dumps(doc, indent=1, default=float))
            write_md(doc)
    bad = [(d["dataset"], k) for d in doc["datasets"] for k, r in d["runs"].items()
           if not r["finite"] or r["largest_relative_loss_increase"] > 1e-5]
    for b in bad:
        log.error("CHECK FAILED: %s / %s: non-finite factors or increasing loss", *b)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
