"""One S3 server (moto on 127.0.0.1) for the whole test run, with the shared session pointed at it."""

from __future__ import annotations

import pytest

from tests.cluster.s3 import s3_server


@pytest.fixture(scope="session")
def s3(spark, tmp_path_factory):
    """moto's S3 on a free loopback port and a bucket; the `spark` session reads and writes it via s3a://, and
    AWS_ENV is set for pyarrow's S3 in this process until the run ends (tests/cluster/s3.py: s3_server).

    Session-wide: Hadoop caches one S3A filesystem per bucket, so a second server on another port would be
    invisible to the session after the first.
    """
    with s3_server(spark, tmp_path_factory.mktemp("moto")) as server:
        yield server
