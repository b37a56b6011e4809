"""tests/cluster/s3.py's s3_server, the one mechanism behind the `s3` fixture and the benchmarks' s3_session:
moto answers on loopback, the session gets the S3A keys, and the environment is as it was afterwards."""

from __future__ import annotations

import os

from tests.cluster.s3 import AWS_ENV, s3_server


class RecordingSession:
    """Stands in for a Spark session: only its runtime conf is touched (spark.conf.set)."""

    def __init__(self) -> None:
        self.conf = self
        self.values: dict[str, str] = {}

    def set(self, key: str, value: str) -> None:
        self.values[key] = value


def test_s3_server_points_the_session_at_moto_and_restores_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-3")  # a caller's own setting: back afterwards
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)  # unset before: unset afterwards
    spark = RecordingSession()
    with s3_server(spark, tmp_path / "moto") as server:
        assert {k: os.environ.get(k) for k in AWS_ENV} == AWS_ENV
        assert spark.values["spark.hadoop.fs.s3a.endpoint"] == spark.values["fs.s3a.endpoint"] == server.endpoint
        assert server.endpoint.startswith("http://127.0.0.1:")
        server.client().put_object(Bucket=server.bucket, Key="a/b", Body=b"x")
        assert server.keys("a/") == ["a/b"]
    assert server.proc.poll() is not None  # moto ended with the block
    assert os.environ["AWS_REGION"] == "eu-west-3" and "AWS_ACCESS_KEY_ID" not in os.environ
