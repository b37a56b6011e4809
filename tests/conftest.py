"""One Spark session (local[2], Delta, loopback) for the whole test run, and shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gramian.config import Config, StorageConfig, data_root


@pytest.fixture(scope="session")
def spark(request):
    """The single classic local session every Spark test shares (Ivy cache raced if there were two).

    With S3 tests selected it also carries the S3A connector (hadoop-aws and the ~690 MB AWS SDK bundle,
    downloaded into the Ivy cache once), so the tests read what the cluster wrote to the S3 server.
    """
    from gramian.config import SparkConfig
    from gramian.spark import get_session, hadoop_aws_package

    s3 = any(item.get_closest_marker("s3") for item in request.session.items)
    session = get_session(SparkConfig(conf={"spark.jars.packages": hadoop_aws_package()} if s3 else {}))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real datasets; tests needing them skip, naming GRAMIAN_DATA, where absent."""
    root = Path(data_root())
    if not (root / "ml-100k" / "u.data").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the shared datasets; GRAMIAN_DATA={root} has none")
        pytest.skip(f"real datasets not found: set GRAMIAN_DATA (looked in {root})")
    return root


@pytest.fixture()
def storage(tmp_path: Path) -> StorageConfig:
    """A fresh warehouse folder per test."""
    return StorageConfig(root=str(tmp_path / "warehouse"))


def with_storage(cfg: Config, storage: StorageConfig) -> Config:
    """`cfg` writing its tables under `storage`."""
    import dataclasses

    return dataclasses.replace(cfg, storage=storage)
