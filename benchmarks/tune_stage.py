"""Run the product's tuner (`gramian tune` CLI) on a benchmark dataset and record its study (issue 17).

    python -m benchmarks.tune_stage --dataset ml-100k --budget-minutes 20 [--set tune.space.dim.choices=[64,128]]
    python -m benchmarks.tune_stage --dataset lastfm-2k --tag reg_typical --set tune.space.reg=null ...

The tune runs on the split stage's tables in benchmarks/work/pipeline/<name> (built by pipeline_split,
whose export the peers are tuned on), writes conf/<name>.tuned.yaml, and this records the stage summary,
the searched space and every trial (from the study's SQLite copy in the artifact store) into
benchmarks/results/tune_stage.json; tuning.md shows it beside the peers, train_bench trains the profile.
A `--tag`ged run is a candidate beside the shipped profile: it writes conf/<name>.tuned-<tag>.yaml and is
recorded under "<name>#<tag>" (the dataset's earlier run is kept); train_bench --profile trains it as
"gramian (tune stage: <tag>)".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import pipeline_split as PS
from benchmarks.report import STAGE_JSON

REPO = Path(__file__).resolve().parent.parent


def profile_path(dataset: str, tag: str | None) -> str:
    """Where the run's profile goes: the shipped conf/<name>.tuned.yaml, or a tagged candidate beside it."""
    return f"conf/{dataset}.tuned-{tag}.yaml" if tag else f"conf/{dataset}.tuned.yaml"


def run(dataset: str, budget: float, trials: int, overrides: list[str], run_id: str,
        tag: str | None = None) -> dict[str, Any]:
    """`gramian tune` on the dataset's pipeline tables; its summary, space and trials."""
    PS.load_export(dataset)  # the split and its export exist (the peers' validation)
    profile = profile_path(dataset, tag)
    sets = [f"storage.root={PS.storage_root(dataset)}", *overrides]
    cmd = [str(Path(sys.executable).parent / "gramian"), "tune", "--conf", f"conf/{dataset}.yaml", "--run-id", run_id,
           "--budget-minutes", str(budget), "--trials", str(trials), "--write-profile", profile, "--json"]
    for s in sets:
        cmd += ["--set", s]
    load = os.getloadavg()
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    sys.stderr.write(out.stderr[-5000:])
    if out.returncode != 0:
        raise SystemExit(f"gramian tune failed (rc {out.returncode}): {out.stderr[-2000:]}")
    summary = json.loads(out.stdout[out.stdout.index("{"):])["tune"]
    shown = ["gramian", "tune", "--conf", f"conf/{dataset}.yaml", "--budget-minutes", f"{budget:g}", "--trials",
             str(trials), "--write-profile", profile] + [a for s in overrides for a in ("--set", s)]
    return {"command": " ".join(shown), "budget_minutes": budget, "load_before": load,
            "load_after": os.getloadavg(), "wall_seconds": time.perf_counter() - t0, "summary": summary,
            "space": study_space(summary), "trials": study_trials(summary["study"]), "profile": profile,
            "validation": summary["validation"], "tag": tag}


def study_space(summary: dict[str, Any]) -> dict[str, Any]:
    """The searched ranges, as the study recorded them."""
    import optuna

    study = optuna.load_study(study_name=summary["run_id"], storage=f"sqlite:///{_local(summary['study'])}")
    return json.loads(study.user_attrs["gramian.tune"])["space"]


def study_trials(uri: str) -> list[dict[str, Any]]:
    """Every trial of the study: number, state, value, last reported epoch, seconds, params."""
    import optuna

    path = _local(uri)
    name = optuna.get_all_study_summaries(storage=f"sqlite:///{path}")[0].study_name
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{path}")
    out = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        value = t.value if t.value is not None else (t.intermediate_values[steps[-1]] if steps else None)
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else 0.0
        out.append({"trial": t.number, "state": t.state.name.lower(), "value": value,
                    "epochs": steps[-1] if steps else 0, "seconds": secs, "params": t.params,
                    "note": t.user_attrs.get("note")})
    return out


def _local(uri: str) -> str:
    """A local artifact URI (file:/x or /x) as a path."""
    return "/" + uri[len("file:"):].lstrip("/") if uri.startswith("file:") else uri


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--budget-minutes", type=float, default=30.0)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--run-id", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--tag", default=None, help="a candidate run: conf/<name>.tuned-<tag>.yaml, kept beside the "
                                                "dataset's earlier run in tune_stage.json")
    args = ap.parse_args(argv)
    run_id = args.run_id or f"bench-{args.dataset}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    rec = run(args.dataset, args.budget_minutes, args.trials, args.overrides, run_id, args.tag)
    doc = json.loads(STAGE_JSON.read_text()) if STAGE_JSON.is_file() else {}
    doc[f"{args.dataset}#{args.tag}" if args.tag else args.dataset] = rec
    STAGE_JSON.write_text(json.dumps(doc, indent=1, default=str))
    s = rec["summary"]
    print(f"{args.dataset}: {s['trials']} trials, best {s.get('best_value')} {s.get('best_params')}")


if __name__ == "__main__":
    main()
