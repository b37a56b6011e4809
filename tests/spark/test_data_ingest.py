"""Ingest: real-file counts, row-level quarantine with the raw row, file-level errors, append-only id maps."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from gramian import tables
from gramian.config import Config, StorageConfig, load_config
from gramian.data import ingest, split
from gramian.data.schemas import Reason
from gramian.errors import InputDataError


def _cfg(conf: str | None, storage: StorageConfig, *overrides: str) -> Config:
    return dataclasses.replace(load_config(conf, overrides=list(overrides)), storage=storage)


def _read(spark, storage: StorageConfig, name: str):
    return tables.read(spark, storage, name)


_ML100K: dict[str, Any] = {}


def ingested_ml100k(spark, tmp_path_factory) -> tuple[Config, dict[str, Any]]:
    """ml-100k ingested once per test session (test_data_split.py splits the same warehouse)."""
    if not _ML100K:
        storage = StorageConfig(root=str(tmp_path_factory.mktemp("ml100k") / "warehouse"))
        cfg = _cfg("conf/ml-100k.yaml", storage)
        _ML100K.update(cfg=cfg, summary=ingest.run(spark, cfg, "ml1"))
    return _ML100K["cfg"], _ML100K["summary"]


# ---------------------------------------------------------------- real files


def test_ingest_ml_100k_gives_100000_interactions_943_users_1682_items(spark, shared_data, tmp_path_factory):
    cfg, summary = ingested_ml100k(spark, tmp_path_factory)
    storage = cfg.storage
    assert (summary["interactions"], summary["users"], summary["items"]) == (100_000, 943, 1682)
    assert summary["read"] == summary["accepted"] == 100_000 and summary["quarantined"] == 0
    stats = _read(spark, storage, "interactions").agg(
        F.count(F.lit(1)), F.count("ts"), F.min("weight"), F.max("weight"),
        F.unix_timestamp(F.min("ts")), F.unix_timestamp(F.max("ts"))).first()
    assert tuple(stats) == (100_000, 100_000, 1.0, 5.0, 874_724_710, 893_286_638)
    users = _read(spark, storage, "users").agg(F.count(F.lit(1)), F.min("idx"), F.max("idx"),
                                               F.countDistinct("idx")).first()
    assert tuple(users) == (943, 0, 942, 943)
    runs = _read(spark, storage, "ingest_runs").collect()
    assert len(runs) == 1 and runs[0]["read"] == runs[0]["accepted"] + runs[0]["quarantined"] == 100_000


def test_ingest_lastfm_2k_keeps_play_counts_as_weights_without_quarantine(spark, shared_data, storage):
    summary = ingest.run(spark, _cfg("conf/lastfm-2k.yaml", storage), "fm1")
    assert (summary["interactions"], summary["users"], summary["items"]) == (92_834, 1892, 17_632)
    assert summary["quarantined"] == 0 and summary["duplicates_merged"] == 0
    weights = _read(spark, storage, "interactions").agg(F.sum("weight"), F.min("weight"), F.max("weight")).first()
    assert tuple(weights) == (69_183_975.0, 1.0, 352_698.0)  # the header row and CRLF ends are gone
    assert not tables.exists(spark, storage, "quarantine")


def test_ingest_and_given_split_reproduce_gowalla_counts(spark, shared_data, storage):
    cfg = _cfg("conf/gowalla.yaml", storage)
    summary = ingest.run(spark, cfg, "gw1")
    assert (summary["interactions"], summary["test_interactions"]) == (810_128, 217_242)
    assert (summary["users_total"], summary["items_total"]) == (29_858, 40_981)
    assert summary["quarantined"] == summary["test_quarantined"] == 0
    # the remapped ids are 0..n-1 already, and natural id order keeps them as the dense indices
    assert _read(spark, storage, "users").filter(F.col("id") != F.col("idx").cast("string")).count() == 0

    result = split.run(spark, cfg, "gw1")
    assert (result["train"], result["test"], result["foldin"]) == (810_128, 217_242, 0)
    assert result["train_users"] == result["test_users"] == 29_858  # split.run refuses train/test overlap


# ---------------------------------------------------------------- row-level problems

# (line in the copied file, what the data row becomes, reason); None = kept but merged as a duplicate
CORRUPTIONS = {
    "user id empty": (2, "\t51\t13883", Reason.USER_EMPTY),
    "user id blank": (3, "   \t52\t11690", Reason.USER_EMPTY),
    "item id empty": (4, "2\t\t11351", Reason.ITEM_EMPTY),
    "weight not a number": (5, "2\t54\tlots", Reason.WEIGHT_NOT_NUMBER),
    "weight NaN": (6, "2\t55\tNaN", Reason.WEIGHT_NAN),
    "weight infinite": (7, "2\t56\tinf", Reason.WEIGHT_INFINITE),
    "weight negative": (8, "2\t57\t-5955", Reason.WEIGHT_NEGATIVE),
    "too few fields": (9, "2\t58", Reason.FIELD_COUNT),
    "too many fields": (10, "2\t59\t4337\textra", Reason.FIELD_COUNT),
}
DUPLICATE = (11, "2\t61\t100")  # line 12 holds (2, 61, 3923): merged by sum, not quarantined


@pytest.fixture(scope="module")
def corrupted_lastfm(spark, shared_data, tmp_path_factory):
    """One ingest of a lastfm-2k copy with one corrupted line per kind of problem."""
    root = tmp_path_factory.mktemp("corrupt")
    path = root / "user_artists.dat"
    lines = (shared_data / "lastfm-2k" / "user_artists.dat").read_bytes().split(b"\r\n")
    assert lines[11] == b"2\t61\t3923"
    for line, text, _ in CORRUPTIONS.values():
        lines[line - 1] = text.encode()
    lines[DUPLICATE[0] - 1] = DUPLICATE[1].encode()
    path.write_bytes(b"\r\n".join(lines))
    storage = StorageConfig(root=str(root / "warehouse"))
    summary = ingest.run(spark, _cfg("conf/lastfm-2k.yaml", storage, f"data.path={path}"), "bad1")
    quarantine = _read(spark, storage, "quarantine").cache()
    yield {"summary": summary, "quarantine": quarantine, "storage": storage, "path": str(path)}
    quarantine.unpersist()


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_ingest_quarantines_row_when(case, corrupted_lastfm):
    line, text, reason = CORRUPTIONS[case]
    rows = corrupted_lastfm["quarantine"].filter(F.col("line") == line).collect()
    assert len(rows) == 1
    assert (rows[0]["reason"], rows[0]["raw"], rows[0]["run_id"]) == (reason, text, "bad1")
    assert rows[0]["source"] == corrupted_lastfm["path"]


def test_ingest_accounts_every_corrupted_row_and_merges_duplicates(spark, corrupted_lastfm):
    s, storage = corrupted_lastfm["summary"], corrupted_lastfm["storage"]
    assert s["read"] == 92_834 == s["accepted"] + s["quarantined"]
    assert s["quarantined"] == len(CORRUPTIONS) == corrupted_lastfm["quarantine"].count()
    assert s["duplicates_merged"] == 1 and s["interactions"] == s["accepted"] - 1
    assert sum(s["quarantine_reasons"].values()) == s["quarantined"]
    merged = _read(spark, storage, "interactions").filter("user_id = '2' and item_id = '61'").collect()
    assert [r["weight"] for r in merged] == [4023.0]
    run = _read(spark, storage, "ingest_runs").first()
    assert (run["read"], run["duplicates_merged"]) == (s["read"], 1)
    assert run["read"] == run["accepted"] + run["quarantined"]


def test_ingest_quarantines_unparseable_timestamps_and_parses_iso_and_formats(spark, shared_data, tmp_path,
                                                                               storage):
    rows = (shared_data / "ml-100k" / "u.data").read_text().splitlines()[:200]
    rows[0] = "196\t242\t3\tyesterday"
    rows[1] = "186\t302\t3\t1998-01-02T03:04:05Z"
    rows[2] = "22\t377\t1\t"  # no timestamp: kept, ts null
    path = tmp_path / "u.data"
    path.write_text("\n".join(rows) + "\n")
    loaded = ingest.load(spark, _cfg("conf/ml-100k.yaml", storage, f"data.path={path}"), str(path))
    try:
        assert (loaded.read, loaded.accepted, loaded.quarantined) == (200, 199, 1)
        bad = loaded.checked.filter(F.col("reason").isNotNull()).select("line", "raw", "reason").collect()
        assert [tuple(r) for r in bad] == [(1, "196\t242\t3\tyesterday", Reason.TS_UNPARSEABLE)]
        ts = {r["user_id"]: r["t"] for r in loaded.pairs.filter(
            "(user_id = '186' and item_id = '302') or (user_id = '22' and item_id = '377')").select(
            "user_id", F.unix_timestamp("ts").alias("t")).collect()}
        assert ts == {"186": 883_710_245, "22": None}  # 1998-01-02T03:04:05Z; no timestamp stays null
    finally:
        loaded.release()

    dated = tmp_path / "dated.csv"
    dated.write_text("u,i,when\na,x,02/01/1998\nb,y,1998-01-02\n")
    cfg = _cfg(None, storage, f"data.path={dated}", "data.format=csv", "data.columns.user=u",
               "data.columns.item=i", "data.columns.ts=when", "data.ts_format=dd/MM/yyyy")
    loaded = ingest.load(spark, cfg, str(dated))
    try:
        got = {r["user_id"]: r["reason"] for r in loaded.checked.collect()}
        assert got == {"a": None, "b": Reason.TS_UNPARSEABLE}
    finally:
        loaded.release()


def test_ingest_reads_quoted_fields_bom_and_blank_lines_keeping_file_line_numbers(spark, tmp_path, storage):
    path = tmp_path / "quoted.csv"
    path.write_bytes('\ufeffuser_id,item_id,rating\r\n"smith, j",a,1\r\n\r\nbob,"say ""hi""",2\r\n'
                     'carl,b,x,\r\n'.encode())
    cfg = _cfg(None, storage, f"data.path={path}", "data.format=csv", "data.columns.weight=rating")
    loaded = ingest.load(spark, cfg, str(path))
    try:
        got = sorted((r["line"], r["user_id"], r["item_id"], r["reason"]) for r in loaded.checked.collect())
        assert got == [(2, "smith, j", "a", None), (4, "bob", 'say "hi"', None),
                       (5, "carl", "b", Reason.FIELD_COUNT)]
        assert (loaded.read, loaded.accepted, loaded.quarantined) == (3, 2, 1)
    finally:
        loaded.release()


def test_ingest_reads_parquet_and_delta_columns_by_name(spark, tmp_path, storage):
    rows = [(1, 10, 2.5, 1_000_000_000), (1, 11, None, None), (None, 12, 1.0, 5), (2, 10, -1.0, 7)]
    df = spark.createDataFrame(rows, "uid int, iid long, plays double, at long")
    df.write.parquet(str(tmp_path / "p"))
    df.write.format("delta").save(str(tmp_path / "d"))
    for fmt in ("parquet", "delta"):
        cfg = _cfg(None, storage, f"data.path={tmp_path / fmt[0]}", f"data.format={fmt}", "data.columns.user=uid",
                   "data.columns.item=iid", "data.columns.weight=plays", "data.columns.ts=at")
        loaded = ingest.load(spark, cfg, str(tmp_path / fmt[0]))
        try:
            got = sorted(((r["user_id"] or ""), r["item_id"], r["reason"], r["raw"]) for r in loaded.checked.collect())
            assert [g[:3] for g in got] == [("", "12", Reason.USER_EMPTY), ("1", "10", None),
                                            ("1", "11", Reason.WEIGHT_NOT_NUMBER), ("2", "10", Reason.WEIGHT_NEGATIVE)]
            assert got[0][3] == '{"iid":12,"plays":1.0,"at":5}'  # the raw row, as JSON
            ts = loaded.pairs.select(F.unix_timestamp("ts")).first()[0]
            assert (loaded.read, loaded.accepted, ts) == (4, 1, 1_000_000_000)
        finally:
            loaded.release()
    bad = _cfg(None, storage, f"data.path={tmp_path / 'p'}", "data.format=parquet", "data.columns.user=user")
    with pytest.raises(InputDataError, match=r"data\.columns\.user must name a column .*Columns present: uid, iid"):
        ingest.load(spark, bad, str(tmp_path / "p"))


@pytest.mark.parametrize("policy,weight", [("sum", 7.0), ("max", 5.0), ("count", 2.0)])
def test_merge_duplicates_follows_the_policy(spark, policy, weight):
    rows = [("u", "i", 2.0, "2020-01-01 00:00:00"), ("u", "i", 5.0, "2021-01-01 00:00:00"),
            ("u", "j", 3.0, None)]
    df = spark.createDataFrame(rows, "user_id string, item_id string, weight double, ts string").withColumn(
        "ts", F.col("ts").cast("timestamp"))
    got = ingest.merge_duplicates(df, policy)
    expected = spark.createDataFrame(
        [("u", "i", weight, "2021-01-01 00:00:00", 2),
         ("u", "j", 3.0 if policy != "count" else 1.0, None, 1)],
        "user_id string, item_id string, weight double, ts string, rows long").withColumn(
        "ts", F.col("ts").cast("timestamp"))
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


# ---------------------------------------------------------------- ids that could silently merge

# (line, bytes of the line, reason or None, raw as the quarantine table keeps it)
ID_BYTES = [
    (2, b"u1,a,1", None, None),
    (3, b"u\xff1,a,1", Reason.USER_NOT_UTF8, "u\\xff1,a,1"),  # both would read as "u\ufffd1" and merge
    (4, b"u\xfe1,a,1", Reason.USER_NOT_UTF8, "u\\xfe1,a,1"),
    (5, b"u2,b\xc3,1", Reason.ITEM_NOT_UTF8, "u2,b\\xc3,1"),  # a UTF-8 sequence cut short
    (6, b"u\x003,c,1", Reason.USER_CONTROL, "u\\x003,c,1"),  # NUL
    (7, b"u4,d\xc2\x85,1", Reason.ITEM_CONTROL, "u4,d\\u0085,1"),  # C1 control (NEL), valid UTF-8
    (8, b"u5,e\x07x,1", Reason.ITEM_CONTROL, "u5,e\\x07x,1"),  # BEL
    (9, b"caf\xc3\xa9,\xe2\x82\xac,1", None, None),  # valid non-ASCII ids stay
    (10, b"u6,f,2\xff", Reason.WEIGHT_NOT_NUMBER, "u6,f,2\\xff"),
    (11, b'u7,"g\xff,h",1', Reason.ITEM_NOT_UTF8, 'u7,"g\\xff,h",1'),  # inside a quoted field
    (12, b"\\b\xed\xa0\x80,i,1", Reason.USER_NOT_UTF8, "\\\\b\\xed\\xa0\\x80,i,1"),  # a surrogate; backslash
    (13, b"u8,\xef\xbf\xbd,1", None, None),  # a real U+FFFD is valid UTF-8
    (14, b"u9,j", Reason.FIELD_COUNT, "u9,j"),  # clean lines are kept as they are
]


def test_ingest_quarantines_csv_ids_that_are_not_utf8_or_hold_control_characters(spark, tmp_path, storage):
    path = tmp_path / "bytes.csv"
    path.write_bytes(b"user_id,item_id,rating\r\n" + b"\r\n".join(line for _, line, _, _ in ID_BYTES) + b"\r\n")
    cfg = _cfg(None, storage, f"data.path={path}", "data.format=csv", "data.columns.weight=rating")
    summary = ingest.run(spark, cfg, "bytes1")
    bad = [(n, reason, raw) for n, _, reason, raw in ID_BYTES if reason is not None]
    assert (summary["read"], summary["accepted"], summary["quarantined"]) == (len(ID_BYTES), 3, len(bad))
    got = {r["line"]: (r["reason"], r["raw"]) for r in _read(spark, storage, "quarantine").collect()}
    assert got == {n: (reason, raw) for n, reason, raw in bad}
    users = sorted(r["id"] for r in _read(spark, storage, "users").collect())
    assert users == ["caf\u00e9", "u1", "u8"]
    items = sorted(r["id"] for r in _read(spark, storage, "items").collect())
    assert items == ["a", "\u20ac", "\ufffd"]


def test_ingest_quarantines_lightgcn_tokens_that_are_not_non_negative_integers(spark, tmp_path, storage):
    path = tmp_path / "train.txt"
    path.write_bytes(b"0 1 2 3\n1 2 x -3 4\nx 1 2\n-3 5\n2 \xff7 8\n3\xfe 1\n4 5\x006 +7 9\n")
    summary = ingest.run(spark, _cfg(None, storage, f"data.path={path}", "data.format=lightgcn"), "gcn1")
    assert (summary["read"], summary["accepted"], summary["quarantined"]) == (16, 7, 9)
    got = sorted((r["line"], r["raw"], r["reason"]) for r in _read(spark, storage, "quarantine").collect())
    assert got == sorted([(2, "1 -3", Reason.ITEM_NOT_INTEGER), (2, "1 x", Reason.ITEM_NOT_INTEGER),
                          (3, "x 1", Reason.USER_NOT_INTEGER), (3, "x 2", Reason.USER_NOT_INTEGER),
                          (4, "-3 5", Reason.USER_NOT_INTEGER), (5, "2 \\xff7", Reason.ITEM_NOT_UTF8),
                          (6, "3\\xfe 1", Reason.USER_NOT_UTF8), (7, "4 5\\x006", Reason.ITEM_CONTROL),
                          (7, "4 +7", Reason.ITEM_NOT_INTEGER)])
    pairs = sorted(tuple(r) for r in _read(spark, storage, "interactions").select("user_id", "item_id").collect())
    assert pairs == [("0", "1"), ("0", "2"), ("0", "3"), ("1", "2"), ("1", "4"), ("2", "8"), ("4", "9")]


def test_ingest_quarantines_parquet_ids_that_are_not_utf8(spark, tmp_path, storage):
    df = spark.createDataFrame([("7531", "a"), ("75FF31", "a"), ("75FE31", "a"), ("7500", "b")], "u string, i string")
    df.select(F.unhex("u").cast("string").alias("u"), "i").write.parquet(str(tmp_path / "p"))
    cfg = _cfg(None, storage, f"data.path={tmp_path / 'p'}", "data.format=parquet", "data.columns.user=u",
               "data.columns.item=i", "data.columns.weight=null")
    loaded = ingest.load(spark, cfg, str(tmp_path / "p"))
    try:
        got = sorted((r["reason"] or "") for r in loaded.checked.collect())
        assert got == ["", Reason.USER_CONTROL, Reason.USER_NOT_UTF8, Reason.USER_NOT_UTF8]
        assert (loaded.read, loaded.accepted, loaded.quarantined) == (4, 1, 3)
    finally:
        loaded.release()


# ---------------------------------------------------------------- file-level problems


@pytest.fixture()
def lastfm_copy(shared_data, tmp_path) -> Path:
    path = tmp_path / "user_artists.dat"
    shutil.copy(shared_data / "lastfm-2k" / "user_artists.dat", path)
    return path


def test_ingest_refuses_missing_path_naming_it(spark, storage, tmp_path):
    missing = tmp_path / "nope" / "user_artists.dat"
    with pytest.raises(InputDataError, match=r"data\.path must exist.*nope/user_artists\.dat"):
        ingest.run(spark, _cfg("conf/lastfm-2k.yaml", storage, f"data.path={missing}"), "x")


def test_ingest_refuses_unknown_or_wrong_format_naming_the_file(spark, storage, lastfm_copy):
    cfg = _cfg("conf/lastfm-2k.yaml", storage, f"data.path={lastfm_copy}")
    unknown = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, format="xml"))
    with pytest.raises(InputDataError, match=r"data\.format must be one of .*'xml'.*user_artists\.dat"):
        ingest.run(spark, unknown, "x")
    as_parquet = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, format="parquet"))
    with pytest.raises(InputDataError, match=r"readable as parquet.*user_artists\.dat"):
        ingest.run(spark, as_parquet, "x")
    as_delta = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, format="delta"))
    with pytest.raises(InputDataError, match=r"must be a Delta table.*user_artists\.dat"):
        ingest.run(spark, as_delta, "x")


def test_ingest_refuses_misnamed_column_listing_the_columns_present(spark, storage, lastfm_copy):
    cfg = _cfg("conf/lastfm-2k.yaml", storage, f"data.path={lastfm_copy}", "data.columns.user=userId")
    with pytest.raises(InputDataError) as err:
        ingest.run(spark, cfg, "x")
    message = str(err.value)
    assert "data.columns.user" in message and "'userId'" in message and str(lastfm_copy) in message
    assert "Columns present: userID, artistID, weight" in message


def test_ingest_refuses_column_position_beyond_the_fields(spark, shared_data, storage):
    cfg = _cfg("conf/ml-100k.yaml", storage, "data.columns.ts=4")
    with pytest.raises(InputDataError, match=r"data\.columns\.ts must be a position below the 4 fields.*u\.data"):
        ingest.run(spark, cfg, "x")


@pytest.mark.parametrize("content", [b"", b"userID\tartistID\tweight\r\n", b"\r\n\r\n"],
                         ids=["zero bytes", "header only", "blank lines"])
def test_ingest_refuses_empty_input_naming_the_file(spark, storage, tmp_path, content):
    path = tmp_path / "empty.dat"
    path.write_bytes(content)
    with pytest.raises(InputDataError, match=r"at least one data row, got 0 .*empty\.dat"):
        ingest.run(spark, _cfg("conf/lastfm-2k.yaml", storage, f"data.path={path}"), "x")
    assert not tables.exists(spark, storage, "interactions")


# ---------------------------------------------------------------- id maps across runs


def test_id_maps_are_append_only_across_runs(spark, storage, tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("user_id,item_id\nu10,x\nu9,y\nu2,x\n")
    b = tmp_path / "b.csv"  # A plus new users and items, and one bad row
    b.write_text("user_id,item_id\nu10,x\nu9,y\nu2,x\nu1,z\nu100,y\nu3,w\n,w\n")

    ingest.run(spark, _cfg(None, storage, f"data.path={a}", "data.format=csv"), "run-a")
    before = _read(spark, storage, "users").select("id", "idx").collect()
    assert sorted((r["idx"], r["id"]) for r in before) == [(0, "u2"), (1, "u9"), (2, "u10")]

    cfg_b = _cfg(None, storage, f"data.path={b}", "data.format=csv")
    summary = ingest.run(spark, cfg_b, "run-b")
    assert (summary["new_users"], summary["users_total"], summary["quarantined"]) == (3, 6, 1)
    users = _read(spark, storage, "users")
    old = users.filter(F.col("first_seen_run") == "run-a").select("id", "idx")
    assert_df_equality(old, spark.createDataFrame(before, old.schema), ignore_row_order=True, ignore_nullable=True)
    new = sorted((r["idx"], r["id"]) for r in users.filter(F.col("first_seen_run") == "run-b").collect())
    assert new == [(3, "u1"), (4, "u3"), (5, "u100")]  # next indices, in natural id order
    assert users.filter(F.col("last_seen_run") != "run-b").count() == 0
    items = sorted((r["idx"], r["id"]) for r in _read(spark, storage, "items").collect())
    assert items == [(0, "x"), (1, "y"), (2, "w"), (3, "z")]

    after_b = users.select("id", "idx").collect()
    ingest.run(spark, cfg_b, "run-b")  # same run_id again: replaces its own rows, changes no index
    again = _read(spark, storage, "users").select("id", "idx")
    assert_df_equality(again, spark.createDataFrame(after_b, again.schema), ignore_row_order=True)
    runs = sorted(r["run_id"] for r in _read(spark, storage, "ingest_runs").collect())
    assert runs == ["run-a", "run-b"]
    assert _read(spark, storage, "quarantine").filter(F.col("run_id") == "run-b").count() == 1
