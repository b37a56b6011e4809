"""Retrieval benchmark: ScaNN vs exact top-100 (recall, queries/s) and end-to-end publish vs MLlib.

    python -m benchmarks.retrieval_bench            # ~10-20 min on 2 shared cores
    python -m benchmarks.retrieval_bench --quick    # 200k synthetic items, fewer queries
    python -m benchmarks.retrieval_bench --parts gowalla   # one part only (printed, results files untouched)

1. Synthetic catalogue, 1M items x d=64 (generated factors, two kinds): `clustered` (items around 2,000
   random centres, lognormal norms for popularity: the structure trained embeddings have) and `gaussian`
   (i.i.d. N(0, 1), the worst case for any partitioning index). Queries are drawn like the items.
   Exact = `kernels.ranking.topk_excluding` (blocked numpy, BLAS threads as installed); ScaNN =
   `retrieval.index` built with publish-config parameters, one single-threaded `search_batched` call per
   query batch (what a Spark task does). Recall@100 of ScaNN's list against the exact one, same queries.
2. Gowalla real factors: gramian iALS (d=64, the recommended setting) fit in one process; the same
   comparison with training items excluded (as published) on a user sample. Both sides are timed three
   times on the same queries and the best of each is kept (the machine is shared: this damps load spikes
   for both alike).
3. End-to-end publish for all Gowalla users at n=100 (`gramian.retrieval.publish.run` on Delta tables:
   index build, recall gate, scoring in Spark tasks, one Delta write) vs MLlib
   `ALSModel.recommendForAllUsers(100)` written to Delta, the ALSModel built from the SAME factor
   DataFrames through its (package-private) JVM constructor. MLlib does not drop training items.
Every timing is asserted to come with a correct result first (recall computed, row counts checked).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import RESULTS, _f, _header, machine_info
from gramian.config import PublishConfig
from gramian.kernels.ranking import topk_excluding
from gramian.retrieval.index import build_index, index_recall, topn_excluding

K = 100
RECOMMENDED = {"dim": 64, "alpha0": 0.00854054, "reg": 0.01, "nu": 1.0, "reg_counts": "all", "epochs": 15,
               "solver": "cg", "cg_steps": 3}


def generated_factors(n: int, d: int, kind: str, seed: int, centres_seed: int = 7) -> np.ndarray:
    """`n` vectors of dimension d: clustered with popularity norms, or i.i.d. Gaussian."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal((n, d), dtype=np.float32)
    centres = np.random.default_rng(centres_seed).standard_normal((2000, d), dtype=np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    return (x * rng.lognormal(0.0, 0.25, (n, 1)).astype(np.float32)).astype(np.float32)


def _no_history(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(m + 1, np.int64), np.zeros(0, np.int64)


def exact_topk(q: np.ndarray, h: np.ndarray, ip: np.ndarray, ix: np.ndarray, batch: int = 256) -> tuple[Any, float]:
    t0 = time.perf_counter()
    items, _ = topk_excluding(q, h, np.arange(len(q)), ip, ix, K, batch_size=batch)
    return items, time.perf_counter() - t0


def best_of(f: Any, repeats: int = 3) -> tuple[Any, float]:
    """f()'s result and its fastest wall time over `repeats` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return out, best


def synthetic(kind: str, n_items: int, n_queries: int, tmp: Path) -> dict[str, Any]:
    """ScaNN (default parameters and a small sweep of search settings) vs exact on one generated catalogue."""
    d = 64
    h = generated_factors(n_items, d, kind, seed=1)
    q = generated_factors(n_queries, d, kind, seed=2)
    ip, ix = _no_history(n_queries)
    truth, exact_s = exact_topk(q, h, ip, ix)
    out: dict[str, Any] = {"kind": kind, "items": n_items, "dim": d, "queries": n_queries,
                           "exact_seconds": exact_s, "exact_qps": n_queries / exact_s, "configs": []}
    cfg = PublishConfig()
    t0 = time.perf_counter()
    index = build_index(h, np.arange(n_items).astype(str), tmp / f"syn-{kind}", cfg, K)
    out["build_seconds"] = time.perf_counter() - t0
    out["params"] = dataclasses.asdict(index.params)
    leaves = index.params.num_leaves
    sweep = [(index.params.num_leaves_to_search, index.params.reorder_factor)]
    sweep += [(int(leaves * f), r) for f in (0.05, 0.1, 0.2) for r in (10.0, 20.0) if (int(leaves * f), r) != sweep[0]]
    for search, reorder_factor in sweep:
        t0 = time.perf_counter()
        nb, _ = index.searcher.search_batched(q, final_num_neighbors=K, leaves_to_search=search,
                                              pre_reorder_num_neighbors=int(reorder_factor * K))
        s = time.perf_counter() - t0
        rec = index_recall(np.asarray(nb, np.int64), truth)
        out["configs"].append({"leaves_to_search": search, "num_leaves": leaves, "reorder": int(reorder_factor * K),
                               "recall": rec, "qps": n_queries / s, "speedup": exact_s / s,
                               "default": (search, reorder_factor) == sweep[0]})
        print(f"  {kind}: leaves {search}/{leaves} reorder {int(reorder_factor * K)}: recall@{K} {rec:.3f}, "
              f"{n_queries / s:.0f} q/s ({exact_s / s:.1f}x exact)", flush=True)
    shutil.rmtree(tmp / f"syn-{kind}", ignore_errors=True)
    return out


def gowalla_factors() -> tuple[Any, np.ndarray, np.ndarray, float]:
    from benchmarks.datasets import load_gowalla
    from benchmarks.peers import fit_gramian_numpy

    split = load_gowalla()
    fit = fit_gramian_numpy(split, RECOMMENDED, track_loss=False)
    return split, fit.user_factors, fit.item_factors, fit.fit_seconds


def gowalla_index(split: Any, w: np.ndarray, h: np.ndarray, n_queries: int, tmp: Path) -> dict[str, Any]:
    """ScaNN (publish defaults) vs exact top-100 on Gowalla's factors, training items excluded as published."""
    cfg = PublishConfig()
    t0 = time.perf_counter()
    index = build_index(h, np.arange(len(h)).astype(str), tmp / "gowalla-index", cfg, K)
    build_s = time.perf_counter() - t0
    users = np.random.default_rng(0).choice(split.n_users, size=min(n_queries, split.n_users), replace=False)
    csr = split.train_csr()
    ip = np.concatenate([[0], np.cumsum(np.diff(csr.indptr)[users])]).astype(np.int64)
    ix = np.concatenate([csr.indices[csr.indptr[u]:csr.indptr[u + 1]] for u in users]).astype(np.int64)
    q = w[users]
    from threadpoolctl import threadpool_limits

    threads = os.cpu_count() or 1
    truth, exact_s = best_of(lambda: exact_topk(q, h, ip, ix)[0])
    with threadpool_limits(1):
        _, exact_1_s = best_of(lambda: exact_topk(q, h, ip, ix)[0])
    (got, _, fell_back), s1 = best_of(lambda: topn_excluding(index, q, ip, ix, K, cfg.exact_history_above))
    (got_par, _, _), s = best_of(lambda: topn_excluding(index, q, ip, ix, K, cfg.exact_history_above, threads))
    rec = index_recall(got, truth)
    assert index_recall(got_par, truth) == rec
    (raw, _), raw_s = best_of(lambda: index.search(q, K))
    raw_truth, raw_exact_s = best_of(lambda: exact_topk(q, h, *_no_history(len(q)))[0])
    out = {"items": len(h), "users": split.n_users, "queries": len(q), "params": dataclasses.asdict(index.params),
           "build_seconds": build_s, "threads": threads, "exact_qps": len(q) / exact_s,
           "scann_excluding_qps": len(q) / s, "exact_qps_1thread": len(q) / exact_1_s,
           "scann_excluding_qps_1thread": len(q) / s1,
           "recall_excluding": rec, "exact_fallback_share": float(fell_back.mean()),
           "raw_recall": index_recall(raw, raw_truth), "raw_exact_qps": len(q) / raw_exact_s,
           "raw_scann_qps": len(q) / raw_s}
    print(f"  gowalla: recall@{K} {rec:.3f} (excluding train), raw {out['raw_recall']:.3f}; {threads} threads "
          f"{out['scann_excluding_qps']:.0f} vs {out['exact_qps']:.0f} q/s; 1 thread "
          f"{out['scann_excluding_qps_1thread']:.0f} vs {out['exact_qps_1thread']:.0f} q/s", flush=True)
    shutil.rmtree(tmp / "gowalla-index", ignore_errors=True)
    return out


def _factor_table(spark: Any, run_id: str, f: np.ndarray, ids: np.ndarray) -> Any:
    import pyarrow as pa

    n, d = f.shape
    flat = pa.array(np.ascontiguousarray(f, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return spark.createDataFrame(pa.table({
        "run_id": pa.array([run_id] * n, pa.string()), "idx": pa.array(np.arange(n, dtype=np.int32)),
        "id": pa.array(ids, pa.string()), "factors": pa.ListArray.from_arrays(offsets, flat)}))


def publish_vs_mllib(spark: Any, split: Any, w: np.ndarray, h: np.ndarray, root: Path) -> dict[str, Any]:
    """Wall time of `gramian publish` (all Gowalla users, n=100) and of MLlib recommendForAllUsers(100)."""
    import pyarrow as pa

    from gramian import tables
    from gramian.config import Config, ModelConfig, StorageConfig
    from gramian.errors import PublishError
    from gramian.retrieval.publish import run as publish

    run_id = "gowalla"
    st = StorageConfig(root=str(root / "wh"))
    model = ModelConfig(**{k: v for k, v in RECOMMENDED.items()})
    cfg = Config(storage=st, model=model, publish=PublishConfig(n=K))
    uids = np.array([f"u{i}" for i in range(split.n_users)])
    iids = np.array([f"i{i}" for i in range(split.n_items)])
    tables.write(spark.createDataFrame(pa.table({
        "user_idx": pa.array(split.train_users.astype(np.int32)),
        "item_idx": pa.array(split.train_items.astype(np.int32)),
        "weight": pa.array(split.train_weights.astype(np.float64))})), st, "train")
    tables.write(_factor_table(spark, run_id, w, uids), st, "user_factors")
    tables.write(_factor_table(spark, run_id, h, iids), st, "item_factors")
    row = {"run_id": run_id, "model": "ials", "config": json.dumps(cfg.to_dict(), default=str)}
    tables.write(spark.createDataFrame([row], "run_id string, model string, config string"), st, "runs")

    t0 = time.perf_counter()
    try:
        summary = publish(spark, cfg, run_id)
    except PublishError as e:  # the gate refused the defaults: record it, publish with a wider search
        print(f"  publish refused with defaults: {e}", flush=True)
        cfg = dataclasses.replace(cfg, publish=dataclasses.replace(cfg.publish, search_fraction=0.15))
        t0 = time.perf_counter()
        summary = {**publish(spark, cfg, run_id), "refused_with_defaults": str(e)}
    ours_s = time.perf_counter() - t0
    n_train_users = int(len(np.unique(split.train_users)))
    assert summary["rows"] == n_train_users * K, summary  # every user got a full list
    print(f"  gramian publish: {ours_s:.1f}s for {summary['users']} users ({summary})", flush=True)

    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import functions as F

    uf = _factor_table(spark, run_id, w, uids).select(F.col("idx").alias("id"), F.col("factors").alias("features"))
    itf = _factor_table(spark, run_id, h, iids).select(F.col("idx").alias("id"), F.col("factors").alias("features"))
    uf, itf = uf.cache(), itf.cache()
    uf.count(), itf.count()
    try:  # the same factors: ALSModel's constructor is package-private in Scala, public in bytecode
        jmodel = spark._jvm.org.apache.spark.ml.recommendation.ALSModel("gramian-bench", int(w.shape[1]), uf._jdf,
                                                                        itf._jdf)
        # a model built this way has no param defaults: set those recommendForAllUsers reads
        jmodel.setUserCol("user").setItemCol("item").setPredictionCol("prediction")
        jmodel.setColdStartStrategy("nan").setBlockSize(4096)
        als = ALSModel(jmodel)
        how = "ALSModel built from gramian's factor DataFrames (JVM constructor), not retrained"
    except Exception as e:  # noqa: BLE001 - py4j raises several kinds; fall back to a same-shape model
        from pyspark.ml.recommendation import ALS

        print(f"  ALSModel constructor unavailable ({type(e).__name__}); training MLlib ALS, rank 64, 1 iteration",
              flush=True)
        pairs = spark.createDataFrame(pa.table({"user": pa.array(split.train_users.astype(np.int32)),
                                                "item": pa.array(split.train_items.astype(np.int32)),
                                                "rating": pa.array(split.train_weights.astype(np.float32))}))
        als = ALS(rank=int(w.shape[1]), maxIter=1, implicitPrefs=True).fit(pairs)
        how = "MLlib ALS trained (rank 64, 1 iteration): same shapes, not the same factors"
    out_path = str(root / "mllib_topn")
    t0 = time.perf_counter()
    recs = als.recommendForAllUsers(K)
    recs.write.format("delta").mode("overwrite").save(out_path)
    mllib_s = time.perf_counter() - t0
    n_rows = spark.read.format("delta").load(out_path).select(F.size("recommendations").alias("s")).agg(
        F.count(F.lit(1)), F.sum("s")).collect()[0]
    first = spark.read.format("delta").load(out_path).orderBy("user").first()
    mllib_items = [r["item"] for r in first["recommendations"]]
    ours_exact_for_first, _ = topk_excluding(w, h, np.array([first["user"]]), *_no_history(split.n_users), K)
    seen = set(split.train_items[split.train_users == first["user"]].tolist())
    print(f"  MLlib recommendForAllUsers({K}) + Delta write: {mllib_s:.1f}s for {n_rows[0]} users", flush=True)
    return {"publish_seconds": ours_s, "publish_summary": summary, "mllib_seconds": mllib_s,
            "mllib_users": int(n_rows[0]), "mllib_rows": int(n_rows[1]),
            "mllib_model": how,
            "mllib_matches_exact_unfiltered": bool(set(mllib_items) == set(ours_exact_for_first[0].tolist())),
            "mllib_training_items_in_first_list": len(seen & set(mllib_items)),
            "speedup": mllib_s / ours_s}


def _targets(doc: dict[str, Any]) -> list[str]:
    """The issue's targets (recall@100 >= 0.95, >= 10x exact q/s) checked against the publish defaults."""
    out = ["## Against the targets (publish defaults)", ""]
    for s in doc["synthetic"]:
        c = next(c for c in s["configs"] if c["default"])
        out.append(f"- synthetic {s['kind']}: recall {c['recall']:.3f} ({'met' if c['recall'] >= 0.95 else 'MISSED'}), "
                   f"{c['speedup']:.0f}x exact ({'met' if c['speedup'] >= 10 else 'MISSED'})")
    g = doc.get("gowalla_index")
    if g:
        sp = g["scann_excluding_qps"] / g["exact_qps"]
        sp1 = g["scann_excluding_qps_1thread"] / g["exact_qps_1thread"]
        rec = g["recall_excluding"]
        out.append(f"- Gowalla: recall {rec:.3f} ({'met' if rec >= 0.95 else 'MISSED'}), {sp:.1f}x exact with "
                   f"training items excluded, {g['threads']} threads each ({'met' if sp >= 10 else 'MISSED'}); "
                   f"1 thread each {sp1:.1f}x ({'met' if sp1 >= 10 else 'MISSED'}); raw top-100, ScaNN 1 thread "
                   f"vs exact {g['threads']}: {g['raw_scann_qps'] / g['raw_exact_qps']:.1f}x")
    out += ["", "i.i.d. Gaussian factors have no cluster structure for partitions to exploit (the worst case: see "
            "the sweep above for what searching more leaves buys); trained embeddings (Gowalla) and clustered "
            "factors reach the recall target at the defaults.", ""]
    return out


def write_md(doc: dict[str, Any]) -> Path:
    lines = _header(doc["machine"], "gramian retrieval benchmark")
    lines += ["Timings were taken on 2 cores shared with other jobs: treat them as noisy (see load).", "",
              f"## Synthetic catalogues ({doc['synthetic'][0]['items']:,} items, d=64, generated factors)", "",
              "Exact: blocked numpy `topk_excluding` (BLAS threads as installed). ScaNN: one single-threaded "
              "`search_batched` call over the same queries. Recall@100 of ScaNN's list vs the exact one.", "",
              "| factors | leaves searched | reorder | recall@100 | ScaNN q/s | exact q/s | speed-up | |",
              "|---|---|---|---|---|---|---|---|"]
    for s in doc["synthetic"]:
        for c in s["configs"]:
            lines.append(f"| {s['kind']} | {c['leaves_to_search']}/{c['num_leaves']} | {c['reorder']} | "
                         f"{_f(c['recall'], '.3f')} | {_f(c['qps'], '.0f')} | {_f(s['exact_qps'], '.1f')} | "
                         f"{_f(c['speedup'], '.1f')}x | {'publish defaults' if c['default'] else ''} |")
    lines += ["", "Build seconds: " + ", ".join(f"{s['kind']} {s['build_seconds']:.1f}" for s in doc["synthetic"]),
              ""]
    g = doc.get("gowalla_index")
    if g:
        lines += [f"## Gowalla real factors ({g['items']:,} items, gramian iALS d=64, recommended setting)", "",
                  f"Factors fit in {doc['gowalla_fit_seconds']:.1f}s (one process). Index: {g['params']['kind']}, "
                  f"{g['params']['num_leaves_to_search']}/{g['params']['num_leaves']} leaves, quantize "
                  f"{g['params']['quantize']}; built in {g['build_seconds']:.1f}s. {g['queries']} sampled users; "
                  f"each side timed 3 times on the same queries, best kept.", "",
                  "| lists | threads (ScaNN / exact BLAS) | recall@100 | ScaNN q/s | exact q/s | speed-up |",
                  "|---|---|---|---|---|---|",
                  f"| training items excluded (as published; {g['exact_fallback_share']:.1%} exact fallback) | "
                  f"{g['threads']} / {g['threads']} (whole machine) | {_f(g['recall_excluding'], '.3f')} | "
                  f"{_f(g['scann_excluding_qps'], '.0f')} | {_f(g['exact_qps'], '.0f')} | "
                  f"{_f(g['scann_excluding_qps'] / g['exact_qps'], '.1f')}x |",
                  f"| training items excluded (one core each: a Spark task) | 1 / 1 | "
                  f"{_f(g['recall_excluding'], '.3f')} | {_f(g['scann_excluding_qps_1thread'], '.0f')} | "
                  f"{_f(g['exact_qps_1thread'], '.0f')} | "
                  f"{_f(g['scann_excluding_qps_1thread'] / g['exact_qps_1thread'], '.1f')}x |",
                  f"| raw top-100 | 1 / {g['threads']} | {_f(g['raw_recall'], '.3f')} | "
                  f"{_f(g['raw_scann_qps'], '.0f')} | {_f(g['raw_exact_qps'], '.0f')} | "
                  f"{_f(g['raw_scann_qps'] / g['raw_exact_qps'], '.1f')}x |", "",
                  "On a shared machine the all-thread rows swing with other jobs' load (exact BLAS with 2 threads "
                  "can lose to 1 thread when the second core is busy); the 1 / 1 row is the per-core comparison, "
                  "and what a Spark task (one per core) gets.", ""]
    p = doc.get("publish")
    if p:
        s = p["publish_summary"]
        lines += ["## End-to-end publish, all Gowalla users, n=100 (Spark local[2], Delta)", "",
                  "| job | wall s | users | rows | notes |", "|---|---|---|---|---|",
                  f"| `gramian publish` | {p['publish_seconds']:.1f} | {s['users']} | {s['rows']} | index "
                  f"{s['index_seconds']}s + scoring/write {s['publish_seconds']}s; recall gate "
                  f"{s['index_recall']} on {s['recall_sample']} users; training items excluded |",
                  f"| MLlib `recommendForAllUsers(100)` + Delta write | {p['mllib_seconds']:.1f} | {p['mllib_users']} "
                  f"| {p['mllib_rows']} | {p['mllib_model']}; training items NOT excluded "
                  f"({p['mllib_training_items_in_first_list']} in the first user's list) |", "",
                  f"Speed-up: {p['speedup']:.1f}x.", ""]
    lines += _targets(doc)
    path = RESULTS / "retrieval.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200k synthetic items, 300 queries")
    ap.add_argument("--skip-publish", action="store_true", help="no Spark part (index comparisons only)")
    ap.add_argument("--parts", default="synthetic,gowalla,publish",
                    help="comma-separated subset of synthetic,gowalla,publish; a subset is printed and the "
                         "results files are left as they are")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if args.skip_publish:
        parts.discard("publish")
    unknown = parts - {"synthetic", "gowalla", "publish"}
    if unknown:
        ap.error(f"--parts must name synthetic, gowalla or publish, got {sorted(unknown)}")
    if parts != {"synthetic", "gowalla", "publish"}:
        return _run_parts(parts, args.quick)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    n_items, n_queries = (200_000, 300) if args.quick else (1_000_000, 1000)
    doc: dict[str, Any] = {"machine": machine_info(), "k": K}
    tmp = Path(tempfile.mkdtemp(prefix="gramian-retrieval-"))
    try:
        doc["synthetic"] = [synthetic(kind, n_items, n_queries, tmp) for kind in ("clustered", "gaussian")]
        split, w, h, fit_s = gowalla_factors()
        doc["gowalla_fit_seconds"] = fit_s
        doc["gowalla_index"] = gowalla_index(split, w, h, 2000, tmp)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "retrieval.json").write_text(json.dumps(doc, indent=2, default=str))  # kept if Spark fails
        if not args.skip_publish:
            from benchmarks.peers import spark_session

            doc["publish"] = publish_vs_mllib(spark_session(), split, w, h, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc["machine"]["load_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrieval.json").write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {write_md(doc)}", flush=True)
    return 0


def _run_parts(parts: set[str], quick: bool) -> int:
    """Run some parts and print their results as JSON (a partial run never overwrites the results files)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    n_items, n_queries = (200_000, 300) if quick else (1_000_000, 1000)
    doc: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="gramian-retrieval-"))
    try:
        if "synthetic" in parts:
            doc["synthetic"] = [synthetic(kind, n_items, n_queries, tmp) for kind in ("clustered", "gaussian")]
        if parts & {"gowalla", "publish"}:
            split, w, h, fit_s = gowalla_factors()
            if "gowalla" in parts:
                doc["gowalla_index"] = gowalla_index(split, w, h, 2000, tmp)
            if "publish" in parts:
                from benchmarks.peers import spark_session

                doc["publish"] = publish_vs_mllib(spark_session(), split, w, h, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(doc, indent=2, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
