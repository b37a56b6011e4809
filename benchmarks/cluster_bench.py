"""Cluster benchmark: gramian's train job (both factor routings) vs MLlib ALS on one standalone cluster.

    python -m benchmarks.cluster_bench                       # Gowalla, d=64, 15 epochs, package defaults
    python -m benchmarks.cluster_bench --dataset ml-100k --methods gramian-auto,mllib
    python -m benchmarks.cluster_bench --dataset synthetic10m --methods gramian-routed,mllib --dim 128 --epochs 3 \
        --worker-memory 3g --executor-memory 3g      # -> benchmarks/results/cluster-10m.{json,md}
    python -m benchmarks.cluster_bench --storage s3 --methods gramian-auto,gramian-routed,mllib \
        --disk benchmarks/results/cluster.json     # no shared disk, store on S3 -> results/cluster-s3.{json,md}

Starts a master and two 1-core workers on loopback (tests/cluster/standalone.py), prepares the Delta `train`
and `test` tables once in-process (ingest + split with the dataset's data and split sections, model defaults),
then submits, one after the other on the same cluster, `jobs/train.py` with whole factors through the artifact
store (auto), in the task closure (closure) and routed (GRAMIAN_SETS), and
`benchmarks/cluster_mllib.py` (MLlib implicit ALS at its tuned setting, numUserBlocks = numItemBlocks = 2).
Every job starts from the same Delta `train` table and writes both factor tables to Delta. Reported per job:
spark-submit wall time, fit time, session-to-first-epoch, per-epoch half-step seconds (gramian), peak RSS of the
driver tree and of each worker tree (its executors and Python workers), and exact Recall@20 / NDCG@20 of the
factors by the project's one ranking implementation. Results: benchmarks/results/cluster.{json,md}.

`--storage s3` runs the same jobs on the cluster a real deployment has (tests/cluster's): every worker in its own
mount namespace with a private /tmp and /dev/shm, the driver working under a /tmp no worker sees, and the nodes
sharing nothing but the store, moto's S3 server on 127.0.0.1 (storage.root s3a://gramian/warehouse). The raw
files are copied into the bucket first and `jobs/ingest.py` and `jobs/split.py` run through spark-submit on the
cluster, so every table, artifact and factor file any job reads comes from S3. `--disk` names a shared-disk run's
JSON to set beside it (ratios and loads of both).

`synthetic10m` is train_bench's 10M generator (1M users x 200k items) written as Parquet, then ingested and split
by the stages (about 10M train interactions, SYNTHETIC10M); it is timed and measured, not evaluated (exact
Recall@20 of 1M users against 200k items is a driver job of its own), and MLlib gets FALLBACK's setting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.memory import PeakRSS
from benchmarks.report import RESULTS, machine_info

REPO = Path(__file__).resolve().parent.parent
METHODS = ("gramian-auto", "gramian-closure", "gramian-routed", "mllib")
# each gramian method's settings: auto = whole factors through the artifact store (train.exchange auto), closure =
# whole factors in the task closure over cached CSR rows (the path before the store exchange), routed = routed rows
GRAMIAN_SETS = {"gramian-auto": ["train.routing=auto"],
                "gramian-closure": ["train.routing=auto", "train.exchange=closure"],
                "gramian-routed": ["train.routing=routed"],
                # RankALS (model.name pairwise) through the same exchanges: issue 14's "within 1.5x iALS per epoch"
                "gramian-rankals": ["model.name=pairwise", "train.routing=auto"],
                "gramian-rankals-routed": ["model.name=pairwise", "train.routing=routed"]}
EPOCH_LINE = re.compile(r"epoch 1/\d+ loss")
SESSION_LINE = re.compile(r"spark-submit session: Spark")  # an INFO line: the jobs run with --verbose
PHASE_LINE = re.compile(r"gramian\.phases: (\w+) \S+: (.+) (-?[\d.]+) s$")  # gramian.progress.Phases
ROUTES_LINE = re.compile(r"(user|item) side: routes built, (\d+) rows routed per half-step, at most (\d+) to one block")
SIZED_LINE = re.compile(r"routed blocks sized to (\d+) MiB per task")
BLOCKS_LINE = re.compile(r"(user|item) side: (\d+) blocks, interactions per block min (\d+) max (\d+)")
# the 10M set of issue 14: train_bench's synthetic10m generator (benchmarks.datasets.power_law_interactions:
# 1M users x 200k items, Zipf activity 0.6 and popularity 0.9, binary weight), written as Parquet and ingested
# and split by the stages; the random split holds out round(10%) of each user's pairs (at least one), so
# SYNTHETIC10M_PAIRS pairs leave about 10M for train
SYNTHETIC10M_PAIRS = 11_500_000
SYNTHETIC10M = {"data": {"name": "synthetic10m", "format": "parquet", "path": "<written by synthetic_parquet>"},
                "split": {"method": "random", "test_fraction": 0.1, "seed": 0}}
TIME_ONLY = ("synthetic10m",)  # datasets timed and measured but not evaluated


def bench_conf(dataset: str, folder: Path) -> Path:
    """conf/<dataset>.yaml with only its data and split sections (synthetic10m: SYNTHETIC10M's data, generate and
    split sections): the model keeps the package defaults."""
    if dataset == "synthetic10m":
        raw = {**SYNTHETIC10M, "data": {**SYNTHETIC10M["data"], "path": synthetic_parquet(folder)}}
    else:
        raw = yaml.safe_load((REPO / "conf" / f"{dataset}.yaml").read_text())
    path = folder / f"{dataset}-defaults.yaml"
    path.write_text(yaml.safe_dump({k: raw[k] for k in ("data", "split") if k in raw}))
    return path


def synthetic_parquet(folder: Path) -> str:
    """SYNTHETIC10M_PAIRS power-law pairs (user_id, item_id; no weight or time: ingest reads 1.0) as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.datasets import power_law_interactions

    users, items = power_law_interactions(1_000_000, 200_000, SYNTHETIC10M_PAIRS, seed=0)
    path = folder / "synthetic10m.parquet"
    pq.write_table(pa.table({"user_id": users, "item_id": items}), path, row_group_size=1_000_000)
    return str(path)


def mllib_params(dataset: str, dim: int, epochs: int) -> dict[str, Any]:
    """MLlib's validation optimum from tuning.json at this rank (train_bench's choice), 2 x 2 blocks."""
    from benchmarks.train_bench import FALLBACK, tuned

    best, _ = (None, None) if dataset in TIME_ONLY else tuned(dataset, "mllib")
    p = dict(best or FALLBACK["mllib"])
    p.update(rank=dim, maxIter=epochs, numUserBlocks=2, numItemBlocks=2)
    return p


def machine_cpu() -> tuple[float, float]:
    """CPU seconds this machine has spent busy at normal priority (user, system, interrupts) and on niced processes
    (e.g. a background job under `nice`, which yields the cores to the benchmark), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + system + irq + softirq + steal) / tick, nice / tick


def process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system, all threads) process `pid` has used; None without one or once it is gone."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Job:
    """One spark-submit on the cluster: output kept line by line with arrival times, RSS of driver and workers."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, worker_pids: list[int],
                 cwd: Path = REPO, store_pid: int | None = None) -> None:
        self.t0 = time.monotonic()
        self.load_start = os.getloadavg()[0]
        self.store_pid = store_pid
        self.cpu_start = machine_cpu(), process_cpu(store_pid)
        self.marks: dict[str, float] = {}
        self.lines: list[str] = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     text=True, errors="replace")
        self.driver_rss = PeakRSS(self.proc.pid).__enter__()
        self.worker_rss = [PeakRSS(pid).__enter__() for pid in worker_pids]
        self.log = log
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log, "w") as out:
            for line in self.proc.stdout:
                now = time.monotonic() - self.t0
                for name, pattern in (("session", SESSION_LINE), ("first_epoch_done", EPOCH_LINE)):
                    if name not in self.marks and pattern.search(line):
                        self.marks[name] = now
                self.lines.append(line)
                out.write(f"[+{now:7.2f}s] {line}")  # arrival time since spark-submit started
                out.flush()

    def finish(self, timeout: float = 3600) -> dict[str, Any]:
        """Wait; fail loudly (with the log's tail) unless the job exited 0."""
        self.proc.wait(timeout=timeout)
        wall = time.monotonic() - self.t0
        self.reader.join(timeout=30)
        for m in (self.driver_rss, *self.worker_rss):
            m.__exit__(None, None, None)
        if self.proc.returncode != 0:
            raise RuntimeError(f"spark-submit failed ({self.proc.returncode}), log {self.log}:\n"
                               + "".join(self.lines[-40:]))
        (busy, niced), store = machine_cpu(), process_cpu(self.store_pid)
        return {"wall_seconds": wall, "marks": self.marks, "text": "".join(self.lines),
                "load_1min_start_end": [self.load_start, os.getloadavg()[0]],
                "cpu_seconds": {"machine_busy": busy - self.cpu_start[0][0],
                                "machine_niced": niced - self.cpu_start[0][1],
                                **({"store_server": store - self.cpu_start[1]} if store is not None else {})},
                "driver_peak_rss_mib": self.driver_rss.peak / 2**20,
                "worker_peak_rss_mib": [m.peak / 2**20 for m in self.worker_rss],
                "worker_peak_by_command_mib": [{k: v / 2**20 for k, v in m.peak_by_command.items()}
                                               for m in self.worker_rss]}


def prepare(conf: Path, root: str) -> None:
    """ingest + split in a local session of their own (gone before the cluster jobs), into the shared tables."""
    for stage in ("ingest", "split"):
        subprocess.run([sys.executable, "-m", "gramian.cli", stage, "--conf", str(conf), "--set",
                        f"storage.root={root}", "--run-id", "bench-data"], check=True, cwd=REPO)


def upload_inputs(conf: Path, s3: Any) -> None:
    """Copy the conf's data.path and data.test_path files into the bucket (raw/) and point the conf at them: the
    cluster's nodes share nothing but the store, so its ingest reads the raw data from there."""
    from gramian.config import expand_path

    raw = yaml.safe_load(conf.read_text())
    client = s3.client()
    for key in ("path", "test_path"):
        local = expand_path(raw["data"].get(key))
        if not local:
            continue
        if not Path(local).is_file():
            raise FileNotFoundError(f"data.{key} must be one file to upload, got {local!r}")
        target = f"raw/{key}/{Path(local).name}"
        client.upload_file(local, s3.bucket, target)
        raw["data"][key] = s3.url(target)
    conf.write_text(yaml.safe_dump(raw))


def prepare_on_cluster(args: argparse.Namespace, conf: Path, root: str, cluster: Any, zip_path: Path,
                       s3: Any) -> dict[str, float]:
    """`jobs/ingest.py` then `jobs/split.py` through spark-submit on the cluster; the wall seconds of each."""
    from benchmarks.cluster_stages import run

    walls = {}
    for stage in ("ingest", "split"):
        cmd = cluster.submit_command(f"jobs/{stage}.py", ["--conf", str(conf), "--set", f"storage.root={root}",
                                                          "--run-id", "bench-data"],
                                     py_files=zip_path, executor_memory=args.executor_memory,
                                     driver_memory=args.driver_memory, **s3.submit_settings())
        print(f"[cluster_bench] {stage}: submitting", flush=True)
        walls[stage] = run(cmd, cluster.env, cluster.driver_cwd, cluster.workdir / f"{stage}.log")
    return walls


def read_split(root: str) -> Any:
    """The warehouse's train/test tables as a benchmarks Split (dense idx space), for exact evaluation."""
    import scipy.sparse as sp

    from benchmarks.datasets import Split
    from gramian import tables
    from gramian.config import StorageConfig
    from gramian.spark import get_session

    spark, st = get_session(), StorageConfig(root=root)

    def arrow(name: str, cols: list[str]) -> dict[str, np.ndarray]:
        t = tables.read(spark, st, name).select(*cols).toArrow()
        return {c: t.column(c).to_numpy() for c in cols}

    n_users = int(arrow("users", ["idx"])["idx"].max()) + 1
    n_items = int(arrow("items", ["idx"])["idx"].max()) + 1
    tr = arrow("train", ["user_idx", "item_idx", "weight"])
    te = arrow("test", ["user_idx", "item_idx"])
    test = sp.csr_matrix((np.ones(len(te["user_idx"])), (te["user_idx"], te["item_idx"])), shape=(n_users, n_items))
    test.sort_indices()
    return Split("cluster", n_users, n_items, tr["user_idx"].astype(np.int32), tr["item_idx"].astype(np.int32),
                 tr["weight"].astype(np.float64), test.indptr.astype(np.int64), test.indices.astype(np.int32))


def read_factors(path_or_run: str, root: str, n: int, dim: int, side: str) -> np.ndarray:
    """Factors as a dense (n, dim) array: gramian's `<side>_factors` rows of a run, or MLlib's Delta output."""
    from gramian import tables
    from gramian.config import StorageConfig
    from gramian.spark import get_session

    spark = get_session()
    if path_or_run.startswith("run:"):
        df = (tables.read(spark, StorageConfig(root=root), f"{side}_factors")
              .filter(f"run_id = '{path_or_run[4:]}'").selectExpr("idx AS id", "factors AS features"))
    else:
        df = spark.read.format("delta").load(f"{path_or_run}/{side}_factors")
    t = df.toArrow()
    out = np.zeros((n, dim), dtype=np.float32)
    feats = np.asarray(t.column("features").combine_chunks().flatten(), dtype=np.float32).reshape(-1, dim)
    out[t.column("id").to_numpy()] = feats
    return out


def run_jobs(args: argparse.Namespace, conf: Path, root: str, work: Path,
             s3: Any = None) -> dict[str, dict[str, Any]]:
    """Submit every method's job on one cluster, in order; return each job's measurements.

    Without `s3` the workers share this host's disk (isolated=False) and the tables sit in a local folder, as in
    issue 14's first measurement. With `s3` (--storage s3) the workers are isolated, ingest and split run on the
    cluster first (their walls in args.prepare_seconds), and every driver runs from the cluster's driver folder,
    which no worker sees, with the S3A settings."""
    from tests.cluster.s3 import AWS_ENV
    from tests.cluster.standalone import StandaloneCluster, build_zip

    out: dict[str, dict[str, Any]] = {}
    sets = [f"storage.root={root}", f"model.dim={args.dim}", f"model.epochs={args.epochs}",
            "train.checkpoint_every=0"]
    events = {**event_log_conf(args.log_dir), **jfr_conf(args.jfr)}
    with StandaloneCluster(work / "cluster", workers=2, cores=1, memory=args.worker_memory,
                           isolated=s3 is not None, env=AWS_ENV if s3 is not None else None) as cluster:
        zip_path = build_zip(work / "gramian.zip")
        env = {**cluster.env, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cwd, store_kw = (cluster.driver_cwd, s3.submit_settings()) if s3 is not None else (REPO, {})
        store_kw["conf"] = {**store_kw.get("conf", {}), **events}
        if s3 is not None:
            args.prepare_seconds = prepare_on_cluster(args, conf, root, cluster, zip_path, s3)
        workers = [cluster.procs[f"worker{i}"].pid for i in range(2)]
        for method in args.methods:
            log = work / f"{method}.log"
            if method.startswith("gramian-"):
                job_args = ["--conf", str(conf), *[x for s in [*sets, *GRAMIAN_SETS[method]] for x in ("--set", s)],
                            "--run-id", f"bench-{method.split('-', 1)[1]}", "--json", "--verbose"]
                cmd = cluster.submit_command("jobs/train.py", job_args, py_files=zip_path,
                                             executor_memory=args.executor_memory, driver_memory=args.driver_memory,
                                             **store_kw)
            else:
                params = mllib_params(args.dataset, args.dim, args.epochs)
                mllib_kw = store_kw
                if args.mllib_java_options:  # e.g. gramian's executor JIT setting, to see what it does to MLlib
                    given = store_kw["conf"].get("spark.executor.extraJavaOptions", "")
                    mllib_kw = {**store_kw, "conf": {**store_kw["conf"], "spark.executor.extraJavaOptions":
                                                     f"{given} {args.mllib_java_options}".strip()}}
                cmd = cluster.submit_command("benchmarks/cluster_mllib.py",
                                             ["--root", root, "--params", json.dumps(params),
                                              "--out", f"{root}/_bench/mllib"],
                                             py_files=zip_path, executor_memory=args.executor_memory,
                                             driver_memory=args.driver_memory, **mllib_kw)
            print(f"[cluster_bench] {method}: submitting", flush=True)
            started = time.monotonic()
            try:
                res = Job(cmd, env, log, workers, cwd, s3.proc.pid if s3 is not None else None).finish()
            except RuntimeError as e:  # recorded (an OOM is a finding), and the next method still runs
                out[method] = {**failure(str(e), log), "wall_seconds": time.monotonic() - started}
                print(f"[cluster_bench] {method}: FAILED, {out[method]['failure']}", flush=True)
                continue
            text = res.pop("text")
            res["result"] = parse_result(method, text)
            res["blocks"] = {m.group(1): {"blocks": int(m.group(2)), "min_nnz": int(m.group(3)),
                                          "max_nnz": int(m.group(4))} for m in BLOCKS_LINE.finditer(text)}
            for m in ROUTES_LINE.finditer(text):
                res["blocks"].setdefault(m.group(1), {}).update(routed_rows=int(m.group(2)),
                                                                 max_routed_rows=int(m.group(3)))
            if m := SIZED_LINE.search(text):
                res["task_budget_mib"] = int(m.group(1))
            res["phases"] = job_phases(method, res, text)
            out[method] = res
            print(f"[cluster_bench] {method}: wall {res['wall_seconds']:.1f} s, fit "
                  f"{res['result'].get('fit_seconds', float('nan')):.1f} s", flush=True)
    return out


def event_log_conf(log_dir: str | None) -> dict[str, str]:
    """Spark event logs under <log_dir>/events when the run keeps its logs (benchmarks.spark_events reads them)."""
    if not log_dir:
        return {}
    folder = Path(log_dir, "events").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return {"spark.eventLog.enabled": "true", "spark.eventLog.dir": folder.as_uri(),
            "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false"}


def jfr_conf(folder: str | None) -> dict[str, str]:
    """Java Flight Recordings of every driver and executor JVM into `folder` (where a job's JVM CPU goes: `jfr
    print --events jdk.ExecutionSample`, `jfr summary`); each JVM names its own file there."""
    if not folder:
        return {}
    path = Path(folder).resolve()
    path.mkdir(parents=True, exist_ok=True)
    option = f"-XX:StartFlightRecording=settings=profile,filename={path}/"
    return {"spark.driver.extraJavaOptions": option, "spark.executor.extraJavaOptions": option}


OOM_LINE = re.compile(r"OutOfMemoryError[^\n]*|exit code 52|Lost executor[^\n]*|CHECKPOINT_RDD_BLOCK_ID_NOT_FOUND")


def failure(message: str, log: Path) -> dict[str, Any]:
    """A failed job's record: what killed it (OOM, lost executors) as its log says, and the log's tail."""
    text = log.read_text(errors="replace") if log.exists() else message
    signs = sorted({m.group(0)[:160] for m in OOM_LINE.finditer(text)})
    return {"failed": True, "failure": "; ".join(signs[:6]) or message.splitlines()[0],
            "oom": any("OutOfMemoryError" in x or "exit code 52" in x for x in signs),
            "log_tail": text.splitlines()[-40:]}


def parse_result(method: str, text: str) -> dict[str, Any]:
    """The job's own figures: gramian's --json summary of train, MLlib's MLLIB_RESULT line."""
    if method == "mllib":
        line = next(x for x in text.splitlines() if x.startswith("MLLIB_RESULT "))
        return json.loads(line[len("MLLIB_RESULT "):])
    start = text.index("{\n")  # the --json summary is the last indented JSON document on stdout
    return json.loads(text[start:text.index("\n}", start) + 2])["train"]


def job_phases(method: str, res: dict[str, Any], text: str) -> dict[str, float]:
    """Where the whole spark-submit's wall time went: JVM start and session, each logged phase of the stage
    (train's own phases, then pipeline.execute's tracking and stage_runs ones), and the remainder (interpreter
    and JVM shutdown, and anything no phase covers)."""
    if method == "mllib":
        r = res["result"]
        out = {"spark-submit to session": r["session_seconds"], "read + fit": r["fit_seconds"],
               "write factor tables": r["write_seconds"]}
        out["rest (JVM start before Python, stop)"] = res["wall_seconds"] - r["job_seconds_in_driver"]
        return out
    out = {"spark-submit to session": res["marks"].get("session", float("nan"))}
    for line in text.splitlines():
        m = PHASE_LINE.search(line)
        if m and m.group(2) != "stage":  # `stage` is the sum of the train phases logged before it
            out[m.group(2)] = out.get(m.group(2), 0.0) + float(m.group(3))
    out["rest (JVM stop, unlogged)"] = res["wall_seconds"] - sum(v for v in out.values() if v == v)
    return out


def gramian_history(root: str, run_id: str) -> list[dict[str, Any]]:
    """Per-epoch loss and half-step seconds from the `runs` row."""
    from gramian import tables
    from gramian.config import StorageConfig
    from gramian.spark import get_session

    row = (tables.read(get_session(), StorageConfig(root=root), "runs").filter(f"run_id = '{run_id}'")
           .select("epochs").collect()[0])
    return json.loads(row[0])


def breakdown(hist: list[dict[str, Any]], slots: int) -> dict[str, dict[str, float]]:
    """Mean per half-step of each side: wall seconds, kernel and fetch seconds (task sums / slots), the rest."""
    out = {}
    for side in ("user", "item"):
        wall = float(np.mean([h[f"{side}_seconds"] for h in hist]))
        kernel = float(np.mean([h.get(f"{side}_kernel_seconds", 0.0) for h in hist])) / slots
        fetch = float(np.mean([h.get(f"{side}_fetch_seconds", 0.0) for h in hist])) / slots
        out[side] = {"wall": wall, "kernel": kernel, "fetch": fetch, "rest": wall - kernel - fetch}
    return out


def summarise(args: argparse.Namespace, root: str, jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Exact metrics of every method's factors, gramian's epoch breakdown, and the ratios the issue asks for."""
    from benchmarks.evaluation import evaluate

    split = read_split(root)
    for method, res in ((m, r) for m, r in jobs.items() if not r.get("failed")):
        where = f"{root}/_bench/mllib" if method == "mllib" else f"run:bench-{method.split('-', 1)[1]}"
        if args.dataset not in TIME_ONLY:
            u = read_factors(where, root, split.n_users, args.dim, "user")
            v = read_factors(where, root, split.n_items, args.dim, "item")
            res["metrics"] = evaluate(split, u, v, ks=(20,))
        if method != "mllib":
            hist = gramian_history(root, f"bench-{method.split('-', 1)[1]}")
            res["epochs"] = hist
            res["seconds_per_epoch"] = float(np.mean([h["user_seconds"] + h["item_seconds"] for h in hist]))
            res["breakdown"] = breakdown(hist, slots=2)
            marks = res["marks"]
            if "session" in marks and "first_epoch_done" in marks:
                first = hist[0]["user_seconds"] + hist[0]["item_seconds"]
                res["session_to_first_epoch_seconds"] = marks["first_epoch_done"] - first - marks["session"]
        else:
            res["seconds_per_epoch"] = res["result"]["fit_seconds"] / args.epochs
    ratios = {}
    done = {m: r for m, r in jobs.items() if not r.get("failed")}
    if "mllib" in done:
        ml = jobs["mllib"]
        for m in (k for k in done if k != "mllib"):
            ratios[m] = {"fit_vs_mllib": jobs[m]["result"]["fit_seconds"] / ml["result"]["fit_seconds"],
                         "job_vs_mllib": jobs[m]["wall_seconds"] / ml["wall_seconds"],
                         "s_per_epoch_vs_mllib": jobs[m]["seconds_per_epoch"] / ml["seconds_per_epoch"]}
    for res in done.values():
        peaks = [res["driver_peak_rss_mib"], *res["worker_peak_rss_mib"]]
        res["total_peak_rss_mib"] = float(sum(peaks))  # sum of each tree's peak: an upper bound of the total
    # machine_info() reads the load now, at the end: the load before is the one main() took at the start
    machine = machine_info() | {"load_before": args.load_before}
    return {"machine": machine, "load_after": os.getloadavg(), "dataset": args.dataset, "dim": args.dim,
            "epochs": args.epochs, "cluster": {"workers": 2, "cores_per_worker": 1,
                                               "worker_memory": args.worker_memory,
                                               "executor_memory": args.executor_memory,
                                               "driver_memory": args.driver_memory, "store": root,
                                               "storage": args.storage,
                                               "mllib_java_options": args.mllib_java_options},
            "jobs": jobs, "ratios": ratios, "split": split.summary(),
            **({"prepare_seconds": args.prepare_seconds} if getattr(args, "prepare_seconds", None) else {})}


def write_md(doc: dict[str, Any], path: Path) -> None:
    """The markdown table of cluster.json."""
    m = doc["machine"]
    lines = [f"# Cluster benchmark: {doc['dataset']}, d={doc['dim']}, {doc['epochs']} epochs", "",
             f"{m['date']}; {m['nproc']} cores, {m['ram_gib']} GiB, {m['cpu']}; load before "
             f"{tuple(round(x, 2) for x in m['load_before'])}, after {tuple(round(x, 2) for x in doc['load_after'])}",
             f"Standalone master + {doc['cluster']['workers']} workers x {doc['cluster']['cores_per_worker']} core "
             f"on loopback, worker memory {doc['cluster']['worker_memory']}, executor memory "
             f"{doc['cluster']['executor_memory']}; store {doc['cluster']['store']}"
             + (f"; MLlib's executors with {doc['cluster']['mllib_java_options']}"
                if doc["cluster"].get("mllib_java_options") else ""), *storage_lines(doc),
             *cpu_lines(doc), "",
             "| job | spark-submit wall s | fit s | s/epoch | session -> first epoch s | Recall@20 | NDCG@20 "
             "| driver peak MiB | worker (executor) peaks MiB | sum of peaks MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in doc["jobs"].items():
        if r.get("failed"):
            lines.append(f"| {name} | FAILED{' (executor OOM)' if r['oom'] else ''}: {r['failure']} "
                         "| | | | | | | | |")
            continue
        s2e = r.get("session_to_first_epoch_seconds")
        metrics = r.get("metrics") or {}
        lines.append(f"| {name} | {r['wall_seconds']:.1f} | {r['result']['fit_seconds']:.1f} | "
                     f"{r['seconds_per_epoch']:.2f} | {'' if s2e is None else f'{s2e:.1f}'} | "
                     f"{metrics.get('recall@20', float('nan')):.4f} | {metrics.get('ndcg@20', float('nan')):.4f} | "
                     f"{r['driver_peak_rss_mib']:.0f} | {', '.join(f'{x:.0f}' for x in r['worker_peak_rss_mib'])} | "
                     f"{r.get('total_peak_rss_mib', float('nan')):.0f} |")
    if doc["ratios"]:
        lines += ["", "| gramian job | s/epoch / MLlib s/epoch | fit / MLlib fit | whole job / MLlib job |",
                  "|---|---|---|---|"]
        for name, r in doc["ratios"].items():
            if "s_per_epoch_vs_mllib_at_most" in r:  # MLlib stopped unfinished: a bound, not a ratio
                lines.append(f"| {name} | at most {r['s_per_epoch_vs_mllib_at_most']:.2f}x (MLlib unfinished) | | |")
                continue
            lines.append(f"| {name} | {r.get('s_per_epoch_vs_mllib', float('nan')):.2f}x | {r['fit_vs_mllib']:.2f}x "
                         f"| {r['job_vs_mllib']:.2f}x |")
    blocks = {name: r["blocks"] for name, r in doc["jobs"].items() if r.get("blocks")}
    if blocks:
        lines += ["", "Blocks per side (interactions per block min-max): " + "; ".join(
            f"{name}: " + ", ".join(f"{side} {b['blocks']} ({b['min_nnz']:,}-{b['max_nnz']:,})"
                                    for side, b in sides.items()) for name, sides in blocks.items())]
    slots = doc["cluster"]["workers"] * doc["cluster"]["cores_per_worker"]
    rows = [(name, r["breakdown"]) for name, r in doc["jobs"].items() if "breakdown" in r]
    if rows:
        lines += ["", f"Where a half-step's time goes (mean over epochs; kernel and fetch are summed over the block "
                  f"tasks and divided by the {slots} task slots; the rest is Spark scheduling, closure shipping, "
                  "result collection and the driver)", "",
                  "| job | side | wall s | kernel s | fetch s | rest s |", "|---|---|---|---|---|---|"]
        for name, b in rows:
            for side in ("user", "item"):
                x = b[side]
                lines.append(f"| {name} | {side} | {x['wall']:.2f} | {x['kernel']:.2f} | {x['fetch']:.2f} | "
                             f"{x['rest']:.2f} |")
    before = doc.get("before") or {}
    if before:
        lines += ["", f"Before: commit {before['commit']}, load {before['load']}; session -> first epoch "
                  + ", ".join(f"{n} {j['session_to_first_epoch_seconds']:.1f} s" for n, j in before["jobs"].items())]
    lines += phase_table({**doc["jobs"], **{f"{n} before": j for n, j in before.get("jobs", {}).items()}})
    if doc.get("disk"):
        lines += disk_comparison(doc, doc["disk"])
    for name, r in doc["jobs"].items():
        if "epochs" in r:
            lines += ["", f"{name}, seconds per half-step (user / item):",
                      " ".join(f"{h['user_seconds']:.2f}/{h['item_seconds']:.2f}" for h in r["epochs"])]
    path.write_text("\n".join(lines) + "\n")


def before_of(earlier: dict[str, Any]) -> dict[str, Any]:
    """--before's document as write_md shows it ({commit, load, jobs}): as given, or cut from an earlier run's whole
    results JSON (its label, its load, its gramian jobs that reached their first epoch)."""
    if "machine" not in earlier:
        return earlier
    load = tuple(round(x, 1) for x in earlier["machine"].get("load_before", ()))
    return {"commit": earlier.get("commit_tested") or "earlier run", "load": f"{load} before",
            "jobs": {n: j for n, j in earlier["jobs"].items() if "session_to_first_epoch_seconds" in j}}


def storage_lines(doc: dict[str, Any]) -> list[str]:
    """What the no-shared-disk run adds to the header: the isolation, the prepare jobs, moto's memory."""
    if doc["cluster"].get("storage") != "s3":
        return []
    prep = ", ".join(f"{k} {v:.1f} s" for k, v in doc.get("prepare_seconds", {}).items())
    return ["", "No shared disk: each worker in its own mount namespace (private /tmp and /dev/shm), the drivers "
            "working under a /tmp no worker sees, the store moto's S3 server on 127.0.0.1 (s3a://). The raw files "
            f"were copied into the bucket and ingested and split by spark-submit jobs on the cluster ({prep}); "
            f"moto's peak RSS {doc.get('moto_peak_rss_mib', float('nan')):.0f} MiB. Load (1 min) at each job's "
            "start and end: " + "; ".join(f"{n} {a:.1f} -> {b:.1f}" for n, r in doc["jobs"].items()
                                           for a, b in [r.get("load_1min_start_end", (float("nan"),) * 2)])]


def cpu_lines(doc: dict[str, Any]) -> list[str]:
    """Where the two cores went during each job (runs that recorded it): busy at normal priority, moto's share of
    that, and niced background work (which yields the cores)."""
    rows = [(n, r["wall_seconds"], r["cpu_seconds"]) for n, r in doc["jobs"].items() if r.get("cpu_seconds")]
    if not rows:
        return []
    return ["", "CPU seconds during each job (the machine has 2 cores, so 2 x wall is all there is): " + "; ".join(
        f"{n} busy {c['machine_busy']:.0f} of {2 * w:.0f}"
        + (f", of which moto {c['store_server']:.0f}" if "store_server" in c else "")
        + f", niced {c['machine_niced']:.0f}" for n, w, c in rows)]


def disk_summary(path: str) -> dict[str, Any]:
    """What disk_comparison needs of a disk run's JSON: its loads, date, commit and ratios (s/epoch ratios
    derived from its jobs where an older run did not record them)."""
    disk = json.loads(Path(path).read_text())
    ratios = {m: dict(r) for m, r in disk.get("ratios", {}).items()}
    jobs = disk.get("jobs", {})
    for m, r in ratios.items():
        if "s_per_epoch_vs_mllib" not in r and "seconds_per_epoch" in jobs.get(m, {}) and "mllib" in jobs:
            r["s_per_epoch_vs_mllib"] = jobs[m]["seconds_per_epoch"] / jobs["mllib"]["seconds_per_epoch"]
    return {"path": path, "commit_tested": disk.get("commit_tested"), "load_after": disk["load_after"],
            "ratios": ratios, "load_before": disk["machine"]["load_before"], "date": disk["machine"]["date"]}


def disk_comparison(doc: dict[str, Any], disk: dict[str, Any]) -> list[str]:
    """Each gramian job's ratios to MLlib in this run beside the shared-disk run's (`doc["disk"]`, both loads
    quoted): ratios measured within one run compare across runs, absolute seconds at different loads do not."""
    def load(before: list[float], after: list[float]) -> str:
        return f"{tuple(round(x, 2) for x in before)} -> {tuple(round(x, 2) for x in after)}"

    out = ["", f"Beside the shared-disk run {disk['path']} ({disk.get('commit_tested') or 'commit not recorded'}, "
           f"{disk['date']}; load {load(disk['load_before'], disk['load_after'])}; this run: load "
           f"{load(doc['machine']['load_before'], doc['load_after'])})", "",
           "| gramian job | s/epoch / MLlib: S3 | disk | fit / MLlib: S3 | disk | whole job / MLlib: S3 | disk |",
           "|---|---|---|---|---|---|---|"]
    for job, r in doc["ratios"].items():
        d = disk.get("ratios", {}).get(job, {})
        cells = [x for k in ("s_per_epoch_vs_mllib", "fit_vs_mllib", "job_vs_mllib")
                 for x in (r.get(k), d.get(k))]
        out.append(f"| {job} | " + " | ".join("" if c is None else f"{c:.2f}x" for c in cells) + " |")
    return out


def phase_table(jobs: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: each job's wall seconds split into its phases (job_phases), one column per job."""
    names = [n for n, r in jobs.items() if r.get("phases")]
    if not names:
        return []
    order: list[str] = []
    for n in names:
        order += [k for k in jobs[n]["phases"] if k not in order]
    rest = [k for k in order if k.startswith("rest")]
    order = [k for k in order if not k.startswith("rest")] + rest
    out = ["", "Where the whole spark-submit job's time goes, seconds (phases as the job logs them; the fit's "
           "setup is everything between fit start and the first epoch)", "",
           "| phase | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in order:
        cells = [jobs[n]["phases"].get(k) for n in names]
        out.append(f"| {k} | " + " | ".join("" if c is None else f"{c:.1f}" for c in cells) + " |")
    out.append("| **wall** | " + " | ".join(f"{jobs[n]['wall_seconds']:.1f}" for n in names) + " |")
    return out


def open_store(args: argparse.Namespace, conf: Path, work: Path,
               stack: contextlib.ExitStack) -> tuple[str, Any, PeakRSS | None]:
    """storage.root, the S3 server (None on disk) and its memory gauge: --storage s3 starts moto (on `stack`) and
    copies the raw files into it (ingest and split then run on the cluster, run_jobs); on disk ingest and split run
    here, into a local folder every worker sees."""
    if args.storage == "s3":
        from tests.cluster.s3 import s3_session

        _, s3 = stack.enter_context(s3_session(work / "moto"))
        upload_inputs(conf, s3)
        return s3.url("warehouse"), s3, stack.enter_context(PeakRSS(s3.proc.pid, interval=1.0))
    root = args.root or str(work / "warehouse")
    if not (args.reuse_tables and Path(root, "train").is_dir()):
        prepare(conf, root)
    return root, None, None


def main(argv: list[str] | None = None) -> int:
    """Run the cluster benchmark and write benchmarks/results/cluster.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="gowalla")
    parser.add_argument("--methods", default=",".join(METHODS), type=lambda s: s.split(","))
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--worker-memory", default="3g")
    parser.add_argument("--executor-memory", default="2g")
    parser.add_argument("--driver-memory", default="1g")
    parser.add_argument("--root", default=None, help="storage.root for the tables (default: a fresh temp folder)")
    parser.add_argument("--out", default=None, help="results path without extension (default: results/cluster, "
                        "results/cluster-10m for synthetic10m)")
    parser.add_argument("--reuse-tables", action="store_true", help="keep --root's train/test tables when they exist "
                        "(a second run on the same prepared data)")
    parser.add_argument("--label", default=None, help="what code ran, for the results (e.g. 'main c9ab3fa')")
    parser.add_argument("--jfr", default=None, help="keep a Java Flight Recording of every driver and executor "
                        "JVM in this folder (where the JVMs' CPU goes)")
    parser.add_argument("--log-dir", default=None, help="keep every job's spark-submit log and "
                        "Spark event log here (profiling: python -m benchmarks.spark_events <log-dir>/events/<file>)")
    parser.add_argument("--before", default=None, help="an earlier run's phases (JSON: commit, load, jobs) to show "
                        "beside this run's in the phase table")
    parser.add_argument("--mllib-java-options", default="", help="extra Java options for MLlib's executors (e.g. "
                        "-XX:TieredStopAtLevel=1, the JIT setting gramian's executors get by default)")
    parser.add_argument("--storage", choices=("disk", "s3"), default="disk", help="disk: workers share this host's "
                        "disk, tables in a local folder; s3: no shared disk, store on moto's S3 on 127.0.0.1")
    parser.add_argument("--disk", default=None, help="with --storage s3: a shared-disk run's JSON (e.g. "
                        "benchmarks/results/cluster.json) whose ratios to show beside this run's")
    args = parser.parse_args(argv)
    if args.storage == "s3" and (args.root or args.reuse_tables):
        parser.error("--root and --reuse-tables are for --storage disk (the S3 server starts empty every run)")
    args.load_before = os.getloadavg()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops its cluster
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    with tempfile.TemporaryDirectory(prefix="gramian-cluster-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        conf = bench_conf(args.dataset, work)
        root, s3, moto_rss = open_store(args, conf, work, stack)
        jobs = run_jobs(args, conf, root, work, s3)
        if args.log_dir:
            Path(args.log_dir).mkdir(parents=True, exist_ok=True)
            for log_file in [*work.glob("*.log"), *work.glob("cluster/*.log")]:
                shutil.copy(log_file, Path(args.log_dir) / log_file.name)
            (Path(args.log_dir) / "jobs.json").write_text(json.dumps(jobs, indent=2, default=float))  # pre-summary
        doc = summarise(args, root, jobs)
        doc["commit_tested"] = args.label
        if moto_rss is not None:
            doc["moto_peak_rss_mib"] = moto_rss.peak / 2**20
    if args.before:
        doc["before"] = before_of(json.loads(Path(args.before).read_text()))
    if args.disk:
        doc["disk"] = disk_summary(args.disk)
    name = "cluster-10m" if args.dataset == "synthetic10m" else "cluster"
    out = Path(args.out or RESULTS / (f"{name}-s3" if args.storage == "s3" else name))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=float))
    write_md(doc, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
