"""Airflow in a throw-away home: set before anything imports airflow (its config is read at import)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "airflow_dags"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="gramian-airflow-"))
atexit.register(shutil.rmtree, AIRFLOW_HOME, True)
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW_CONN_SPARK_GRAMIAN": '{"conn_type": "spark", "host": "local[2]"}',
}
os.environ.update(AIRFLOW_ENV)
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # spark-submit


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """`airflow db migrate` into the temporary home (sqlite); dag.test() needs the metadata tables."""
    done = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return AIRFLOW_HOME
