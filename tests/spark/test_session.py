"""The session factory: loopback binding, Delta enabled, an existing session reused untouched."""

from __future__ import annotations

import os

from gramian.config import SparkConfig
from gramian.spark import get_session


def test_local_session_binds_to_loopback_only(spark):
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.driver.host") == "127.0.0.1"
    assert conf.get("spark.driver.bindAddress") == "127.0.0.1"
    assert os.environ["SPARK_LOCAL_IP"] == "127.0.0.1"


def test_local_session_reads_and_writes_delta(spark, tmp_path):
    path = str(tmp_path / "t")
    spark.range(5).write.format("delta").save(path)
    spark.range(5, 8).write.format("delta").mode("append").save(path)
    assert spark.read.format("delta").load(path).count() == 8
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").count()
    assert history == 2


def test_existing_session_is_returned_untouched(spark):
    again = get_session(SparkConfig(master="local[1]", app_name="other", conf={"spark.sql.shuffle.partitions": "99"}))
    assert again is spark
    assert spark.conf.get("spark.sql.shuffle.partitions") != "99"


def test_ivy_cache_is_the_configured_persistent_folder(spark):
    ivy = spark.sparkContext.getConf().get("spark.jars.ivy")
    assert ivy == SparkConfig().ivy_folder
    assert any(name.startswith("io.delta") for name in os.listdir(os.path.join(ivy, "jars")))


def test_a_package_that_cannot_resolve_is_an_error_quoting_it_and_the_kept_ivy_log(tmp_path):
    """First starts resolve in a child whose Ivy report goes to a log; a failure quotes the package and the log."""
    import pytest

    from gramian.errors import ConfigError
    from gramian.spark import _manifest, resolve_quietly

    package = "org.example.gramian:no-such-artifact:0.0.1"
    with pytest.raises(ConfigError, match="no-such-artifact") as err:
        resolve_quietly(tmp_path, package, {})
    log_path = tmp_path / "gramian-resolve.log"
    assert str(log_path) in str(err.value) and "spark.ivy_dir" in str(err.value)
    assert "unresolved dependency" in log_path.read_text().lower()
    assert not _manifest(tmp_path, package).exists()
