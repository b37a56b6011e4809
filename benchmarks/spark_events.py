"""Spark jobs and stages of one application from its event log, as a timeline: where a job's wall time went.

    python -m benchmarks.spark_events <event log file> [--markers LOG]   # markdown table on stdout

A job runs with `--conf spark.eventLog.enabled=true --conf spark.eventLog.dir=<dir>`; each application leaves
one file there. Every job is listed with its start and end (seconds since the application started), its stages
(tasks, the summed task run time, shuffle bytes) and the call site Spark recorded, so the gaps between jobs
(driver work, Delta log reads, Python) show as well as the jobs themselves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """The event log's JSON events, one per line (a log still being written may end in a partial line); `path` a
    file or a rolling log's folder (Spark 4's default: eventlog_v2_<app>/events_<n>_<app>)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("events_*"), key=lambda p: int(p.name.split("_")[1]))
    out = []
    for f in files:
        for line in _text(f).splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "Event" in event:
                out.append(event)
    return out


def _text(path: Path) -> str:
    """A log file's text; zstd-compressed (spark.eventLog.compress, Spark 4's default codec) read through pyarrow."""
    if path.suffix != ".zstd":
        return path.read_text(errors="replace")
    import pyarrow as pa

    with pa.CompressedInputStream(pa.OSFile(str(path)), "zstd") as f:
        try:
            return f.read().decode(errors="replace")
        except OSError:  # a log still being written ends in an unfinished frame
            return ""


def timeline(events: list[dict[str, Any]]) -> dict[str, Any]:
    """{"start": application start (ms since the epoch), "jobs": [job ...]} where each job has id, start and end
    (seconds since the application started), description, call site and its stages (id, name, tasks, start, end,
    task_seconds: the tasks' summed executor run time, shuffle_read_mb, shuffle_write_mb)."""
    app = next((e["Timestamp"] for e in events if e["Event"] == "SparkListenerApplicationStart"), None)
    t0 = app if app is not None else min(e.get("Submission Time", 0) for e in events if "Submission Time" in e)
    jobs: dict[int, dict[str, Any]] = {}
    stages: dict[int, dict[str, Any]] = {}
    stage_job: dict[int, int] = {}
    task_ms: dict[int, float] = {}
    shuffle: dict[int, list[float]] = {}
    for e in events:
        kind = e["Event"]
        if kind == "SparkListenerJobStart":
            props = e.get("Properties") or {}
            jobs[e["Job ID"]] = {"id": e["Job ID"], "start": (e["Submission Time"] - t0) / 1000, "end": None,
                                 "description": props.get("spark.job.description", ""),
                                 "call_site": props.get("callSite.short", ""), "stages": []}
            for s in e.get("Stage Infos", []):
                stage_job[s["Stage ID"]] = e["Job ID"]
        elif kind == "SparkListenerJobEnd" and e["Job ID"] in jobs:
            jobs[e["Job ID"]]["end"] = (e["Completion Time"] - t0) / 1000
            jobs[e["Job ID"]]["result"] = e.get("Job Result", {}).get("Result", "")
        elif kind == "SparkListenerTaskEnd":
            m = e.get("Task Metrics") or {}
            sid = e["Stage ID"]
            task_ms[sid] = task_ms.get(sid, 0.0) + m.get("Executor Run Time", 0)
            acc = shuffle.setdefault(sid, [0.0, 0.0])
            read = m.get("Shuffle Read Metrics") or {}
            acc[0] += read.get("Remote Bytes Read", 0) + read.get("Local Bytes Read", 0)
            acc[1] += (m.get("Shuffle Write Metrics") or {}).get("Shuffle Bytes Written", 0)
        elif kind == "SparkListenerStageCompleted":
            info = e["Stage Info"]
            if "Submission Time" not in info:  # skipped (its shuffle output was reused)
                continue
            stages[info["Stage ID"]] = {"id": info["Stage ID"], "name": info.get("Stage Name", ""),
                                        "tasks": info.get("Number of Tasks", 0),
                                        "start": (info["Submission Time"] - t0) / 1000,
                                        "end": (info.get("Completion Time", info["Submission Time"]) - t0) / 1000}
    for sid, stage in stages.items():
        stage["task_seconds"] = task_ms.get(sid, 0.0) / 1000
        read, written = shuffle.get(sid, [0.0, 0.0])
        stage["shuffle_read_mb"], stage["shuffle_write_mb"] = read / 2**20, written / 2**20
        if sid in stage_job and stage_job[sid] in jobs:
            jobs[stage_job[sid]]["stages"].append(stage)
    return {"start": t0, "jobs": sorted(jobs.values(), key=lambda j: j["start"])}


def markdown(tl: dict[str, Any], markers: list[tuple[float, str]] | None = None) -> list[str]:
    """The timeline as a markdown table; `markers` (seconds since the application started, text) interleaved,
    e.g. the job's own phase lines, so a reader sees which phase each Spark job belongs to."""
    rows: list[tuple[float, str]] = []
    for j in tl["jobs"]:
        end = j["end"] if j["end"] is not None else float("nan")
        stages = "; ".join(f"{s['name'].split(' at ')[0]} {s['tasks']}t {s['end'] - s['start']:.2f}s"
                           f" (tasks {s['task_seconds']:.2f}s"
                           + (f", shuffle w {s['shuffle_write_mb']:.1f} MB" if s["shuffle_write_mb"] else "")
                           + (f", r {s['shuffle_read_mb']:.1f} MB" if s["shuffle_read_mb"] else "") + ")"
                           for s in sorted(j["stages"], key=lambda s: s["id"]))
        rows.append((j["start"], f"| {j['start']:.2f} | {end:.2f} | {end - j['start']:.2f} | job {j['id']} "
                                 f"{j['call_site']} | {stages or 'no stage ran'} |"))
    for t, text in markers or []:
        rows.append((t, f"| {t:.2f} | | | **{text}** | |"))
    return ["| start s | end s | s | job (call site) | stages: name, tasks, wall (summed task run time, shuffle) |",
            "|---|---|---|---|---|", *(r for _, r in sorted(rows, key=lambda r: r[0]))]


def main(argv: list[str] | None = None) -> int:
    """Print the event log's job timeline as markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="an event log: a file or a rolling log's folder under spark.eventLog.dir")
    args = parser.parse_args(argv)
    print("\n".join(markdown(timeline(read_events(args.log)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
