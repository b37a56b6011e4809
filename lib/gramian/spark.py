"""The one place a SparkSession is made: local Spark + Delta on loopback, or the session already running.

Building the session anywhere else risks a session without Delta (STACK-NOTES); reusing an existing
one (Databricks, spark-submit, Spark Connect) untouched keeps the platform's settings.
"""

from __future__ import annotations

import logging
import os
import sys
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


def get_session(cfg: SparkConfig | None = None, extra_conf: dict[str, str] | None = None) -> Any:
    """Return the running session untouched, else build a local Spark + Delta session on loopback."""
    existing = active_session()
    if existing is not None:
        return existing
    cfg = cfg or SparkConfig()
    pin_loopback_env()
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    ivy = Path(os.path.expanduser(cfg.ivy_dir))
    ivy.mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.master(cfg.master).appName(cfg.app_name)
    conf = dict(_LOCAL_DEFAULTS)
    conf["spark.jars.ivy"] = str(ivy)
    conf["spark.driver.memory"] = cfg.driver_memory
    conf.update(cfg.conf)
    conf.update(extra_conf or {})
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = configure_spark_with_delta_pip(builder).getOrCreate()
    session.sparkContext.setLogLevel(cfg.log_level)
    log.info("started Spark %s, master %s, bound to %s", session.version, cfg.master, LOOPBACK)
    return session


def is_connect(session: Any) -> bool:
    """True for a Spark Connect session (no SparkContext, no RDD API)."""
    return type(session).__module__.startswith("pyspark.sql.connect")
