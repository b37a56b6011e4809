"""`gramian` console script: one sub-command per pipeline stage, all sharing --conf/--set/--run-id.

Thin by design: parse arguments, load config, get the session, call the stage's `run`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from gramian.config import Config, load_config
from gramian.errors import GramianError
from gramian.pipeline import ORDER, execute, run_pipeline, run_summary, stage_function, stage_line
from gramian.runs import RUN_ID_RULE, check_run_id

# stage name -> "module:function"; each function is run(spark, cfg, run_id) -> dict summary
STAGES: dict[str, str] = {
    "generate": "gramian.data.synthetic:run",
    "ingest": "gramian.data.ingest:run",
    "split": "gramian.data.split:run",
    "train": "gramian.train.job:run",
    "evaluate": "gramian.evaluate.job:run",
    "gate": "gramian.gate:run",
    "publish": "gramian.retrieval.publish:run",
    "tune": "gramian.tune.job:run",  # not in `gramian run`: tune, then train with the profile it writes
}
# `gramian run` order; a stage joins it as soon as its STAGES entry exists
PIPELINE = tuple(s for s in ORDER if s in STAGES)
GATE_REJECTED = 3  # exit status of `gramian gate` when the candidate does not clear the bar


def _stage(name: str) -> Callable[..., dict[str, Any]]:
    return stage_function(STAGES, name)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser shared by the CLI and the spark-submit jobs."""
    parser = argparse.ArgumentParser(prog="gramian", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in (*STAGES, "run"):
        p = sub.add_parser(name, help=f"run the {name} stage" if name != "run" else "run every stage in order")
        add_common_args(p)
        if name == "run":
            p.add_argument("--force", action="store_true", help="redo every stage, even those complete for run_id")
        if name == "gate":
            add_gate_args(p)
        if name == "tune":
            add_tune_args(p)
    rec = sub.add_parser("recommend", help="fold in a new user's history and print its top-n (paper §6.3)")
    add_common_args(rec)
    rec.add_argument("--items", required=True, help="comma-separated item ids of the user's history")
    rec.add_argument("--weights", default=None, help="comma-separated raw weights, one per item (default 1)")
    rec.add_argument("-n", dest="n", type=int, default=None, help="how many items (default publish.n)")
    return parser


def add_gate_args(p: argparse.ArgumentParser) -> None:
    """The quality gate's bar: which metric, and the floor it must reach."""
    p.add_argument("--metric", default="ndcg", help="metric name in the metrics table (default ndcg)")
    p.add_argument("--k", type=int, default=20, help="cut-off of that metric (default 20)")
    p.add_argument("--method", default="exact", help="exact | sampled | corrected (default exact)")
    p.add_argument("--floor", type=float, default=0.0, help="the candidate must reach at least this value")
    p.add_argument("--min-improvement", type=float, default=0.0,
                   help="and beat the published run's value by at least this much")
    p.add_argument("--on-new-split", default="refuse", choices=("refuse", "floor"),
                   help="when the published run was trained on another split: refuse (default) or apply the "
                        "floor alone")


def add_tune_args(p: argparse.ArgumentParser) -> None:
    """The tuner's budgets and where the best setting goes (gramian.tune.job)."""
    p.add_argument("--trials", type=int, default=None, help="the study's total trials (default tune.trials); a "
                   "resumed study (same --run-id) runs the rest")
    p.add_argument("--budget-minutes", type=float, default=None, help="wall clock: no trial starts after it and a "
                   "running one stops at its next epoch (default tune.budget_minutes; 0 = none)")
    p.add_argument("--write-profile", default=None, metavar="PATH",
                   help="write the best setting as a conf file (extends --conf), e.g. conf/ml-100k.tuned.yaml")


def add_common_args(p: argparse.ArgumentParser) -> None:
    """--conf, --set and --run-id, identical on every command and job."""
    p.add_argument("--conf", default=None, help="YAML config layered on conf/defaults.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set model.dim=128 (repeatable)")
    p.add_argument("--run-id", default=None,
                   help=f"identifies this run's outputs (default: a UTC timestamp); {RUN_ID_RULE}")
    p.add_argument("--resume", action="store_true", help="continue a stopped training run from its checkpoint")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="gramian's INFO lines too (default: warnings, "
                   "per-epoch progress and the summary)")


def new_run_id() -> str:
    """A sortable, readable run id."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime())


def run_stage(name: str, cfg: Config, run_id: str, spark: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Run one stage on `spark` (built from cfg.spark when None) and return its summary."""
    if spark is None:
        from gramian.spark import get_session

        spark = get_session(cfg.spark)
    return _stage(name)(spark, cfg, run_id, **kwargs)


def import_stages(names: Sequence[str]) -> None:
    """Import the modules of stages `names` (an import error surfaces again when the stage is called)."""
    for name in names:
        try:
            importlib.import_module(STAGES[name].split(":")[0])
        except Exception:  # noqa: BLE001 - the stage's own call raises it where it can be reported
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gramian` console script and of jobs/*.py."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        if args.run_id is not None:
            check_run_id(args.run_id)
        cfg = load_config(args.conf, args.overrides)
        if args.command == "recommend":  # not a stage: reads a published run (default: the current one)
            stage_function({"recommend": "gramian.retrieval.recommend:main"}, "recommend")(args, cfg)
            return 0
        run_id = args.run_id or new_run_id()
        from gramian.spark import get_session

        importing = threading.Thread(target=import_stages, args=(PIPELINE if args.command == "run" else
                                                                 (args.command,),), daemon=True)
        importing.start()  # seconds of imports (numba, MLflow) while the session starts and its executors launch
        spark = get_session(cfg.spark)
        importing.join()

        def echo(name: str, summary: dict[str, Any]) -> None:
            if not args.json:
                print(format_summary(name, summary), flush=True)

        def echo_line(name: str, summary: dict[str, Any]) -> None:
            if not args.json:
                print(stage_line(name, summary), flush=True)

        if args.command == "run":
            summaries = run_pipeline(spark, cfg, run_id, STAGES, PIPELINE, force=args.force, resume=args.resume,
                                     echo=echo_line)
            if not args.json:
                print(run_summary(spark, cfg, run_id, summaries), flush=True)
        else:
            kwargs: dict[str, Any] = {"resume": args.resume} if args.command == "train" else {}
            if args.command == "tune":
                kwargs = {"trials": args.trials, "budget_minutes": args.budget_minutes,
                          "write_profile": args.write_profile}
            if args.command == "gate":
                kwargs = {"metric": args.metric, "k": args.k, "method": args.method, "floor": args.floor,
                          "min_improvement": args.min_improvement, "on_new_split": args.on_new_split}
            summaries = {args.command: execute(spark, cfg, run_id, args.command, _stage(args.command), PIPELINE,
                                               **kwargs)}
            echo(args.command, summaries[args.command])
        if args.json:
            print(json.dumps(summaries, indent=2, default=str))
        if args.command == "gate" and not summaries["gate"]["passed"]:
            return GATE_REJECTED
    except GramianError as e:
        print(f"gramian {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr: warnings, gramian's per-epoch progress lines and (with --verbose) gramian's INFO lines.

    The root logger stays at WARNING, so third-party INFO lines (matplotlib's font cache, py4j, MLflow,
    alembic) never reach a person's terminal; gramian's loggers pass theirs to the root's handler.
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("gramian").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("gramian.progress").setLevel(logging.INFO)


def format_summary(stage: str, summary: dict[str, Any]) -> str:
    """A short human-readable block for one stage's summary."""
    lines = [f"== {stage}"]
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, dict | list) and len(str(value)) > 200:
            value = json.dumps(value, default=str)[:200] + " ..."
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
