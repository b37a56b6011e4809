"""Evaluation driven through the stages on generated data: ingest -> strong split -> train -> evaluate
(-> publish -> evaluate). Held-out users must get no trained factor row and be folded in exactly (paper §6.3),
and re-evaluating after a publish must keep the publish's index rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gramian import tables
from gramian.config import (
    Config,
    DataConfig,
    EvaluateConfig,
    GenerateConfig,
    ModelConfig,
    PublishConfig,
    SampledConfig,
    SplitConfig,
)
from gramian.data import ingest, split
from gramian.evaluate import job as evaluate
from gramian.evaluate.job import run_model
from gramian.kernels import observed_weights, regularization_weights
from gramian.retrieval import publish
from gramian.train import job as train
from tests.oracles import list_metrics

RUN = "s1"
KS = (5, 20)


@pytest.fixture(scope="module")
def strong(spark, tmp_path_factory):
    """One stage-driven run on a strong split (30% of users held out), evaluated with per-user rows."""
    root = tmp_path_factory.mktemp("strong")
    cfg = Config(data=DataConfig(format="synthetic"),
                 generate=GenerateConfig(n_users=300, n_items=200, n_interactions=9000, rank=4, seed=3),
                 split=SplitConfig(method="strong", holdout_users=0.3, seed=1),
                 model=ModelConfig(dim=8, epochs=4, solver="cg"),
                 evaluate=EvaluateConfig(k=KS, per_user=True, sampled=SampledConfig(m=50, seed=2)),
                 publish=PublishConfig(n=10, recall_sample=50))
    cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=str(root / "wh")))
    ingest.run(spark, cfg, RUN)
    split_summary = split.run(spark, cfg, RUN)
    train.run(spark, cfg, RUN)
    summary = evaluate.run(spark, cfg, RUN)
    return cfg, split_summary, summary


def _pairs(spark, cfg: Config, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = tables.read(spark, cfg.storage, name).select("user_idx", "item_idx", "weight").toPandas()
    return t["user_idx"].to_numpy(np.int64), t["item_idx"].to_numpy(np.int64), t["weight"].to_numpy(np.float64)


def _factors(spark, cfg: Config, name: str) -> dict[int, np.ndarray]:
    rows = tables.read(spark, cfg.storage, name).filter(f"run_id = '{RUN}'").select("idx", "factors").collect()
    return {int(r["idx"]): np.asarray(r["factors"], np.float64) for r in rows}


def _metrics(spark, cfg: Config) -> dict[tuple, float]:
    rows = tables.read(spark, cfg.storage, "metrics").filter(f"run_id = '{RUN}'").collect()
    return {(r["model"], r["metric"], r["k"], r["method"]): r["value"] for r in rows}


def test_train_counted_on_the_driver_equals_train_counted_by_spark(spark, strong):
    """The stage read this small train table on the driver (train.driver_pairs_max: its files through the
    store, no Spark job) and mapped its users to trainer positions there (held-out users have none); counted by
    a Spark job instead (0) and with the trainer collecting its own pairs, the run's factor rows are the same."""
    cfg = strong[0]
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, driver_pairs_max=0))
    sc = spark.sparkContext
    jobs = {}
    for name, c in (("driver", cfg), ("spark", other)):
        sc.setJobGroup(f"read-inputs-{name}", "probe")
        try:
            jobs[name] = (train.read_inputs(spark, c)[-1], sc.statusTracker().getJobIdsForGroup(f"read-inputs-{name}"))
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)
    (bring, driver_jobs), (counted, spark_jobs) = jobs["driver"], jobs["spark"]
    assert driver_jobs == [] and len(spark_jobs) > 0  # nothing woke an executor for the small table
    assert bring[2] is not None and counted[2] is None
    assert len(bring[2][0]) == int(counted[1][0].sum()) == tables.log_rows(spark, cfg.storage, "train", 0)
    for mine, theirs in zip(bring[1], counted[1], strict=True):
        np.testing.assert_array_equal(mine, theirs)
    train.run(spark, other, "s1-spark-counts")  # id maps above driver_pairs_max too: ids joined by Spark
    for name in ("user_factors", "item_factors"):
        table = tables.read(spark, cfg.storage, name)
        rows = {run: {int(r["idx"]): (r["id"], np.asarray(r["factors"], np.float64))
                      for r in table.filter(f"run_id = '{run}'").select("idx", "id", "factors").collect()}
                for run in (RUN, "s1-spark-counts")}
        mine, theirs = rows[RUN], rows["s1-spark-counts"]
        assert mine.keys() == theirs.keys() and len(mine) > 0
        for idx, (user_or_item, f) in mine.items():
            assert user_or_item is not None and user_or_item == theirs[idx][0]  # ids attached on the driver
            np.testing.assert_array_equal(f, theirs[idx][1])


def test_users_without_train_rows_get_no_trained_factor_row(spark, strong):
    cfg, split_summary, _ = strong
    tu, _, _ = _pairs(spark, cfg, "train")
    fu, _, _ = _pairs(spark, cfg, "foldin")
    users = _factors(spark, cfg, "user_factors")
    assert split_summary["heldout_users"] > 30
    assert set(users) == set(np.unique(tu).tolist())
    assert not set(users) & set(np.unique(fu).tolist())


def test_every_heldout_user_is_folded_in_like_a_numpy_user_row_solve(spark, strong):
    cfg, _, summary = strong
    tu, ti, _ = _pairs(spark, cfg, "train")
    fu, fi, fw = _pairs(spark, cfg, "foldin")
    su, si, _ = _pairs(spark, cfg, "test")
    heldout = np.unique(fu)
    tested = np.intersect1d(heldout, np.unique(su))
    assert summary["foldin_users"] == len(tested) > 30
    assert summary["test_users_missing_factors"] == 0
    items = _factors(spark, cfg, "item_factors")
    n_items = max(items) + 1
    h = np.zeros((n_items, cfg.model.dim))
    for i, v in items.items():
        h[i] = v
    _, model = run_model(spark, cfg, RUN)  # the hyper-parameters as trained (alpha0 resolved)
    conf = model.confidence
    gram = h.T @ h
    vectors = []
    for u in tested:
        rows, w = fi[fu == u], fw[fu == u]
        alpha, target = observed_weights(w, model.alpha0, conf.form, conf.scale, conf.beta, conf.eps)
        lam = regularization_weights(model.reg, model.nu, np.array([len(rows)], float), model.alpha0, n_items,
                                     reg_counts=model.reg_counts)[0]
        hr = h[rows]
        lhs = (hr.T * alpha) @ hr + model.alpha0 * gram + lam * np.eye(cfg.model.dim)
        vectors.append(np.linalg.solve(lhs, (alpha * target) @ hr))
    history = [np.union1d(fi[fu == u], ti[tu == u]) for u in tested]
    test = [si[su == u] for u in tested]
    ref = list_metrics(np.array(vectors), h, history, test, KS)
    by_user = tables.read(spark, cfg.storage, "metrics_by_user").filter(
        f"run_id = '{RUN}' AND model = 'ials' AND method = 'exact'").toPandas()
    for name in ("recall", "ndcg"):
        for k in KS:
            got = by_user[(by_user["metric"] == name) & (by_user["k"] == k)].set_index("user_idx")["value"]
            np.testing.assert_allclose(got.loc[tested].to_numpy(), ref[f"{name}@{k}"], atol=1e-9,
                                       err_msg=f"{name}@{k} of folded-in users")


def test_folded_in_model_beats_popularity_on_the_strong_split(spark, strong):
    cfg, _, _ = strong
    m = _metrics(spark, cfg)
    assert m[("ials", "users_folded_in", None, "count")] > 30
    assert m[("ials", "auc", None, "exact")] > m[("popularity", "auc", None, "exact")] > 0.5


def test_evaluate_after_publish_keeps_the_publish_index_rows(spark, strong):
    cfg, _, _ = strong
    publish.run(spark, cfg, RUN)
    index_rows = {k: v for k, v in _metrics(spark, cfg).items() if k[1].startswith("index_recall")}
    assert len(index_rows) == 2
    evaluate.run(spark, cfg, RUN)
    again = _metrics(spark, cfg)
    assert {k: again.get(k) for k in index_rows} == index_rows
    assert again[("ials", "users_folded_in", None, "count")] > 30
