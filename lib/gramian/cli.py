"""`gramian` console script: one sub-command per pipeline stage, all sharing --conf/--set/--run-id.

Thin by design: parse arguments, load config, get the session, call the stage's `run`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from gramian.config import Config, load_config
from gramian.errors import GramianError

# stage name -> "module:function"; each function is run(spark, cfg, run_id) -> dict summary
STAGES: dict[str, str] = {
    "generate": "gramian.data.synthetic:run",
    "ingest": "gramian.data.ingest:run",
    "split": "gramian.data.split:run",
    "train": "gramian.train.job:run",
}
PIPELINE = ("ingest", "split", "train")


def _stage(name: str) -> Callable[..., dict[str, Any]]:
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser shared by the CLI and the spark-submit jobs."""
    parser = argparse.ArgumentParser(prog="gramian", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in (*STAGES, "run"):
        p = sub.add_parser(name, help=f"run the {name} stage" if name != "run" else "run every stage in order")
        add_common_args(p)
    return parser


def add_common_args(p: argparse.ArgumentParser) -> None:
    """--conf, --set and --run-id, identical on every command and job."""
    p.add_argument("--conf", default=None, help="YAML config layered on conf/defaults.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set model.dim=128 (repeatable)")
    p.add_argument("--run-id", default=None, help="identifies this run's outputs (default: a timestamp)")
    p.add_argument("--resume", action="store_true", help="continue a stopped training run from its checkpoint")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def new_run_id() -> str:
    """A sortable, readable run id."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime())


def run_stage(name: str, cfg: Config, run_id: str, spark: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Run one stage on `spark` (built from cfg.spark when None) and return its summary."""
    if spark is None:
        from gramian.spark import get_session

        spark = get_session(cfg.spark)
    return _stage(name)(spark, cfg, run_id, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gramian` console script and of jobs/*.py."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.conf, args.overrides)
        run_id = args.run_id or new_run_id()
        names = PIPELINE if args.command == "run" else (args.command,)
        summaries: dict[str, Any] = {}
        for name in names:
            kwargs = {"resume": args.resume} if name == "train" else {}
            summaries[name] = run_stage(name, cfg, run_id, **kwargs)
            if not args.json:
                print(format_summary(name, summaries[name]))
        if args.json:
            print(json.dumps(summaries, indent=2, default=str))
    except GramianError as e:
        print(f"gramian {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


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
