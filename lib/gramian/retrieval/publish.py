"""`gramian publish`: top-n lists for every training user in the `topn` Delta table, gated on index quality.

Order of work, so that a bad index never reaches readers:
1. collect the run's item factors on the driver, build the index once, serialize it into the artifact store
   under `<artifacts>/index/<run_id>` (publish.index_dir overrides the parent folder);
2. on a seeded user sample, compare the published lists with exact top-n (recall@n) and write that to
   `metrics`; below publish.min_index_recall raise PublishError, leaving `topn` untouched;
3. score the users `publish.users` selects (all by default; `changed` or `active_since:<days>`: see
   gramian.retrieval.refresh) inside Spark tasks (mapInArrow: each Python worker fetches the serialized
   index from the store and loads it once), never recommending an unavailable item (one that left the
   catalogue or is flagged by `publish.item_filter`: excluded like history). Every other user of the run
   keeps the base publication's list: its rows are copied under this run_id. Refreshed and carried rows
   are written in ONE Delta transaction (replaceWhere run_id), so the run's rows are always one complete
   publication (every training user, a full list each), readers see the previous publication or the new
   one, never a mix, and a re-run replaces, never duplicates. `scored_by` names the run whose model
   scored a row: the refreshed users of run R are those whose rows have scored_by = R (`refreshed_users`);
4. record the publish in `publications` (run_id, the topn Delta version it produced, recall, users mode,
   refreshed users, base run, unavailable items...), whose one row with current = true says which run
   applications should read (`read_topn`). Earlier runs keep their rows in `topn`, and every earlier
   version stays readable through Delta history (time travel) until VACUUM removes its files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gramian import storage, tables
from gramian.config import Config, ModelConfig, PublishConfig, StorageConfig, _build
from gramian.errors import InputDataError, PublishError
from gramian.kernels.ranking import topk_excluding
from gramian.retrieval.index import (
    ItemIndex,
    build_index,
    index_recall,
    load_index,
    topn_excluding,
    with_blocked,
)
from gramian.retrieval.refresh import UNAVAILABLE, Plan, carried_rows, plan, publication_rows, unavailable_items
from gramian.runs import check_run_id, current_publication, pinned_inputs, read_input, run_rows, run_where

log = logging.getLogger(__name__)

TOPN, PUBLICATIONS, METRICS = "topn", "publications", "metrics"
# scored_by: the run whose model scored the row (this run for refreshed users, an earlier one for carried rows)
TOPN_SCHEMA = "run_id string, user_id string, rank int, item_id string, score float, scored_by string"
# the columns of gramian.evaluate.job.METRICS_SCHEMA: index rows sit beside the ranking metrics
METRICS_SCHEMA = ("run_id string, model string, metric string, k int, method string, sampler string, "
                  "sample_size int, value double, users long, evaluated_at timestamp")
# users_mode .. unavailable_items joined later (publish.users): older tables gain them, their rows read null
PUBLICATIONS_SCHEMA = ("run_id string, published_at timestamp, n int, users long, rows long, index_kind string, "
                       "index_recall double, index_path string, topn_version long, current boolean, "
                       "users_mode string, refreshed long, base_run_id string, unavailable_items long")


def index_path(cfg: Config, run_id: str, spark: Any = None) -> storage.Store:
    """Where a run's index is serialized: <artifacts>/index/<run_id> unless publish.index_dir names the parent."""
    run_id = check_run_id(run_id)
    if cfg.publish.index_dir:
        return storage.open_store(cfg.publish.index_dir, spark).child(run_id)
    return storage.artifact_store(cfg.storage, spark).child("index", run_id)


def _require(spark: Any, st: StorageConfig, *names: str) -> None:
    for name in names:
        if not tables.exists(spark, st, name):
            raise InputDataError(f"table {name!r} must exist before publishing, got none at "
                                 f"{tables.table_ref(st, name)}. Run `gramian train` first.")


def _list_column(col: Any, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat values) of an Arrow list column, nulls as empty lists."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    col = col.fill_null(pa.scalar([], type=col.type)) if col.null_count else col
    offsets = col.offsets.to_numpy().astype(np.int64)
    values = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]].astype(dtype)
    return offsets - offsets[0], values


def item_matrix(spark: Any, cfg: Config, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's item factors as a dense (n_items, d) float32 matrix by idx, and the external ids."""
    t = (tables.read(spark, cfg.storage, "item_factors").filter(run_rows(run_id))
         .select("idx", "id", "factors").toArrow())
    if t.num_rows == 0:
        raise InputDataError(f"item_factors must hold rows for run_id {run_id!r}, got none. Train that run first "
                             f"or pass the run id of a finished training run.")
    idx = t.column("idx").to_numpy()
    offsets, flat = _list_column(t.column("factors"), np.float32)
    dims = np.diff(offsets)
    if dims.min() != dims.max() or dims[0] == 0:
        raise InputDataError(f"item factors of run {run_id!r} must all have one length, got "
                             f"{dims.min()}..{dims.max()}. Re-run `gramian train`.")
    n = int(idx.max()) + 1
    if len(np.unique(idx)) != n or len(idx) != n:
        raise InputDataError(f"item_factors of run {run_id!r} must hold each idx 0..{n - 1} once, got {len(idx)} rows "
                             f"with {len(np.unique(idx))} distinct idx. Re-run `gramian train`.")
    h = np.empty((n, int(dims[0])), dtype=np.float32)
    h[idx] = flat.reshape(len(idx), -1)
    ids = np.empty(n, dtype=object)
    ids[idx] = t.column("id").to_pylist()
    missing = np.array([v is None for v in ids])
    if missing.any():
        raise InputDataError(f"item_factors of run {run_id!r} must carry an external id on every row, got "
                             f"{int(missing.sum())} without (e.g. idx {int(np.flatnonzero(missing)[0])}). "
                             f"Check the items table.")
    return h, ids.astype(str)


def run_model_config(spark: Any, st: StorageConfig, run_id: str) -> ModelConfig | None:
    """The model section of a run's recorded config (None when the `runs` table has no such run)."""
    if not tables.exists(spark, st, "runs"):
        return None
    rows = tables.read(spark, st, "runs").filter(run_rows(run_id)).select("config").collect()
    if not rows:
        return None
    model = json.loads(rows[0]["config"])["model"]
    return _build(ModelConfig, model, {k: f"runs[{run_id}].config" for k in model}, "model.")


def users_frame(spark: Any, cfg: Config, run_id: str) -> Any:
    """(idx, id, factors, history array<int>) for every user of the run with at least one training item.

    The history is the `train` version the run was trained on (runs.read_input), not a later split's.
    """
    from pyspark.sql import functions as F

    uf = tables.read(spark, cfg.storage, "user_factors").filter(run_rows(run_id)).select("idx", "id", "factors")
    train = read_input(spark, cfg.storage, "train", pinned_inputs(spark, cfg.storage, run_id), run_id)
    hist = (train.groupBy("user_idx")
            .agg(F.collect_list(F.col("item_idx").cast("int")).alias("history")))
    return uf.join(hist, uf["idx"] == hist["user_idx"], "inner").select("idx", "id", "factors", "history")


def score_batch(index: ItemIndex, batch: Any, run_id: str, pub: PublishConfig,
                blocked: np.ndarray | None = None) -> Any:
    """One Arrow batch of users (idx, id, factors, history) -> their topn rows as an Arrow batch.

    `blocked` item rows (unavailable items) are excluded like history.
    """
    import pyarrow as pa

    offsets, flat = _list_column(batch.column("factors"), np.float32)
    m = batch.num_rows
    q = flat.reshape(m, -1) if m else np.zeros((0, index.item_factors.shape[1]), np.float32)
    ip, ix = with_blocked(*_list_column(batch.column("history"), np.int64), _blocked(blocked))
    items, scores, _ = topn_excluding(index, q, ip, ix, pub.n, pub.exact_history_above)
    valid = items >= 0
    rows, ranks = np.nonzero(valid)
    user_ids = np.asarray(batch.column("id").to_pylist(), dtype=object)
    return pa.RecordBatch.from_pydict({
        "run_id": pa.array(np.full(len(rows), run_id, dtype=object), pa.string()),
        "user_id": pa.array(user_ids[rows], pa.string()),
        "rank": pa.array((ranks + 1).astype(np.int32), pa.int32()),
        "item_id": pa.array(index.item_ids[items[rows, ranks]], pa.string()),
        "score": pa.array(scores[rows, ranks].astype(np.float32), pa.float32()),
        "scored_by": pa.array(np.full(len(rows), run_id, dtype=object), pa.string()),
    })


def _blocked(blocked: np.ndarray | None) -> np.ndarray:
    return np.zeros(0, np.int64) if blocked is None else np.asarray(blocked, dtype=np.int64)


def _scorer(path: storage.Store, token: str, run_id: str, pub: PublishConfig, blocked: np.ndarray) -> Any:
    """The mapInArrow function: fetches and loads the index once per worker process (cached), never per batch."""

    def score(batches: Any) -> Any:
        index = load_index(path, token)
        for batch in batches:
            for start in range(0, batch.num_rows, pub.batch_size):
                yield score_batch(index, batch.slice(start, pub.batch_size), run_id, pub, blocked)

    return score


def check_index(index: ItemIndex, sample: Any, pub: PublishConfig,
                blocked: np.ndarray | None = None) -> dict[str, float]:
    """Recall@n of the published lists (and of the bare searcher) against exact top-n on a user sample."""
    offsets, flat = _list_column(sample.column("factors"), np.float32)
    q = flat.reshape(sample.num_rows, -1)
    ip, ix = with_blocked(*_list_column(sample.column("history"), np.int64), _blocked(blocked))
    n = pub.n
    got, _, exact_rows = topn_excluding(index, q, ip, ix, n, pub.exact_history_above)
    users = np.arange(len(q))
    truth, _ = topk_excluding(q, index.item_factors, users, ip, ix, n)
    raw, _ = index.search(q, n)
    raw_truth, _ = topk_excluding(q, index.item_factors, users, np.zeros(len(q) + 1, np.int64),
                                  np.zeros(0, np.int64), n)
    return {"index_recall": index_recall(got, truth), "index_recall_searcher": index_recall(raw, raw_truth),
            "exact_fallback_share": float(exact_rows.mean()) if len(exact_rows) else 0.0}


def write_metrics(spark: Any, cfg: Config, run_id: str, model_name: str, values: dict[str, float],
                  sample_size: int) -> None:
    """Index-quality rows of this run in `metrics` (evaluate's columns), replacing only this run's index rows."""
    names = ("index_recall", "index_recall_searcher")
    now = datetime.now(UTC)
    rows = [(run_id, model_name, m, cfg.publish.n, "scann_vs_exact", None, int(sample_size), float(values[m]),
             int(sample_size), now) for m in names]
    where = run_where(run_id, metric=names)
    tables.write(spark.createDataFrame(rows, METRICS_SCHEMA), cfg.storage, METRICS, mode="overwrite",
                 replace_where=where, files=1)


def _mark_current(spark: Any, cfg: Config, row: dict[str, Any]) -> None:
    """Rewrite the small `publications` table in one transaction with `row` as the only current entry."""
    st = cfg.storage
    old = []
    if tables.exists(spark, st, PUBLICATIONS):
        old = [r.asDict() for r in tables.read(spark, st, PUBLICATIONS).collect() if r["run_id"] != row["run_id"]]
    names = [part.split()[0] for part in PUBLICATIONS_SCHEMA.split(", ")]
    rows = [*({**r, "current": False} for r in old), {**row, "current": True}]
    # rows of an older table lack the later columns: they read null
    frame = tables.local_frame(spark, [tuple(r.get(k) for k in names) for r in rows], PUBLICATIONS_SCHEMA)
    tables.write(frame, st, PUBLICATIONS, mode="overwrite")


def read_topn(spark: Any, st: StorageConfig, run_id: str | None = None) -> Any:
    """Published top-n rows: of `run_id`, or of the current publication pinned to the Delta version it wrote."""
    if run_id is not None:
        return tables.read(spark, st, TOPN).filter(run_rows(run_id))
    pub = current_publication(spark, st)
    if pub is None:
        raise PublishError(f"a current publication must exist to read top-n lists, got none under "
                           f"{tables.table_ref(st, PUBLICATIONS)}. Run `gramian publish` first.")
    return publication_rows(spark, st, pub)


def refreshed_users(spark: Any, st: StorageConfig, run_id: str) -> Any:
    """(user_id) of the users publication `run_id` scored itself (the rest kept an earlier publication's list)."""
    from pyspark.sql import functions as F

    return read_topn(spark, st, run_id).filter(F.col("scored_by") == F.lit(run_id)).select("user_id").distinct()


def write_topn(spark: Any, cfg: Config, run_id: str, users: Any, scorer: Any, todo: Plan) -> Any:
    """Refreshed users' scored rows and carried users' base rows as the run's rows of `topn`, in ONE transaction."""
    pub = cfg.publish
    fresh = users if todo.keep is None else users.join(todo.keep.select("idx"), "idx", "left_anti")
    frame = fresh.repartition(pub.partitions) if pub.partitions else fresh
    out = frame.mapInArrow(scorer, TOPN_SCHEMA)
    if todo.keep is not None and todo.base is not None:
        prev = publication_rows(spark, cfg.storage, todo.base)
        out = out.unionByName(carried_rows(prev, todo.keep, run_id, str(todo.base["run_id"])))
    tables.write(out, cfg.storage, TOPN, mode="overwrite", replace_where=run_where(run_id),
                 merge_schema=True)  # scored_by joined later: an older topn gains it, its rows read null
    return tables.version(spark, cfg.storage, TOPN)


def _written(spark: Any, st: StorageConfig, run_id: str) -> dict[str, int]:
    """Rows, users and refreshed users (scored_by = run_id) of the run's rows in `topn`."""
    from pyspark.sql import functions as F

    written = tables.read(spark, st, TOPN).filter(run_rows(run_id))
    mine = F.when(F.col("scored_by") == F.lit(run_id), F.col("user_id"))
    row = written.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("user_id").alias("users"),
                      F.countDistinct(mine).alias("refreshed")).collect()[0]
    return {k: int(row[k]) for k in ("rows", "users", "refreshed")}


def gate_index(spark: Any, cfg: Config, run_id: str, index: ItemIndex, users: Any, blocked: np.ndarray,
               model_name: str) -> tuple[dict[str, float], int]:
    """Recall of the index on a seeded user sample, written to `metrics`; PublishError below the floor."""
    from pyspark.sql import functions as F

    pub = cfg.publish
    sample = users.orderBy(F.xxhash64("idx", F.lit(pub.seed))).limit(pub.recall_sample).toArrow()
    if sample.num_rows == 0:
        raise InputDataError(f"user_factors of run {run_id!r} must have users with training rows, got none. "
                             f"Check that `train` and the run's factors come from the same split.")
    quality = check_index(index, sample, pub, blocked)
    write_metrics(spark, cfg, run_id, model_name, quality, sample.num_rows)
    recall = quality["index_recall"]
    if recall < pub.min_index_recall:
        raise PublishError(
            f"index recall@{pub.n} must be >= publish.min_index_recall={pub.min_index_recall}, got {recall:.4f} on "
            f"{sample.num_rows} sampled users (run {run_id!r}, {index.params.kind} index, "
            f"{index.params.num_leaves_to_search}/{index.params.num_leaves} leaves searched); topn was not written. "
            f"Raise publish.search_fraction or publish.num_leaves_to_search, or publish.reorder_factor.")
    return quality, sample.num_rows


def run(spark: Any, cfg: Config, run_id: str) -> dict[str, Any]:
    """Build the index for `run_id`, check its recall, publish the selected users' top-n (see module doc)."""
    check_run_id(run_id)
    st, pub = cfg.storage, cfg.publish
    _require(spark, st, "item_factors", "user_factors", "train")
    t0 = time.perf_counter()
    h, ids = item_matrix(spark, cfg, run_id)
    model = run_model_config(spark, st, run_id)
    blocked = unavailable_items(spark, cfg, run_id, ids)
    # the index carries the publication's unavailable items, so fold-in (recommend, pyfunc on the index) skips them
    meta = {"run_id": run_id, "model": dataclasses.asdict(model) if model else None,
            UNAVAILABLE: [str(i) for i in ids[blocked]]}
    path = index_path(cfg, run_id, spark)
    index = build_index(h, ids, path, pub, pub.n, meta=meta)
    build_s = time.perf_counter() - t0
    log.info("index for run %s: %s over %d items (d=%d) in %.1fs at %s", run_id, index.params.kind, len(h),
             h.shape[1], build_s, path.uri)
    users = users_frame(spark, cfg, run_id)
    quality, sampled = gate_index(spark, cfg, run_id, index, users, blocked, model.name if model else cfg.model.name)

    t1 = time.perf_counter()
    todo = plan(spark, cfg, run_id, users, ids[blocked])
    log.info("publish %s: users=%s, %s; %d unavailable items", run_id, pub.users, todo.reason, len(blocked))
    try:
        version = write_topn(spark, cfg, run_id, users, _scorer(path, index.token, run_id, pub, blocked), todo)
    finally:
        if todo.keep is not None:
            todo.keep.unpersist()
    publish_s = time.perf_counter() - t1
    counts = _written(spark, st, run_id)
    base = str(todo.base["run_id"]) if todo.keep is not None and todo.base is not None else None
    _mark_current(spark, cfg, {"run_id": run_id, "published_at": datetime.now(UTC), "n": pub.n,
                               "users": counts["users"], "rows": counts["rows"], "index_kind": index.params.kind,
                               "index_recall": float(quality["index_recall"]), "index_path": path.uri,
                               "topn_version": version, "users_mode": pub.users, "refreshed": counts["refreshed"],
                               "base_run_id": base, "unavailable_items": len(blocked)})
    return {"run_id": run_id, "n": pub.n, **counts, "users_mode": pub.users, "base_run_id": base,
            "unavailable_items": len(blocked), "items": len(h), "index": index.params.kind,
            "index_recall": round(quality["index_recall"], 4),
            "index_recall_searcher": round(quality["index_recall_searcher"], 4),
            "recall_sample": sampled, "topn_version": version, "index_seconds": round(build_s, 2),
            "publish_seconds": round(publish_s, 2), "index_path": path.uri}
