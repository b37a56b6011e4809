"""`gramian publish` and fold-in on a trained synthetic run: exact parity, exclusion, atomic re-runs, the gate."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from gramian import tables
from gramian.cli import main
from gramian.config import Config, ModelConfig, PublishConfig, StorageConfig
from gramian.data.synthetic import generate
from gramian.errors import InputDataError, PublishError
from gramian.kernels.ranking import topk_excluding
from gramian.retrieval import recommend
from gramian.retrieval.index import index_exists
from gramian.retrieval.publish import current_publication, index_path, read_topn
from gramian.retrieval.publish import run as publish
from gramian.train.job import run as train

N_USERS, N_ITEMS, N = 150, 400, 10
EXHAUSTIVE = PublishConfig(n=N, brute_force_below=0, num_leaves=10, num_leaves_to_search=10, quantize="none",
                           training_sample_size=400, min_index_recall=0.99, recall_sample=200)
MODEL = ModelConfig(dim=8, epochs=8, solver="cholesky", alpha0=0.05, reg=0.02)


def _topn_versions(spark, st: StorageConfig) -> list[int]:
    ref = tables.table_ref(st, "topn")
    return [r["version"] for r in spark.sql(f"DESCRIBE HISTORY delta.`{ref}`").collect()]


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    """A warehouse with train/users/items from the synthetic generator and one cholesky iALS run 'r1'."""
    root = tmp_path_factory.mktemp("retrieval")
    cfg = Config(storage=StorageConfig(root=str(root / "wh")), model=MODEL, publish=EXHAUSTIVE)
    data = generate(N_USERS, N_ITEMS, 4000, rank=4, seed=5, timestamps=False)
    st = cfg.storage
    users = pd.DataFrame({"id": [f"u{i}" for i in range(N_USERS)], "idx": np.arange(N_USERS, dtype=np.int32)})
    items = pd.DataFrame({"id": [f"i{i}" for i in range(N_ITEMS)], "idx": np.arange(N_ITEMS, dtype=np.int32)})
    train_pd = pd.DataFrame({"user_idx": data["user"], "item_idx": data["item"], "weight": data["weight"]})
    tables.write(spark.createDataFrame(users), st, "users")
    tables.write(spark.createDataFrame(items), st, "items")
    tables.write(spark.createDataFrame(train_pd), st, "train")
    train(spark, cfg, "r1")
    for name in ("user_factors", "item_factors", "runs"):  # two more runs with r1's factors, one write each
        src = tables.read(spark, st, name).filter("run_id = 'r1'")
        clones = src.withColumn("run_id", F.lit("r2")).unionByName(src.withColumn("run_id", F.lit("r_bad")))
        tables.write(clones, st, name, mode="append")
    summary = publish(spark, cfg, "r1")
    return cfg, train_pd, summary


def _factors(spark, cfg: Config, name: str, run_id: str = "r1") -> np.ndarray:
    rows = tables.read(spark, cfg.storage, name).filter(f"run_id = '{run_id}'").select("idx", "factors").collect()
    out = np.zeros((max(r["idx"] for r in rows) + 1, cfg.model.dim), dtype=np.float32)
    for r in rows:
        out[r["idx"]] = r["factors"]
    return out


def _csr(train_pd: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    df = train_pd.sort_values(["user_idx", "item_idx"])
    indptr = np.zeros(N_USERS + 1, np.int64)
    np.cumsum(np.bincount(df["user_idx"], minlength=N_USERS), out=indptr[1:])
    return indptr, df["item_idx"].to_numpy(np.int64)


def test_published_lists_equal_exact_top_n_when_the_searcher_is_exhaustive(spark, trained):
    cfg, train_pd, summary = trained
    assert summary["index"] == "scann" and summary["index_recall"] == 1.0
    users = np.sort(train_pd["user_idx"].unique())
    assert summary["users"] == len(users) and summary["rows"] == len(users) * N
    ip, ix = _csr(train_pd)
    truth, truth_scores = topk_excluding(_factors(spark, cfg, "user_factors"), _factors(spark, cfg, "item_factors"),
                                         users, ip, ix, N)
    got = read_topn(spark, cfg.storage, "r1").toPandas()
    got["u"] = got["user_id"].str[1:].astype(int)
    got["i"] = got["item_id"].str[1:].astype(int)
    got = got.sort_values(["u", "rank"])
    assert list(got["rank"].unique()) == list(range(1, N + 1))
    np.testing.assert_array_equal(got["i"].to_numpy().reshape(-1, N), truth)
    np.testing.assert_allclose(got["score"].to_numpy().reshape(-1, N), truth_scores, rtol=1e-5, atol=1e-6)


def test_approximate_lists_never_hold_a_training_item_and_become_current(spark, trained):
    cfg, _, _ = trained
    st = cfg.storage
    r1_rows = read_topn(spark, st, "r1").count()
    assert current_publication(spark, st)["run_id"] == "r1"
    cfg_approx = dataclasses.replace(cfg, publish=dataclasses.replace(
        EXHAUSTIVE, num_leaves_to_search=2, quantize="ah", min_index_recall=0.0, exact_history_above=20))
    summary = publish(spark, cfg_approx, "r2")
    assert summary["index_recall_searcher"] < 1.0  # the searcher (2 of 10 leaves) really was approximate
    top = read_topn(spark, st)  # the current publication: r2
    train_df = tables.read(spark, st, "train")
    users = tables.read(spark, st, "users").withColumnRenamed("id", "user_id")
    items = tables.read(spark, st, "items").withColumnRenamed("id", "item_id")
    seen = (train_df.join(users, train_df.user_idx == users.idx).drop("idx")
            .join(items, train_df.item_idx == items.idx).select("user_id", "item_id"))
    assert {r["run_id"] for r in top.select("run_id").distinct().collect()} == {"r2"}
    assert top.count() == train_df.select("user_idx").distinct().count() * N
    assert top.join(seen, ["user_id", "item_id"]).count() == 0
    assert read_topn(spark, st, "r1").count() == r1_rows  # the earlier run stays readable
    flags = tables.read(spark, st, "publications").groupBy("current").count().collect()
    assert {r["current"]: r["count"] for r in flags}[True] == 1


def test_rerun_replaces_rows_in_one_version_and_readers_see_only_complete_versions(spark, trained):
    cfg, train_pd, summary = trained
    st = cfg.storage
    n_users = train_pd["user_idx"].nunique()
    assert read_topn(spark, st, "r1").count() == n_users * N == summary["rows"]
    versions = _topn_versions(spark, st)
    cfg5 = dataclasses.replace(cfg, publish=dataclasses.replace(EXHAUSTIVE, n=5))
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(read_topn(spark, st, "r1").count())

    t = threading.Thread(target=reader)
    t.start()
    try:
        first = publish(spark, cfg5, "r1")
    finally:
        stop.set()
        t.join()
    assert seen and set(seen) <= {n_users * N, n_users * 5}
    assert len(_topn_versions(spark, st)) == len(versions) + 1
    again = publish(spark, cfg5, "r1")  # same run_id, same config: replaces, never duplicates
    assert read_topn(spark, st, "r1").count() == first["rows"] == again["rows"] == n_users * 5
    assert again["topn_version"] == first["topn_version"] + 1 == max(_topn_versions(spark, st))
    pubs = tables.read(spark, st, "publications").filter("run_id = 'r1'").collect()
    assert len(pubs) == 1 and pubs[0]["topn_version"] == again["topn_version"] and pubs[0]["current"]
    # every committed version of the table holds whole lists of r1: N or 5 per user, never a mix
    ref = tables.table_ref(st, "topn")
    for v in _topn_versions(spark, st):
        count = spark.read.format("delta").option("versionAsOf", v).load(ref).filter("run_id = 'r1'").count()
        assert count in (n_users * N, n_users * 5), (v, count)


def test_publish_refuses_below_the_recall_floor_and_leaves_topn_untouched(spark, trained):
    cfg, _, _ = trained
    st = cfg.storage
    versions = _topn_versions(spark, st)
    current = current_publication(spark, st)
    strict = dataclasses.replace(cfg, publish=dataclasses.replace(
        EXHAUSTIVE, num_leaves_to_search=1, quantize="ah", min_index_recall=0.999))
    with pytest.raises(PublishError, match=r"index recall@10 must be >= publish.min_index_recall=0.999, got 0\.\d+"):
        publish(spark, strict, "r_bad")
    assert _topn_versions(spark, st) == versions
    assert read_topn(spark, st, "r_bad").count() == 0
    assert current_publication(spark, st)["run_id"] == current["run_id"]
    m = tables.read(spark, st, "metrics").filter("run_id = 'r_bad' AND metric = 'index_recall'").collect()
    assert len(m) == 1 and m[0]["value"] < 0.999 and m[0]["k"] == N and m[0]["method"] == "scann_vs_exact"


def test_fold_in_of_a_training_users_history_is_close_to_the_trained_embedding(spark, trained):
    cfg, train_pd, _ = trained
    w = _factors(spark, cfg, "user_factors")
    heavy = train_pd.groupby("user_idx").size().sort_values().index[-5:]
    for u in heavy:
        hist = train_pd[train_pd["user_idx"] == u]
        rec = recommend([f"i{i}" for i in hist["item_idx"]], list(hist["weight"]), n=N, cfg=cfg, run_id="r1")
        # the trained row was solved against the previous epoch's items, fold-in against the final ones
        rel = np.linalg.norm(rec.embedding - w[u]) / np.linalg.norm(w[u])
        assert rel < 0.1, (u, rel)
        assert np.argmin(np.linalg.norm(w - rec.embedding, axis=1)) == u  # closer to its own row than any other
        assert not set(rec.items) & {f"i{i}" for i in hist["item_idx"]}
        assert len(rec.items) == N and rec.scores == sorted(rec.scores, reverse=True)


def test_recommend_reports_unknown_ids_and_fails_only_when_all_are_unknown(spark, trained):
    cfg, _, _ = trained
    rec = recommend(["i1", "nope", "i2", "missing"], n=5, cfg=cfg, run_id="r1")
    assert rec.unknown == ["nope", "missing"] and len(rec.items) == 5
    with pytest.raises(InputDataError, match=r"at least one known item id, got only unknown ids \['x', 'y'\]"):
        recommend(["x", "y"], n=5, cfg=cfg, run_id="r1")


def test_cli_recommend_prints_the_list_and_exits_2_when_every_id_is_unknown(spark, trained, capsys):
    cfg, _, _ = trained
    assert index_exists(index_path(cfg, "r1"))
    base = ["--set", f"storage.root={cfg.storage.root}", "--run-id", "r1", "-n", "3"]
    assert main(["recommend", "--items", "i1,i2,zzz", *base]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "unknown item ids (ignored): zzz"
    assert [line.split("\t")[0] for line in out[1:]] == ["1", "2", "3"]
    assert main(["recommend", "--items", "zzz", *base]) == 2
    assert "only unknown ids" in capsys.readouterr().err



CONNECT_PUBLISH = textwrap.dedent("""
    import json, os, sys
    import pyarrow.parquet as pq
    from pyspark.sql import SparkSession
    from gramian.config import Config, PublishConfig, SparkConfig, StorageConfig
    from gramian.retrieval.publish import read_topn, run as publish
    from gramian.spark import _LOCAL_DEFAULTS, delta_package, is_connect, pin_loopback_env
    pin_loopback_env()
    builder = SparkSession.builder.remote("local[2]")
    ivy = SparkConfig().ivy_folder  # the classic sessions' Ivy cache: Delta resolves offline
    for key, value in {**_LOCAL_DEFAULTS, "spark.jars.packages": delta_package(), "spark.jars.ivy": ivy}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    assert is_connect(spark), type(spark)
    cfg = Config(storage=StorageConfig(root=sys.argv[1]), publish=PublishConfig(**json.loads(sys.argv[2])))
    summary = publish(spark, cfg, "r1")
    pq.write_table(read_topn(spark, cfg.storage).toArrow(), sys.argv[3])
    json.dump(summary, open(sys.argv[4], "w"))
    spark.stop()
""")


def test_spark_connect_session_publishes_the_same_topn_as_classic(spark, trained, tmp_path):
    """publish uses no RDD/SparkContext/JVM handle: a Spark Connect local session writes the same lists."""
    cfg, _, _ = trained
    roots = {}
    for name in ("classic", "connect"):  # two copies of the trained warehouse's inputs, one per session
        roots[name] = tmp_path / name / "wh"
        for table in ("train", "user_factors", "item_factors", "runs"):
            shutil.copytree(Path(cfg.storage.root) / table, roots[name] / table)
    classic_cfg = dataclasses.replace(cfg, storage=StorageConfig(root=str(roots["classic"])))
    classic_summary = publish(spark, classic_cfg, "r1")
    classic = read_topn(spark, classic_cfg.storage).toPandas()
    proc = subprocess.run([sys.executable, "-c", CONNECT_PUBLISH, str(roots["connect"]),
                           json.dumps(dataclasses.asdict(cfg.publish)), str(tmp_path / "topn.parquet"),
                           str(tmp_path / "summary.json")],
                          capture_output=True, text=True, timeout=420, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    connect = pd.read_parquet(tmp_path / "topn.parquet")
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("users", "rows", "index", "index_recall"):
        assert summary[key] == classic_summary[key], key
    key = ["user_id", "rank"]
    classic, connect = classic.sort_values(key).reset_index(drop=True), connect.sort_values(key).reset_index(drop=True)
    assert len(classic) == classic_summary["rows"] > 0
    pd.testing.assert_frame_equal(connect[["run_id", *key, "item_id"]], classic[["run_id", *key, "item_id"]])
    np.testing.assert_allclose(connect["score"], classic["score"], rtol=1e-6, atol=1e-6)
