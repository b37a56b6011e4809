"""Gowalla: validation Recall@20 and seconds per epoch against the embedding dimension d (issue 17).

    python -m benchmarks.gowalla_d --dims 512 --reg 0.003,0.01 --alpha0 0.01 --solver cg --cg-steps 3
    python -m benchmarks.gowalla_d --report          # rewrite gowalla_d.md from gowalla_d.json

Each point fits gramian single-process (`benchmarks.peers.fit_gramian_numpy`: the Spark trainer's math
without Spark, one BLAS thread) on the validation split of `benchmarks/tune.py` (10% of each user's train
pairs, seed 0, carved from Gowalla's train; the test file is never read for selection) and scores Recall@20
(hits / |validation|) with the validation-train items excluded. Regularisation is frequency-scaled
(reg_counts all: lambda_c = reg (|I_c| + alpha0 |I|)^nu, Rendle et al. 2022). Points merge into
benchmarks/results/gowalla_d.json (keyed by their settings); gowalla_d.md is the table, with the test
Recall@20 of the profile chosen for conf/gowalla.yaml taken from train.json's "gramian (conf)" row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
OUT_JSON = RESULTS / "gowalla_d.json"
OUT_MD = RESULTS / "gowalla_d.md"
METRIC = "recall@20"

log = logging.getLogger("benchmarks.gowalla_d")
HEADER = ("Validation: 10% of each user's train pairs (seed 0) carved from Gowalla's train (the LightGCN split, "
          "the carve of benchmarks/tune.py); Recall@20 = hits / |validation items| with the other train items "
          "excluded. Fits: single process, one BLAS thread (`benchmarks.peers.fit_gramian_numpy`, the Spark "
          "trainer's math); regularisation frequency-scaled (reg_counts all: lambda_c = reg (|I_c| + alpha0 |I|)^nu)."
          " s/epoch is the wall-clock mean of both half-steps over the epochs (inflated by the machine's load, "
          "quoted); CPU s/epoch is the fit's process CPU time over its epochs (one thread: what an idle core "
          "would take); peak RSS is the fitting process's. Test Recall@20 (denominator |test|, LightGCN's "
          "protocol; LightGCN published 0.1830) only for the profile shipped in conf/gowalla.yaml, from the "
          "product's Spark run (train.json, \"gramian (conf)\"). Points of one setting at several epochs may come "
          "from one fit scored after each of them (--eval-at: same seed, the same trajectory as separate fits; "
          "times and CPU up to that epoch, scoring left out; peak RSS the process's so far, scoring included; load: "
          "before the fit, and in brackets the 5-minute load when the point was scored).")
# Product runs of earlier conf/gowalla.yaml profiles (train.json keeps only the current one's)
EARLIER = ["Earlier profile d=1024, 3 epochs (product run 2026-12-05 17:06 UTC, load 23.5): test Recall@20 0.1847, "
           "a tie with the tuned RP3beta's 0.1847 (paired per-user difference -0.0000, 95% CI -0.0016..+0.0016 over "
           "29858 users); hence 6 epochs.",
           "d=1024, reg 0.003, 10 epochs (scored during the fit that gave the 6-epoch point): its wall-clock s/epoch, "
           "item half-step and fit s include ~16 min (20:10-20:26 UTC) the process was paused (SIGSTOP) in epoch 7 "
           "to leave the CPU to the product run, so ~96 s of its 305 s/epoch; CPU s/epoch is unaffected. The "
           "6-epoch point shared the CPU with a d=2048 fit for its first ~16 min (that fit was stopped unfinished)."]


def key(p: dict[str, Any]) -> str:
    return json.dumps(p, sort_keys=True)


def load_points() -> list[dict[str, Any]]:
    return json.loads(OUT_JSON.read_text())["points"] if OUT_JSON.is_file() else []


def save_points(points: list[dict[str, Any]]) -> None:
    """Merge `points` into gowalla_d.json under a lock (same settings: the newer measurement wins)."""
    import fcntl

    RESULTS.mkdir(parents=True, exist_ok=True)
    lock_path = RESULTS.parent / "work" / ".gowalla_d.lock"  # benchmarks/work: not committed
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = {key(p["params"]): p for p in load_points()}
        merged.update({key(p["params"]): p for p in points})
        doc = {"dataset": "gowalla", "metric": METRIC,
               "validation": "10% of each user's train pairs, seed 0 (benchmarks.datasets.holdout_validation)",
               "points": sorted(merged.values(), key=lambda p: (p["params"]["dim"], json.dumps(p["params"])))}
        tmp = OUT_JSON.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(OUT_JSON)


def run_point(val: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Fit one setting on the validation train part; Recall@20 on the held-out part, timing and memory."""
    from benchmarks import peers as P
    from benchmarks.evaluation import evaluate

    load = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    r = P.fit_gramian_numpy(val, params, track_loss=False)
    cpu = time.process_time() - c0  # one thread: the uncontended time, whatever the machine's load
    m = evaluate(val, r.user_factors, r.item_factors, ks=(20,))
    return {"params": params, "val_metrics": {k: float(v) for k, v in m.items()},
            "fit_seconds": r.fit_seconds, "seconds_per_epoch": r.seconds_per_epoch,
            "cpu_seconds": cpu, "cpu_seconds_per_epoch": cpu / r.iterations,
            "user_half_step_s": sum(r.extra["user_seconds"]) / len(r.extra["user_seconds"]),
            "item_half_step_s": sum(r.extra["item_seconds"]) / len(r.extra["item_seconds"]),
            "peak_rss_mib": r.peak_rss / 2**20, "wall_seconds": time.perf_counter() - t0,
            "load_before": load, "load_after": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_points_at(val: Any, params: dict[str, Any], eval_at: list[int]) -> list[dict[str, Any]]:
    """One fit to max(eval_at) epochs, scored after each epoch of `eval_at`: a point per scored epoch, as a fit
    of that many epochs would give (same seed, same trajectory), its timing and CPU up to that epoch (the
    scoring's own time left out). Each point is saved as soon as it is scored."""
    from benchmarks import peers as P
    from benchmarks.evaluation import evaluate

    load = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    spent = {"wall": 0.0, "cpu": 0.0}  # scoring time so far, left out of the fit's
    out: list[dict[str, Any]] = []
    last = max(eval_at)

    def score(epoch: int, w: Any, h: Any, times: dict[str, list[float]]) -> None:
        if epoch not in eval_at:
            return
        t1, c1 = time.perf_counter(), time.process_time()
        m = evaluate(val, w, h, ks=(20,))
        us, its = times["user_seconds"], times["item_seconds"]
        cpu = c1 - c0 - spent["cpu"]
        rec = {"params": {**params, "epochs": epoch}, "val_metrics": {k: float(v) for k, v in m.items()},
               "fit_seconds": t1 - t0 - spent["wall"], "seconds_per_epoch": (sum(us) + sum(its)) / epoch,
               "cpu_seconds": cpu, "cpu_seconds_per_epoch": cpu / epoch,
               "user_half_step_s": sum(us) / epoch, "item_half_step_s": sum(its) / epoch,
               "peak_rss_mib": peak_rss_so_far_mib(),
               "wall_seconds": t1 - t0 - spent["wall"], "load_before": load, "load_after": os.getloadavg(),
               "scored_during": f"one fit of {last} epochs, scored after epochs {sorted(eval_at)}",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        spent["wall"] += time.perf_counter() - t1
        spent["cpu"] += time.process_time() - c1
        save_points([rec])
        out.append(rec)
        log.info("%s -> val %s=%.4f, %.2f s/epoch, %.2f CPU s/epoch", rec["params"], METRIC,
                 rec["val_metrics"][METRIC], rec["seconds_per_epoch"], rec["cpu_seconds_per_epoch"])

    P.fit_gramian_numpy(val, {**params, "epochs": last}, track_loss=False, on_epoch=score)
    return out


def peak_rss_so_far_mib() -> float:
    """This process's peak resident memory so far (VmHWM; the fit runs in this one process), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every combination of the comma-separated axes, as ModelConfig keyword arguments."""
    def vals(s: str, cast: Any) -> list[Any]:
        return [cast(x) for x in s.split(",") if x]

    out = []
    for d, a0, reg, nu, bs in itertools.product(vals(args.dims, int), vals(args.alpha0, float),
                                               vals(args.reg, float), vals(args.nu, float),
                                               vals(args.block_size, int) or [0]):
        p: dict[str, Any] = {"dim": d, "alpha0": a0, "reg": reg, "nu": nu, "reg_counts": "all",
                             "epochs": args.epochs, "solver": args.solver, "cg_steps": args.cg_steps}
        if args.solver == "subspace":
            p["solver_block_size"] = min(bs or d, d)
        out.append(p)
    return out


def settings(p: dict[str, Any]) -> str:
    solver = (f"subspace b={p.get('solver_block_size')}" if p.get("solver") == "subspace"
              else f"{p.get('solver', 'cg')} {p.get('cg_steps', 3)} steps" if p.get("solver", "cg") == "cg"
              else p.get("solver", "cg"))
    return f"alpha0={p['alpha0']}, reg={p['reg']}, nu={p['nu']}, {p['epochs']} epochs, {solver}"


def conf_test_row() -> dict[str, Any] | None:
    """train.json's gowalla "gramian (conf)" record (the product's Spark run on the test split), if any."""
    path = RESULTS / "train.json"
    if not path.is_file():
        return None
    for r in json.loads(path.read_text()).get("runs", []):
        if r.get("dataset") == "gowalla" and r.get("label") == "gramian (conf)" and "error" not in r:
            return r
    return None


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _load(p: dict[str, Any]) -> str:
    """The 1-minute load before the fit; for a point scored during a longer fit (--eval-at) also the 5-minute
    load when it was scored (the fit may have started on a quiet machine that filled up)."""
    before = f"{p['load_before'][0]:.2f}"
    return f"{before} ({p['load_after'][1]:.1f})" if p.get("scored_during") else before


def write_md(points: list[dict[str, Any]]) -> Path:
    """gowalla_d.md: one row per point, d ascending; the conf profile's test figure beside its point."""
    conf = conf_test_row()
    cp = conf["params"] if conf else {}

    def is_conf(p: dict[str, Any]) -> bool:
        return bool(cp) and all(cp.get(k) == v for k, v in p.items())

    lines = ["# Gowalla: Recall@20 against d (issue 17)", "", HEADER, "",
             "| d | settings | val Recall@20 | test Recall@20 | s/epoch | CPU s/epoch | user / item half-step s | "
             "fit s | peak RSS MiB | load before (at score) |", "|---|---|---|---|---|---|---|---|---|---|"]
    def order(p: dict[str, Any]) -> tuple[Any, ...]:  # d, then the setting, then epochs ascending
        q = p["params"]
        return q["dim"], json.dumps({k: v for k, v in q.items() if k != "epochs"}, sort_keys=True), q["epochs"]

    for p in sorted(points, key=order):
        q = p["params"]
        test = f"{conf['metrics']['recall@20']:.4f}" if conf and is_conf(q) else "—"
        lines.append(f"| {q['dim']} | {settings(q)} | {p['val_metrics'][METRIC]:.4f} | {test} | "
                     f"{p['seconds_per_epoch']:.2f} | {_f(p.get('cpu_seconds_per_epoch'))} | "
                     f"{p['user_half_step_s']:.2f} / {p['item_half_step_s']:.2f} | "
                     f"{p['fit_seconds']:.0f} | {p['peak_rss_mib']:.0f} | {_load(p)} |")
    if conf:
        lines += ["", f"Product run of conf/gowalla.yaml (Spark local[2], train.json): Recall@20 "
                  f"{conf['metrics']['recall@20']:.4f}, NDCG@20 {conf['metrics'].get('ndcg@20', float('nan')):.4f}, "
                  f"fit {conf['fit_seconds']:.0f} s, {conf['seconds_per_epoch']:.2f} s/epoch, peak RSS "
                  f"{conf['peak_rss_mib']:.0f} MiB (load before {conf.get('load_before', [float('nan')])[0]:.2f})."]
    lines += [""] + [f"- {n}" for n in EARLIER]
    OUT_MD.write_text("\n".join(lines) + "\n")
    return OUT_MD


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="")
    ap.add_argument("--alpha0", default="0.01")
    ap.add_argument("--reg", default="0.003")
    ap.add_argument("--nu", default="1.0")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--solver", default="cg", choices=("cg", "cholesky", "subspace"))
    ap.add_argument("--cg-steps", type=int, default=3)
    ap.add_argument("--block-size", default="", help="subspace: solver_block_size values (default d)")
    ap.add_argument("--eval-at", default="", help="comma-separated epochs: one fit to the largest, scored after "
                    "each (replaces --epochs)")
    ap.add_argument("--report", action="store_true", help="only rewrite gowalla_d.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.report:
        from benchmarks import datasets as D

        val = D.holdout_validation(D.load("gowalla"))  # its recorded sweep's validation (not the tune carve)
        eval_at = sorted({int(x) for x in args.eval_at.split(",") if x})
        for p in grid(args):
            if eval_at:
                run_points_at(val, p, eval_at)
                continue
            rec = run_point(val, p)
            save_points([rec])
            log.info("%s -> val %s=%.4f, %.2f s/epoch, peak %.0f MiB", p, METRIC, rec["val_metrics"][METRIC],
                     rec["seconds_per_epoch"], rec["peak_rss_mib"])
    write_md(load_points())


if __name__ == "__main__":
    main()
