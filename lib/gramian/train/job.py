"""`gramian train`: read the split's train table, fit, write factor tables and a `runs` row."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gramian import jit_warmup, storage, tables, tracking
from gramian.config import Config
from gramian.errors import InputDataError
from gramian.progress import EpochProgress, Phases
from gramian.runs import check_run_id, current_inputs, describe_split, run_where, same_split
from gramian.spark import run_together
from gramian.train import warm
from gramian.train.als import add_counts, collect_pairs, pairs_of, row_counts
from gramian.train.checkpoint import Checkpointer
from gramian.train.model import IALS, IALSModel, factor_lists
from gramian.train.pairwise import RankALS
from gramian.train.rows import is_identity, to_indices, to_positions

log = logging.getLogger(__name__)

ESTIMATORS: dict[str, type[IALS]] = {"ials": IALS, "pairwise": RankALS}  # model.name -> estimator


@dataclasses.dataclass(frozen=True)
class IdMap:
    """An id map (users or items) at its pinned version: the Spark `frame` (idx, id, ...) and, for a map of at
    most train.driver_pairs_max rows, its (idx, id) columns read here (`rows`, a pyarrow Table; else None), so
    the ids of whole factors are attached on the driver and the executors only write."""

    frame: Any
    rows: Any = None


def fingerprint(cfg: Config, n_users: int, n_items: int) -> str:
    """What a checkpoint must match to be resumed: the model (epochs aside) and the data shape."""
    model = dataclasses.asdict(cfg.model)
    model.pop("epochs")
    text = json.dumps({"model": model, "n_users": n_users, "n_items": n_items}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_store(spark: Any, cfg: Config, run_id: str) -> storage.Store:
    """Where run `run_id` keeps its checkpoints: <artifacts>/checkpoints/<run_id> in the store."""
    return storage.artifact_store(cfg.storage, spark).child("checkpoints", run_id)


def run(spark: Any, cfg: Config, run_id: str, resume: bool = False) -> dict[str, Any]:
    """Train the configured model on `train` and publish its factors under `run_id`."""
    check_run_id(run_id)
    phases = Phases(f"train {run_id}")
    warming = jit_warmup.warm_executors(spark, cfg.model)  # beside the driver's reads below
    inputs, users, items, n_users, n_items, (train, counts, pairs) = read_inputs(spark, cfg)
    train_df, user_rows, counts, pairs = train_positions(train, n_users, counts, pairs)
    n_trained = n_users if user_rows is None else len(user_rows)
    phases.mark("read input versions, id maps and train counts")
    started = datetime.now(UTC)
    ckpt = Checkpointer(checkpoint_store(spark, cfg, run_id), fingerprint(cfg, n_trained, n_items), inputs)
    if resume:
        check_resume(ckpt, inputs, run_id)
    source = warm.source_run(spark, cfg, run_id)
    initial, warmed = (None, None) if source is None else warm.warm_state(spark, cfg, source, n_trained, n_items,
                                                                          user_rows)
    phases.mark("checkpoint and warm start")
    model, seconds = fit(spark, cfg, run_id, train_df, counts, ckpt, resume, initial, phases, pairs)
    del pairs  # the driver's copy of train (up to driver_pairs_max rows) is not needed for the writes
    logging_model = None
    if cfg.tracking.log_model and cfg.model.name == "ials":  # fold-in is the iALS user solve
        # MLflow's pyfunc save takes seconds of driver Python: it runs while Spark writes the tables
        logging_model = threading.Thread(target=tracking.safe, name="gramian-log-model",
                                         args=(log_model, tracking.active(), model, items, n_trained))
        logging_model.start()
    write_outputs(spark, cfg, run_id, model, users, items, user_rows, (n_trained, n_items),
                  functools.partial(write_run, spark, cfg, run_id, model, started, seconds, inputs, source))
    phases.mark("write factor tables and runs row")
    if logging_model is not None:
        logging_model.join()
        phases.mark("log model (what the writes did not hide)")
    if warming is not None:
        warming.join()  # long done: its job ran before the fit's first
    last = model.history[-1]
    return {"run_id": run_id, "model": cfg.model.name, "dim": cfg.model.dim, "alpha0": model.config.alpha0,
            "epochs": last.epoch,
            "users": n_trained, "users_without_train_rows": n_users - n_trained, "items": n_items,
            "final_loss": last.loss, "fit_seconds": round(seconds, 2), "inputs": inputs, "warm_start": warmed,
            "phase_seconds": phases.seconds}


def fit(spark: Any, cfg: Config, run_id: str, train_df: Any, counts: tuple[np.ndarray, np.ndarray],
        ckpt: Checkpointer, resume: bool, initial: Any, phases: Phases, pairs: Any = None) -> tuple[IALSModel, float]:
    """Fit the configured estimator on `train_df` (interactions per user and item `counts`, and its rows as
    arrays `pairs` when read_inputs brought them; train_positions) with progress and MLflow per epoch; the model
    and its fit seconds, split into phases: setup before the first epoch (block building, init), the epochs, and
    the rest (checkpoints)."""
    t0 = time.perf_counter()
    estimator = ESTIMATORS[cfg.model.name].from_config(cfg.model, cfg.train)
    progress = EpochProgress(spark, cfg.model.epochs, label=f"train {run_id}")
    tracker = tracking.active()
    first_end: list[float] = []
    epoch_seconds: list[float] = []

    def on_epoch(stats: Any) -> None:
        epoch_seconds.append(stats.user_seconds + stats.item_seconds)
        if not first_end:
            first_end.append(time.perf_counter())
        progress(stats)
        tracking.safe(tracker.log_epoch, stats)

    try:
        model = estimator.fit(train_df, len(counts[0]), len(counts[1]), ckpt, resume=resume, on_epoch=on_epoch,
                              exchange=storage.artifact_store(cfg.storage, spark).child("exchange", run_id),
                              initial=initial, counts=counts, pairs=pairs)
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    setup = first_end[0] - t0 - epoch_seconds[0] if first_end else seconds
    phases.record("fit setup (block building, init)", setup)
    phases.record("epochs", sum(epoch_seconds))
    phases.record("fit other (checkpoints, release)", seconds - setup - sum(epoch_seconds))
    phases.restart()
    return model, seconds


def read_inputs(spark: Any, cfg: Config, count: bool = True) -> tuple[dict[str, int], Any, Any, int, int, Any]:
    """(input versions, users, items, n_users, n_items, (train, counts, pairs)): the versions are pinned (the run
    trains on, and later stages read, these; listed from the tables' logs), the id maps' sizes are max idx + 1
    (from their logs' file statistics), and the pinned train table's interactions per user and item index are
    counted while the maps are looked up (run_together; `count` False: counts and pairs None).

    A train table of at most train.driver_pairs_max rows (its log's statistics) is read whole on the driver
    (`pairs`, driver_pairs: its Parquet files through the store, no Spark job) and counted there: the trainer
    then cuts its blocks on the driver too, so a small run starts its first epoch without a counting job or a
    shuffle on cold executors. A larger one is counted by row_counts (one JVM-only Spark job), `pairs` None.
    InputDataError when train or an id map was never written."""
    st = cfg.storage
    inputs = current_inputs(spark, st)
    if "train" not in inputs:
        raise InputDataError(missing_input(cfg, "train"))
    state = tables.snapshot(spark, st, "train", inputs["train"])  # the log read once for the three questions
    train = tables.read_version(spark, st, "train", inputs["train"], state=state)
    calls = {"users": lambda: id_map(spark, cfg, "users"), "items": lambda: id_map(spark, cfg, "items")}
    rows = tables.log_rows(spark, st, "train", inputs["train"], state=state) if count else None
    bring = rows is not None and rows <= cfg.train.driver_pairs_max
    if count:
        calls["counts"] = (lambda: driver_pairs(spark, cfg, train, inputs["train"], state)) if bring else (
            lambda: row_counts(train, None, None))
    got = run_together(spark, calls)
    (users, n_users), (items, n_items) = got["users"], got["items"]
    pairs = got["counts"] if bring else None
    if pairs is not None:
        log.info("train's %d interactions read and counted on the driver (train.driver_pairs_max %d)",
                 len(pairs[0]), cfg.train.driver_pairs_max)
    counts = None if not count else tuple(
        sized(c, n, name) for c, n, name in zip(
            (np.bincount(pairs[0]), np.bincount(pairs[1])) if pairs is not None else got["counts"],
            (n_users, n_items), ("user_idx", "item_idx"), strict=True))
    return inputs, users, items, n_users, n_items, (train, counts, pairs)


def driver_pairs(spark: Any, cfg: Config, train: Any, version: int, state: Any) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """The pinned train version's (user_idx, item_idx, weight) as arrays here: its Parquet files read with pyarrow
    through the store (tables.read_arrow: no Spark job, so no executor is woken for it), else one Spark scan
    (collect_pairs). `state`: the version's tables.snapshot. Indices are checked against the id maps by the
    caller."""
    t = tables.read_arrow(spark, cfg.storage, "train", version, ["user_idx", "item_idx", "weight"], state=state)
    return collect_pairs(train, None, None) if t is None else pairs_of(t, None, None)


def sized(counts: np.ndarray, n: int, column: str) -> np.ndarray:
    """Counts per index of `column` padded to the id map's size `n`, or InputDataError for an index past it."""
    if len(counts) > n:
        raise InputDataError(f"{column} must be in [0, {n}), got {len(counts) - 1}. The train table and the id "
                             f"maps disagree: re-run `gramian split`.")
    return add_counts(np.zeros(n, counts.dtype), counts)


def id_map(spark: Any, cfg: Config, name: str) -> tuple[IdMap, int]:
    """(id map `name` at its current version, its size: max idx + 1), both from the version's Delta log (the
    files' statistics, the files themselves: tables.column_max, tables.read_version, and for a map of at most
    train.driver_pairs_max rows tables.read_arrow), or InputDataError when the table was never written."""
    st = cfg.storage
    version = tables.version(spark, st, name)
    if version is None:
        raise InputDataError(missing_input(cfg, name))
    state = tables.snapshot(spark, st, name, version)
    top = tables.column_max(spark, st, name, "idx", version)
    rows = tables.log_rows(spark, st, name, version, state=state)
    small = rows is not None and rows <= cfg.train.driver_pairs_max
    table = tables.read_arrow(spark, st, name, version, ["idx", "id"], state=state) if small and rows else None
    return IdMap(tables.read_version(spark, st, name, version, state=state), table), 0 if top is None else top + 1


def missing_input(cfg: Config, name: str) -> str:
    """The message for a table the train stage reads that no stage has written yet."""
    return (f"table {name!r} must exist before training, got none at {tables.table_ref(cfg.storage, name)}. "
            f"Run `gramian ingest` and `gramian split` first.")


def check_resume(ckpt: Checkpointer, inputs: dict[str, int], run_id: str) -> None:
    """InputDataError when the split changed since run_id's checkpoint (resuming would mix two splits)."""
    saved = ckpt.saved_inputs()
    if saved is not None and not same_split(saved, inputs):
        raise InputDataError(
            f"the split must be the one run {run_id!r} was checkpointed on ({describe_split(saved)}) to resume, "
            f"got {describe_split(inputs)} ({ckpt.store.uri}). Train from scratch (drop --resume) or under a new "
            f"--run-id.")


def train_positions(train_df: Any, n_users: int, counts: tuple[np.ndarray, np.ndarray], pairs: Any = None) -> tuple[
        Any, Any, tuple[np.ndarray, np.ndarray], Any]:
    """(train rows for the trainer, user rows or None, interactions per trainer user and per item, `pairs` with
    trainer users) from the counts per user and item index (row_counts): users without train rows get no factor
    row (train.rows), and the counts spare the trainer its own pass (they drive its block layouts)."""
    users, items = counts
    rows = np.flatnonzero(users)
    if is_identity(rows, n_users):
        return train_df, None, (users, items), pairs
    log.info("%d of %d users have no train rows (strong split or given test): they get no factor row",
             n_users - len(rows), n_users)
    if pairs is not None:
        pairs = (np.searchsorted(rows, pairs[0]), *pairs[1:])
    return to_positions(train_df, rows), rows, (users[rows], items), pairs


def log_model(tracker: tracking.NullTracker, model: IALSModel, items: IdMap, n_users: int) -> None:
    """The trained item side as an MLflow pyfunc (gramian.pyfunc): item ids in `idx` order, the model config."""
    h = model.item_array
    t = items.rows if items.rows is not None else items.frame.select("idx", "id").toArrow()
    ids: list[str | None] = [None] * len(h)
    for i, v in zip(t.column("idx").to_pylist(), t.column("id").to_pylist(), strict=True):
        if 0 <= i < len(ids):
            ids[i] = v
    tracker.log_model(item_factors=h, item_ids=ids, model=dataclasses.asdict(model.config), n_users=n_users)


def write_outputs(spark: Any, cfg: Config, run_id: str, model: IALSModel, users: IdMap, items: IdMap, user_rows: Any,
                  sizes: tuple[int, int], write_row: Callable[..., None]) -> None:
    """The factor tables, both at once (run_together: each write's task and commit overlap the other's), then the
    `runs` row (`write_row`, write_run with its arguments bound): no row claims a finished run before its factors
    are in, and its one-row task runs on an executor the factor writes have warmed, not beside them (a cold
    executor's first Delta write costs seconds whatever its size). Should any fail, the runs row is written
    with status `failed`. `sizes`: the model's (user rows, item rows)."""
    try:
        run_together(spark, factor_writes(spark, cfg, run_id, model, users, items, user_rows, sizes))
        write_row()
    except BaseException:
        try:
            write_row(status="failed")
        except Exception:  # the write's own failure is the error to raise
            log.exception("could not mark run %s failed in the runs table", run_id)
        raise


def factor_writes(spark: Any, cfg: Config, run_id: str, model: IALSModel, users: IdMap, items: IdMap,
                  user_rows: Any = None, sizes: tuple[int, int] | None = None) -> dict[str, Callable[[], None]]:
    """The user_factors / item_factors writes, rows (run_id, idx, id, factors) replacing this run's earlier rows.

    `user_rows` (from `train_positions`) maps the trainer's user positions back to `users` indices. A side whose
    factors are whole on the driver and whose id map was read here (IdMap.rows) gets its ids on the driver
    (`with_ids`): the executors then only write, with no id-map scan and join on them; otherwise the factor
    frame is joined with the map's frame (left join: an index the map lacks gets a null id). `sizes` (user
    rows, item rows): each table is written as files of about tables.FILE_BYTES (one file and one task for tens
    of MiB of factors, not one per default partition or factor block); None: as the frames come."""
    from pyspark.sql import functions as F

    where = run_where(run_id)
    writes = {}
    row_bytes = 4 * model.config.dim + 64  # the factors, idx, and about 60 bytes of run_id and id
    for k, (side, ids, rows) in enumerate((("user", users, user_rows), ("item", items, None))):
        whole = model.whole(side)
        if whole is not None and ids.rows is not None:
            out = tables.arrow_frame(spark, with_ids(run_id, whole, rows, ids.rows), FACTOR_ROWS)
        else:
            frame = getattr(model, f"{side}_factors")
            frame = frame if rows is None else to_indices(frame, rows)
            out = (frame.join(ids.frame.select("idx", "id"), "idx", "left")
                   .select(F.lit(run_id).alias("run_id"), "idx", "id", "factors"))
        files = None if sizes is None else tables.files_for(sizes[k], row_bytes)
        writes[f"{side}_factors"] = functools.partial(tables.write, out, cfg.storage, f"{side}_factors",
                                                      replace_where=where, rows_of={"run_id": run_id}, files=files)
    return writes


FACTOR_ROWS = "run_id string, idx int, id string, factors array<float>"  # a factor table's row


def with_ids(run_id: str, factors: np.ndarray, rows: np.ndarray | None, ids: Any) -> Any:
    """A factor table's rows as a pyarrow Table (FACTOR_ROWS) built on the driver: row k of `factors` is index
    `rows[k]` (None: k) of the id map whose (idx, id) columns are `ids`; an index the map lacks gets a null id,
    as the left join does."""
    import pyarrow as pa

    n = len(factors)
    idx = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    known = np.asarray(ids.column("idx").to_numpy(zero_copy_only=False), dtype=np.int64)
    at = np.full(max(int(known.max(initial=-1)), int(idx.max(initial=-1))) + 1, -1, dtype=np.int64)
    at[known] = np.arange(len(known))
    pick = at[idx]
    id_col = ids.column("id").take(pa.array(pick, mask=pick < 0)).combine_chunks()
    return pa.table({"run_id": pa.array([run_id] * n, pa.string()), "idx": pa.array(idx.astype(np.int32)),
                     "id": id_col.cast(pa.string()), "factors": factor_lists(factors)})


def write_run(spark: Any, cfg: Config, run_id: str, model: IALSModel, started: datetime, seconds: float,
              inputs: dict[str, int] | None = None, warm_start: str | None = None, status: str = "finished") -> None:
    """One `runs` row: config, per-epoch loss and time, status, the input versions trained on (JSON) and the
    run it warm-started from (null: a cold start)."""
    history = [dataclasses.asdict(h) for h in model.history]
    config = cfg.to_dict()
    config["model"] = dataclasses.asdict(model.config)  # as trained: alpha0 resolved for this catalogue
    row = {"run_id": run_id, "model": cfg.model.name, "config": json.dumps(config, default=str),
           "started": started, "finished": datetime.now(UTC), "status": status,
           "fit_seconds": float(seconds), "epochs": json.dumps(history),
           "inputs": json.dumps(inputs) if inputs is not None else None, "warm_start": warm_start}
    schema = ("run_id string, model string, config string, started timestamp, finished timestamp, "
              "status string, fit_seconds double, epochs string, inputs string, warm_start string")
    # merge_schema: `inputs`, `warm_start` joined later: older runs tables gain them, their rows read null
    tables.write(tables.local_frame(spark, [row], schema), cfg.storage, "runs", replace_where=run_where(run_id),
                 merge_schema=True, rows_of={"run_id": run_id}, files=1)
