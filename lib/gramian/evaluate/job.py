"""`gramian evaluate`: exact and sampled metrics of a run (and baselines) -> `metrics`, report, summary.

For each model (the run's factors, the popularity baseline, any `evaluate.compare_runs`), every test user
is ranked inside Spark tasks (evaluate.ranks), metrics are DataFrame aggregations (evaluate.metrics), and
the run's rows of `metrics` (and `metrics_by_user` when evaluate.per_user) are replaced in one transaction.
Users held out by a strong split have no factors: their embedding is folded in from the `foldin` table.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gramian import tables, tracking
from gramian.config import Config, ModelConfig, _build
from gramian.errors import ConfigError, InputDataError
from gramian.evaluate import metrics as M
from gramian.evaluate.ranks import Scorer, num_partitions, rank_users
from gramian.factors import factor_rows
from gramian.kernels.loss import gramian as gramian_of
from gramian.kernels.sampled import negative_weights
from gramian.runs import check_run_id, pinned_inputs, read_input, require_same_split, run_rows, run_where

log = logging.getLogger(__name__)

METRICS_SCHEMA = ("run_id string, model string, metric string, k int, method string, sampler string, "
                  "sample_size int, value double, users long, evaluated_at timestamp")
# evaluate replaces only the `metrics` rows it writes (publish's index_recall rows, method scann_vs_exact, stay)
EVALUATE_METHODS = ("exact", "sampled", "corrected", "count")
OWNED_METHODS = f"method IN ({', '.join(repr(m) for m in EVALUATE_METHODS)})"
BY_USER_SCHEMA = "run_id string, model string, user_idx int, metric string, k int, method string, value double"


def check_config(cfg: Config) -> tuple[int, ...]:
    """The cut-offs, sorted; ConfigError for k <= 0 or none."""
    ks = tuple(sorted({int(k) for k in cfg.evaluate.k}))
    if not ks or ks[0] <= 0:
        raise ConfigError(f"evaluate.k must hold positive cut-offs, got {list(cfg.evaluate.k)}. "
                          f"Set e.g. --set evaluate.k=[10,20].")
    return ks


def item_matrix(spark: Any, cfg: Config, run_id: str, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(item factors float32 (n_items, d) with zero rows where absent, present mask) of `run_id`."""
    st = cfg.storage
    if not tables.exists(spark, st, "item_factors"):
        raise InputDataError(f"table 'item_factors' must exist to evaluate, got none at "
                             f"{tables.table_ref(st, 'item_factors')}. Run `gramian train` first.")
    idx, rows = factor_rows(spark, st, "item_factors", run_id)
    if len(idx) == 0:
        raise InputDataError(f"item_factors must hold rows for run_id {run_id!r}, got none "
                             f"({tables.table_ref(st, 'item_factors')}). Train that run first or pass its --run-id.")
    n = max(n_items, int(idx.max()) + 1)
    h = np.zeros((n, rows.shape[1]), np.float32)
    h[idx] = rows
    present = np.zeros(n, bool)
    present[idx] = True
    return h, present


def run_model(spark: Any, cfg: Config, run_id: str) -> tuple[str, ModelConfig]:
    """The model name and hyper-parameters a run was trained with (its `runs` row; else the config)."""
    if tables.exists(spark, cfg.storage, "runs"):
        rows = tables.read(spark, cfg.storage, "runs").filter(run_rows(run_id)).select("model", "config").collect()
        if rows:
            try:
                model = json.loads(rows[0]["config"])["model"]
                return rows[0]["model"], _build(ModelConfig, model, {}, "model.")
            except (KeyError, ValueError, TypeError):
                log.warning("runs row of %s has no readable model config; fold-in uses the current one", run_id)
            return rows[0]["model"], cfg.model
    return cfg.model.name, cfg.model


def user_rows(spark: Any, cfg: Config, pins: dict[str, int] | None = None, run_id: str = "") -> Any:
    """One row per test user: test items, train history, fold-in history (items, weights).

    Read at the versions `pins` records (the split run_id trained on); None reads the current tables.
    """
    st = cfg.storage
    split = {name: read_input(spark, st, name, pins, run_id) for name in ("train", "test", "foldin")}
    for name in ("train", "test"):
        if split[name] is None:
            raise InputDataError(f"table {name!r} must exist to evaluate, got none at {tables.table_ref(st, name)}. "
                                 f"Run `gramian split` first.")
    return heldout_rows(split["train"], split["test"], split["foldin"])


def heldout_rows(train: Any, test: Any, foldin: Any | None) -> Any:
    """One row per user of `test` (user_idx, test, hist, fold_items, fold_w) from split frames of
    (user_idx, item_idx, weight): what `evaluate_model` ranks (also the tuner's validation split)."""
    from pyspark.sql import functions as F

    held = test.groupBy("user_idx").agg(F.array_sort(F.collect_set("item_idx")).alias("test"))
    hist = train.groupBy("user_idx").agg(F.collect_set("item_idx").alias("hist"))
    rows = held.join(hist, "user_idx", "left")
    if foldin is not None:
        fold = foldin.groupBy("user_idx").agg(
            F.collect_list("item_idx").alias("fold_items"), F.collect_list("weight").alias("fold_w"))
        return rows.join(fold, "user_idx", "left")
    return rows.select("*", F.lit(None).cast("array<int>").alias("fold_items"),
                       F.lit(None).cast("array<double>").alias("fold_w"))


def rankable(rows: Any, user_factors: Any, fold_in: bool) -> tuple[Any, Any]:
    """(`rows` with each user's `factors` from user_factors (user_idx, factors), null where none; the Column
    true for users that can be ranked without factors: a fold-in history, when the model folds in)."""
    from pyspark.sql import functions as F

    can_fold = F.lit(bool(fold_in)) & (F.coalesce(F.size("fold_items"), F.lit(0)) > 0)
    return rows.join(user_factors, "user_idx", "left"), can_fold


def evaluate_model(spark: Any, cfg: Config, label: str, rows: Any, scorer: Scorer, ks: tuple[int, ...],
                   n_users: int) -> tuple[list[dict[str, Any]], Any, dict[str, int]]:
    """Metric rows (dicts), the per-user long frame (or None) and counts for one model."""
    from pyspark.sql import functions as F

    ev = cfg.evaluate
    ranked = rank_users(rows, scorer, num_partitions(spark, n_users, ev.users_per_task)).cache()
    try:
        counts_row = ranked.agg(F.count("*").alias("users"), F.sum("n_test").alias("pairs"),
                                F.sum("n_dropped").alias("dropped"), F.sum("n_in_hist").alias("in_history"),
                                F.sum((F.col("source") == "foldin").cast("long")).alias("foldin"),
                                F.sum((F.col("n_test") == 0).cast("long")).alias("no_items")).collect()[0]
        counts = {k: int(v or 0) for k, v in counts_row.asDict().items()}
        wide = M.exact_per_user(ranked.filter(F.col("n_test") > 0), ks)
        long = M.long_format(wide, ["user_idx"]).withColumn("method", F.lit("exact"))
        sc = ev.sampled
        if sc.enabled and scorer.neg_weights is not None:
            corr = None
            if sc.sampler == "uniform":
                n_negs = [int(r[0]) for r in ranked.select("n_neg").distinct().collect() if r[0]]
                corr = M.correction_tables(spark, n_negs, ks, sc.m, sc.gamma)
            sampled_long = M.sampled_per_user(ranked.filter(F.col("n_test") > 0), ks, sc.m, sc.sampler, corr)
            long = long.unionByName(sampled_long.select(*long.columns))
        out = []
        for r in M.user_average(long, ["method"]):  # one job for exact and sampled aggregates
            item = r["metric"].startswith("item_")
            out.append(dict(r, sampler=sc.sampler if item else None,
                            sample_size=sc.m if item and r["method"] != "exact" else None))
        per_user = long if ev.per_user else None
        if per_user is not None:
            per_user = per_user.select(F.lit(label).alias("model"), "*")
            per_user = per_user.localCheckpoint() if hasattr(per_user, "localCheckpoint") else per_user
        for r in out:
            r["model"] = label
        return out, per_user, counts
    finally:
        ranked.unpersist()


def run(spark: Any, cfg: Config, run_id: str) -> dict[str, Any]:
    """Evaluate `run_id` (and baselines) on `test`; write `metrics`, `metrics_by_user`, the report."""
    from pyspark.sql import functions as F

    check_run_id(run_id)
    t0 = time.perf_counter()
    ks = check_config(cfg)
    ev, st = cfg.evaluate, cfg.storage
    pins = pinned_inputs(spark, st, run_id)  # the split the run trained on; compared runs must share it
    require_same_split(spark, st, run_id, pins, ev.compare_runs, "evaluate.compare_runs")
    rows = user_rows(spark, cfg, pins, run_id).cache()
    try:
        n_test_users = rows.count()
        if n_test_users == 0:
            raise InputDataError(f"table 'test' must hold held-out pairs to evaluate, got none "
                                 f"({tables.table_ref(st, 'test')}). Check split.test_fraction / the test file.")
        n_items = 0
        if tables.exists(spark, st, "items"):
            n_items = int(tables.read(spark, st, "items").agg(F.max("idx")).collect()[0][0] or -1) + 1
        h, present = item_matrix(spark, cfg, run_id, n_items)
        n_catalogue = int(present.sum())
        if ev.sampled.enabled and ev.sampled.m > n_catalogue:
            raise ConfigError(f"evaluate.sampled.m must be at most the catalogue size ({n_catalogue} items with "
                              f"factors), got {ev.sampled.m}. Lower evaluate.sampled.m or disable sampled metrics.")
        counts_t = read_input(spark, st, "train", pins, run_id).groupBy("item_idx").count().toArrow()
        item_counts = np.zeros(len(present), np.float64)
        ci = np.asarray(counts_t.column("item_idx"), np.int64)
        ok = ci < len(present)
        item_counts[ci[ok]] = np.asarray(counts_t.column("count"), np.float64)[ok]
        neg_w = negative_weights(ev.sampled.sampler, item_counts, present) if ev.sampled.enabled else None
        label, _ = run_model(spark, cfg, run_id)
        models = [(label, run_id)] + [(f"{run_model(spark, cfg, other)[0]}@{other}", other)
                                       for other in ev.compare_runs]
        metric_rows: list[dict[str, Any]] = []
        by_user = []
        summary_counts: dict[str, Any] = {}
        for name, rid in models:
            hm, pm = (h, present) if rid == run_id else item_matrix(spark, cfg, rid, n_items)
            model_cfg = fold_in_config(spark, cfg, rid, len(pm))  # each run folds in with its own settings
            uf = (tables.read(spark, st, "user_factors").filter(run_rows(rid))
                  .select(F.col("idx").alias("user_idx"), "factors"))
            # fold-in is the iALS user-row solve: other models' users without factors count as missing
            with_f, can_fold = rankable(rows, uf, name.split("@")[0] == "ials")
            missing = with_f.filter(F.col("factors").isNull() & ~can_fold)
            miss = missing.agg(F.count("*").alias("u"), F.sum(F.size("test")).alias("p")).collect()[0]
            n_miss_users, n_miss_pairs = int(miss["u"] or 0), int(miss["p"] or 0)
            scorer = Scorer(hm, pm, model_cfg, gramian_of(hm.astype(np.float64)), neg_w if rid == run_id else None,
                            ev.sampled.m, ev.sampled.seed, ev.score_batch_size, ev.item_block)
            keep = with_f.filter(F.col("factors").isNotNull() | can_fold)
            rows_m, per_user, counts = evaluate_model(spark, cfg, name, keep, scorer, ks, n_test_users)
            metric_rows += rows_m
            metric_rows += _count_rows(name, n_miss_users, n_miss_pairs, counts)
            summary_counts[name] = {"users": counts["users"] - counts["no_items"], "foldin_users": counts["foldin"],
                                    "test_users_missing_factors": n_miss_users,
                                    "test_pairs_missing_user_factors": n_miss_pairs,
                                    "test_pairs_missing_item_factors": counts["dropped"],
                                    "test_pairs_in_history": counts["in_history"]}
            if n_miss_users or counts["dropped"]:
                log.warning("%s: %d test users (%d pairs) without factors or fold-in history and %d test pairs "
                            "with items without factors were not ranked", name, n_miss_users, n_miss_pairs,
                            counts["dropped"])
            if per_user is not None:
                by_user.append(per_user)
        if ev.popularity:
            pop = Scorer(item_counts[:, None].astype(np.float32), present, None, None, None, ev.sampled.m,
                         ev.sampled.seed, ev.score_batch_size, ev.item_block, constant_user=np.ones(1))
            pop_rows = rows.select("*", F.lit(None).cast("array<float>").alias("factors"))
            rows_m, per_user, counts = evaluate_model(spark, cfg, "popularity", pop_rows, pop, ks, n_test_users)
            metric_rows += rows_m + _count_rows("popularity", 0, 0, counts)
            if per_user is not None:
                by_user.append(per_user)
        now = datetime.now(UTC)
        records = [(run_id, r["model"], r["metric"], r["k"], r["method"], r.get("sampler"), r.get("sample_size"),
                    float(r["value"]), int(r["users"]), now) for r in metric_rows]
        where = run_where(run_id)
        tables.write(spark.createDataFrame(records, METRICS_SCHEMA), st, "metrics",
                     replace_where=f"{where} AND {OWNED_METHODS}", files=1)
        if ev.per_user and by_user:
            frame = by_user[0]
            for extra in by_user[1:]:
                frame = frame.unionByName(extra)
            out = frame.select(F.lit(run_id).alias("run_id"), "model", F.col("user_idx").cast("int"), "metric",
                               "k", "method", "value")
            tables.write(out, st, "metrics_by_user", replace_where=where)
    finally:
        rows.unpersist()
    from gramian.evaluate.report import metrics_table, write_report
    from gramian.storage import artifact_store

    report_store = artifact_store(st, spark).child("reports", run_id)
    report = write_report(spark, cfg, run_id, metric_rows, report_store)
    tracking.safe(tracking.active().log_evaluation, metric_rows, label, report_store)
    seconds = round(time.perf_counter() - t0, 2)
    return {"run_id": run_id, "models": [m for m, _ in models] + (["popularity"] if ev.popularity else []),
            "test_users": n_test_users, "items": n_catalogue, "k": list(ks), "inputs": pins, **_flat(summary_counts),
            "report": str(report), "seconds": seconds, "metrics": "\n" + metrics_table(metric_rows, ks)}


def fold_in_config(spark: Any, cfg: Config, run_id: str, n_items: int) -> ModelConfig:
    """The model settings run_id was trained with (its `runs` row), alpha0 resolved: what its fold-in solves."""
    from pyspark.sql import functions as F

    _, model_cfg = run_model(spark, cfg, run_id)
    if model_cfg.alpha0 is None:  # runs rows hold the resolved alpha0; this is the fallback
        st = cfg.storage
        n_users = (int(tables.read(spark, st, "users").agg(F.max("idx")).collect()[0][0] or -1) + 1
                   if tables.exists(spark, st, "users") else None)
        model_cfg = model_cfg.resolved(n_items, n_users)
    return model_cfg


def _count_rows(model: str, miss_users: int, miss_pairs: int, counts: dict[str, int]) -> list[dict[str, Any]]:
    """Counts reported beside the metrics: who was evaluated, who could not be (never silently dropped)."""
    values = {"users_evaluated": counts["users"] - counts["no_items"], "users_folded_in": counts["foldin"],
              "test_users_missing_factors": miss_users, "test_pairs_missing_user_factors": miss_pairs,
              "test_pairs_missing_item_factors": counts["dropped"],
              "test_pairs_in_history": counts["in_history"]}
    return [{"model": model, "metric": k, "k": None, "method": "count", "sampler": None, "sample_size": None,
             "value": float(v), "users": counts["users"]} for k, v in values.items()]


def _flat(counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model, c in counts.items():
        for k, v in c.items():
            out[f"{model}.{k}" if len(counts) > 1 else k] = v
    return out
