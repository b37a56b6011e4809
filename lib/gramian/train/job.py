"""`gramian train`: read the split's train table, fit, write factor tables and a `runs` row."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from gramian import storage, tables
from gramian.config import Config
from gramian.errors import InputDataError
from gramian.train.checkpoint import Checkpointer
from gramian.train.model import IALS, IALSModel
from gramian.train.pairwise import RankALS

log = logging.getLogger(__name__)

ESTIMATORS: dict[str, type[IALS]] = {"ials": IALS, "pairwise": RankALS}  # model.name -> estimator


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
    from pyspark.sql import functions as F

    st = cfg.storage
    for name in ("train", "users", "items"):
        if not tables.exists(spark, st, name):
            raise InputDataError(f"table {name!r} must exist before training, got none at "
                                 f"{tables.table_ref(st, name)}. Run `gramian ingest` and `gramian split` first.")
    users = tables.read(spark, st, "users")
    items = tables.read(spark, st, "items")
    n_users = int(users.agg(F.max("idx")).collect()[0][0]) + 1
    n_items = int(items.agg(F.max("idx")).collect()[0][0]) + 1
    train_df = tables.read(spark, st, "train")
    started = datetime.now(UTC)
    ckpt = Checkpointer(checkpoint_store(spark, cfg, run_id), fingerprint(cfg, n_users, n_items))
    t0 = time.perf_counter()
    estimator = ESTIMATORS[cfg.model.name].from_config(cfg.model, cfg.train)
    model = estimator.fit(train_df, n_users, n_items, ckpt, resume=resume)
    seconds = time.perf_counter() - t0
    write_factors(spark, cfg, run_id, model, users, items)
    write_run(spark, cfg, run_id, model, started, seconds)
    last = model.history[-1]
    return {"run_id": run_id, "model": cfg.model.name, "dim": cfg.model.dim, "alpha0": model.config.alpha0,
            "epochs": last.epoch,
            "users": n_users, "items": n_items, "final_loss": last.loss, "fit_seconds": round(seconds, 2)}


def write_factors(spark: Any, cfg: Config, run_id: str, model: IALSModel, users: Any, items: Any) -> None:
    """user_factors / item_factors rows (run_id, idx, id, factors) replacing this run's earlier rows."""
    from pyspark.sql import functions as F

    where = f"run_id = '{run_id}'"
    for name, frame, ids in (("user_factors", model.user_factors, users),
                             ("item_factors", model.item_factors, items)):
        out = (frame.join(ids.select("idx", "id"), "idx", "left")
               .select(F.lit(run_id).alias("run_id"), "idx", "id", "factors"))
        tables.write(out, cfg.storage, name, replace_where=where)


def write_run(spark: Any, cfg: Config, run_id: str, model: IALSModel, started: datetime, seconds: float) -> None:
    """One `runs` row: config, per-epoch loss and time, status."""
    history = [dataclasses.asdict(h) for h in model.history]
    config = cfg.to_dict()
    config["model"] = dataclasses.asdict(model.config)  # as trained: alpha0 resolved for this catalogue
    row = {"run_id": run_id, "model": cfg.model.name, "config": json.dumps(config, default=str),
           "started": started, "finished": datetime.now(UTC), "status": "finished",
           "fit_seconds": float(seconds), "epochs": json.dumps(history)}
    schema = ("run_id string, model string, config string, started timestamp, finished timestamp, "
              "status string, fit_seconds double, epochs string")
    tables.write(spark.createDataFrame([row], schema), cfg.storage, "runs", replace_where=f"run_id = '{run_id}'")
