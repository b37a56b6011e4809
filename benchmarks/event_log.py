"""Spark jobs and stages of a run, from its event log: where a half-step's wall time goes inside Spark.

    python -m benchmarks.event_log <event log file> [--jobs 40-52]

One line per job (start since the application started, seconds, the Python call site that triggered it) and
one per stage it ran (seconds, tasks, shuffle bytes written and read, bytes read from and written to files);
the gap before a job is driver time (planning, Python, collecting results). Event logs come from
`cluster_bench --log-dir` (spark.eventLog.enabled, written under <log-dir>/events).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

METRICS = {"internal.metrics.shuffle.write.bytesWritten": "shuffle_write",
           "internal.metrics.shuffle.read.remoteBytesRead": "shuffle_read",
           "internal.metrics.shuffle.read.localBytesRead": "shuffle_read",
           "internal.metrics.input.bytesRead": "input", "internal.metrics.output.bytesWritten": "output"}


def read_events(path: Path) -> dict[str, Any]:
    """Jobs (id -> start, end, call site, stage ids) and completed stages (id -> name, times, tasks, bytes)."""
    jobs: dict[int, dict[str, Any]] = {}
    stages: dict[int, dict[str, Any]] = {}
    app_start = None
    if path.suffix == ".zstd":  # Spark's default event-log compression
        import subprocess

        lines = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, text=True, check=True).stdout
    else:
        lines = path.read_text()
    for line in lines.splitlines():
        ev = json.loads(line)
        kind = ev.get("Event")
        if kind == "SparkListenerApplicationStart":
            app_start = ev["Timestamp"]
        elif kind == "SparkListenerJobStart":
            props = ev.get("Properties") or {}
            jobs[ev["Job ID"]] = {"start": ev["Submission Time"], "stages": ev["Stage IDs"],
                                  "site": props.get("callSite.short", "")}
        elif kind == "SparkListenerJobEnd":
            jobs[ev["Job ID"]]["end"] = ev["Completion Time"]
        elif kind == "SparkListenerStageCompleted":
            info = ev["Stage Info"]
            sums: dict[str, float] = {}
            for acc in info.get("Accumulables", []):
                name = METRICS.get(acc.get("Name"))
                if name:
                    sums[name] = sums.get(name, 0.0) + float(acc.get("Value", 0))
            stages[info["Stage ID"]] = {"name": info["Stage Name"], "tasks": info["Number of Tasks"],
                                        "start": info.get("Submission Time"), "end": info.get("Completion Time"),
                                        **sums}
    return {"app_start": app_start, "jobs": jobs, "stages": stages}


def mib(x: float | None) -> str:
    return "" if not x else f"{x / 2**20:.1f}"


def table(events: dict[str, Any], first: int, last: int) -> list[str]:
    """Markdown rows for jobs first..last and their completed stages (skipped stages ran in an earlier job)."""
    t0, jobs, stages = events["app_start"], events["jobs"], events["stages"]
    out = ["| job / stage | starts at s | gap before s | seconds | tasks | shuffle write MiB | shuffle read MiB "
           "| file read MiB | file write MiB | call site / stage name |", "|---|---|---|---|---|---|---|---|---|---|"]
    prev_end = None
    for j in sorted(k for k in jobs if first <= k <= last):
        job = jobs[j]
        gap = "" if prev_end is None else f"{(job['start'] - prev_end) / 1000:.2f}"
        out.append(f"| job {j} | {(job['start'] - t0) / 1000:.2f} | {gap} | {(job['end'] - job['start']) / 1000:.2f} "
                   f"| | | | | | {job['site']} |")
        prev_end = job["end"]
        for s in sorted(job["stages"]):
            st = stages.get(s)
            if st is None or st["start"] is None:
                continue
            secs = (st["end"] - st["start"]) / 1000
            out.append(f"| &nbsp; stage {s} | {(st['start'] - t0) / 1000:.2f} | | {secs:.2f} | {st['tasks']} "
                       f"| {mib(st.get('shuffle_write'))} | {mib(st.get('shuffle_read'))} "
                       f"| {mib(st.get('input'))} | {mib(st.get('output'))} | {st['name'][:60]} |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--jobs", default=None, help="first-last job ids (default: all)")
    args = parser.parse_args(argv)
    events = read_events(args.log)
    first, last = (0, max(events["jobs"], default=0)) if args.jobs is None else map(int, args.jobs.split("-"))
    print("\n".join(table(events, first, last)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
