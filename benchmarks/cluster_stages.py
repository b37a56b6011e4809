"""Pipeline stage timings on the no-shared-disk S3 test cluster beside the same run on local[2].

    python -m benchmarks.cluster_stages           # conf/synthetic.yaml as the demo runs it
    python -m benchmarks.cluster_stages --small    # the cluster tests' small config

Both runs go through spark-submit (`jobs/run.py`, then `jobs/gate.py`) with storage.root on moto's S3
server on 127.0.0.1 (s3a://), each under its own root. The cluster is tests/cluster's: a master and two
workers (1 core, 1200m each) in private mount namespaces. A stage's seconds are its `stage_runs`
finished - started (inside the driver: no JVM start); `submit_s` is the whole spark-submit. Before it
reports, it checks that every stage finished in both runs and that their exact metrics agree within 1e-3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS, _header, machine_info
from gramian.config import StorageConfig
from gramian.tables import read
from tests.cluster.s3 import AWS_ENV, MotoS3, s3_session
from tests.cluster.standalone import ROOT, StandaloneCluster, build_zip, submit_command

SMALL = ["generate.n_users=400", "generate.n_items=200", "generate.n_interactions=8000", "model.dim=8",
         "model.epochs=6", "train.num_user_blocks=4", "train.num_item_blocks=4", "evaluate.k=[10,20]",
         "publish.n=10"]
STAGES = ("ingest", "split", "train", "evaluate", "gate", "publish")


def run(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> float:
    """Run one spark-submit to the end (output kept in `log`); its wall seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        p = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[-1]} failed ({p.returncode}), see {log}:\n" + log.read_text()[-3000:])
    return time.perf_counter() - t0


def pipeline(master: str, root: str, sets: list[str], s3: MotoS3, cluster: StandaloneCluster, zip_path: Path,
             name: str) -> dict[str, float]:
    """`jobs/run.py` then `jobs/gate.py` on `master` under `root`; wall seconds of each submission."""
    args = ["--conf", str(ROOT / "conf" / "synthetic.yaml"),
            *[x for s in [*sets, f"storage.root={root}"] for x in ("--set", s)], "--run-id", name]
    walls = {}
    for job, extra in (("jobs/run.py", []), ("jobs/gate.py", ["--metric", "ndcg", "--k", "10"])):
        kw = {"py_files": zip_path, **s3.submit_settings()}
        cmd = (cluster.submit_command(job, [*args, *extra], **kw) if master == cluster.url
               else submit_command(master, job, [*args, *extra], **kw))
        walls[Path(job).stem] = run(cmd, cluster.env, cluster.driver_cwd, cluster.workdir / f"{name}-{job[5:]}.log")
    return walls


def stage_seconds(spark: Any, root: str, run_id: str) -> dict[str, float]:
    rows = read(spark, StorageConfig(root=root), "stage_runs").filter(f"run_id = '{run_id}'").collect()
    out = {r["stage"]: (r["finished"] - r["started"]).total_seconds() for r in rows if r["status"] == "finished"}
    missing = set(STAGES) - set(out)
    if missing:
        raise RuntimeError(f"stages {sorted(missing)} did not finish in run {run_id} under {root}")
    return out


def exact_metrics(spark: Any, root: str, run_id: str) -> dict[str, float]:
    rows = read(spark, StorageConfig(root=root), "metrics").filter(
        f"run_id = '{run_id}' AND method = 'exact' AND model NOT LIKE '%@%'").collect()
    return {f"{r['model']} {r['metric']}@{r['k']}": r["value"] for r in rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="the cluster tests' config instead of the demo's")
    args = ap.parse_args(argv)
    sets = SMALL if args.small else []
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="gramian-cluster-bench-"))
    doc: dict[str, Any] = {"machine": machine, "config": ["conf/synthetic.yaml", *sets], "runs": {}}
    with s3_session(work / "moto") as (spark, s3), \
            StandaloneCluster(work / "cluster", workers=2, cores=1, env=AWS_ENV) as cluster:
        zip_path = build_zip(work / "gramian.zip")
        for name, master in (("local2", "local[2]"), ("cluster", cluster.url)):
            root = s3.url(name)
            walls = pipeline(master, root, sets, s3, cluster, zip_path, name)
            doc["runs"][name] = {"master": "local[2]" if name == "local2" else "standalone, 2 isolated workers",
                                 "root": root, "submit_s": walls, "stage_s": stage_seconds(spark, root, name),
                                 "metrics": exact_metrics(spark, root, name)}
    local, clus = doc["runs"]["local2"]["metrics"], doc["runs"]["cluster"]["metrics"]
    assert local and local.keys() == clus.keys(), (local.keys(), clus.keys())
    worst = max(abs(local[k] - clus[k]) for k in local)
    assert worst < 1e-3, f"cluster and local[2] metrics differ by {worst}"
    doc["max_metric_diff"] = worst
    machine["load_after"] = os.getloadavg()
    spark.stop()
    out = RESULTS / ("cluster_stages_small.json" if args.small else "cluster_stages.json")
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(write_md(doc, out.with_suffix(".md")))
    return 0


def write_md(doc: dict[str, Any], path: Path) -> Path:
    """The stage table: seconds per stage on local[2] and on the cluster, and their ratio."""
    machine = doc["machine"]
    machine["versions"].setdefault("scipy", "-")
    lines = _header(machine, "gramian pipeline on the no-shared-disk S3 cluster vs local[2]")
    lines += [f"Config: `{' '.join(doc['config'])}`; both through spark-submit, storage.root on moto S3 "
              f"(s3a://, 127.0.0.1). Exact metrics agree within {doc['max_metric_diff']:.1e}.", "",
              "| stage | local[2] s | cluster s | cluster / local |", "|---|---:|---:|---:|"]
    loc, clu = doc["runs"]["local2"]["stage_s"], doc["runs"]["cluster"]["stage_s"]
    for s in STAGES:
        lines.append(f"| {s} | {loc[s]:.1f} | {clu[s]:.1f} | {clu[s] / loc[s]:.2f} |")
    lines.append(f"| **stages total** | {sum(loc.values()):.1f} | {sum(clu.values()):.1f} | "
                 f"{sum(clu.values()) / sum(loc.values()):.2f} |")
    for job in ("run", "gate"):
        lw, cw = doc["runs"]["local2"]["submit_s"][job], doc["runs"]["cluster"]["submit_s"][job]
        lines.append(f"| spark-submit jobs/{job}.py (wall) | {lw:.1f} | {cw:.1f} | {cw / lw:.2f} |")
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
