"""Light hyper-parameter search on a validation holdout carved from each train set (never the test set).

    python -m benchmarks.tune --datasets gowalla,ml-100k,lastfm-2k --methods gramian,implicit_als,mllib

Validation: `datasets.validation_split` -- on ml-100k and lastfm-2k the pairs `gramian tune` carves from the
split stage's train (benchmarks/pipeline_split.py), so peers are tuned on the stage's validation; on Gowalla
(given split, datasets.CARVED) the same carve of its train; elsewhere 10% of each user's train pairs
(seed 0). Every entry records its validation, and only entries of a dataset's current validation count as
its optimum. gramian runs single-process here (`fit_gramian_numpy`, the Spark
trainer's math without Spark); on the pipeline datasets gramian is tuned by the product (`gramian tune`)
instead. Peers run as in the benchmark. Results merge into benchmarks/results/tuning.json (one entry per
dataset/validation/method/setting), the best setting per dataset/method is what `train_bench` uses, and
tuning.md summarises the grids (its "one default" section: the earlier cross-dataset sweep on the 10%
holdout). The package defaults are chosen by benchmarks/defaults_bench.py, against the peers' defaults-like
settings on every data set including the dense generated ones.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import datasets as D
from benchmarks import peers as P
from benchmarks.evaluation import evaluate

RESULTS = Path(__file__).parent / "results"
TUNING_JSON = RESULTS / "tuning.json"
METRIC = "recall@20"
LEGACY_VALIDATION = "validation: 10% of each user's train pairs, seed 0"  # entries without a validation field
WEIGHTED = ("ml-100k", "lastfm-2k")  # datasets whose weights are not all 1

log = logging.getLogger("benchmarks.tune")


def _grid(**axes: list[Any]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*axes.values())]


LOG_CONF = {"form": "rendle", "scale": "log", "beta": 1.0, "eps": 1.0}


def gramian_grid(dataset: str) -> list[dict[str, Any]]:
    """alpha0 x reg at d=64, nu=1: the brief's 4x4 grid widened to smaller values (Gowalla's optimum
    sat on its alpha0=0.01 edge). Weighted datasets also try log confidence g = 1 + log(1 + w); Gowalla
    (all weights 1, where log confidence only rescales the observed term by 1 + ln 2) tries it on a
    smaller grid so a single cross-dataset default can be compared everywhere."""
    grid = _grid(dim=[64], alpha0=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3],
                 reg=[0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03], nu=[1.0], reg_counts=["all"])
    if dataset in WEIGHTED:  # small and dense: their optima sat on the large-alpha0/large-reg edge
        grid = _grid(dim=[64], alpha0=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
                     reg=[0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3], nu=[1.0], reg_counts=["all"])
        grid += [{**g, "confidence": LOG_CONF} for g in grid]
    elif dataset == "gowalla":
        grid += _grid(dim=[64], alpha0=[0.003, 0.01, 0.03], reg=[0.0003, 0.001, 0.003, 0.01], nu=[1.0],
                      reg_counts=["all"], confidence=[LOG_CONF])
    return grid


SCALED_C = (250.0, 350.0, 450.0, 600.0, 800.0)
SCALED_REG = (0.003, 0.005, 0.007, 0.01, 0.03)


def scaled(c: float, scale_by: str, n_users: int, n_items: int, reg: float, nu: float = 1.0,
           reg_counts: str = "all") -> dict[str, Any]:
    """One d=64 setting with alpha0 = c / n (`ModelConfig.resolved`'s rule); alpha0 is stored resolved."""
    n = {"items": n_items, "users": n_users, "geometric": math.sqrt(n_users * n_items)}[scale_by]
    return {"dim": 64, "alpha0": round(c / n, 8), "reg": reg, "nu": nu, "reg_counts": reg_counts,
            "alpha0_total": float(c), "alpha0_scale_by": scale_by}


def scaled_grid(n_users: int, n_items: int) -> list[dict[str, Any]]:
    """alpha0 = c / n_items (total unobserved weight per user fixed, whatever the catalogue size).

    The absolute grids put every dataset's optimum near alpha0 * n_items ~ 400-500, so this tries the rule.
    """
    return [scaled(c, "items", n_users, n_items, r) for c in SCALED_C for r in SCALED_REG]


def peer_grid(method: str, dataset: str, trials: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Small documented grids; weighted datasets also try the feedback transform (implicit ALS tries all
    three, MLlib, ~1 min a fit even on small data, reuses implicit ALS's best transform)."""
    weights = ["raw", "log1p", "binary"] if dataset in WEIGHTED else ["raw"]
    if method == "implicit_als":
        return _grid(factors=[64], iterations=[15], alpha=[1.0, 3.0, 10.0, 30.0, 100.0],
                     regularization=[0.1, 1.0, 10.0, 100.0, 1000.0], weights=weights)
    if method == "ease":  # one closed-form fit a setting: reg on a log grid, and the feedback transform
        return _grid(reg=[10.0, 30.0, 100.0, 300.0, 500.0, 1000.0, 2000.0, 3000.0, 10000.0],
                     weights=["binary", "log1p"] if dataset in WEIGHTED else ["binary"])
    if method == "rp3beta":  # Paudel et al.'s alpha, beta and the neighbourhood size
        return _grid(alpha=[0.5, 0.75, 1.0], beta=[0.0, 0.2, 0.4, 0.6, 0.8], topk=[100, 500], weights=["binary"])
    if method == "implicit_bpr":
        return _grid(factors=[64], iterations=[100], learning_rate=[0.01, 0.05, 0.1],
                     regularization=[0.001, 0.01])
    if method == "mllib":
        if dataset == "gowalla":  # 40-250 s a fit here: a cross, then a step towards its best, not a grid
            base = [{"alpha": 10.0, "regParam": r} for r in (0.1, 1.0, 10.0)]
            base += [{"alpha": a, "regParam": 1.0} for a in (3.0, 30.0, 100.0)]
            base += [{"alpha": 30.0, "regParam": r} for r in (0.3, 3.0)]  # around the best of the cross
            return [{"rank": 64, "maxIter": 15, **b, "weights": "raw"} for b in base]
        b = best(trials, dataset, "implicit_als") if trials else None
        w = b["params"].get("weights", "raw") if b is not None else "raw"
        # (alpha, regParam): both defaults-like settings (1, 0.1) and (10, 1), the earlier optima (3, 1) and
        # (10, 1), and a step either way in each; six fits, not the 12-grid (1-2 min a fit on a shared machine)
        cross = [(1.0, 0.1), (10.0, 1.0), (3.0, 1.0), (30.0, 1.0), (10.0, 0.1), (10.0, 10.0)]
        return [{"rank": 64, "maxIter": 15, "alpha": a, "regParam": r, "weights": w} for a, r in cross]
    raise ValueError(f"no grid for method {method!r}")


def load_results() -> list[dict[str, Any]]:
    if TUNING_JSON.is_file():
        return json.loads(TUNING_JSON.read_text())["trials"]
    return []


def save_results(trials: list[dict[str, Any]]) -> None:
    """Merge `trials` into tuning.json under a lock (several tuning runs may share the file)."""
    import fcntl

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / ".tuning.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = {_key(t): t for t in load_results()}
        merged.update({_key(t): t for t in trials})
        tmp = TUNING_JSON.with_suffix(".tmp")
        tmp.write_text(json.dumps({"metric": METRIC, "validation": "per entry (missing: " + LEGACY_VALIDATION + ")",
                                   "trials": list(merged.values())}, indent=1))
        tmp.replace(TUNING_JSON)


def _key(t: dict[str, Any]) -> str:
    return json.dumps([t["dataset"], validation_of(t), t["method"], t["params"]], sort_keys=True)


def validation_of(t: dict[str, Any]) -> str:
    """The validation split an entry was scored on."""
    return t.get("validation", LEGACY_VALIDATION)


def current_validation(dataset: str) -> str:
    """The validation the benchmark tunes `dataset` on today (datasets.validation_split's description)."""
    if dataset in D.PIPELINE or dataset in D.CARVED:
        from benchmarks.pipeline_split import load_export

        return str(load_export(dataset)["validation"])
    return LEGACY_VALIDATION


def best(trials: list[dict[str, Any]], dataset: str, method: str) -> dict[str, Any] | None:
    """The trial with the highest validation METRIC for dataset/method, on the dataset's current validation."""
    current = current_validation(dataset)
    cands = [t for t in trials if t["dataset"] == dataset and t["method"] == method and validation_of(t) == current
             and np.isfinite(t["metrics"].get(METRIC, np.nan))]
    return max(cands, key=lambda t: t["metrics"][METRIC]) if cands else None


def run_trial(val: D.Split, method: str, params: dict[str, Any], spark: Any) -> dict[str, Any]:
    if method == "gramian":
        r = P.fit_gramian_numpy(val, params, track_loss=False)
    elif method == "implicit_als":
        r = P.fit_implicit_als(val, params)
    elif method == "implicit_bpr":
        r = P.fit_implicit_bpr(val, params)
    elif method == "mllib":
        r = P.fit_mllib(val, params, spark)
    elif method in ("ease", "rp3beta"):
        from benchmarks import item_item

        r = getattr(item_item, f"fit_{method}")(val, params)
    else:
        raise ValueError(method)
    m = evaluate(val, r.user_factors, r.item_factors, ks=(20,), scorer=r.scorer)
    return {"metrics": m, "fit_seconds": r.fit_seconds}


def nearest_first(grid: list[dict[str, Any]], near: dict[str, Any]) -> list[dict[str, Any]]:
    """The same grid, settings nearest `near` first (sum over its numeric keys of |difference| / the axis's
    span): a run that may not finish the grid in its time tries the region of an earlier optimum first."""
    def span(k: str) -> float:
        vals = [float(g[k]) for g in grid if isinstance(g.get(k), (int, float))]
        return (max(vals) - min(vals)) or 1.0 if vals else 1.0

    keys = [k for k, v in near.items() if isinstance(v, (int, float))]
    spans = {k: span(k) for k in keys}
    return sorted(grid, key=lambda g: sum(abs(float(g.get(k, near[k])) - float(near[k])) / spans[k] for k in keys))


def tune(datasets: list[str], methods: list[str], dims: list[int],
         near: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    trials = load_results()
    done = {_key(t) for t in trials}
    spark = P.spark_session() if "mllib" in methods else None
    for name in datasets:
        val = D.validation_split(D.load(name))
        for method in methods:
            if method == "gramian":
                grid = gramian_grid(name) + scaled_grid(val.n_users, val.n_items)
                if name in WEIGHTED:
                    grid += [{**g, "confidence": LOG_CONF} for g in scaled_grid(val.n_users, val.n_items)]
            else:
                grid = peer_grid(method, name, trials)
            if near and method in near:
                grid = nearest_first(grid, near[method])
            todo = [(method, p) for p in grid]
            for m, params in todo:
                _run_one(trials, done, name, val, m, params, spark)
            if method == "rp3beta":
                climb(trials, done, name, val, spark)
            if method == "gramian" and dims:
                b = best(trials, name, "gramian")
                assert b is not None
                for d in dims:  # larger d: the d=64 optimum, and with 3x the regularisation
                    for f in (1, 3):
                        p = {**b["params"], "dim": d, "reg": round(b["params"]["reg"] * f, 10)}
                        _run_one(trials, done, name, val, "gramian", p, spark)
    return trials


def rp3beta_steps(p: dict[str, Any]) -> list[dict[str, Any]]:
    """RP3beta settings one step from `p` along one axis: alpha +-0.125, beta +-0.1, topk halved or doubled."""
    out = []
    for key, values in (("alpha", (p["alpha"] - 0.125, p["alpha"] + 0.125)),
                        ("beta", (p["beta"] - 0.1, p["beta"] + 0.1)),
                        ("topk", (p["topk"] // 2, p["topk"] * 2))):
        kept = [v for v in values if (v >= 0 if key == "beta" else v > 0)]
        out += [{**p, key: int(v) if key == "topk" else round(v, 4)} for v in kept]
    return out


def climb(trials: list[dict[str, Any]], done: set[str], name: str, val: D.Split, spark: Any,
          rounds: int = 4) -> None:
    """Coordinate steps from RP3beta's best grid point while a step improves it: the grid's coarse beta and
    topk axes can miss the peer's optimum by more than the margins the benchmark reports."""
    for _ in range(rounds):
        start = best(trials, name, "rp3beta")
        assert start is not None
        for params in rp3beta_steps(start["params"]):
            _run_one(trials, done, name, val, "rp3beta", params, spark)
        if best(trials, name, "rp3beta") is start:
            return


def _run_one(trials: list[dict[str, Any]], done: set[str], name: str, val: D.Split, method: str,
             params: dict[str, Any], spark: Any) -> None:
    entry = {"dataset": name, "validation": val.notes["split"], "method": method, "params": params}
    if _key(entry) in done:
        return
    t0 = time.perf_counter()
    try:
        entry.update(run_trial(val, method, params, spark))
    except Exception as e:  # a diverging setting is a result, not a crash
        entry.update({"metrics": {METRIC: float("nan")}, "error": f"{type(e).__name__}: {e}"})
    trials.append(entry)
    done.add(_key(entry))
    save_results(trials)
    log.info("%s %s %s -> %s=%.4f (%.0fs)", name, method, params, METRIC,
             entry["metrics"].get(METRIC, float("nan")), time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="gowalla,ml-100k,lastfm-2k")
    ap.add_argument("--methods", default="gramian,implicit_als,implicit_bpr,mllib,ease,rp3beta")
    ap.add_argument("--dims", default="128,256", help="larger d for gramian after the d=64 grid ('' = none)")
    ap.add_argument("--near", default="", help='JSON {method: setting}: try that method\'s grid nearest the '
                    'setting first (same grid, other order; for a run that may not finish it)')
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    dims = [int(d) for d in args.dims.split(",") if d]
    trials = tune(args.datasets.split(","), args.methods.split(","), dims, json.loads(args.near) if args.near else None)
    from benchmarks.report import write_tuning_md

    write_tuning_md(trials)


if __name__ == "__main__":
    main()
