"""A path table's version as its Delta log lists it (no Spark job, no Delta state rebuilt): tables.column_max from the
files' statistics, tables.read_version as the version's Parquet files; both equal to what Delta itself answers
after the commits the ingest stage makes (first write, MERGE of new ids) and after an overwrite that lowers the
max; Delta's own answer where only a checkpoint describes the version."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from gramian import tables
from gramian.config import StorageConfig, load_config
from gramian.data.ingest import run as ingest
from gramian.runs import run_where

SMALL = ["generate.n_items=150", "generate.n_interactions=6000", "tracking.enabled=false"]


def spark_max(spark, st: StorageConfig, name: str, column: str) -> int:
    return tables.read(spark, st, name).agg(F.max(column)).collect()[0][0]


def newest_checksum(st: StorageConfig, name: str) -> Path:
    log = Path(st.root) / name / "_delta_log"
    return max(log.glob("[0-9]*.crc"))


def no_spark(*args, **kwargs):
    raise AssertionError("column_max must read this table's log, not scan it with Spark")


def rows(df) -> list[tuple]:
    return sorted(tuple(r) for r in df.collect())


def delta_version(spark, st: StorageConfig, name: str, version: int) -> list[tuple]:
    return rows(spark.read.format("delta").option("versionAsOf", version).load(tables.table_ref(st, name)))


def without_delta_reader(spark, m) -> None:
    """Make any read through Delta's data source fail for the rest of the `m` monkeypatch context."""
    reader = type(spark.read)
    original = reader.format

    def fmt(self, source):
        if source == "delta":
            raise AssertionError("read_version must read the version's files, not go through Delta")
        return original(self, source)

    m.setattr(reader, "format", fmt)


def test_id_map_sizes_come_from_the_log_after_a_first_ingest_and_a_merge_of_new_ids(spark, tmp_path, monkeypatch):
    root = tmp_path / "wh"
    ingest(spark, load_config("conf/synthetic.yaml", [*SMALL, "generate.n_users=200", f"storage.root={root}"]), "one")
    cfg = load_config("conf/synthetic.yaml", [*SMALL, "generate.n_users=300", f"storage.root={root}"])
    ingest(spark, cfg, "two")  # new users: the map gains ids through a MERGE
    st = cfg.storage
    truth = {name: spark_max(spark, st, name, "idx") for name in ("users", "items")}
    assert truth["users"] >= 200 and tables.version(spark, st, "users") == 1
    monkeypatch.setattr(tables, "read", no_spark)
    assert {name: tables.column_max(spark, st, name, "idx") for name in truth} == truth  # the checksum's file list
    newest_checksum(st, "users").unlink()
    assert tables.column_max(spark, st, "users", "idx") == truth["users"]  # the commits replayed
    monkeypatch.undo()
    expected = {v: delta_version(spark, st, "users", v) for v in (0, 1)}
    with monkeypatch.context() as m:
        without_delta_reader(spark, m)
        assert {v: rows(tables.read_version(spark, st, "users", v)) for v in (0, 1)} == expected


def test_an_overwrite_that_lowers_the_max_is_seen_through_checksum_replay_and_checkpoint(spark, tmp_path,
                                                                                        monkeypatch):
    st = StorageConfig(root=str(tmp_path / "wh"))
    tables.write(spark.range(10).selectExpr("cast(id as int) as idx"), st, "t")
    tables.write(spark.range(5).selectExpr("cast(id as int) as idx"), st, "t")  # removes the first file
    with monkeypatch.context() as m:
        m.setattr(tables, "read", no_spark)
        assert tables.column_max(spark, st, "t", "idx") == 4
        newest_checksum(st, "t").unlink()
        assert tables.column_max(spark, st, "t", "idx") == 4  # remove actions applied
        without_delta_reader(spark, m)
        assert [len(rows(tables.read_version(spark, st, "t", v))) for v in (0, 1)] == [10, 5]
    key = "spark.databricks.delta.properties.defaults.checkpointInterval"
    spark.conf.set(key, "1")
    try:
        tables.write(spark.range(3).selectExpr("cast(id as int) as idx"), st, "c")
        tables.write(spark.range(2).selectExpr("cast(id as int) as idx"), st, "c")
    finally:
        spark.conf.unset(key)
    assert any(".checkpoint" in p.name for p in (Path(st.root) / "c" / "_delta_log").iterdir())
    newest_checksum(st, "c").unlink()
    assert tables.column_max(spark, st, "c", "idx") == 1  # only a checkpoint describes it: Spark answers
    assert rows(tables.read_version(spark, st, "c", 1)) == [(0,), (1,)]  # and Delta reads it
    with pytest.raises(Exception) as err:
        tables.column_max(spark, st, "never_written", "idx")
    assert tables.absent(err.value)


def run_rows(spark, run_id: str, n: int, value: float):
    return spark.createDataFrame([(run_id, i, value) for i in range(n)], "run_id string, idx int, v double")


def history_modes(spark, st: StorageConfig, name: str) -> list[str]:
    """Each commit's write mode, oldest first (Append, Overwrite)."""
    hist = spark.sql(f"DESCRIBE HISTORY delta.`{tables.table_ref(st, name)}`").orderBy("version").collect()
    return [r["operationParameters"].get("mode") for r in hist]


def test_a_run_writing_its_rows_for_the_first_time_appends_and_a_rerun_replaces_only_its_own(spark, tmp_path):
    """rows_of: the log's file statistics show no file may hold the run, so the write is a blind append (no Delta
    state rebuilt, no file scanned); once a file may hold it, replaceWhere swaps exactly that run's rows."""
    st = StorageConfig(root=str(tmp_path / "wh"))

    def write(run_id: str, n: int, value: float) -> None:
        tables.write(run_rows(spark, run_id, n, value), st, "t", replace_where=run_where(run_id),
                     rows_of={"run_id": run_id})

    assert not tables.may_hold(spark, st, "t", {"run_id": "A"})  # never written
    write("A", 3, 1.0)
    write("B", 2, 1.0)
    assert tables.may_hold(spark, st, "t", {"run_id": "A"}) and not tables.may_hold(spark, st, "t", {"run_id": "C"})
    write("A", 4, 2.0)  # a re-run of A: its 3 rows replaced, B's kept
    got = rows(tables.read(spark, st, "t").groupBy("run_id", "v").count())
    assert got == [("A", 2.0, 4), ("B", 1.0, 2)]
    assert history_modes(spark, st, "t") == ["Append", "Append", "Overwrite"]


def test_run_ids_beyond_the_cut_statistics_prefix_are_told_apart_by_replace_where(spark, tmp_path):
    """Delta keeps only a prefix of long strings in its statistics: ids sharing it may be in the file, so the write
    replaces by predicate and still touches only its own rows."""
    st = StorageConfig(root=str(tmp_path / "wh"))
    a, b = "r" * 40 + "-a", "r" * 40 + "-b"
    tables.write(run_rows(spark, a, 3, 1.0), st, "t", replace_where=run_where(a), rows_of={"run_id": a})
    assert tables.may_hold(spark, st, "t", {"run_id": b})  # the statistics cannot tell b from a
    tables.write(run_rows(spark, b, 2, 1.0), st, "t", replace_where=run_where(b), rows_of={"run_id": b})
    tables.write(run_rows(spark, b, 1, 3.0), st, "t", replace_where=run_where(b), rows_of={"run_id": b})
    assert rows(tables.read(spark, st, "t").groupBy("run_id", "v").count()) == [(a, 1.0, 3), (b, 3.0, 1)]


def test_a_stage_of_the_same_run_is_recorded_beside_the_stages_before_it(spark, tmp_path):
    """stage_runs holds one row per (run_id, stage): the second stage of a run appends (its stage is in no file's
    statistics), recording a stage again replaces that row alone."""
    st = StorageConfig(root=str(tmp_path / "wh"))

    def record(stage: str, status: str) -> None:
        df = spark.createDataFrame([("R", stage, status)], "run_id string, stage string, status string")
        tables.write(df, st, "s", replace_where=run_where("R", stage=stage), rows_of={"run_id": "R", "stage": stage})

    record("ingest", "finished")
    record("split", "failed")
    record("split", "finished")
    assert rows(tables.read(spark, st, "s")) == [("R", "ingest", "finished"), ("R", "split", "finished")]
    assert history_modes(spark, st, "s") == ["Append", "Append", "Overwrite"]


def test_a_factor_table_written_before_its_properties_existed_gains_them_and_keeps_its_rows(spark, tmp_path):
    """A table made by an older gramian (no PROPERTIES) is given them by its next write, once: its rows stay, the
    new runs' files have no dictionary for idx, and a third write adds no metadata commit. A table never written
    is created with them by its first write, one commit."""
    import pyarrow.parquet as pq

    st = StorageConfig(root=str(tmp_path / "wh"))
    ref = tables.table_ref(st, "user_factors")
    schema = "run_id string, idx int, id string, factors array<float>"

    def frame(run_id: str, n: int):
        return spark.createDataFrame([(run_id, i, f"u{i}", [float(i), 1.0]) for i in range(n)], schema)

    frame("old", 5).coalesce(1).write.format("delta").save(ref)  # as before tables.PROPERTIES
    for run_id in ("new", "newer"):
        tables.write(frame(run_id, 5000).coalesce(1), st, "user_factors", replace_where=run_where(run_id),
                     rows_of={"run_id": run_id})
    props = {r[0]: r[1] for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{ref}`").collect()}
    assert {k: props.get(k) for k in tables.NO_DICTIONARY} == tables.NO_DICTIONARY
    ops = [r["operation"] for r in spark.sql(f"DESCRIBE HISTORY delta.`{ref}`").orderBy("version").collect()]
    assert ops == ["WRITE", "SET TBLPROPERTIES", "WRITE", "WRITE"]
    fresh = StorageConfig(root=str(tmp_path / "fresh"))  # a table never written: created with them, by its write
    tables.write(frame("first", 5000), fresh, "user_factors", replace_where=run_where("first"),
                 rows_of={"run_id": "first"}, files=1)
    ref = tables.table_ref(fresh, "user_factors")
    assert [r["operation"] for r in spark.sql(f"DESCRIBE HISTORY delta.`{ref}`").collect()] == [
        "CREATE TABLE AS SELECT"]
    assert rows(tables.read(spark, fresh, "user_factors").groupBy("run_id").count()) == [("first", 5000)]
    new_files = tables.read(spark, fresh, "user_factors").inputFiles()
    got = rows(tables.read(spark, st, "user_factors").groupBy("run_id").count())
    assert got == [("new", 5000), ("newer", 5000), ("old", 5)]
    old_files = set(spark.read.format("delta").option("versionAsOf", 0).load(tables.table_ref(st, "user_factors"))
                    .inputFiles())
    for path in [*(set(tables.read(spark, st, "user_factors").inputFiles()) - old_files), *new_files]:
        chunk = {c.path_in_schema: c for c in (pq.ParquetFile(path.removeprefix("file:")).metadata.row_group(0)
                                               .column(k) for k in range(4))}
        assert not chunk["idx"].has_dictionary_page and chunk["run_id"].has_dictionary_page


def test_a_few_driver_rows_reach_spark_as_arrow_with_the_rows_and_types_a_local_list_gives(spark):
    """tables.local_frame (the runs, stage_runs, tuning and publications rows) equals createDataFrame of the same
    list, naive and aware timestamps and nulls included, and its plan reads Arrow in the JVM: no PythonRDD for an
    executor to start a Python worker for, where the pickled list has one (checked on classic Spark)."""
    from datetime import UTC, datetime

    from gramian.spark import is_connect

    schema = "run_id string, n int, users long, seconds double, current boolean, started timestamp, note string"
    rows_in = [{"run_id": "a", "n": 3, "users": 10**12, "seconds": 1.5, "current": True,
                "started": datetime(2026, 12, 6, 18, 0, 1, 5, tzinfo=UTC), "note": None},
               ("b", None, None, None, None, datetime(2026, 12, 6, 18, 0, 2), "x")]
    as_list = spark.createDataFrame([tuple(r.values()) if isinstance(r, dict) else r for r in rows_in], schema)
    got = tables.local_frame(spark, rows_in, schema)
    assert got.schema == as_list.schema
    assert rows(got) == rows(as_list)
    assert tables.local_frame(spark, [], schema).count() == 0
    with pytest.raises(ValueError, match="a row of 1 values for the 7 columns"):
        tables.local_frame(spark, [("a",)], schema)
    if not is_connect(spark):
        def lineage(df) -> str:
            return df._jdf.queryExecution().toRdd().toDebugString()

        assert "PythonRDD" in lineage(as_list)
        assert "PythonRDD" not in lineage(got)


def test_factor_rows_made_on_the_driver_are_decoded_where_they_are_written(spark):
    """tables.arrow_frame (the factor tables' rows when the factors are whole on the driver) gives the rows
    createDataFrame does, and on classic Spark its plan scans the Arrow batches as an RDD, not a LocalRelation the
    driver converted row by row; the session's threshold is left as it was."""
    import numpy as np
    import pyarrow as pa

    from gramian.spark import is_connect
    from gramian.train.job import FACTOR_ROWS, with_ids

    ids = pa.table({"idx": pa.array([0, 1, 2], pa.int32()), "id": pa.array(["a", "b", "c"])})
    table = with_ids("r", np.arange(8, dtype=np.float32).reshape(4, 2), None, ids)  # idx 3: no id (null)
    got, plain = tables.arrow_frame(spark, table, FACTOR_ROWS), spark.createDataFrame(table, FACTOR_ROWS)
    assert got.schema == plain.schema
    assert rows(got) == rows(plain) and len(rows(got)) == 4
    if not is_connect(spark):
        before = spark.conf.get(tables.ARROW_LOCAL_RELATION)

        def plan(df) -> str:
            return df._jdf.queryExecution().optimizedPlan().toString()

        assert "LocalRelation" in plan(plain) and "LocalRelation" not in plan(got)
        assert spark.conf.get(tables.ARROW_LOCAL_RELATION) == before
