"""A real S3-compatible server (moto) on 127.0.0.1 for tests, and the S3A settings that point Spark at it.

moto runs as its own process (`python -m moto.server`) so its load and its memory stay out of the test
process and stop() ends it for sure. Nothing here contacts another address: the credentials are given
(no provider chain, so no EC2 metadata lookup) and the region is fixed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.cluster.standalone import free_port, s3a_jars

LOOPBACK = "127.0.0.1"
REGION = "us-east-1"
KEY, SECRET = "gramian-test", "gramian-test-secret"

# What the AWS SDKs (JVM and pyarrow) read from the environment: never look up instance metadata.
AWS_ENV = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
           "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}


class MotoS3:
    """moto's S3 on 127.0.0.1:port with one bucket; `s3a_conf` is what spark-submit and sessions need."""

    def __init__(self, workdir: Path, port: int, bucket: str = "gramian") -> None:
        self.workdir, self.port, self.bucket = workdir, port, bucket
        self.endpoint = f"http://{LOOPBACK}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "moto.log"

    def start(self, timeout: float = 60) -> MotoS3:
        """Start the server, wait until it answers, create the bucket."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **AWS_ENV}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    break
            except OSError as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto did not answer on {self.endpoint} within {timeout}s ({e}):\n"
                                       + self.log.read_text(errors="replace")[-3000:]) from e
                time.sleep(0.3)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self) -> Any:
        """A boto3 S3 client on this server (boto3 comes with moto)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under prefix."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def url(self, path: str) -> str:
        return f"s3a://{self.bucket}/{path.lstrip('/')}"

    @property
    def s3a_conf(self) -> dict[str, str]:
        """Spark settings for the S3A connector on this server (Hadoop's S3A docs: third-party stores)."""
        conf = {
            "fs.s3a.endpoint": self.endpoint,
            "fs.s3a.endpoint.region": REGION,
            "fs.s3a.path.style.access": "true",
            "fs.s3a.connection.ssl.enabled": "false",
            "fs.s3a.access.key": KEY,
            "fs.s3a.secret.key": SECRET,
            # only the given keys: the default chain would end in an EC2 instance-metadata lookup
            "fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
            "fs.s3a.attempts.maximum": "3",
            "fs.s3a.retry.limit": "3",
        }
        return {f"spark.hadoop.{k}": v for k, v in conf.items()}

    def submit_settings(self) -> dict[str, Any]:
        """The keywords of a spark-submit (StandaloneCluster.submit_command, submit_command) whose store is this
        server: its S3A settings, and the connector's jars on every class path (as a cloud node image has them)."""
        return {"conf": self.s3a_conf, "class_path": s3a_jars()}

    def configure(self, spark: Any) -> None:
        """Point a running session at this server: Hadoop keys for its data sources, spark.hadoop.* for gramian."""
        for key, value in self.s3a_conf.items():
            spark.conf.set(key, value)
            spark.conf.set(key.removeprefix("spark.hadoop."), value)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def aws_env() -> Iterator[None]:
    """AWS_ENV in os.environ (pyarrow's S3 in this process: these keys and region, no metadata lookup), the
    environment as it was restored afterwards."""
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def s3_server(spark: Any, workdir: Path) -> Iterator[MotoS3]:
    """moto on a free loopback port with `spark` pointed at it and AWS_ENV set, for as long as the block runs:
    the tests' `s3` fixture and the benchmarks' `s3_session` alike."""
    with aws_env(), MotoS3(workdir, free_port()) as server:
        server.configure(spark)
        yield server


@contextlib.contextmanager
def s3_session(workdir: Path) -> Iterator[tuple[Any, MotoS3]]:
    """This process's Spark session with the S3A connector, pointed at a fresh moto (`s3_server`; for benchmarks,
    the tests have conftest.py's fixtures). The session resolves the connector into the Ivy cache, where
    s3a_jars() finds it for spark-submit."""
    from gramian.config import SparkConfig
    from gramian.spark import get_session, hadoop_aws_package

    with aws_env():  # the session's JVM starts with it too
        spark = get_session(SparkConfig(conf={"spark.jars.packages": hadoop_aws_package()}))
    with s3_server(spark, workdir) as server:
        yield spark, server
