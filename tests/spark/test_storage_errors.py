"""Roots Spark cannot open fail with the key at fault and the fix: a missing connector jar, an unreachable root."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gramian import storage, tables
from gramian.config import StorageConfig
from gramian.errors import StorageError

MISSING_JAR = textwrap.dedent("""
    import sys
    from gramian import tables
    from gramian.config import SparkConfig, StorageConfig
    from gramian.errors import StorageError
    from gramian.spark import get_session
    spark = get_session(SparkConfig())  # Delta only: no connector for the root's scheme
    st = StorageConfig(root=sys.argv[1])
    for attempt in (lambda: tables.exists(spark, st, "train"), lambda: tables.write(spark.range(1), st, "train")):
        try:
            attempt()
            print("NO ERROR")
        except StorageError as e:
            print(str(e).replace(chr(10), " "))
    spark.stop()
""")


def has_class(spark, name: str) -> bool:
    """Whether the session's JVM can load `name` (the shared session carries S3A when S3 tests are selected)."""
    try:
        jvm = spark._jvm
        jvm.java.lang.Class.forName(name, False, jvm.java.lang.Thread.currentThread().getContextClassLoader())
        return True
    except Exception:
        return False


def missing_jar_errors(spark, root: str) -> list[str]:
    """The StorageError messages of exists and write on `root`, from a session without the root's connector:
    the shared one, unless it carries that connector, in which case a fresh Delta-only driver."""
    st = StorageConfig(root=root)
    if not (root.startswith("s3a:") and has_class(spark, "org.apache.hadoop.fs.s3a.S3AFileSystem")):
        out = []
        for attempt in (lambda: tables.exists(spark, st, "train"), lambda: tables.write(spark.range(1), st, "train")):
            with pytest.raises(StorageError) as info:
                attempt()
            out.append(str(info.value))
        return out
    proc = subprocess.run([sys.executable, "-c", MISSING_JAR, root], capture_output=True, text=True, timeout=420,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-2:]


@pytest.mark.parametrize(("root", "package"), [
    ("gs://bucket/wh", "com.google.cloud.bigdataoss:gcs-connector"),
    ("abfss://data@acct.dfs.core.windows.net/wh", "org.apache.hadoop:hadoop-azure:{hadoop}"),
    ("s3a://bucket/wh", "org.apache.hadoop:hadoop-aws:{hadoop}"),
], ids=["gs", "abfss", "s3a"])
def test_root_without_its_filesystem_jar_names_the_package_to_add(spark, root, package):
    package = package.format(hadoop=storage.hadoop_version())
    on_exists, on_write = missing_jar_errors(spark, root)
    assert re.match(r"storage.root must use a scheme whose Hadoop filesystem is on Spark's classpath, got '.*'",
                    on_exists), on_exists
    assert package in on_exists and "spark.jars.packages" in on_exists
    assert "Add the package" in on_write, on_write


def test_unknown_scheme_says_no_filesystem_knows_it(spark):
    with pytest.raises(StorageError, match=r"no FileSystem for scheme 'nosuchfs'"):
        tables.exists(spark, StorageConfig(root="nosuchfs://x/wh"), "train")


def test_unreachable_root_names_the_key_and_what_to_check(spark):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StorageError, match=rf"storage.root must be reachable from Spark, got "
                                           rf"'hdfs://127.0.0.1:{port}/wh' \(.*Connection refused.*credentials"):
        tables.exists(spark, StorageConfig(root=f"hdfs://127.0.0.1:{port}/wh"), "train")


CONNECT_TABLES = textwrap.dedent("""
    import json, sys
    from gramian import storage, tables
    from gramian.config import SparkConfig, StorageConfig
    from gramian.spark import is_connect, local_connect_session
    spark = local_connect_session(SparkConfig(conf={"spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9",
                                                    "spark.hadoop.fs.s3a.path.style.access": "true"}))
    assert is_connect(spark), type(spark)
    st = StorageConfig(root=sys.argv[1])
    out = {"before": tables.exists(spark, st, "t")}
    tables.write(spark.range(5), st, "t")
    out["after"] = tables.exists(spark, st, "t")
    out["rows"] = tables.read(spark, st, "t").count()
    out["s3"] = storage.s3_settings(spark, "bucket")
    store = storage.artifact_store(st, spark)
    store.write_text("ok", "probe.txt")
    out["artifact"] = store.read_text("probe.txt")
    json.dump(out, open(sys.argv[2], "w"))
    spark.stop()
""")


@pytest.mark.slow
def test_spark_connect_session_finds_tables_and_reads_s3a_settings(tmp_path):
    """No JVM handle on Connect: existence is asked of Delta through a read, S3A settings through spark.conf."""
    root = f"file://{tmp_path / 'wh'}"
    proc = subprocess.run([sys.executable, "-c", CONNECT_TABLES, root, str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=420, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["before"] is False and out["after"] is True and out["rows"] == 5
    assert out["s3"]["endpoint_override"] == "http://127.0.0.1:9" and out["s3"]["path_style"] == "true"
    assert out["artifact"] == "ok" and (tmp_path / "wh" / "_artifacts" / "probe.txt").read_text() == "ok"
