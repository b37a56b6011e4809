"""Markdown renderings of the benchmark JSON: machine header, result tables, ratios, checks, tuning grids."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cmd(args: list[str]) -> str:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=20)
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"


def machine_info() -> dict[str, Any]:
    """nproc, RAM, CPU model, load, versions and BLAS packages: the header of every result."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "ram_gib": round(_mem_total_gib(), 1), "cpu": _cpu_model(),
        "load_before": os.getloadavg(), "python": platform.python_version(),
        "java": _cmd(["java", "-version"]),
        "versions": {p: _version(p) for p in ("pyspark", "delta-spark", "implicit", "numpy", "numba", "scipy",
                                              "threadpoolctl")},
        "system_blas": _cmd(["dpkg-query", "-W", "-f=${Package} ${Version} ${Status}",
                             "libopenblas0-pthread"]) or "libopenblas0-pthread not installed",
        "git_commit": _cmd(["git", "-C", str(RESULTS.parent.parent), "rev-parse", "--short", "HEAD"]),
    }


def _f(x: Any, fmt: str = ".4f") -> str:
    try:
        return "—" if x is None or not np.isfinite(x) else format(x, fmt)
    except TypeError:
        return str(x)


def _header(m: dict[str, Any], title: str) -> list[str]:
    v = m["versions"]
    return [
        f"# {title}", "",
        f"- **Machine**: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM; load average before "
        f"{', '.join(f'{x:.1f}' for x in m['load_before'])}"
        + (f", after {', '.join(f'{x:.1f}' for x in m['load_after'])}" if "load_after" in m else ""),
        f"- **Versions**: pyspark {v['pyspark']}, delta-spark {v['delta-spark']}, implicit {v['implicit']}, "
        f"numpy {v['numpy']}, numba {v['numba']}, scipy {v['scipy']}; Python {m['python']}; {m['java']}",
        f"- **System BLAS**: {m['system_blas']}",
        f"- **Date**: {m['date']}; commit {m['git_commit']}", "",
    ]


def _params(p: dict[str, Any]) -> str:
    keep = {k: v for k, v in p.items() if k not in ("solver_block_size", "init_scale", "seed", "name")}
    conf = keep.pop("confidence", None)
    s = ", ".join(f"{k}={v}" for k, v in keep.items())
    if conf and conf.get("scale", "constant") != "constant":
        s += f", confidence={conf}"
    return s


def write_train_md(doc: dict[str, Any]) -> Path:
    """benchmarks/results/train.md from the train.json document."""
    lines = _header(doc["machine"], "gramian training benchmark")
    runs = doc["runs"]
    mllib_blas = {r["extra"].get("blas") for r in runs if r.get("method") == "mllib" and "extra" in r}
    if mllib_blas:
        lines += [f"- **MLlib BLAS** (as MLlib's netlib layer reported): {', '.join(sorted(mllib_blas))}", ""]
    lines += ["Same train/test, rank and iterations for every ALS; every model evaluated by "
              "`gramian.kernels.ranking` (exact full-catalogue top-k, train items excluded). "
              "Recall = hits/|test|, Recall_min = hits/min(20, |test|). Each fit runs in a fresh process.",
              "Timings were taken while other jobs shared the 2 cores: treat them as noisy (see load).", ""]
    for ds in dict.fromkeys(r["dataset"] for r in runs):
        rs = [r for r in runs if r["dataset"] == ds]
        split = next((r["split"] for r in rs if "split" in r), {})
        lines += [f"## {ds}", ""]
        if split:
            lines += [f"{split.get('users')} users, {split.get('items')} items, {split.get('train')} train, "
                      f"{split.get('test')} test pairs; split: {split.get('split')}; weight: "
                      f"{split.get('weight')}", ""]
        dates = sorted({f"{r['run_date']} (load {r['load_before'][0]:.1f})" for r in rs if "run_date" in r})
        if dates and dates != [f"{doc['machine']['date']} (load {doc['machine']['load_before'][0]:.1f})"]:
            lines += [f"Measured in an earlier run: {', '.join(dates)}.", ""]
        has_test = any(r.get("metrics") for r in rs)
        cols = ["method"] + (["Recall@20", "Recall_min@20", "NDCG@20", "Prec@20"] if has_test else [])
        cols += ["fit s", "s/epoch", "iters", "peak RSS MiB", "settings"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rs:
            if "error" in r:
                lines.append(f"| {r['label']} | " + " | ".join(["failed: " + r["error"]] + [""] * (len(cols) - 2))
                             + " |")
                continue
            m = r.get("metrics", {})
            row = [r["label"]]
            if has_test:
                row += [_f(m.get("recall@20")), _f(m.get("recall_min@20")), _f(m.get("ndcg@20")),
                        _f(m.get("precision@20"))]
            spe = _f(r["seconds_per_epoch"], ".2f") + ("" if r["per_epoch_measured"] else "*")
            row += [_f(r["fit_seconds"], ".1f") if r["method"] != "popularity" else "—",
                    spe if r["method"] != "popularity" else "—", str(r["iterations"]),
                    _f(r["peak_rss_mib"], ".0f") if r["method"] != "popularity" else "—",
                    f"{_params(r['params'])} ({r['source']})"]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        splits = [f"{r['label']}: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["peak_rss_by_command_mib"].items()))
                  for r in rs if "error" not in r and "java" in r.get("peak_rss_by_command_mib", {})]
        if splits:
            lines.append("- peak RSS by process (MiB): " + "; ".join(splits))
        for r in rs:
            if r.get("method") in ("gramian", "rankals") and "error" not in r:
                e = r["extra"]
                us, its = np.mean(e["user_seconds"]), np.mean(e["item_seconds"])
                first = e["user_seconds"][0] + e["item_seconds"][0]
                lines.append(f"- {r['label']}: setup (row counts, block building, caching) "
                             f"{e['setup_seconds']:.1f} s; mean user half-step {us:.2f} s, item half-step "
                             f"{its:.2f} s; first epoch {first:.2f} s; loss {e['loss'][0]:.6g} → "
                             f"{e['loss'][-1]:.6g}")
            if r.get("method") == "gramian_np" and "error" not in r:
                e = r["extra"]
                lines.append(f"- {r['label']}: kernel-only time, one thread: user half-step "
                             f"{np.mean(e['user_seconds']):.2f} s, item half-step {np.mean(e['item_seconds']):.2f} s")
        lines.append("")
    lines += ["\\* seconds per epoch = fit seconds / iterations (no per-iteration timing exposed); "
              "otherwise measured per epoch (gramian: `history`, implicit: fit callback).", "",
              "## Ratios", "", "| dataset | gramian run | fit / MLlib fit | s/epoch / MLlib s/epoch | "
              "s/epoch / implicit s/epoch | fit / implicit fit | RankALS s/epoch / this run's |",
              "|---|---|---|---|---|---|---|"]
    for q in doc["ratios"]:
        lines.append(f"| {q['dataset']} | {q['gramian']} | {_f(q.get('fit_vs_mllib'), '.2f')} | "
                     f"{_f(q.get('epoch_vs_mllib'), '.2f')} | {_f(q.get('epoch_vs_implicit'), '.2f')} | "
                     f"{_f(q.get('fit_vs_implicit'), '.2f')} | {_f(q.get('rankals_epoch_vs_ials'), '.2f')} |")
    if doc.get("targets"):
        lines += ["", "## Targets (issues #3 and #17)", "", "| target | measured | limit | met |", "|---|---|---|---|"]
        for t in doc["targets"]:
            detail = f" ({t['detail']})" if t["detail"] else ""
            lines.append(f"| {t['target']} | {t['measured']:.4g}{detail} | {t['limit']:g} | "
                         f"{'yes' if t['ok'] else '**no**'} |")
    if doc.get("comparisons"):
        lines += ["", "## Tuned gramian vs every tuned peer (test split, paired per user)", "",
                  "Per-user Recall@20 difference gramian - peer over the test users, mean with a normal 95% "
                  "interval (both runs on the same split and test users; an interval above 0: gramian ahead beyond the "
                  "test set's noise).", "",
                  "| dataset | gramian run | Recall@20 | peer | peer Recall@20 | ratio | difference (95% CI) |",
                  "|---|---|---|---|---|---|---|"]
        for c in doc["comparisons"]:
            p = c["paired"]
            ci = f"{p['mean']:+.4f} ({p['low']:+.4f}..{p['high']:+.4f}, {p['users']} users)" if p else "—"
            lines.append(f"| {c['dataset']} | {c['gramian']} | {c['gramian_recall']:.4f} | {c['peer']} | "
                         f"{c['peer_recall']:.4f} | {c['gramian_recall'] / c['peer_recall']:.3f} | {ci} |")
    bad = [c for c in doc["checks"] if not c["ok"]]
    lines += ["", "## Checks (asserted before timings are reported)", "",
              f"{len(doc['checks']) - len(bad)} of {len(doc['checks'])} passed."]
    for c in bad:
        lines.append(f"- FAILED {c['run']}: {c['check']} — {c['detail']}")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in doc.get("notes", [])]
    lines.append(f"- whole benchmark wall time: {doc.get('bench_seconds', float('nan')):.0f} s")
    out = RESULTS / "train.md"
    out.write_text("\n".join(lines) + "\n")
    return out


# ------------------------------------------------------------------------------------------- tuning


def _best(trials: list[dict[str, Any]], ds: str, method: str, pred: Any = None) -> dict[str, Any] | None:
    c = [t for t in trials if t["dataset"] == ds and t["method"] == method
         and np.isfinite(t["metrics"].get("recall@20", np.nan)) and (pred is None or pred(t))]
    return max(c, key=lambda t: t["metrics"]["recall@20"]) if c else None


def conf_name(p: dict[str, Any]) -> str:
    """'constant' or e.g. 'log b=1.0' for a gramian trial's confidence."""
    c = p.get("confidence") or {}
    scale = c.get("scale", "constant")
    return scale if scale == "constant" else f"{scale} b={c.get('beta', 1.0)}"


PEERS = ("implicit_als", "mllib", "implicit_bpr")


def best_peer(trials: list[dict[str, Any]], ds: str) -> dict[str, Any] | None:
    """The peer trial with the highest validation Recall@20 on `ds`."""
    cands = [b for m in PEERS if (b := _best(trials, ds, m)) is not None]
    return max(cands, key=lambda t: t["metrics"]["recall@20"]) if cands else None


REG_FORMS = {"all": "lambda_c = reg (|I_c| + alpha0 |I|)^nu", "observed": "lambda_c = reg |I_c|^nu"}
SCALE_NAMES = {"items": "n_items", "users": "n_users", "geometric": "sqrt(n_users n_items)"}


def scaled_name(p: dict[str, Any]) -> str:
    """alpha0's rule as written in the report, e.g. '350/sqrt(n_users n_items)'."""
    return f"{p['alpha0_total']:g}/{SCALE_NAMES[p['alpha0_scale_by']]}"


def recommend_defaults(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """d=64 gramian settings tried on every dataset, ranked by their worst ratio to the best peer.

    `per` holds recall / best peer's recall per dataset (> 1: gramian wins there), `own` recall / the
    best d=64 gramian setting of that dataset.
    """
    datasets = sorted({t["dataset"] for t in trials if t["method"] == "gramian"})
    d64 = [t for t in trials if t["method"] == "gramian" and t["params"].get("dim") == 64
           and t["params"].get("solver", "cg") == "cg"]
    best = {ds: _best(trials, ds, "gramian", lambda t: t["params"].get("dim") == 64) for ds in datasets}
    peer = {ds: best_peer(trials, ds) for ds in datasets}
    table: dict[tuple[Any, ...], dict[str, float]] = {}
    for t in d64:
        a0 = t["params"]["alpha0"]
        if "alpha0_total" in t["params"]:  # a size-scaled rule: one setting across datasets
            a0 = scaled_name(t["params"])
        nu = t["params"].get("nu", 1.0)
        extra = ("" if nu == 1.0 else f", nu={nu:g}") + f", reg counts {t['params'].get('reg_counts', 'all')}"
        key = (a0, t["params"]["reg"], conf_name(t["params"]) + extra)
        table.setdefault(key, {})[t["dataset"]] = t["metrics"].get("recall@20", np.nan)
    rows = []
    for (a0, reg, conf), rec in table.items():
        if not all(np.isfinite(rec.get(ds, np.nan)) for ds in datasets):
            continue
        own = {ds: rec[ds] / best[ds]["metrics"]["recall@20"] for ds in datasets if best[ds]}
        per = {ds: rec[ds] / peer[ds]["metrics"]["recall@20"] if peer[ds] else np.nan for ds in datasets}
        worst = min(per.values()) if all(np.isfinite(v) for v in per.values()) else min(own.values())
        rows.append({"alpha0": a0, "reg": reg, "confidence": conf, "worst": worst, "per": per, "own": own,
                     "recall": rec})
    return sorted(rows, key=lambda r: -r["worst"])


def write_tuning_md(trials: list[dict[str, Any]]) -> Path:
    """benchmarks/results/tuning.md: the `gramian tune` validation section (issue 17: the stage's study beside
    the peers tuned on its validation), then the earlier grids on the 10% holdout, their peers' optima and
    the recommended defaults."""
    from benchmarks.tune import LEGACY_VALIDATION, validation_of

    lines = ["# gramian tuning (validation holdout, never the test set)", ""]
    lines += stage_section([t for t in trials if validation_of(t) != LEGACY_VALIDATION])
    lines += probe_section()
    trials = [t for t in trials if validation_of(t) == LEGACY_VALIDATION]
    lines += ["# Earlier grids on the benchmark's 10% holdout", "",
              "Validation: 10% of each user's train pairs (seed 0), carved from the benchmark's train split; "
             "metric Recall@20 (hits/|val|) with train-minus-validation items excluded. gramian ran "
             "single-process (`benchmarks.peers.fit_gramian_numpy`, the Spark trainer's math), 15 epochs, "
             "CG 3 steps, nu=1 unless marked, rendle form (constant confidence unless marked log: "
             "g = 1 + log(1 + w)); regularisation counts all pairs (lambda_c = reg (|I_c| + alpha0 |I|)^nu) "
             "unless marked observed (lambda_c = reg |I_c|^nu). "
             "Peers ran as in the benchmark (implicit: 2 threads; MLlib: Spark local[2]).", ""]
    datasets = list(dict.fromkeys(t["dataset"] for t in trials))
    for ds in datasets:
        lines += [f"## {ds}", ""]
        g = [t for t in trials if t["dataset"] == ds and t["method"] == "gramian"]
        for conf in sorted({conf_name(t["params"]) for t in g}):
            d64 = [t for t in g if t["params"].get("dim") == 64 and conf_name(t["params"]) == conf
                   and "alpha0_total" not in t["params"] and t["params"].get("solver", "cg") == "cg"]
            if not d64:
                continue
            a0s = sorted({t["params"]["alpha0"] for t in d64})
            regs = sorted({t["params"]["reg"] for t in d64})
            lines += [f"gramian, d=64, confidence {conf}: Recall@20 by alpha0 (rows) and reg (columns)", "",
                      "| alpha0 \\ reg | " + " | ".join(str(r) for r in regs) + " |",
                      "|---|" + "---|" * len(regs)]
            for a0 in a0s:
                cells = []
                for r in regs:
                    t = next((t for t in d64 if t["params"]["alpha0"] == a0 and t["params"]["reg"] == r), None)
                    cells.append(_f(t["metrics"].get("recall@20")) if t else "")
                lines.append(f"| {a0} | " + " | ".join(cells) + " |")
            lines.append("")
        scaled = [t for t in g if "alpha0_total" in t["params"]]
        for rule in sorted({(t["params"]["alpha0_scale_by"], t["params"]["reg_counts"]) for t in scaled}):
            part = [t for t in scaled if (t["params"]["alpha0_scale_by"], t["params"]["reg_counts"]) == rule]
            lines += [f"gramian, d=64, alpha0 = c / {SCALE_NAMES[rule[0]]}, regularisation counts {rule[1]} pairs "
                      f"({REG_FORMS[rule[1]]}):", "",
                      "| c | alpha0 | reg | nu | confidence | Recall@20 |", "|---|---|---|---|---|---|"]
            for t in sorted(part, key=lambda t: (t["params"]["alpha0_total"], t["params"]["reg"],
                                                 t["params"].get("nu", 1.0), conf_name(t["params"]))):
                p = t["params"]
                lines.append(f"| {p['alpha0_total']:g} | {p['alpha0']:.3g} | {p['reg']} | {p.get('nu', 1.0):g} | "
                             f"{conf_name(p)} | {_f(t['metrics'].get('recall@20'))} |")
            lines.append("")
        big = [t for t in g if t["params"].get("dim", 64) != 64 or t["params"].get("solver", "cg") != "cg"]
        if big:
            lines += ["gramian, larger d and other solvers (fit seconds: one thread, machine shared):", "",
                      "| d | solver | alpha0 | reg | Recall@20 | fit s |", "|---|---|---|---|---|---|"]
            for t in sorted(big, key=lambda t: (t["params"]["dim"], t["params"]["reg"])):
                p = t["params"]
                lines.append(f"| {p['dim']} | {p.get('solver', 'cg')} | {p['alpha0']:g} | {p['reg']:g} | "
                             f"{_f(t['metrics'].get('recall@20'))} | {_f(t.get('fit_seconds'), '.0f')} |")
            lines.append("")
        lines += ["Best per method (validation Recall@20):", "", "| method | Recall@20 | settings | trials |",
                  "|---|---|---|---|"]
        for method in ("gramian d=64", "gramian", "implicit_als", "mllib", "implicit_bpr", "ease", "rp3beta"):
            base = method.split()[0]
            n = sum(1 for t in trials if t["dataset"] == ds and t["method"] == base)
            pred = (lambda t: t["params"].get("dim") == 64) if method == "gramian d=64" else None
            b = _best(trials, ds, base, pred)
            if b is not None and (method != "gramian" or b["params"].get("dim") != 64):
                lines.append(f"| {method} | {_f(b['metrics']['recall@20'])} | {_params(b['params'])} | {n} |")
        lines.append("")
    rec = recommend_defaults(trials)
    if rec:
        dss = list(rec[0]["per"])
        peers = {ds: best_peer(trials, ds) for ds in dss}
        lines += ["## One default for every dataset (d=64)", "",
                  "Validation Recall@20 of each gramian setting tried on every dataset, as a ratio to the best "
                  "peer's validation Recall@20 there (> 1: gramian ahead); ranked by the worst dataset. Best "
                  "peers: " + "; ".join(f"{ds} {p['method']} {_f(p['metrics']['recall@20'])}"
                                        for ds, p in peers.items() if p) + ".", "",
                  "| alpha0 | reg | confidence | worst | " + " | ".join(f"{d} (recall)" for d in dss) + " |",
                  "|---|---|---|---|" + "---|" * len(dss)]
        for r in rec[:12]:
            lines.append(f"| {r['alpha0']} | {r['reg']} | {r['confidence']} | {_f(r['worst'], '.3f')} | "
                         + " | ".join(f"{_f(r['per'][d], '.3f')} ({_f(r['recall'][d])})" for d in dss) + " |")
        lines.append("")
        absolute = next((r for r in rec if not isinstance(r["alpha0"], str)), None)
        scaled = next((r for r in rec if isinstance(r["alpha0"], str)), None)
        lines += ["## Recommendation", ""]
        for what, r in (("Absolute alpha0", absolute), ("alpha0 scaled by the data's size", scaled)):
            if r is not None:
                lines.append(f"- {what}: alpha0={r['alpha0']}, reg={r['reg']}, confidence {r['confidence']}: "
                             f"worst ratio to the best peer {r['worst']:.3f} ("
                             + ", ".join(f"{d} {v:.3f}" for d, v in r["per"].items()) + ").")
        for ds in dss:
            b64 = _best(trials, ds, "gramian", lambda t: t["params"].get("dim") == 64)
            big = _best(trials, ds, "gramian", lambda t: t["params"].get("dim", 64) > 64)
            if b64 and big and big["metrics"]["recall@20"] > b64["metrics"]["recall@20"]:
                lines.append(f"- {ds}: d={big['params']['dim']} reaches {_f(big['metrics']['recall@20'])} vs "
                             f"{_f(b64['metrics']['recall@20'])} at d=64 (alpha0={big['params']['alpha0']}, "
                             f"reg={big['params']['reg']}).")
        lines.append("")
    out = RESULTS / "tuning.md"
    out.write_text("\n".join(lines) + "\n")
    return out


STAGE_PEERS = ("implicit_als", "mllib", "implicit_bpr", "ease", "rp3beta")
STAGE_JSON = RESULTS / "tune_stage.json"  # per dataset: the `gramian tune` run (benchmarks/tune_stage.py)


def stage_section(trials: list[dict[str, Any]]) -> list[str]:
    """Per dataset tuned on the tune stage's validation: the stage's study and every peer's grid optimum."""
    import json

    stage = json.loads(STAGE_JSON.read_text()) if STAGE_JSON.is_file() else {}
    datasets = list(dict.fromkeys([t["dataset"] for t in trials] + [k.split("#")[0] for k in stage]))
    if not datasets:
        return []
    lines = ["## On `gramian tune`'s validation split (issue 17)", "",
             "Every method below is tuned on the same pairs: the split stage splits the dataset (conf/<name>.yaml, "
             "the test split of train.md), and the tune stage carves validation from its `train` with the split "
             "stage's own assign_parts, seed split.seed + 1, fraction split.test_fraction "
             "(gramian.tune.validation.carve; benchmarks/pipeline_split.py exports those pairs for the peers). "
             "Metric: Recall@20 = hits / |held-out| with the validation-train items excluded, exact full catalogue.",
             ""]
    for ds in datasets:
        lines += [f"### {ds}", ""]
        st = stage.get(ds)
        val = next((t["validation"] for t in trials if t["dataset"] == ds), None)
        if val:
            lines += [f"Validation: {val}.", ""]
        if st:
            lines += stage_lines(st)
        for key in (k for k in stage if k.startswith(f"{ds}#")):  # later candidate runs (tune_stage --tag)
            lines += [f"Candidate run `{key.split('#', 1)[1]}` (a later study of the same validation, beside the "
                      f"run above):", ""] + stage_lines(stage[key])
        if not any(t["dataset"] == ds and t["method"] in STAGE_PEERS for t in trials):
            lines += ["No peer was tuned on this validation: the peers' settings come from the benchmark's 10% "
                      "holdout (the earlier grids below), a different carve of the same train; all are compared "
                      "on the same test split in train.md.", ""]
            continue
        lines += ["Peers on the same validation (grid; best setting; a grid not run to its end is marked):", "",
                  "| method | Recall@20 | settings | settings tried |", "|---|---|---|---|"]
        for m in STAGE_PEERS:
            b = _best(trials, ds, m)
            tried = [t for t in trials if t["dataset"] == ds and t["method"] == m]
            if b is not None:
                lines.append(f"| {m} | {_f(b['metrics']['recall@20'])} | {_params(b['params'])} | "
                             f"{len(tried)}{_grid_left(ds, m, tried)} |")
        ease = sorted((t for t in trials if t["dataset"] == ds and t["method"] == "ease"),
                      key=lambda t: (t["params"].get("weights", ""), t["params"]["reg"]))
        if ease:
            lines += ["", "EASE by reg: " + "; ".join(f"{t['params'].get('weights')} {t['params']['reg']:g}: "
                                                         f"{_f(t['metrics'].get('recall@20'))}" for t in ease) + "."]
        lines.append("")
    return lines


def _grid_left(ds: str, method: str, tried: list[dict[str, Any]]) -> str:
    """'' when every point of the benchmark's grid for ds/method was tried, else how many were."""
    import json

    from benchmarks.tune import peer_grid

    def key(p: dict[str, Any]) -> str:  # MLlib's weights follow implicit ALS's best, not a grid axis
        return json.dumps({k: v for k, v in p.items() if not (method == "mllib" and k == "weights")}, sort_keys=True)

    grid = {key(g) for g in peer_grid(method, ds)}
    done = grid & {key(t["params"]) for t in tried}
    return "" if done == grid else f" (**partial**: {len(done)} of its {len(grid)}-point grid)"


PROBE_JSON = RESULTS / "tune_probe.json"  # single fits on a tune stage's validation (benchmarks/tune_probe.py)


def probe_section() -> list[str]:
    """Single gramian fits on the tune stage's validation, Recall@20 along the epochs (benchmarks/tune_probe.py)."""
    import json

    probes = json.loads(PROBE_JSON.read_text()) if PROBE_JSON.is_file() else []
    if not probes:
        return []
    lines = ["## Single fits on the tune stage's validation (`benchmarks/tune_probe.py`)", "",
             "One process, one thread (the Spark trainer's math), the package defaults with the listed overrides; "
             "Recall@20 on the tune stage's held-out pairs after every 5 epochs. Other jobs shared the 2 cores "
             "(load as listed).", "",
             "Spark MLlib's implicit ALS minimises sum_all c (p - y)^2 + regParam (|I_u| |x_u|^2 + |U_i| |y_i|^2) "
             "with c = 1 + alpha r and p = [r > 0]. Divided by alpha, with the scores rescaled by t = 1 + 1/alpha, "
             "this is gramian's rendle form at constant confidence with alpha0 = 1/alpha, reg = regParam / (alpha t), "
             "nu = 1 and reg_counts observed: MLlib's validation optimum (alpha 10, regParam 1, binary weights) is "
             "gramian at alpha0 = 0.1, reg = 0.0909 (the mllib-like rows), the same model family as the package "
             "defaults; what is left to win is d, epochs and the exact setting.", ""]
    for ds in dict.fromkeys(p["dataset"] for p in probes):
        rows = [p for p in probes if p["dataset"] == ds]
        epochs = sorted({e for p in rows for e, _ in p["curve"]})
        lines += [f"### {ds}", "", f"Validation: {rows[0]['validation']}.", "",
                  "| probe | overrides of the defaults | " + " | ".join(f"e{e}" for e in epochs) + " | s | load |",
                  "|---" * (len(epochs) + 4) + "|"]
        for p in rows:
            c = dict(p["curve"])
            lines.append(f"| {p['label']} | {' '.join(p['overrides']) or '(defaults)'} | "
                         + " | ".join(_f(c.get(e)) for e in epochs)
                         + f" | {p['seconds']:.0f} | {p['load_before'][0]:.1f} |")
        lines.append("")
    return lines


def stage_lines(st: dict[str, Any]) -> list[str]:
    """The `gramian tune` run of one dataset: budget, trials by state, best trial, top trials."""
    s = st["summary"]
    out = [f"`{st['command']}` (budget {st['budget_minutes']:g} min, {s['seconds'] / 60:.1f} min used, stopped by "
           f"{s['stopped_by']}; load before {st['load_before'][0]:.1f}): {s['trials']} trials, {s['complete']} "
           f"complete, {s['pruned']} pruned, {s['failed']} failed. Searched: "
           + "; ".join(f"{k} {_space_text(v)}" for k, v in st["space"].items()) + ".", "",
           *([f"{st['note']}: " + "; ".join(f"{x['budget_minutes']:g} min, {x['trials']} trials, best "
                                          f"{x['best_value']:.4f}, load before {x['load_before'][0]:.1f}"
                                          for x in st["sessions"]) + ".", ""] if st.get("sessions") else []),
           *([f"Baseline (the conf's own model setting, tried first): trial {s['baseline_trial']}, validation "
              f"Recall@20 {_f(s['baseline_value'])}.", ""] if s.get("baseline_trial") is not None else []),
           f"Best: trial {s['best_trial']}, validation Recall@20 **{s['best_value']:.4f}**: "
           f"{_params(s['best_params'])} -> {st['profile']}.", "",
           *([f"Outcome: {st['outcome']}", ""] if st.get("outcome") else []),
           "| trial | state | Recall@20 | epochs | s | settings |", "|---|---|---|---|---|---|"]
    for t in sorted(st["trials"], key=lambda t: -(t["value"] if t["value"] is not None else -1))[:10]:
        out.append(f"| {t['trial']} | {t['state']} | {_f(t['value'])} | {t['epochs']} | {t['seconds']:.0f} | "
                   f"{_params(t['params'])} |")
    out.append("")
    return out


def _space_text(r: dict[str, Any]) -> str:
    if r.get("choices"):
        return "{" + ", ".join(str(c) for c in r["choices"]) + "}"
    return f"[{r['low']:g}, {r['high']:g}]" + (" log" if r.get("log") else "") + (
        f" step {r['step']:g}" if r.get("step") else "")
