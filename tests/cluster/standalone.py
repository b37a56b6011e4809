"""A real Spark standalone cluster on loopback for tests: one master, N workers, spark-submit against it.

The pip pyspark has no start scripts, so the daemons are started with `spark-class` (STACK-NOTES). Every
process is started in its own session (process group) so stop() and kill_worker() reach its children
(executors, Python workers) too; stop() runs even when a test fails.

Isolated (the default), each worker runs in its own mount namespace (`unshare --mount`, we are root) where
/tmp is a folder private to that worker and /dev/shm a private tmpfs: its executors see the venv, the repo
and the Ivy cache (software, as a node image has) but not the driver's /tmp, its working directory (run
the driver from under /tmp: `driver_cwd`) or its /dev/shm. Like hosts sharing nothing but the store.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gramian.config import SparkConfig
from gramian.dist import build_zip  # noqa: F401 (re-exported for the tests)
from gramian.spark import delta_package, hadoop_aws_package, submit_args
from gramian.storage import hadoop_version

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def spark_env() -> dict[str, str]:
    """Environment for daemons and spark-submit: loopback, this venv's Python everywhere."""
    env = dict(os.environ)
    env.update(SPARK_LOCAL_IP=LOOPBACK, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_NO_DAEMONIZE="1", SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# Run in a worker's new mount namespace: nothing mounted here propagates out, /tmp becomes the worker's
# private folder ($1), /dev/shm a fresh tmpfs; then leave the old cwd (it would still reach the old /tmp).
_ISOLATE = ('set -e; mount --make-rprivate /; mount --bind "$1" /tmp; '
            'mount -t tmpfs -o size=256m,mode=1777 tmpfs /dev/shm; shift; cd /; exec "$@"')
PRIVATE_TMP = "/tmp"  # inside an isolated worker
MISSING_UNSHARE = ("an isolated test cluster must start its workers with `unshare --mount` as root, got {why}. "
                   "Install util-linux (apt-get install util-linux) and run the cluster tests as root")


def isolation_prefix(private: Path) -> list[str]:
    """The command prefix that runs a process in its own mount namespace with `private` as its /tmp."""
    why = ("no unshare on PATH" if shutil.which("unshare") is None else
           f"uid {os.geteuid()}" if os.geteuid() != 0 else None)
    if why is not None:
        raise RuntimeError(MISSING_UNSHARE.format(why=why))
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _ISOLATE, "isolate",
            str(private)]


class StandaloneCluster:
    """Master + workers bound to 127.0.0.1, each a `spark-class` process with its own log and work dir."""

    def __init__(self, workdir: Path, workers: int = 2, cores: int = 1, memory: str = "1200m",
                 isolated: bool = True, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.n_workers, self.cores, self.memory = workers, cores, memory
        self.isolated = isolated
        self.env = {**spark_env(), **(env or {})}
        self.port = free_port()
        self.url = f"spark://{LOOPBACK}:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.driver_cwd = workdir / "driver"  # under /tmp: hidden from isolated workers

    def private_tmp(self, i: int) -> Path:
        """Worker i's /tmp as seen from outside its namespace (its executors' work dirs and logs are in it)."""
        return self.workdir / f"worker{i}-tmp"

    def _spawn(self, name: str, args: list[str], prefix: list[str] | None = None) -> None:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with open(log, "ab") as out:  # a restarted worker appends: what it logged before stays readable
            self.procs[name] = subprocess.Popen([*(prefix or []), str(BIN / "spark-class"), *args], stdout=out,
                                                stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                                start_new_session=True)

    def _wait_for(self, name: str, pattern: str, timeout: float, since: int = 0) -> None:
        """Wait until `name`'s log, from character `since` on, matches `pattern`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.logs[name].read_text(errors="replace")[since:]):
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"{name} did not log {pattern!r} within {timeout}s:\n"
                           + self.logs[name].read_text(errors="replace")[-3000:])

    def start(self, timeout: float = 120) -> StandaloneCluster:
        """Start the master, then the workers; return once every worker has registered."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.driver_cwd.mkdir(exist_ok=True)
        self._spawn("master", ["org.apache.spark.deploy.master.Master", "--host", LOOPBACK,
                               "--port", str(self.port), "--webui-port", str(free_port())])
        self._wait_for("master", r"I have been elected leader", timeout)
        for i in range(self.n_workers):
            self.start_worker(i)
        for i in range(self.n_workers):
            self._wait_for(f"worker{i}", r"Successfully registered with master", timeout)
        return self

    def start_worker(self, i: int) -> None:
        """Start worker i (isolated: in its own mount namespace, work dir in its private /tmp)."""
        private = self.private_tmp(i)
        private.mkdir(exist_ok=True)
        prefix = isolation_prefix(private) if self.isolated else None
        wdir = f"{PRIVATE_TMP}/work" if self.isolated else str(private / "work")
        self._spawn(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", "--host", LOOPBACK,
                                   "--port", str(free_port()), "--webui-port", str(free_port()),
                                   "--cores", str(self.cores), "--memory", self.memory,
                                   "--work-dir", wdir, self.url], prefix)

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker i and everything it started (its executor and Python workers): a lost machine."""
        proc = self.procs[f"worker{i}"]
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=30)

    def restart_worker(self, i: int, timeout: float = 120) -> None:
        """Start worker i again after kill_worker (the machine is back) and wait until it has registered again
        (its log is appended to, so the registration looked for is the one after the restart)."""
        since = len(self.logs[f"worker{i}"].read_text(errors="replace"))
        self.start_worker(i)
        self._wait_for(f"worker{i}", r"Successfully registered with master", timeout, since)

    def stop(self) -> None:
        """Stop every process this cluster started: SIGTERM, then SIGKILL what is left."""
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=30)

    def __enter__(self) -> StandaloneCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def submit_command(self, job: str, args: list[str], py_files: Path | None = None,
                       executor_memory: str = "800m", conf: dict[str, str] | None = None,
                       class_path: list[str] | None = None, driver_memory: str = "1g") -> list[str]:
        """The spark-submit command line the README shows, pointed at this cluster.

        `class_path`: jars installed on every node (the S3A connector, as cloud images have it), put on the
        driver's and executors' class path instead of shipping them to each executor with --packages.
        """
        hidden = [j for j in class_path or [] if Path(j).resolve().is_relative_to(PRIVATE_TMP)]
        if self.isolated and hidden:
            raise RuntimeError(f"jars on the executors' class path must be outside {PRIVATE_TMP}, got {hidden[0]} "
                               f"(isolated workers have their own {PRIVATE_TMP}). Put the Ivy cache elsewhere "
                               f"(GRAMIAN_IVY_DIR)")
        if self.isolated:  # two "hosts" on one address: Spark would read the other executor's shuffle files
            conf = {"spark.shuffle.readHostLocalDisk": "false", **(conf or {})}  # from its disk; real hosts fetch
        return submit_command(self.url, job, args, py_files, executor_memory, conf, class_path, driver_memory)


def submit_command(master: str, job: str, args: list[str], py_files: Path | None = None,
                   executor_memory: str = "800m", conf: dict[str, str] | None = None,
                   class_path: list[str] | None = None, driver_memory: str = "1g") -> list[str]:
    """spark-submit of ROOT/job in client mode against `master` (a cluster URL or local[N]), all on loopback."""
    settings = {"spark.jars.ivy": SparkConfig().ivy_folder, "spark.driver.host": LOOPBACK,
                "spark.driver.bindAddress": LOOPBACK, "spark.pyspark.python": sys.executable,
                "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4", "spark.executor.cores": "1",
                "spark.executor.memory": executor_memory,
                # start once every worker's executor has registered, so every test uses both hosts
                "spark.scheduler.minRegisteredResourcesRatio": "1.0",
                "spark.scheduler.maxRegisteredResourcesWaitingTime": "120s", **(conf or {})}
    if class_path:
        settings["spark.executor.extraClassPath"] = os.pathsep.join(class_path)
    cmd = [str(BIN / "spark-submit"), "--master", master, "--deploy-mode", "client",
           *submit_args(delta_package(), settings["spark.jars.ivy"]), "--driver-memory", driver_memory]
    if class_path:
        cmd += ["--driver-class-path", os.pathsep.join(class_path)]
    for key, value in settings.items():
        cmd += ["--conf", f"{key}={value}"]
    if py_files is not None:
        cmd += ["--py-files", str(py_files)]
    return [*cmd, str(ROOT / job), *args]


# hadoop-aws and its compile-scope dependencies, as Ivy names them in <ivy>/jars
_S3A_ARTIFACTS = ("org.apache.hadoop_hadoop-aws-{hadoop}.jar", "software.amazon.awssdk_bundle-*.jar",
                  "software.amazon.s3.analyticsaccelerator_analyticsaccelerator-s3-*.jar",
                  "org.wildfly.openssl_wildfly-openssl-*.jar")


def s3a_jars() -> list[str]:
    """The S3A connector's jars in the Ivy cache (resolved by a session whose spark.jars.packages has hadoop-aws)."""
    jars_dir = Path(SparkConfig().ivy_folder) / "jars"
    found = []
    for pattern in _S3A_ARTIFACTS:
        hits = sorted(jars_dir.glob(pattern.format(hadoop=hadoop_version())))
        if not hits:
            raise RuntimeError(f"the Ivy cache must hold {pattern.format(hadoop=hadoop_version())}, got none in "
                               f"{jars_dir}. Start a session with spark.jars.packages={hadoop_aws_package()} first "
                               f"(the tests' `spark` fixture does when S3 tests are selected)")
        found.append(str(hits[-1]))
    return found


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process group `proc` leads (it and everything it started), if it still exists."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
