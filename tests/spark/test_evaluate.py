"""`gramian evaluate` on ml-100k: Spark aggregations against independent numpy metrics, sampled corrections,
strong generalisation by fold-in, missing factors counted, and bad input refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gramian import tables
from gramian.config import Config, EvaluateConfig, ModelConfig, SampledConfig
from gramian.errors import ConfigError, InputDataError
from gramian.evaluate.job import run as evaluate
from gramian.kernels import gramian, observed_weights, regularization_weights, solve_side
from gramian.kernels.foldin import fold_in
from gramian.kernels.ranking import topk_excluding
from tests.oracles import topk_list_metrics

KS = (5, 10, 20)
RUN = "r1"
MODEL = ModelConfig(dim=16, epochs=4, alpha0=0.1, reg=0.01, nu=1.0, solver="cholesky")


def _csr(rows: np.ndarray, cols: np.ndarray, n: int, vals: np.ndarray | None = None):
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, cols[order].astype(np.int64), (None if vals is None else vals[order])


def _fit(u: np.ndarray, i: np.ndarray, w: np.ndarray, n_users: int, n_items: int) -> tuple[np.ndarray, ...]:
    """A few exact iALS epochs with the kernels (factors for the test, float32 like the tables)."""
    rng = np.random.default_rng(0)
    W, H = rng.normal(0, 0.1, (n_users, MODEL.dim)), rng.normal(0, 0.1, (n_items, MODEL.dim))
    c = MODEL.confidence
    sides = {}
    for name, rows, cols, n in (("u", u, i, n_users), ("i", i, u, n_items)):
        ip, ix, wv = _csr(rows, cols, n, w)
        sides[name] = (ip, ix, *observed_weights(wv, MODEL.alpha0, c.form, c.scale, c.beta, c.eps))
    for _ in range(MODEL.epochs):
        for name in ("u", "i"):
            ip, ix, alpha, target = sides[name]
            x, other = (W, H) if name == "u" else (H, W)
            lam = regularization_weights(MODEL.reg, MODEL.nu, np.diff(ip), MODEL.alpha0, other.shape[0],
                                         reg_counts=MODEL.reg_counts)
            new = solve_side(ip, ix, alpha, target, other, gramian(other), MODEL.alpha0, lam, x, solver="cholesky")
            if name == "u":
                W = new
            else:
                H = new
    return W.astype(np.float32), H.astype(np.float32)


@pytest.fixture(scope="module")
def ml100k(shared_data: Path, spark, tmp_path_factory):
    """ml-100k split 80/20 per user; 40 users held out (fold-in), 5 users and 3 items without factors."""
    df = pd.read_csv(shared_data / "ml-100k" / "u.data", sep="\t", header=None, names=["u", "i", "r", "ts"])
    u = np.unique(df["u"], return_inverse=True)[1].astype(np.int64)
    i = np.unique(df["i"], return_inverse=True)[1].astype(np.int64)
    w = df["r"].to_numpy(np.float64)
    n_users, n_items = int(u.max()) + 1, int(i.max()) + 1
    rng = np.random.default_rng(1)
    test_mask = rng.random(len(u)) < 0.2
    heldout = np.arange(n_users) % 23 == 0  # strong generalisation: no factors, history in `foldin`
    nofactor = np.isin(np.arange(n_users), [1, 2, 3, 4, 5])  # test users with neither factors nor history
    noitem = np.array([7, 50, 400])  # items whose factors are missing
    in_train = ~test_mask & ~heldout[u]
    in_fold = ~test_mask & heldout[u]
    W, H = _fit(u[in_train], i[in_train], w[in_train], n_users, n_items)
    st = dataclasses.replace(Config().storage, root=str(tmp_path_factory.mktemp("eval") / "warehouse"))

    def frame(mask):
        return spark.createDataFrame(pd.DataFrame({"user_idx": u[mask].astype("int32"), "item_idx": i[mask].astype(
            "int32"), "weight": w[mask], "ts": pd.NaT})).selectExpr("user_idx", "item_idx", "weight",
                                                                   "cast(ts as timestamp) as ts")

    tables.write(frame(in_train), st, "train")
    tables.write(frame(test_mask), st, "test")
    tables.write(frame(in_fold), st, "foldin")
    items = pd.DataFrame({"id": [str(x) for x in range(n_items)], "idx": np.arange(n_items, dtype="int32")})
    tables.write(spark.createDataFrame(items), st, "items")
    keep_u = np.flatnonzero(~heldout & ~nofactor)
    keep_i = np.setdiff1d(np.arange(n_items), noitem)
    for name, mat, keep in (("user_factors", W, keep_u), ("item_factors", H, keep_i)):
        pdf = pd.DataFrame({"run_id": RUN, "idx": keep.astype("int32"), "id": [str(x) for x in keep],
                            "factors": [row.tolist() for row in mat[keep]]})
        tables.write(spark.createDataFrame(pdf, "run_id string, idx int, id string, factors array<float>"), st, name)
    cfg = Config(storage=st, model=MODEL,
                 evaluate=EvaluateConfig(k=KS, per_user=True, sampled=SampledConfig(m=100, seed=3)))
    summary = evaluate(spark, cfg, RUN)
    metrics = tables.read(spark, st, "metrics").toPandas()
    by_user = tables.read(spark, st, "metrics_by_user").toPandas()
    return dict(u=u, i=i, w=w, test=test_mask, train=in_train, fold=in_fold, heldout=heldout, nofactor=nofactor,
                noitem=noitem, W=W, H=H, n_users=n_users, n_items=n_items, cfg=cfg, summary=summary,
                metrics=metrics, by_user=by_user, storage=st)


def _value(metrics: pd.DataFrame, model: str, metric: str, k: int | None, method: str = "exact") -> float:
    sel = (metrics["model"] == model) & (metrics["metric"] == metric) & (metrics["method"] == method)
    sel &= metrics["k"].isna() if k is None else metrics["k"] == k
    assert sel.sum() == 1, (model, metric, k, method, int(sel.sum()))
    return float(metrics.loc[sel, "value"].iloc[0])


def _numpy_reference(d: dict, user_vectors: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """Independent numpy metrics: top-k lists (kernels.ranking.topk_excluding, tests.oracles) for P/R/NDCG,
    and a sort of every user's full score row for AP and AUC."""
    n_users, n_items = d["n_users"], d["n_items"]
    present = np.ones(n_items, bool)
    present[d["noitem"]] = False
    hist_mask = d["train"] | d["fold"]
    h_ip, h_ix, _ = _csr(d["u"][hist_mask], d["i"][hist_mask], n_users)
    tmask = d["test"] & present[d["i"]]
    t_ip, t_ix, _ = _csr(d["u"][tmask], d["i"][tmask], n_users)
    H = d["H"].astype(np.float64).copy()
    H[~present] = 0.0
    absent = np.flatnonzero(~present)
    # Absent items join every history so they are never candidates.
    rows = [np.union1d(h_ix[h_ip[x]:h_ip[x + 1]], absent) for x in range(n_users)]
    a_ip = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    a_ix = np.concatenate(rows).astype(np.int64)
    uv = np.zeros((n_users, H.shape[1]))
    uv[users] = user_vectors
    top, _ = topk_excluding(uv, H, users, a_ip, a_ix, max(KS))
    ref = topk_list_metrics(top, t_ip, t_ix, KS, users=users)
    ap = {k: [] for k in KS}
    auc = []
    for x in users:
        test = t_ix[t_ip[x]:t_ip[x + 1]]
        if len(test) == 0:
            continue
        scores = uv[x] @ H.T
        cand = np.setdiff1d(np.arange(n_items), rows[x])
        order = cand[np.lexsort((cand, -scores[cand]))]
        rel = np.isin(order, test)
        for k in KS:
            prec_at = np.cumsum(rel[:k]) / np.arange(1, min(k, len(order)) + 1)
            ap[k].append(float((prec_at * rel[:k]).sum() / min(k, len(test))))
        n_rel, n_irr = rel.sum(), (~rel).sum()
        irr_below = n_irr - np.cumsum(~rel)  # irrelevant items ranked below each position
        auc.append(float(irr_below[rel].sum() / (n_rel * n_irr)))
    for k in KS:
        ref[f"ap@{k}"] = float(np.mean(ap[k]))
    ref["auc"] = float(np.mean(auc))
    return ref


def test_exact_metrics_equal_independent_numpy_computation(ml100k):
    d = ml100k
    foldin_users = np.flatnonzero(d["heldout"])
    users = np.flatnonzero(~d["heldout"] & ~d["nofactor"])
    fip, fix, fw = _csr(d["u"][d["fold"]], d["i"][d["fold"]], d["n_users"], d["w"][d["fold"]])
    present = np.ones(d["n_items"], bool)
    present[d["noitem"]] = False
    keep = present[fix]
    owner = np.repeat(np.arange(d["n_users"]), np.diff(fip))[keep]
    fip2 = np.zeros(d["n_users"] + 1, np.int64)
    np.cumsum(np.bincount(owner, minlength=d["n_users"]), out=fip2[1:])
    Hp = d["H"].copy()
    Hp[~present] = 0
    folded = fold_in(fip2, fix[keep], fw[keep], Hp, MODEL)
    all_users = np.concatenate([users, foldin_users])
    vectors = np.concatenate([d["W"][users].astype(np.float64), folded[foldin_users]])
    ref = _numpy_reference(d, vectors, all_users)
    m = d["metrics"]
    for k in KS:
        for name in ("precision", "recall", "recall_min", "ndcg", "ap"):
            got = _value(m, "ials", name, k)
            assert got == pytest.approx(ref[f"{name}@{k}"], abs=1e-9), (name, k, got, ref[f"{name}@{k}"])
    assert _value(m, "ials", "auc", None) == pytest.approx(ref["auc"], abs=1e-9)
    assert _value(m, "ials", "users_evaluated", None, "count") == ref["users"]


def test_missing_factors_are_counted_in_metrics_and_summary(ml100k):
    d, m, s = ml100k, ml100k["metrics"], ml100k["summary"]
    test_users = np.unique(d["u"][d["test"]])
    n_missing = int(np.isin(test_users, np.flatnonzero(d["nofactor"])).sum())
    missing_pairs = int((d["test"] & d["nofactor"][d["u"]]).sum())
    item_pairs = int((d["test"] & np.isin(d["i"], d["noitem"]) & ~d["nofactor"][d["u"]]).sum())
    assert n_missing == 5 and item_pairs > 0
    assert _value(m, "ials", "test_users_missing_factors", None, "count") == n_missing
    assert _value(m, "ials", "test_pairs_missing_user_factors", None, "count") == missing_pairs
    assert _value(m, "ials", "test_pairs_missing_item_factors", None, "count") == item_pairs
    assert s["test_users_missing_factors"] == n_missing
    assert s["test_pairs_missing_item_factors"] == item_pairs
    assert s["foldin_users"] == int(np.isin(test_users, np.flatnonzero(d["heldout"])).sum()) > 0
    assert "| ials | ndcg | exact |" in s["metrics"]


def test_corrected_sampled_recall_is_much_closer_to_exact_than_naive(ml100k):
    m = ml100k["metrics"]
    exact = _value(m, "ials", "item_recall", 10, "exact")
    naive = _value(m, "ials", "item_recall", 10, "sampled")
    corr = _value(m, "ials", "item_recall", 10, "corrected")
    msg = f"item_recall@10 on ml-100k, m=100 uniform: exact {exact:.4f}, naive {naive:.4f}, corrected {corr:.4f}"
    assert abs(corr - exact) < abs(naive - exact) / 3, msg
    assert naive > exact, msg  # sampling flatters top-k metrics
    for metric in ("item_ndcg", "item_ap"):
        e, n, c = (_value(m, "ials", metric, 10, meth) for meth in ("exact", "sampled", "corrected"))
        assert abs(c - e) < abs(n - e), (metric, e, n, c)


def test_popularity_baseline_is_in_the_same_table_and_below_the_model(ml100k):
    m = ml100k["metrics"]
    pop = _value(m, "popularity", "recall", 20)
    model = _value(m, "ials", "recall", 20)
    assert 0 < pop < model, (pop, model)
    assert set(m["run_id"]) == {RUN}


def test_per_user_rows_average_to_the_aggregates(ml100k):
    by_user, m = ml100k["by_user"], ml100k["metrics"]
    sel = (by_user["model"] == "ials") & (by_user["metric"] == "ndcg") & (by_user["k"] == 10) & (
        by_user["method"] == "exact")
    assert by_user.loc[sel, "value"].mean() == pytest.approx(_value(m, "ials", "ndcg", 10), abs=1e-12)


def test_report_has_markdown_and_plots(ml100k):
    folder = Path(ml100k["summary"]["report"]).parent
    assert (folder / "report.md").read_text().count("| ials |") > 5
    for png in ("metrics_at_k.png", "loss.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"


def test_rerun_replaces_the_runs_rows(ml100k, spark):
    d = ml100k
    cfg = dataclasses.replace(d["cfg"], evaluate=dataclasses.replace(d["cfg"].evaluate, per_user=False,
                                                                     popularity=False, k=(10,),
                                                                     sampled=SampledConfig(enabled=False)))
    evaluate(spark, cfg, RUN)
    again = tables.read(spark, d["storage"], "metrics").toPandas()
    assert not (again["model"] == "popularity").any()
    assert _value(again, "ials", "ndcg", 10) == pytest.approx(_value(d["metrics"], "ials", "ndcg", 10), abs=1e-12)


@pytest.mark.parametrize("change, error, text", [
    ({"k": (0, 10)}, ConfigError, "evaluate.k must hold positive cut-offs, got [0, 10]"),
    ({"sampled": SampledConfig(m=5000)}, ConfigError, "evaluate.sampled.m must be at most the catalogue size"),
])
def test_bad_config_is_refused_naming_the_value(ml100k, spark, change, error, text):
    cfg = dataclasses.replace(ml100k["cfg"], evaluate=dataclasses.replace(ml100k["cfg"].evaluate, **change))
    with pytest.raises(error) as e:
        evaluate(spark, cfg, RUN)
    assert text in str(e.value)


def test_empty_test_set_is_refused(spark, storage):
    empty = spark.createDataFrame([], "user_idx int, item_idx int, weight double, ts timestamp")
    tables.write(empty, storage, "test")
    tables.write(empty, storage, "train")
    with pytest.raises(InputDataError, match="table 'test' must hold held-out pairs"):
        evaluate(spark, Config(storage=storage), RUN)




CONNECT_SCRIPT = """
import json, sys
import numpy as np, pandas as pd
from gramian.spark import is_connect, local_connect_session
from gramian.evaluate import metrics as M
from gramian.evaluate.ranks import Scorer, rank_users
from gramian.kernels.sampled import negative_weights
spark = local_connect_session()  # its server on 127.0.0.1 at a free port
assert is_connect(spark), type(spark)
rows = pd.read_json(sys.argv[1])
z = np.load(sys.argv[2])
H, present = z["H"], z["present"]
rows["factors"] = [list(map(float, r)) for r in z["W"]]
df = spark.createDataFrame(rows, "user_idx int, test array<int>, hist array<int>, fold_items array<int>, "
                                 "fold_w array<double>, factors array<float>")
sc = Scorer(H, present, None, None, negative_weights("uniform", np.zeros(len(present)), present), 20, 0, 8, 16)
ranked = rank_users(df, sc, 2).cache()
from pyspark.sql import functions as F
long = M.long_format(M.exact_per_user(ranked, (3, 5)), ["user_idx"]).withColumn("method", F.lit("exact"))
corr = M.correction_tables(spark, [int(r[0]) for r in ranked.select("n_neg").distinct().collect()], (3, 5), 20, 0.01)
long = long.unionByName(M.sampled_per_user(ranked, (3, 5), 20, "uniform", corr).select(*long.columns))
out = {f"{r['method']}:{r['metric']}@{r['k']}": r["value"] for r in M.user_average(long, ["method"])}
json.dump(out, open(sys.argv[3], "w"))
spark.stop()
"""


def test_spark_connect_session_computes_the_same_metrics_as_classic(spark, tmp_path):
    """The rank tasks and aggregations use no RDD/SparkContext: a Spark Connect session gives equal values."""
    import json
    import subprocess
    import sys

    from pyspark.sql import functions as F

    from gramian.evaluate import metrics as M
    from gramian.evaluate.ranks import Scorer, rank_users
    from gramian.kernels.sampled import negative_weights

    rng = np.random.default_rng(5)
    n_users, n_items, d = 30, 50, 4
    W, H = rng.normal(size=(n_users, d)).astype(np.float32), rng.normal(size=(n_items, d)).astype(np.float32)
    present = np.ones(n_items, bool)
    perms = [rng.permutation(n_items) for _ in range(n_users)]
    rows = pd.DataFrame({"user_idx": np.arange(n_users), "test": [p[:4].tolist() for p in perms],
                         "hist": [p[4:12].tolist() for p in perms], "fold_items": [[] for _ in perms],
                         "fold_w": [[] for _ in perms]})
    rows.to_json(tmp_path / "rows.json")
    np.savez(tmp_path / "f.npz", W=W, H=H, present=present)
    (tmp_path / "connect_eval.py").write_text(CONNECT_SCRIPT)
    proc = subprocess.run([sys.executable, str(tmp_path / "connect_eval.py"), str(tmp_path / "rows.json"),
                           str(tmp_path / "f.npz"), str(tmp_path / "out.json")], capture_output=True, text=True,
                          timeout=400, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    connect = json.loads((tmp_path / "out.json").read_text())
    local = rows.assign(factors=[list(map(float, r)) for r in W])
    df = spark.createDataFrame(local, "user_idx int, test array<int>, hist array<int>, fold_items array<int>, "
                                      "fold_w array<double>, factors array<float>")
    sc = Scorer(H, present, None, None, negative_weights("uniform", np.zeros(n_items), present), 20, 0, 8, 16)
    ranked = rank_users(df, sc, 2).cache()
    long = M.long_format(M.exact_per_user(ranked, (3, 5)), ["user_idx"]).withColumn("method", F.lit("exact"))
    corr = M.correction_tables(spark, [int(r[0]) for r in ranked.select("n_neg").distinct().collect()], (3, 5), 20,
                               0.01)
    long = long.unionByName(M.sampled_per_user(ranked, (3, 5), 20, "uniform", corr).select(*long.columns))
    classic = {f"{r['method']}:{r['metric']}@{r['k']}": r["value"] for r in M.user_average(long, ["method"])}
    ranked.unpersist()
    assert set(connect) == set(classic) and len(classic) > 20
    for key, value in classic.items():
        assert connect[key] == pytest.approx(value, abs=1e-12), key
