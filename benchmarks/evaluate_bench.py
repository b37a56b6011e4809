"""Evaluation benchmark: `gramian evaluate` (exact, all Gowalla test users) vs MLlib's recommendForAllUsers +
RankingEvaluator route, same factors, same k, local[2].

    python -m benchmarks.evaluate_bench            # Gowalla, k = 10, 20, 50, 100
    python -m benchmarks.run_all --evaluate-only   # the same, from the umbrella script

Factors: implicit's ALS on the Gowalla train split (d=64), so the ranks are those of a real model; MLlib
gets the very same factors (an ALSModel built from the two factor DataFrames), so only the evaluation
routes differ. Correctness is asserted before anything is reported: gramian's Spark metrics equal the
numpy reference (kernels.ranking top-k lists) and MLlib's equal the numpy top-k *without* excluding
training items (MLlib cannot exclude them). Results: benchmarks/results/evaluate.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.datasets import Split, load_gowalla
from benchmarks.memory import PeakRSS
from benchmarks.peers import fit_implicit_als, spark_session

RESULTS = Path(__file__).resolve().parent / "results"
KS = (10, 20, 50, 100)
FACTORS = {"factors": 64, "iterations": 10, "regularization": 0.05, "alpha": 2.0, "weights": "raw"}


def write_tables(spark: Any, split: Split, uf: np.ndarray, itf: np.ndarray, root: str, run_id: str) -> Any:
    """train/test/items/user_factors/item_factors Delta tables of the split under `root`."""
    import pyarrow as pa

    from gramian import tables
    from gramian.config import StorageConfig

    st = StorageConfig(root=root)
    test_users = np.repeat(np.arange(split.n_users), np.diff(split.test_indptr))
    for name, u, i in (("train", split.train_users, split.train_items), ("test", test_users, split.test_indices)):
        t = pa.table({"user_idx": pa.array(u.astype(np.int32)), "item_idx": pa.array(i.astype(np.int32)),
                      "weight": pa.array(np.ones(len(u))), "ts": pa.nulls(len(u), pa.timestamp("us", tz="UTC"))})
        tables.write(spark.createDataFrame(t), st, name)
    tables.write(spark.createDataFrame(pa.table({"id": [str(x) for x in range(split.n_items)],
                                                 "idx": pa.array(np.arange(split.n_items, dtype=np.int32))})),
                 st, "items")
    for name, mat in (("user_factors", uf), ("item_factors", itf)):
        n, d = mat.shape
        t = pa.table({"run_id": [run_id] * n, "idx": pa.array(np.arange(n, dtype=np.int32)),
                      "id": [str(x) for x in range(n)],
                      "factors": pa.FixedSizeListArray.from_arrays(pa.array(mat.astype(np.float32).ravel()), d)
                      .cast(pa.list_(pa.float32()))})
        tables.write(spark.createDataFrame(t), st, name)
    return st


def gramian_route(spark: Any, st: Any, run_id: str, sampled: bool) -> dict[str, Any]:
    """`gramian evaluate` (the stage function) timed with its peak process-tree memory."""
    from gramian import tables
    from gramian.config import Config, EvaluateConfig, SampledConfig
    from gramian.evaluate.job import run

    ev = EvaluateConfig(k=KS, popularity=sampled, sampled=SampledConfig(enabled=sampled, m=100))
    cfg = Config(storage=st, evaluate=ev)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        summary = run(spark, cfg, run_id)
        seconds = time.perf_counter() - t0
    rows = tables.read(spark, st, "metrics").toPandas()
    exact = rows[(rows["model"] != "popularity") & (rows["method"] == "exact") & rows["k"].notna()]
    metrics = {f"{r.metric}@{int(r.k)}": float(r.value) for r in exact.itertuples()}
    extra = {f"{r.metric}@{int(r.k)}/{r.method}": float(r.value)
             for r in rows[rows["metric"].str.startswith("item_") & rows["k"].notna()].itertuples()}
    return {"seconds": seconds, "peak_rss_mib": mem.peak / 2**20, "by_command_mib":
            {k: v / 2**20 for k, v in mem.peak_by_command.items()}, "users": summary.get("users"),
            "metrics": metrics, "sampled": extra}


def mllib_route(spark: Any, split: Split, uf: np.ndarray, itf: np.ndarray) -> dict[str, Any]:
    """recommendForAllUsers(max k) + RankingEvaluator at every k, on an ALSModel holding the same factors."""
    import pyarrow as pa
    from pyspark.ml.evaluation import RankingEvaluator
    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import functions as F

    def factors_df(mat: np.ndarray) -> Any:
        n, d = mat.shape
        return spark.createDataFrame(pa.table({
            "id": pa.array(np.arange(n, dtype=np.int32)),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(mat.astype(np.float32).ravel()), d)
            .cast(pa.list_(pa.float32()))})).cache()

    u_df, i_df = factors_df(uf), factors_df(itf)
    u_df.count(), i_df.count()
    java = spark._jvm.org.apache.spark.ml.recommendation.ALSModel("bench-als", uf.shape[1], u_df._jdf, i_df._jdf)
    # An ALSModel built outside ALS.fit has no param defaults: set what recommendForAllUsers reads.
    java.setUserCol("user").setItemCol("item").setPredictionCol("prediction").setBlockSize(4096)
    java.setColdStartStrategy("nan")
    model = ALSModel(java)
    test_users = np.repeat(np.arange(split.n_users), np.diff(split.test_indptr))
    labels = (spark.createDataFrame(pa.table({"user": pa.array(test_users.astype(np.int32)),
                                              "item": pa.array(split.test_indices.astype(np.float64))}))
              .groupBy("user").agg(F.collect_list("item").alias("label")))
    out: dict[str, float] = {}
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        recs = model.recommendForAllUsers(max(KS))
        pred = (recs.select("user", F.col("recommendations.item").cast("array<double>").alias("prediction"))
                .join(labels, "user").cache())
        n_users = pred.count()
        for k in KS:
            for name, metric in (("precision", "precisionAtK"), ("recall", "recallAtK"), ("ndcg", "ndcgAtK"),
                                 ("ap", "meanAveragePrecisionAtK")):
                out[f"{name}@{k}"] = RankingEvaluator(metricName=metric, k=k).evaluate(pred)
        seconds = time.perf_counter() - t0
    pred.unpersist()
    u_df.unpersist()
    i_df.unpersist()
    return {"seconds": seconds, "peak_rss_mib": mem.peak / 2**20, "users": n_users, "metrics": out,
            "note": "training items are not excluded (MLlib cannot); MLlib's AP@k divides by |test|, not min(k,|T|)"}


def numpy_reference(split: Split, uf: np.ndarray, itf: np.ndarray, exclude: bool) -> dict[str, float]:
    """kernels.ranking top-k lists (float64 scores) and metrics: the correctness yardstick for both routes."""
    from gramian.kernels.ranking import ranking_metrics, topk_excluding

    users = np.flatnonzero(np.diff(split.test_indptr) > 0)
    csr = split.train_csr()
    ip = csr.indptr if exclude else np.zeros(split.n_users + 1, np.int64)
    ix = csr.indices if exclude else np.zeros(0, np.int64)
    top, _ = topk_excluding(uf.astype(np.float64), itf.astype(np.float64), users, ip, ix, max(KS))
    return ranking_metrics(top, split.test_indptr, split.test_indices, KS, users=users)


def check(name: str, got: dict[str, float], ref: dict[str, float], keys: list[str], tol: float) -> None:
    bad = {k: (got[k], ref[k]) for k in keys if abs(got[k] - ref[k]) > tol}
    if bad:
        raise AssertionError(f"{name} metrics differ from the numpy reference beyond {tol}: {bad}")


def write_md(doc: dict[str, Any]) -> Path:
    m = doc["machine"]
    g, gs, ml = doc.get("gramian_exact", {}), doc.get("gramian_full"), doc.get("mllib")
    lines = [f"# Evaluation benchmark ({doc['dataset']})", "",
             f"{m.get('cpu', '?')}, {m.get('nproc', '?')} cores, {m.get('ram_gib', 0):.0f} GiB; pyspark "
             f"{m.get('versions', {}).get('pyspark', '?')}, local[2]; {doc['date']}, commit {m.get('git_commit')}. "
             f"Load average at start: {doc['load_avg']} (the machine is shared: timings are upper bounds).", "",
             f"{doc['users']} test users x {doc['items']} items, d={doc['dim']}, k = {list(KS)}. Factors: "
             f"{doc['factors_source']} (fit {doc['factor_fit_seconds']:.0f} s, not timed below).", "",
             "| route | wall s | peak RSS MiB (driver + JVM + workers) | what it computes |", "|---|---|---|---|",
             f"| gramian evaluate, exact only | {g['seconds']:.1f} | {g['peak_rss_mib']:.0f} | full-catalogue ranks "
             f"of every held-out item, training items excluded; P, R (two denominators), AP, NDCG @4 k, AUC |"]
    if gs:
        lines.append(f"| gramian evaluate, exact + sampled (m=100) + popularity | {gs['seconds']:.1f} | "
                     f"{gs['peak_rss_mib']:.0f} | the above, plus sampled/corrected/exact item_* metrics and the "
                     f"popularity baseline |")
    if ml and "error" not in ml:
        lines.append(f"| MLlib recommendForAllUsers({max(KS)}) + RankingEvaluator | {ml['seconds']:.1f} | "
                     f"{ml['peak_rss_mib']:.0f} | top-{max(KS)} lists *with* training items, P/R/NDCG/MAP @4 k |")
    elif ml:
        lines.append(f"| MLlib recommendForAllUsers({max(KS)}) + RankingEvaluator | failed | | {ml['error']} |")
    lines += ["", "Correctness, asserted before reporting: gramian's Spark metrics equal the numpy top-k reference "
              f"(max abs diff {doc.get('check_gramian_max_diff', float('nan')):.2e})"
              + (f"; MLlib's equal the numpy top-k without exclusion (max abs diff "
                 f"{doc['check_mllib_max_diff']:.2e}; float32 scores in MLlib)." if "check_mllib_max_diff" in doc
                 else "."), ""]
    has_ml = bool(ml) and "error" not in ml
    lines += ["| metric | gramian (train excluded) | MLlib route (train not excluded) |", "|---|---|---|"]
    for k in KS:
        for name in ("precision", "recall", "ndcg"):
            other = f"{ml['metrics'][f'{name}@{k}']:.4f}" if has_ml else "—"
            lines.append(f"| {name}@{k} | {g['metrics'][f'{name}@{k}']:.4f} | {other} |")
    if gs:
        lines += ["", "Sampled metrics on the same model (uniform m=100): item_recall@k exact / naive / corrected", "",
                  "| k | exact | naive sampled | corrected |", "|---|---|---|---|"]
        for k in KS:
            s = gs["sampled"]
            lines.append(f"| {k} | {s[f'item_recall@{k}/exact']:.4f} | {s[f'item_recall@{k}/sampled']:.4f} | "
                         f"{s[f'item_recall@{k}/corrected']:.4f} |")
    path = RESULTS / "evaluate.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args(argv)
    import os

    load = os.getloadavg()
    split = load_gowalla()
    t0 = time.perf_counter()
    fit = fit_implicit_als(split, dict(FACTORS))
    fit_s = time.perf_counter() - t0
    uf, itf = np.asarray(fit.user_factors, np.float32), np.asarray(fit.item_factors, np.float32)
    spark = spark_session()
    run_id = "bench"
    ref = numpy_reference(split, uf, itf, exclude=True)
    ref_noex = numpy_reference(split, uf, itf, exclude=False)
    keys = [f"{n}@{k}" for k in KS for n in ("precision", "recall", "recall_min", "ndcg")]
    keys_ml = [f"{n}@{k}" for k in KS for n in ("precision", "recall", "ndcg")]
    doc: dict[str, Any] = {
        "dataset": "gowalla", "users": int(ref["users"]), "items": split.n_items, "dim": uf.shape[1],
        "ks": list(KS), "factors_source": f"implicit ALS {FACTORS}", "factor_fit_seconds": fit_s,
        "machine": report.machine_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg": [round(x, 1) for x in load]}
    RESULTS.mkdir(exist_ok=True)

    def save() -> None:  # after every route: a later failure (e.g. the machine's OOM killer) keeps the rest
        (RESULTS / "evaluate.json").write_text(json.dumps(doc, indent=2, default=str))
        write_md(doc)

    with tempfile.TemporaryDirectory(prefix="gramian-evalbench-") as root:
        st = write_tables(spark, split, uf, itf, root, run_id)
        doc["gramian_exact"] = g = gramian_route(spark, st, run_id, sampled=False)
        check("gramian", g["metrics"], ref, keys, 1e-9)
        doc["check_gramian_max_diff"] = max(abs(g["metrics"][k] - ref[k]) for k in keys)
        save()
        try:
            doc["mllib"] = ml = mllib_route(spark, split, uf, itf)
            check("MLlib", ml["metrics"], ref_noex, keys_ml, 2e-3)
            doc["check_mllib_max_diff"] = max(abs(ml["metrics"][k] - ref_noex[k]) for k in keys_ml)
        except Exception as e:  # recorded, not hidden: the table says the route failed and why
            doc["mllib"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            spark = spark_session()
        save()
        doc["gramian_full"] = gramian_route(spark, st, run_id, sampled=True)
        save()
    print((RESULTS / "evaluate.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
