"""Training benchmark: gramian vs Spark MLlib ALS vs implicit, same splits, rank, iterations, evaluation.

    python -m benchmarks.train_bench                                  # every dataset, every method
    python -m benchmarks.train_bench --datasets gowalla,ml-100k --quick
    python -m benchmarks.train_bench --skip-synthetic
    python -m benchmarks.train_bench --datasets gowalla --methods gramian --labels "gramian (conf)"  # one row

Each (dataset, method) fit runs in a fresh subprocess (its own Spark session where it needs one), so
the peak RSS of its process tree (driver + JVM + Python workers, sampled every 0.2 s) belongs to that
method alone and no method inherits another's warmed-up JVM. Fit time is wall time around `.fit`
(gramian: including block building). Every model is evaluated by the same exact top-k code with train
items excluded. Correctness is checked before time is reported: finite factors, gramian's loss
non-increasing, recall above the popularity baseline. Results: benchmarks/results/train.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import datasets as D

RESULTS = Path(__file__).parent / "results"
TRAIN_JSON = RESULTS / "train.json"
REPO = Path(__file__).resolve().parent.parent
PER_USER = REPO / "benchmarks" / "work" / "per_user"  # per-user Recall@20 of the last run (not committed)

log = logging.getLogger("benchmarks.train_bench")

# Used when benchmarks/results/tuning.json has no validation optimum for a dataset/method.
FALLBACK = {
    "implicit_als": {"factors": 64, "iterations": 15, "alpha": 10.0, "regularization": 10.0, "weights": "raw"},
    "implicit_bpr": {"factors": 64, "iterations": 100, "learning_rate": 0.05, "regularization": 0.01},
    "mllib": {"rank": 64, "maxIter": 15, "alpha": 10.0, "regParam": 1.0, "weights": "raw"},
    "ease": {"reg": 300.0, "weights": "binary"},
    "rp3beta": {"alpha": 0.75, "beta": 0.3, "topk": 200, "weights": "binary"},
}
LIGHTGCN_GOWALLA = 0.1830  # LightGCN's published Gowalla Recall@20 (He et al. 2020), the issue 17 target
SYNTHETIC = {"dim": 128, "gramian_epochs": 3, "implicit_iterations": 3, "mllib_iterations": 2,
             # gramian's routed trainer ran out of driver heap at 4g (epoch 1) and 8g (epoch 3) here;
             # MLlib gets the same session settings.
             "driver_memory": "12g"}


def gramian_defaults() -> dict[str, Any]:
    """The package defaults (conf/defaults.yaml, model section) as IALS keyword arguments."""
    from gramian.config import load_config

    m = load_config().model
    out = dataclasses.asdict(m)
    for key in ("name", "support_power"):  # RankALS-only keys
        out.pop(key)
    return out


def gramian_dataset_conf(dataset: str) -> dict[str, Any] | None:
    """The tuned model section of conf/<dataset>.yaml (None when it has none), as IALS keyword arguments."""
    from gramian.config import CONF_DIR, load_config

    path = CONF_DIR / f"{dataset}.yaml"
    if not path.exists() or "model:" not in path.read_text():
        return None
    out = dataclasses.asdict(load_config(path).model)
    for key in ("name", "support_power"):
        out.pop(key)
    return out


def tuned(dataset: str, method: str) -> tuple[dict[str, Any] | None, float | None]:
    """Best setting from tuning.json on the dataset's current validation (gramian: at d=64 only, to match the
    peers' rank)."""
    from benchmarks.tune import METRIC, current_validation, load_results, validation_of

    current = current_validation(dataset)
    trials = [t for t in load_results() if t["dataset"] == dataset and t["method"] == method
              and validation_of(t) == current and np.isfinite(t["metrics"].get(METRIC, np.nan))]
    if method == "gramian":
        trials = [t for t in trials if t["params"].get("dim", 64) == 64 and t["params"].get("solver", "cg") == "cg"]
    if not trials:
        return None, None
    b = max(trials, key=lambda t: t["metrics"][METRIC])
    return dict(b["params"]), float(b["metrics"][METRIC])


TUNE_STAGE = "gramian (tune stage)"


def tune_stage_profile(dataset: str, path: Path | None = None) -> tuple[dict[str, Any], str] | None:
    """The model section of conf/<dataset>.tuned.yaml (or of the candidate profile `path`, written by
    `gramian tune --write-profile`) as IALS keyword arguments, and its header line naming the study's best
    validation value; None without one."""
    from gramian.config import CONF_DIR, load_config

    path = path or CONF_DIR / f"{dataset}.tuned.yaml"
    if not path.exists():
        return None
    out = dataclasses.asdict(load_config(path).model)
    for key in ("name", "support_power"):
        out.pop(key)
    best = next((ln[2:].strip() for ln in path.read_text().splitlines() if ln.startswith("# best of")), "")
    return out, f"conf/{path.name} from `gramian tune`: {best}"


def candidate_runs(dataset: str, profiles: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows for candidate profiles conf/<dataset>.tuned-<tag>.yaml (benchmarks.tune_stage --tag), labelled
    'gramian (tune stage: <tag>)' so they sit beside the shipped profile's row instead of replacing it."""
    runs = []
    for name in profiles:
        path = Path(name)
        prefix = f"{dataset}.tuned-"
        if not (path.name.startswith(prefix) and path.name.endswith(".yaml")):
            continue
        found = tune_stage_profile(dataset, path)
        if found is None:
            raise SystemExit(f"--profile must name an existing file, got {name!r}")
        params, source = found
        tag = path.name[len(prefix):-len(".yaml")]
        runs.append({"label": f"gramian (tune stage: {tag})", "method": "gramian", "params": params,
                     "source": source})
    return runs


def ease_fits(dataset: str) -> bool:
    """Whether EASE runs on this dataset (catalogue of at most EASE_MAX_ITEMS items)."""
    from benchmarks.item_item import EASE_MAX_ITEMS

    return D.load(dataset).n_items <= EASE_MAX_ITEMS


def rankals_params(dataset: str) -> tuple[dict[str, Any], str]:
    """RankALS at d=64 for 15 epochs with the reg and support power chosen on validation by rankals_bench."""
    p: dict[str, Any] = {"dim": 64, "epochs": 15, "reg": 0.1, "nu": 1.0, "support_power": 0.0, "solver": "cg",
                         "cg_steps": 3}
    path = RESULTS / "rankals.json"
    if path.is_file():
        for ds in json.loads(path.read_text()).get("datasets", []):
            if ds["dataset"] == dataset:
                best = max(ds["trials"], key=lambda t: t["val_recall@20"])
                p.update(reg=best["reg"], support_power=best["support_power"])
                score = best["val_recall@20"]
                return p, f"reg, support_power: validation optimum in rankals.json (recall@20={score:.4f})"
    return p, "untuned (no rankals.json entry)"


def plan(dataset: str, methods: list[str], with_tuned: bool = True,
         profiles: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The runs of one dataset: label, method, params and where the params came from (`profiles`: candidate
    tuned profiles of any dataset; this dataset's get a row each)."""
    runs: list[dict[str, Any]] = []
    synthetic = dataset == "synthetic10m"
    defaults = gramian_defaults()
    conf_params = gramian_dataset_conf(dataset)
    for method in methods:
        if method == "gramian":
            p = dict(defaults)
            if synthetic:
                p.update(dim=SYNTHETIC["dim"], epochs=SYNTHETIC["gramian_epochs"])
            runs.append({"label": "gramian (defaults)", "method": "gramian", "params": p,
                         "source": "conf/defaults.yaml"})
            if conf_params is not None and with_tuned and not synthetic:
                runs.append({"label": "gramian (conf)", "method": "gramian", "params": conf_params,
                             "source": f"conf/{dataset}.yaml (tuned on validation; larger d)"})
            stage = tune_stage_profile(dataset) if with_tuned and not synthetic else None
            if stage is not None:
                runs.append({"label": TUNE_STAGE, "method": "gramian", "params": stage[0], "source": stage[1]})
            if not synthetic:
                runs += candidate_runs(dataset, profiles)
            t, score = tuned(dataset, "gramian")
            if with_tuned and t is not None and not synthetic:
                runs.append({"label": "gramian (tuned)", "method": "gramian", "params": {**defaults, **t},
                             "source": f"this dataset's validation optimum (recall@20={score:.4f})"})
        elif method == "rankals":
            if synthetic:
                continue
            q, src = rankals_params(dataset)
            runs.append({"label": "gramian RankALS", "method": "rankals", "params": q, "source": src})
        elif method == "gramian_np":
            if synthetic:
                continue
            q = defaults
            runs.append({"label": "gramian numpy 1-proc", "method": "gramian_np", "params": q,
                         "source": "as gramian (defaults); one process, one thread, no Spark"})
        elif method == "popularity":
            if not synthetic:
                runs.append({"label": "popularity", "method": "popularity", "params": {}, "source": "-"})
        elif method == "implicit_bpr" and synthetic:
            continue
        elif method in ("ease", "rp3beta") and (synthetic or (method == "ease" and not ease_fits(dataset))):
            continue  # item-item peers: quality only; EASE where its dense item x item matrix fits
        else:
            t, score = tuned(dataset, method)
            where = "gramian tune's carve" if dataset in D.PIPELINE + D.CARVED else "10% holdout"
            src = f"validation optimum (recall@20={score:.4f}, {where})" if t else "FALLBACK (untuned)"
            if synthetic:  # no validation set: settings of gowalla, time and memory only
                t, _ = tuned("gowalla", method)
                src = "gowalla's setting; time and memory only"
            p = dict(t or FALLBACK[method])
            if synthetic and method == "implicit_als":
                p.update(factors=SYNTHETIC["dim"], iterations=SYNTHETIC["implicit_iterations"])
            if synthetic and method == "mllib":
                p.update(rank=SYNTHETIC["dim"], maxIter=SYNTHETIC["mllib_iterations"])
            label = {"mllib": "Spark MLlib ALS", "implicit_als": "implicit ALS (CG)",
                     "implicit_bpr": "implicit BPR", "ease": "EASE", "rp3beta": "RP3beta"}[method]
            runs.append({"label": label, "method": method, "params": p, "source": src})
    return runs


# ------------------------------------------------------------------------------------------- worker


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Fit one method on one dataset in this process; evaluate; return a JSON-able record."""
    from benchmarks import peers as P
    from benchmarks.evaluation import evaluate_by_user

    t0 = time.perf_counter()
    split = D.load(spec["dataset"])
    load_s = time.perf_counter() - t0
    method, params = spec["method"], spec["params"]
    spark = None
    session_s = 0.0
    if method in ("gramian", "rankals", "mllib"):
        t1 = time.perf_counter()
        mem = SYNTHETIC["driver_memory"] if spec["dataset"] == "synthetic10m" else None
        spark = P.spark_session(mem)
        session_s = time.perf_counter() - t1
    if method == "gramian":
        r = P.fit_gramian(split, params, spark)
    elif method == "rankals":
        r = P.fit_gramian(split, params, spark, estimator="RankALS")
    elif method == "gramian_np":
        r = P.fit_gramian_numpy(split, params)
    elif method == "mllib":
        r = P.fit_mllib(split, params, spark)
    elif method == "implicit_als":
        r = P.fit_implicit_als(split, params)
    elif method == "implicit_bpr":
        r = P.fit_implicit_bpr(split, params)
    elif method == "popularity":
        r = P.fit_popularity(split)
    elif method in ("ease", "rp3beta"):
        from benchmarks import item_item

        r = getattr(item_item, f"fit_{method}")(split, params)
    else:
        raise ValueError(f"method must be one of {P.METHODS}, got {method!r}")
    finite = r.finite
    metrics: dict[str, float] = {}
    if split.n_test and finite:
        metrics, per_user = evaluate_by_user(split, r.user_factors, r.item_factors, scorer=r.scorer)
        PER_USER.mkdir(parents=True, exist_ok=True)
        np.save(pending_path(spec["dataset"], spec["label"]), per_user["recall@20"])  # settled by the parent
    if spark is not None:
        spark.stop()
    return {**{k: spec[k] for k in ("dataset", "label", "method", "source")}, "params": r.params,
            "split": split.summary(), "fit_seconds": r.fit_seconds, "iterations": r.iterations,
            "seconds_per_epoch": r.seconds_per_epoch, "epoch_seconds": r.epoch_seconds,
            "per_epoch_measured": bool(r.epoch_seconds), "start_rss_mib": r.start_rss / 2**20,
            "peak_rss_mib": r.peak_rss / 2**20, "extra": r.extra,
            "peak_rss_by_command_mib": {k: v / 2**20 for k, v in r.peak_by_command.items()}, "factors_finite": finite,
            "metrics": metrics, "load_seconds": load_s, "session_seconds": session_s}


def run_isolated(spec: dict[str, Any], timeout: float, logdir: Path) -> dict[str, Any]:
    """`worker(spec)` in a fresh interpreter; a crash or timeout becomes an error record."""
    out = logdir / f"{spec['dataset']}-{spec['label']}.json".replace(" ", "_").replace("/", "_")
    logf = out.with_suffix(".log")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.train_bench", "--worker", json.dumps(spec), "--worker-out",
           str(out)]
    t0 = time.perf_counter()
    try:
        with open(logf, "w") as lf:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=lf, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = -1
    ok = rc == 0 and out.is_file()
    settle_per_user(spec["dataset"], spec["label"], ok)
    if ok:
        return json.loads(out.read_text())
    tail = logf.read_text()[-3000:] if logf.is_file() else ""
    log.error("%s / %s failed (rc %s after %.0fs):\n%s", spec["dataset"], spec["label"], rc,
              time.perf_counter() - t0, tail)
    return {**{k: spec[k] for k in ("dataset", "label", "method", "source", "params")},
            "error": f"rc={rc}" + (" (timeout)" if rc == -1 else ""), "log_tail": tail[-1500:]}


# ------------------------------------------------------------------------------------------- checks


def check(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Correctness before time: finite factors, gramian loss non-increasing, recall > popularity."""
    out = []
    pop = {r["dataset"]: r["metrics"].get("recall@20") for r in records
           if r.get("method") == "popularity" and r.get("metrics")}
    for r in records:
        name = f"{r['dataset']} / {r['label']}"
        if "error" in r:
            out.append({"run": name, "check": "completed", "ok": False, "detail": r["error"]})
            continue
        out.append({"run": name, "check": "factors finite", "ok": r["factors_finite"], "detail": ""})
        loss = r["extra"].get("loss") or []
        if loss:
            worst = max((b - a) / abs(a) for a, b in zip(loss[:-1], loss[1:], strict=True)) if len(loss) > 1 else 0
            out.append({"run": name, "check": "loss non-increasing (rel. tol 1e-5)", "ok": worst <= 1e-5,
                        "detail": f"largest relative increase {worst:.2e}"})
        rec = r["metrics"].get("recall@20")
        if rec is not None and r["method"] != "popularity":
            ok = bool(np.isfinite(rec) and pop.get(r["dataset"]) is not None and rec > pop[r["dataset"]])
            out.append({"run": name, "check": "recall@20 finite and > popularity", "ok": ok,
                        "detail": f"{rec:.4f} vs {pop.get(r['dataset'])}"})
    return out


def ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """gramian fit time / MLlib fit time and gramian s/epoch / implicit s/epoch, per dataset."""
    out = []
    by = {(r["dataset"], r["method"], r["label"]): r for r in records if "error" not in r}
    for ds in sorted({r["dataset"] for r in records}):
        for label in ("gramian (defaults)", "gramian (tuned)", "gramian (conf)"):
            g = by.get((ds, "gramian", label))
            if g is None:
                continue
            m = next((r for (d2, meth, _), r in by.items() if d2 == ds and meth == "mllib"), None)
            i = next((r for (d2, meth, _), r in by.items() if d2 == ds and meth == "implicit_als"), None)
            row = {"dataset": ds, "gramian": label}
            if m is not None:
                row["fit_vs_mllib"] = g["fit_seconds"] / m["fit_seconds"]
                row["epoch_vs_mllib"] = g["seconds_per_epoch"] / m["seconds_per_epoch"]
            if i is not None:
                row["epoch_vs_implicit"] = g["seconds_per_epoch"] / i["seconds_per_epoch"]
                row["fit_vs_implicit"] = g["fit_seconds"] / i["fit_seconds"]
            rk = by.get((ds, "rankals", "gramian RankALS"))
            if rk is not None and label == "gramian (defaults)":
                row["rankals_epoch_vs_ials"] = rk["seconds_per_epoch"] / g["seconds_per_epoch"]
            out.append(row)
    return out


PEER_METHODS = ("mllib", "implicit_als", "implicit_bpr", "ease", "rp3beta")


def per_user_path(dataset: str, label: str) -> Path:
    return PER_USER / f"{dataset}__{label}.npy".replace(" ", "_").replace("/", "_")


def pending_path(dataset: str, label: str) -> Path:
    """Where a fit's worker writes its per-user file; it becomes per_user_path only when the fit completed."""
    final = per_user_path(dataset, label)
    return final.with_name(final.stem + ".pending.npy")


def settle_per_user(dataset: str, label: str, ok: bool) -> None:
    """A completed fit's per-user file replaces the earlier run's; a failed fit's is dropped, so the earlier
    record that `merge` keeps keeps its own file."""
    pending = pending_path(dataset, label)
    if ok and pending.is_file():
        pending.replace(per_user_path(dataset, label))
    else:
        pending.unlink(missing_ok=True)


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float] | None:
    """Paired per-user Recall@20 difference of two runs of the same benchmark run (None: not on disk)."""
    from benchmarks.evaluation import paired_difference

    pa, pb = per_user_path(a["dataset"], a["label"]), per_user_path(b["dataset"], b["label"])
    if a.get("split") != b.get("split") or not (pa.is_file() and pb.is_file()):
        return None  # a run's file is replaced when it is re-run; the same split means the same test users
    return paired_difference(np.load(pa), np.load(pb))


def targets(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue #3's targets, each with what this benchmark measured (a target is missing when its runs are)."""
    by = {(r["dataset"], r["label"]): r for r in records if "error" not in r}
    out: list[dict[str, Any]] = []

    def add(name: str, measured: float, limit: float, ok: bool, detail: str) -> None:
        out.append({"target": name, "measured": measured, "limit": limit, "ok": bool(ok), "detail": detail})

    g, m = by.get(("gowalla", "gramian (defaults)")), by.get(("gowalla", "Spark MLlib ALS"))
    if g and m:
        q = g["fit_seconds"] / m["fit_seconds"]
        add("gowalla d=64 fit time / MLlib's", q, 0.33, q <= 0.33,
            f"{g['fit_seconds']:.1f} s vs {m['fit_seconds']:.1f} s")
    if g:
        rec = g["metrics"]["recall@20"]
        add("gowalla d=64 defaults Recall@20", rec, 0.144, rec >= 0.144, "")
    c = by.get(("gowalla", "gramian (conf)"))
    if c:
        rec = c["metrics"]["recall@20"]
        add("gowalla conf/gowalla.yaml Recall@20", rec, 0.17, rec >= 0.17, f"d={c['params'].get('dim')}")
        add("gowalla conf/gowalla.yaml Recall@20 vs LightGCN's published 0.1830 (issue 17)", rec, LIGHTGCN_GOWALLA,
            rec >= LIGHTGCN_GOWALLA, f"d={c['params'].get('dim')}; sweep: gowalla_d.md")
    for ds in ("gowalla", "ml-100k", "lastfm-2k"):
        peers = [r for r in records if r["dataset"] == ds and r["method"] in PEER_METHODS and "error" not in r]
        for label, name in (("gramian (defaults)", "defaults"), (TUNE_STAGE, "`gramian tune` profile")):
            d = by.get((ds, label))
            if not (d and peers):
                continue
            best = max(peers, key=lambda r: r["metrics"]["recall@20"])
            rec, top = d["metrics"]["recall@20"], best["metrics"]["recall@20"]
            pd_ = paired(d, best)
            ci = (f"; per-user difference {pd_['mean']:+.4f}, 95% CI {pd_['low']:+.4f}..{pd_['high']:+.4f} over "
                  f"{pd_['users']} users" if pd_ else "")
            add(f"{ds} {name} Recall@20 / best tuned peer's", rec / top, 1.0, rec >= top,
                f"{rec:.4f} vs {best['label']} {top:.4f}{ci}")
    s = by.get(("synthetic10m", "gramian (defaults)"))
    sm, si = by.get(("synthetic10m", "Spark MLlib ALS")), by.get(("synthetic10m", "implicit ALS (CG)"))
    if s and sm:
        q = s["seconds_per_epoch"] / sm["seconds_per_epoch"]
        add("synthetic10m d=128 s/epoch / MLlib's", q, 0.1, q <= 0.1,
            f"{s['seconds_per_epoch']:.2f} s vs {sm['seconds_per_epoch']:.2f} s")
    if s and si:
        q = s["seconds_per_epoch"] / si["seconds_per_epoch"]
        add("synthetic10m d=128 s/epoch / implicit's", q, 2.0, q <= 2.0,
            f"{s['seconds_per_epoch']:.2f} s vs {si['seconds_per_epoch']:.2f} s")
    if s:
        gib = s["peak_rss_mib"] / 1024
        add("synthetic10m peak RSS of all processes, GiB", gib, 12.0, gib <= 12.0, "")
    return out


def kept_intervals(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Targets whose paired interval could not be recomputed (per-user files of an earlier run, not committed,
    are gone) keep the earlier detail when they measure the same value."""
    was = {t["target"]: t for t in old}
    out = []
    for t in new:
        o = was.get(t["target"])
        if "CI" not in t["detail"] and o is not None and "CI" in o["detail"] and o["measured"] == t["measured"]:
            t = {**t, "detail": o["detail"]}
        out.append(t)
    return out


def comparisons(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each tuned gramian run (Spark trainer, or the numpy twin at settings other than the defaults, e.g. d=2048)
    against every tuned peer of its dataset: paired per-user Recall@20 difference."""
    out = []
    for g in records:
        if (g.get("method") not in ("gramian", "gramian_np") or "error" in g
                or g["label"] in ("gramian (defaults)", "gramian numpy 1-proc")):
            continue
        for p in records:
            if p["dataset"] != g["dataset"] or p.get("method") not in PEER_METHODS or "error" in p:
                continue
            pd_ = paired(g, p)
            out.append({"dataset": g["dataset"], "gramian": g["label"], "peer": p["label"],
                        "gramian_recall": g["metrics"]["recall@20"], "peer_recall": p["metrics"]["recall@20"],
                        "paired": pd_})
    return out


def kept_comparisons(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Comparisons whose paired interval could not be recomputed (a per-user file of an earlier run, not committed,
    is gone) keep the earlier interval when both runs measure the same Recall@20 as then (the same two runs)."""
    was = {(c["dataset"], c["gramian"], c["peer"]): c for c in old}
    out = []
    for c in new:
        o = was.get((c["dataset"], c["gramian"], c["peer"]))
        if (c["paired"] is None and o is not None and o.get("paired") is not None
                and o["gramian_recall"] == c["gramian_recall"] and o["peer_recall"] == c["peer_recall"]):
            c = {**c, "paired": o["paired"]}
        out.append(c)
    return out


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace old records of the same (dataset, label), and every old record of a dataset whose split the new
    records were measured on differs (its rows would not be comparable); keep the rest. A failed re-run does not
    replace a completed earlier run of the same split: that record stays, with the failure as `rerun_error`."""
    splits = {r["dataset"]: r["split"] for r in new if "split" in r}
    stale = {r["dataset"] for r in old
             if r["dataset"] in splits and "split" in r and r["split"] != splits[r["dataset"]]}
    done = {(r["dataset"], r["label"]): r for r in old if "error" not in r and r["dataset"] not in stale}
    kept = []
    for r in new:
        earlier = done.get((r["dataset"], r["label"]))
        if "error" in r and earlier is not None:
            kept.append({**earlier, "rerun_error": {"error": r["error"], "run_date": r.get("run_date")}})
        else:
            kept.append(r)
    keys = {(r["dataset"], r["label"]) for r in new}
    return [r for r in old if (r["dataset"], r["label"]) not in keys and r["dataset"] not in stale] + kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(D.DATASETS))
    ap.add_argument("--methods",
                    default="popularity,gramian,rankals,gramian_np,mllib,implicit_als,implicit_bpr,ease,rp3beta")
    ap.add_argument("--quick", action="store_true",
                    help="skip synthetic10m, implicit BPR and the single-process gramian reference")
    ap.add_argument("--skip-synthetic", action="store_true", help="leave out the 10M synthetic set")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds per fit subprocess")
    ap.add_argument("--fresh", action="store_true", help="do not merge into an existing train.json")
    ap.add_argument("--no-gramian-tuned", dest="gramian_tuned", action="store_false",
                    help="skip gramian at each dataset's own validation optimum (run by default)")
    ap.add_argument("--labels", default="",
                    help="only the runs with these labels, comma-separated (e.g. 'gramian (conf)'); others kept")
    ap.add_argument("--profile", dest="profiles", action="append", default=[],
                    help="a candidate profile conf/<dataset>.tuned-<tag>.yaml to train as 'gramian (tune stage: "
                         "<tag>)' (repeatable)")
    ap.add_argument("--np-params", default="", help="with gramian_np: one more numpy row at these settings "
                    "(JSON over the defaults), labelled 'gramian numpy 1-proc (<--np-label>)'")
    ap.add_argument("--np-label", default="np-params")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    if args.worker:
        rec = worker(json.loads(args.worker))
        Path(args.worker_out).write_text(json.dumps(rec, default=float))
        return 0

    from benchmarks.report import machine_info, write_train_md

    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    if args.quick:
        datasets = [d for d in datasets if d != "synthetic10m"]
        methods = [m for m in methods if m not in ("implicit_bpr", "gramian_np")]
    if args.skip_synthetic:
        datasets = [d for d in datasets if d != "synthetic10m"]
    if "synthetic10m" in datasets:  # generate (and cache) once, not in every worker
        D.load_synthetic10m()
    env_before = machine_info()
    records: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gramian-bench-") as tmp:
        for ds in datasets:
            specs = plan(ds, methods, args.gramian_tuned, tuple(args.profiles))
            if args.np_params and "gramian_np" in methods:  # the numpy twin at other settings (e.g. large d)
                extra = json.loads(args.np_params)
                specs.append({"label": f"gramian numpy 1-proc ({args.np_label})", "method": "gramian_np",
                              "params": {**gramian_defaults(), **extra},
                              "source": "one process, no Spark, the Spark trainer's math; settings chosen on "
                                        "validation (gowalla_d.md)"})
            if args.labels:
                specs = [sp for sp in specs if sp["label"] in args.labels.split(",")]
            for spec in specs:
                spec = {**spec, "dataset": ds}
                t0 = time.perf_counter()
                rec = run_isolated(spec, args.timeout, Path(tmp))
                rec["wall_seconds_total"] = time.perf_counter() - t0
                rec["run_date"] = env_before["date"]
                rec["load_before"] = env_before["load_before"]
                records.append(rec)
                if "error" not in rec:
                    log.info("%-12s %-30s fit %7.1fs  %6.2fs/epoch  peak %6.0f MiB  recall@20 %s", ds,
                             rec["label"], rec["fit_seconds"], rec["seconds_per_epoch"], rec["peak_rss_mib"],
                             f"{rec['metrics'].get('recall@20', float('nan')):.4f}")
    old, before = [], {}
    if TRAIN_JSON.is_file() and not args.fresh:
        before = json.loads(TRAIN_JSON.read_text())
        old = before.get("runs", [])
    runs = merge(old, records)
    checks = check(runs)
    doc = {"machine": {**env_before, "load_after": os.getloadavg()}, "runs": runs, "checks": checks,
           "ratios": ratios(runs), "targets": kept_intervals(targets(runs), before.get("targets", [])),
           "comparisons": kept_comparisons(comparisons(runs), before.get("comparisons", [])),
           "bench_seconds": time.perf_counter() - t_all,
           "notes": ["fit seconds: wall time around .fit in a fresh process (gramian: includes block "
                     "building); MLlib and BPR seconds/epoch = fit seconds / iterations",
                     "peak RSS: max over 0.2 s samples of summed VmRSS of the fit's process tree "
                     "(driver + JVM + Python workers), double-counting shared pages",
                     "synthetic10m: time and memory only, fewer iterations (see params)"]
           + [f"{r['dataset']} / {r['label']}: a re-run on {r['rerun_error']['run_date']} failed "
              f"({r['rerun_error']['error']}); the earlier run's figures and per-user file are kept"
              for r in runs if "rerun_error" in r]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    TRAIN_JSON.write_text(json.dumps(doc, indent=1, default=float))
    write_train_md(doc)
    failed = [c for c in checks if not c["ok"]]
    for c in failed:
        log.error("CHECK FAILED: %s: %s (%s)", c["run"], c["check"], c["detail"])
    log.info("wrote %s and train.md (%.0fs)", TRAIN_JSON, time.perf_counter() - t_all)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
