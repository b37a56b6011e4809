"""tables.write's blind append (tables.may_hold reads the Delta log through the store) on the moto S3 server via
s3a://: a run's first write appends, a re-run of the run replaces only its own rows. The shared `s3` fixture; a
few rows, no cluster."""

from __future__ import annotations

import pytest

from gramian import tables
from gramian.config import StorageConfig
from gramian.runs import run_where

pytestmark = pytest.mark.s3


def history(spark, st: StorageConfig, name: str) -> list[tuple[str, str | None, str | None]]:
    """Each commit's (operation, mode, predicate), oldest first, as Delta records it."""
    hist = spark.sql(f"DESCRIBE HISTORY delta.`{tables.table_ref(st, name)}`").orderBy("version").collect()
    return [(r["operation"], r["operationParameters"].get("mode"), r["operationParameters"].get("predicate"))
            for r in hist]


def test_on_s3a_a_runs_first_write_appends_and_a_rerun_replaces_only_its_own_rows(spark, s3):
    st = StorageConfig(root=s3.url("may-hold"))

    def write(run_id: str, n: int, value: float) -> None:
        df = spark.createDataFrame([(run_id, i, value) for i in range(n)], "run_id string, idx int, v double")
        tables.write(df, st, "t", replace_where=run_where(run_id), rows_of={"run_id": run_id})

    assert not tables.may_hold(spark, st, "t", {"run_id": "A"})  # never written: no log under the key
    write("A", 3, 1.0)
    write("B", 2, 1.0)
    assert any(k.startswith("may-hold/t/_delta_log/") for k in s3.keys("may-hold/t/"))  # the log is on the server
    assert tables.may_hold(spark, st, "t", {"run_id": "A"}) and not tables.may_hold(spark, st, "t", {"run_id": "C"})
    write("A", 4, 2.0)  # a re-run of A
    got = sorted(tuple(r) for r in tables.read(spark, st, "t").groupBy("run_id", "v").count().collect())
    assert got == [("A", 2.0, 4), ("B", 1.0, 2)]
    (op0, mode0, _), (op1, mode1, _), (op2, mode2, predicate) = history(spark, st, "t")
    assert (op0, mode0) == (op1, mode1) == ("WRITE", "Append")  # blind appends, the table's first write too
    assert (op2, mode2) == ("WRITE", "Overwrite") and "'A'" in predicate and "'B'" not in predicate  # replaceWhere
