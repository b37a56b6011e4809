"""The one place a SparkSession is made: local Spark + Delta on loopback, or the session already running.

Building the session anywhere else risks a session without Delta (STACK-NOTES); reusing an existing
one (Databricks, spark-submit, Spark Connect) untouched keeps the platform's settings.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gramian.config import SparkConfig

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# Settings sized for a small local machine; an existing cluster session never sees them.
_LOCAL_DEFAULTS: dict[str, str] = {
    "spark.driver.host": LOOPBACK,
    "spark.driver.bindAddress": LOOPBACK,
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
    "spark.python.worker.reuse": "true",
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.legacy.timeParserPolicy": "CORRECTED",
}


def pin_loopback_env() -> None:
    """Make Spark (and its Python workers) bind to loopback and use this interpreter."""
    os.environ["SPARK_LOCAL_IP"] = LOOPBACK
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def active_session() -> Any | None:
    """The session already running in this process (classic or Connect), if any."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        return session
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        return ConnectSession.getActiveSession()
    except Exception:  # connect extras missing or no connect session
        return None


# What a session launched by spark-submit still needs (Delta, Arrow, UTC) unless the command line set it.
# snapshotPartitions: Delta's default of 50 makes every table's log replay a 50-task job, which on a small
# cluster cost a cluster train job most of a minute before its first epoch (gramian's logs are small).
_SUBMIT_DEFAULTS = ("spark.sql.extensions", "spark.sql.catalog.spark_catalog", "spark.sql.session.timeZone",
                    "spark.sql.execution.arrow.pyspark.enabled", "spark.sql.legacy.timeParserPolicy",
                    "spark.databricks.delta.snapshotPartitions")


def delta_package() -> str:
    """The Maven coordinate of the Delta jar matching the installed delta-spark and pyspark."""
    from importlib.metadata import version

    spark_minor = ".".join(version("pyspark").split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta_spark')}"


def hadoop_aws_package() -> str:
    """The Maven coordinate of the S3A connector matching pyspark's Hadoop (it pulls the AWS SDK v2 bundle)."""
    from gramian.storage import AWS, hadoop_version

    return AWS.format(hadoop=hadoop_version())


def launched_by_spark_submit() -> bool:
    """True inside a Python driver started by spark-submit (its JVM is already up, with --master/--packages)."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT"))


def _submitted_session(cfg: SparkConfig, extra_conf: dict[str, str] | None) -> Any:
    """The session of a spark-submit driver: its master and jars as given, Delta settings added if missing."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    SparkContext._ensure_initialized()
    given = SparkConf()  # now backed by the JVM's system properties, i.e. spark-submit's --conf/--master
    builder = SparkSession.builder.appName(cfg.app_name)
    wanted = {k: _LOCAL_DEFAULTS[k] for k in _SUBMIT_DEFAULTS}
    wanted.update(cfg.conf)
    wanted.update(extra_conf or {})
    for key, value in wanted.items():
        if not given.contains(key):
            builder = builder.config(key, value)
    options = given.get(EXECUTOR_OPTIONS) if given.contains(EXECUTOR_OPTIONS) else wanted.get(EXECUTOR_OPTIONS, "")
    builder = builder.config(EXECUTOR_OPTIONS, executor_java_options(options, cfg.executor_jit))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(cfg.log_level)
    if given.contains("spark.jars.packages") and given.contains("spark.jars.ivy"):  # --packages resolved them:
        remember_jars(session, Path(given.get("spark.jars.ivy")), given.get("spark.jars.packages"))  # submit_args
    jvm = session.sparkContext._jvm
    try:
        jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension", True,
                                    jvm.Thread.currentThread().getContextClassLoader())
    except Exception as e:
        from gramian.errors import ConfigError

        raise ConfigError(f"the Delta jar must be on the driver's classpath under spark-submit, got none "
                          f"(master {given.get('spark.master', '?')}). Add --packages {delta_package()} "
                          f"(and --conf spark.jars.ivy={cfg.ivy_folder} to reuse the local cache).") from e
    log.info("spark-submit session: Spark %s, master %s", session.version, session.sparkContext.master)
    return session


def get_session(cfg: SparkConfig | None = None, extra_conf: dict[str, str] | None = None) -> Any:
    """Return the running session untouched, else build a local Spark + Delta session on loopback.

    Under spark-submit, the command line's master and packages win over `cfg` (see _submitted_session).
    """
    existing = active_session()
    if existing is not None:
        return existing
    cfg = cfg or SparkConfig()
    if launched_by_spark_submit():
        return _submitted_session(cfg, extra_conf)
    pin_loopback_env()
    from pyspark.sql import SparkSession

    ivy = Path(cfg.ivy_folder)
    ivy.mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.master(cfg.master).appName(cfg.app_name)
    conf = dict(_LOCAL_DEFAULTS)
    conf["spark.jars.ivy"] = str(ivy)
    conf["spark.driver.memory"] = cfg.driver_memory
    conf.update(cfg.conf)
    conf.update(extra_conf or {})
    packages = ",".join(dict.fromkeys([delta_package(), *_split(conf.pop("spark.jars.packages", ""))]))
    jars = jar_settings(ivy, packages, conf.get("spark.jars", ""))
    if "spark.jars.packages" in jars and resolve_quietly(ivy, packages, conf):
        jars = jar_settings(ivy, packages, conf.get("spark.jars", ""))
    conf.update(jars)
    conf["spark.driver.extraJavaOptions"] = quiet_java_options(conf.get("spark.driver.extraJavaOptions", ""))
    conf[EXECUTOR_OPTIONS] = executor_java_options(conf.get(EXECUTOR_OPTIONS, ""), cfg.executor_jit)
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(cfg.log_level)
    remember_jars(session, ivy, packages)
    log.info("started Spark %s, master %s, bound to %s", session.version, cfg.master, LOOPBACK)
    return session


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _manifest(ivy: Path, packages: str) -> Path:
    """Where the jar paths Ivy resolved for exactly `packages` are remembered (one file per package set)."""
    import hashlib

    return ivy / f"gramian-jars-{hashlib.sha256(packages.encode()).hexdigest()[:12]}.txt"


def jar_settings(ivy: Path, packages: str, jars: str = "") -> dict[str, str]:
    """spark.jars from an earlier resolution of these packages when every jar is still cached, else
    spark.jars.packages: Ivy (and its ~80-line resolution report) runs only when something must be fetched."""
    manifest = _manifest(ivy, packages)
    if manifest.is_file():
        cached = manifest.read_text().split()
        if cached and all(Path(j).is_file() for j in cached):
            return {"spark.jars": ",".join([*_split(jars), *cached])}
    return {"spark.jars.packages": packages}


def submit_args(packages: str, ivy: str | Path) -> list[str]:
    """spark-submit's arguments for `packages`: `--jars` of the jars an earlier resolution remembered in the Ivy
    cache when all are still there, else `--packages` (and the cache). --packages runs Ivy on every submit (seconds
    of checks against Maven Central) and, for a Python job, also ships every jar as a py-file onto the driver's
    and each Python worker's path; a submitted driver remembers what its --packages resolved (jar_settings)."""
    settings = jar_settings(Path(ivy), packages)
    if "spark.jars" in settings:
        return ["--jars", settings["spark.jars"]]
    return ["--packages", packages, "--conf", f"spark.jars.ivy={ivy}"]


def remember_jars(session: Any, ivy: Path, packages: str) -> None:
    """After an Ivy resolution, write the resolved jar paths (spark.jars under the Ivy dir) to the manifest."""
    from urllib.parse import urlparse

    try:
        conf = session.sparkContext.getConf()
        if conf.get("spark.jars.packages", None) is None:
            return  # started from the manifest: nothing new to remember
        resolved = [urlparse(j).path if j.startswith("file:") else j for j in _split(conf.get("spark.jars", ""))]
        resolved = [j for j in resolved if Path(j).resolve().is_relative_to(ivy.resolve())]
        if resolved and all(Path(j).is_file() for j in resolved):
            _manifest(ivy, packages).write_text("\n".join(resolved) + "\n")
    except Exception as e:  # a manifest only saves the next start's resolution
        log.debug("could not remember the resolved jars: %s", e)


def resolve_quietly(ivy: Path, packages: str, conf: dict[str, str]) -> bool:
    """Resolve `packages` into the Ivy cache in a child process, its ~250-line Ivy report kept in
    <ivy>/gramian-resolve.log, so a first start prints one line; True when the manifest now lists the jars.

    A failed resolution is an error quoting the log's end; where no child can start (no interpreter path),
    the session resolves them itself as before (False).
    """
    import json
    import subprocess

    if not sys.executable:
        return False
    print(f"gramian: fetching {packages} from Maven Central into {ivy} (first start with these packages)",
          file=sys.stderr, flush=True)
    log_path = ivy / "gramian-resolve.log"
    settings = {k: v for k, v in conf.items() if k.startswith("spark.jars.") or k.startswith("spark.driver.")}
    code = "import sys; from gramian.spark import _resolve_child; _resolve_child(sys.argv[1], sys.argv[2], sys.argv[3])"
    with open(log_path, "w") as out:
        done = subprocess.run([sys.executable, "-c", code, str(ivy), packages, json.dumps(settings)],
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0 or not _manifest(ivy, packages).is_file():
        from gramian.errors import ConfigError

        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise ConfigError(f"spark.jars.packages {packages!r} must resolve from Maven Central into the Ivy cache "
                          f"{ivy} (spark.ivy_dir), got exit {done.returncode}; whole log {log_path}:\n{tail}\n"
                          f"Check the network to Maven Central, or set spark.ivy_dir to a cache that has the jars.")
    return True


def _resolve_child(ivy: str, packages: str, settings: str) -> None:
    """Child of `resolve_quietly`: start a local[1] session that resolves `packages`, remember the jars, stop."""
    import json

    from pyspark.sql import SparkSession

    pin_loopback_env()
    builder = SparkSession.builder.master("local[1]").appName("gramian-resolve")
    conf = {**{k: _LOCAL_DEFAULTS[k] for k in ("spark.driver.host", "spark.driver.bindAddress", "spark.ui.enabled")},
            **json.loads(settings), "spark.jars.ivy": ivy, "spark.jars.packages": packages}
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    remember_jars(session, Path(ivy), packages)
    session.stop()


LOG4J = Path(__file__).with_name("log4j2.properties")


EXECUTOR_OPTIONS = "spark.executor.extraJavaOptions"
C1_ONLY = "-XX:TieredStopAtLevel=1"
# C1's frames are larger than C2's: a deep recursion that fits a task thread's default 1 MiB stack under C2 can
# overflow under C1 (MLlib ALS's 15-iteration lineage did, on this cluster), so C1 comes with 4 MiB stacks
C1_STACK = "-Xss4m"


def executor_java_options(given: str, jit: str) -> str:
    """The executors' Java options with C1-only JIT and 4 MiB thread stacks (SparkConfig.executor_jit "c1"), unless
    they already choose a JIT level (TieredStopAtLevel, TieredCompilation): the user's options are kept as given,
    and a stack size they give (-Xss) stands."""
    if jit != "c1" or "TieredStopAtLevel" in given or "TieredCompilation" in given:
        return given
    return " ".join([given, C1_ONLY, *([] if "-Xss" in given else [C1_STACK])]).strip()


def quiet_java_options(given: str) -> str:
    """The driver's Java options plus gramian's log4j2 file (WARN, minus warnings a user cannot act on),
    unless the options already name a log4j configuration."""
    if "log4j.configurationFile" in given or "log4j2.configurationFile" in given:
        return given
    return f"{given} -Dlog4j.configurationFile={LOG4J.as_uri()}".strip()


def local_connect_session(cfg: SparkConfig | None = None) -> Any:
    """A Spark Connect session on a local Connect server bound to 127.0.0.1 at a free port, with Delta.

    `builder.remote("local[*]")` binds its server to 0.0.0.0:15002 and points its client at localhost:15002:
    a second local Connect session on the machine (a notebook, a parallel test run) fails to start, and a
    client can end up on another process's server. Here the server (a classic local session from
    `get_session` with the Connect plugin) takes an ephemeral loopback port and the client is given it.
    Its `stop()` stops the server too, as in pyspark's own local remote mode.
    """
    from gramian.errors import ConfigError

    if active_session() is not None:
        raise ConfigError("a local Spark Connect server must start in a process without a Spark session, got "
                          "one already running (local_connect_session). Call it first, or stop the session.")
    server = get_session(cfg, {"spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
                               "spark.connect.grpc.binding.address": LOOPBACK,
                               "spark.connect.grpc.binding.port": "0"})
    service = getattr(getattr(server._jvm, "org.apache.spark.sql.connect.service.SparkConnectService$"), "MODULE$")
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    # what builder.remote("local") sets: pyspark.sql.functions builds Connect columns only in Connect mode,
    # and stopping a local-remote Connect session stops its server too
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    os.environ["SPARK_LOCAL_REMOTE"] = "1"

    return ConnectSession.builder.remote(f"sc://{LOOPBACK}:{service.localPort()}").getOrCreate()


def run_together(spark: Any, calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Each call's result, the calls run at once on threads that keep this thread's job description and tags
    (classic and Connect): independent Delta lookups overlap their log reads and small jobs instead of
    queueing. All calls finish before the first failure (in `calls` order) is raised. `spark` None: plain
    threads (calls that need no session)."""
    from concurrent.futures import ThreadPoolExecutor

    from pyspark.util import inheritable_thread_target

    inherit = inheritable_thread_target(spark) if spark is not None else (lambda call: call)
    with ThreadPoolExecutor(max_workers=max(1, len(calls)), thread_name_prefix="gramian-lookup") as pool:
        futures = {key: pool.submit(inherit(call)) for key, call in calls.items()}
    return {key: future.result() for key, future in futures.items()}


def is_connect(session: Any) -> bool:
    """True for a Spark Connect session (no SparkContext, no RDD API)."""
    return type(session).__module__.startswith("pyspark.sql.connect")


if __name__ == "__main__":  # `python -m gramian.spark packages [s3a]`: the --packages value for spark-submit
    print(",".join([delta_package(), *([hadoop_aws_package()] if "s3a" in sys.argv[1:] else [])]))
