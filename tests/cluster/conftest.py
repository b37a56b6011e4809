"""One S3 server (moto on 127.0.0.1) for the whole test run, with the shared session pointed at it."""

from __future__ import annotations

import os

import pytest

from tests.cluster.s3 import AWS_ENV, MotoS3
from tests.cluster.standalone import free_port


@pytest.fixture(scope="session")
def s3(spark, tmp_path_factory):
    """moto's S3 on a free loopback port and a bucket; the `spark` session reads and writes it via s3a://.

    Session-wide: Hadoop caches one S3A filesystem per bucket, so a second server on another port would be
    invisible to the session after the first.
    """
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)  # pyarrow's S3 in this process: the same keys and region, no metadata lookup
    with MotoS3(tmp_path_factory.mktemp("moto"), free_port()) as server:
        server.configure(spark)
        yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
