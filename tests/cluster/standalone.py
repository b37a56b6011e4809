"""A real Spark standalone cluster on loopback for tests: one master, N workers, spark-submit against it.

The pip pyspark has no start scripts, so the daemons are started with `spark-class` (STACK-NOTES). Every
process is started in its own session (process group) so stop() and kill_worker() reach its children
(executors, Python workers) too; stop() runs even when a test fails.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gramian.config import SparkConfig
from gramian.dist import build_zip  # noqa: F401 (re-exported for the tests)
from gramian.spark import delta_package

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


class StandaloneCluster:
    """Master + workers bound to 127.0.0.1, each a `spark-class` process with its own log and work dir."""

    def __init__(self, workdir: Path, workers: int = 2, cores: int = 1, memory: str = "1200m") -> None:
        self.workdir = workdir
        self.n_workers, self.cores, self.memory = workers, cores, memory
        self.port = free_port()
        self.url = f"spark://{LOOPBACK}:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with open(log, "wb") as out:
            self.procs[name] = subprocess.Popen([str(BIN / "spark-class"), *args], stdout=out,
                                                stderr=subprocess.STDOUT, env=spark_env(), cwd=self.workdir,
                                                start_new_session=True)

    def _wait_for(self, name: str, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.logs[name].read_text(errors="replace")):
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"{name} did not log {pattern!r} within {timeout}s:\n"
                           + self.logs[name].read_text(errors="replace")[-3000:])

    def start(self, timeout: float = 120) -> StandaloneCluster:
        """Start the master, then the workers; return once every worker has registered."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn("master", ["org.apache.spark.deploy.master.Master", "--host", LOOPBACK,
                               "--port", str(self.port), "--webui-port", str(free_port())])
        self._wait_for("master", r"I have been elected leader", timeout)
        for i in range(self.n_workers):
            wdir = self.workdir / f"worker{i}"
            wdir.mkdir(exist_ok=True)
            self._spawn(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", "--host", LOOPBACK,
                                       "--port", str(free_port()), "--webui-port", str(free_port()),
                                       "--cores", str(self.cores), "--memory", self.memory,
                                       "--work-dir", str(wdir), self.url])
        for i in range(self.n_workers):
            self._wait_for(f"worker{i}", r"Successfully registered with master", timeout)
        return self

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker i and everything it started (its executor and Python workers): a lost machine."""
        proc = self.procs[f"worker{i}"]
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=30)

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
                       executor_memory: str = "800m") -> list[str]:
        """The spark-submit command line the README shows, pointed at this cluster."""
        cmd = [str(BIN / "spark-submit"), "--master", self.url, "--deploy-mode", "client",
               "--packages", delta_package(),
               "--conf", f"spark.jars.ivy={SparkConfig().ivy_folder}",
               "--conf", f"spark.driver.host={LOOPBACK}", "--conf", f"spark.driver.bindAddress={LOOPBACK}",
               "--conf", f"spark.pyspark.python={sys.executable}",
               "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=4",
               "--conf", "spark.executor.cores=1", "--conf", f"spark.executor.memory={executor_memory}",
               "--driver-memory", "1g"]
        if py_files is not None:
            cmd += ["--py-files", str(py_files)]
        return [*cmd, str(ROOT / job), *args]


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process group `proc` leads (it and everything it started), if it still exists."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
