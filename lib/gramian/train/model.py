"""The Python face of the trainer: `IALS(...).fit(train_df)` → `IALSModel`, in the spirit of MLlib/implicit."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gramian.config import ConfidenceConfig, ModelConfig, TrainConfig, _build
from gramian.errors import ConfigError
from gramian.progress import epoch_line
from gramian.train.als import BlockTrainer, EpochStats, FitState
from gramian.train.checkpoint import Checkpointer
from gramian.train.routed import blocks_to_array

if TYPE_CHECKING:
    from gramian.storage import Store

log = logging.getLogger(__name__)


def model_config(**params: Any) -> ModelConfig:
    """A validated ModelConfig from keyword arguments (same rules as the YAML config)."""
    conf = params.pop("confidence", None)
    data = dict(params)
    if conf is not None:
        data["confidence"] = dataclasses.asdict(conf) if isinstance(conf, ConfidenceConfig) else conf
    cfg = _build(ModelConfig, data, {k: "IALS(...) argument" for k in data}, "model.")
    if cfg.solver_block_size is not None and not 1 <= cfg.solver_block_size <= cfg.dim:
        raise ConfigError(f"solver_block_size must be in [1, dim={cfg.dim}], got {cfg.solver_block_size}")
    return cfg


class IALS:
    """iALS estimator: pointwise square loss over all pairs, Gramian trick, block-distributed (eq. 26)."""

    trainer_class: type[BlockTrainer] = BlockTrainer  # the half-steps; RankALS swaps in its own

    def __init__(self, dim: int = 64, alpha0: float | None = None, alpha0_total: float = 350.0,
                 alpha0_scale_by: str = "geometric", reg: float = 0.2, nu: float = 0.75,
                 reg_counts: str = "observed", epochs: int = 15, solver: str = "cg", cg_steps: int = 3,
                 solver_block_size: int | None = None, init_scale: float = 0.1, seed: int = 0,
                 confidence: ConfidenceConfig | dict[str, Any] | None = None,
                 train: TrainConfig | None = None) -> None:
        params: dict[str, Any] = dict(dim=dim, alpha0=alpha0, alpha0_total=alpha0_total,
                                      alpha0_scale_by=alpha0_scale_by, reg=reg, nu=nu, reg_counts=reg_counts,
                                      epochs=epochs, solver=solver,
                                      cg_steps=cg_steps, solver_block_size=solver_block_size,
                                      init_scale=init_scale, seed=seed)
        if confidence is not None:
            params["confidence"] = confidence
        self.config = model_config(**params)
        self.train_config = train or TrainConfig()

    @classmethod
    def from_config(cls, model: ModelConfig, train: TrainConfig | None = None) -> IALS:
        """The estimator for an already-validated config."""
        est = cls.__new__(cls)
        est.config, est.train_config = model, train or TrainConfig()
        return est

    def fit(self, train_df: Any, n_users: int | None = None, n_items: int | None = None,
            checkpointer: Checkpointer | None = None, resume: bool = False,
            on_epoch: Callable[[EpochStats], None] | None = None, exchange: Store | None = None,
            initial: FitState | None = None, on_model: Callable[[IALSModel], None] | None = None,
            counts: tuple[np.ndarray, np.ndarray] | None = None,
            pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> IALSModel:
        """Train on a DataFrame of (user_idx, item_idx, weight); sizes default to max index + 1.

        `on_epoch` gets each epoch's stats (progress bar, MLflow); without it each epoch is an INFO line.
        `exchange`: a store folder every executor can read, through which whole factors and block CSR reach
        the tasks off a local master (train.exchange); the train stage passes one under the artifact store.
        `initial`: factor arrays to start from instead of the random init (a warm start, train.warm); a
        resumed checkpoint still wins over it.
        `on_model`: called after each epoch (and its checkpoint) with the model as it stands; whatever it raises
        stops the fit, scratch released (gramian.tune scores each epoch on validation and prunes this way).
        `counts`: interactions per user and per item when the caller already counted them (the train stage
        does, train.job.train_positions); the trainer then skips its own counting pass.
        `pairs`: every (user_idx, item_idx, weight) of `train_df` as arrays on the driver, when the caller brought
        them (the train stage does for a small table): counts and, with the store exchange, the CSR blocks are
        made from them on the driver, with no Spark job.
        """
        spark = train_df.sparkSession
        if n_users is None or n_items is None:
            from pyspark.sql import functions as F

            row = train_df.agg(F.max("user_idx").alias("u"), F.max("item_idx").alias("i")).collect()[0]
            n_users = n_users if n_users is not None else int(row["u"] if row["u"] is not None else -1) + 1
            n_items = n_items if n_items is not None else int(row["i"] if row["i"] is not None else -1) + 1
        m = self.config.resolved(n_items, n_users)
        trainer = self.trainer_class(spark, train_df, n_users, n_items, m, self.train_config, exchange, counts,
                                     pairs)
        state = _start_state(trainer, spark, checkpointer, resume, initial)
        try:
            while state.epoch < m.epochs:
                stats = trainer.epoch(state)
                if on_epoch is None:
                    log.info("%s", epoch_line(stats, m.epochs))
                else:
                    on_epoch(stats)
                every = self.train_config.checkpoint_every
                if checkpointer is not None and every and (state.epoch % every == 0 or state.epoch == m.epochs):
                    checkpointer.save(state)
                if on_model is not None:
                    on_model(IALSModel(m, state.user_factors, state.item_factors, state.history, spark))
        except BaseException:  # a stopped fit leaves no routed steps behind (a finished one's model reads them)
            trainer.close_steps()
            raise
        finally:
            trainer.release()
        trainer.finish_steps(state)
        return IALSModel(m, state.user_factors, state.item_factors, state.history, spark, trainer.steps)


def _start_state(trainer: Any, spark: Any, checkpointer: Checkpointer | None, resume: bool,
                 initial: FitState | None = None) -> FitState:
    """The checkpoint to resume, else `initial`, else a fresh start, in the trainer's representation; on any
    error the trainer's scratch files and cached blocks are released before it propagates (else they would
    live until exit)."""
    try:
        state = checkpointer.load(spark) if resume and checkpointer is not None else None
        if state is not None:
            log.info("resuming from checkpoint at epoch %d", state.epoch)
        else:
            state = initial
        if state is None:
            return trainer.initial_state()
        return trainer.adopt(state) if state.routed != trainer.routed else state
    except BaseException:
        trainer.release()
        trainer.close_steps()
        raise


class IALSModel:
    """Trained factors with DataFrame views, save/load and the fit history.

    Factors stay where training left them: numpy arrays on the driver, or factor-block DataFrames
    when they were routed; `user_array`/`item_array` collect the latter on first use.
    """

    def __init__(self, config: ModelConfig, user_factors: Any, item_factors: Any,
                 history: list[EpochStats], spark: Any = None, steps: Any = None) -> None:
        self.config = config
        self._factors = {"user": user_factors, "item": item_factors}
        self.history = history
        self.spark = spark
        self._steps = steps  # routed: the store folder the factor blocks are read from (routed.StepStore)

    def close(self) -> None:
        """Delete the routed steps the factor blocks are read from, now rather than at exit (a model scored and
        dropped, as a tuning trial's); its routed factors cannot be read after. Nothing for arrays."""
        if self._steps is not None:
            self._steps.close()
            self._steps = None

    def _array(self, side: str) -> np.ndarray:
        f = self._factors[side]
        if not isinstance(f, np.ndarray):
            f = self._factors[side] = blocks_to_array(f, self.config.dim)
        return f

    def whole(self, side: str) -> np.ndarray | None:
        """`side`'s factors as the (rows, dim) float32 array the driver holds, or None when they were routed
        (factor-block DataFrames: collecting them here is what routing avoids)."""
        f = self._factors[side]
        return f if isinstance(f, np.ndarray) else None

    @property
    def user_array(self) -> np.ndarray:
        """User factors as a (n_users, dim) float32 array."""
        return self._array("user")

    @property
    def item_array(self) -> np.ndarray:
        """Item factors as a (n_items, dim) float32 array."""
        return self._array("item")

    def _frame(self, side: str) -> Any:
        f = self._factors[side]
        return factors_dataframe(self.spark, f) if isinstance(f, np.ndarray) else explode_blocks(f, self.config.dim)

    @property
    def user_factors(self) -> Any:
        """DataFrame (idx int, factors array<float>)."""
        return self._frame("user")

    @property
    def item_factors(self) -> Any:
        """DataFrame (idx int, factors array<float>)."""
        return self._frame("item")

    def save(self, path: str | Path) -> None:
        """Write factors (.npy) and config/history (JSON) to a folder."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        np.save(p / "user_factors.npy", self.user_array)
        np.save(p / "item_factors.npy", self.item_array)
        meta = {"config": dataclasses.asdict(self.config),
                "history": [dataclasses.asdict(h) for h in self.history]}
        (p / "model.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path, spark: Any = None) -> IALSModel:
        """Read a model written by `save`."""
        p = Path(path)
        meta = json.loads((p / "model.json").read_text())
        cfg = model_config(**meta["config"])
        history = [EpochStats(**h) for h in meta["history"]]
        return cls(cfg, np.load(p / "user_factors.npy"), np.load(p / "item_factors.npy"), history, spark)


def explode_blocks(blocks_df: Any, dim: int) -> Any:
    """A factor-block DataFrame as one row per index: (idx int, factors array<float>), inside tasks."""
    import pyarrow as pa

    def explode(batches):
        for batch in batches:
            for k in range(batch.num_rows):
                s, m = batch.column("row_start")[k].as_py(), batch.column("n_rows")[k].as_py()
                flat = pa.array(np.frombuffer(batch.column("factors")[k].as_buffer(), np.float32))
                offsets = pa.array(np.arange(0, (m + 1) * dim, dim, dtype=np.int32))
                yield pa.RecordBatch.from_pydict({"idx": pa.array(np.arange(s, s + m, dtype=np.int32)),
                                                  "factors": pa.ListArray.from_arrays(offsets, flat)})

    return blocks_df.select("row_start", "n_rows", "factors").mapInArrow(explode, "idx int, factors array<float>")


def factors_dataframe(spark: Any, factors: np.ndarray) -> Any:
    """A factor matrix as a DataFrame of (idx, factors array<float>), built through Arrow."""
    import pyarrow as pa

    table = pa.table({"idx": pa.array(np.arange(len(factors), dtype=np.int32)), "factors": factor_lists(factors)})
    return spark.createDataFrame(table)


def factor_lists(factors: np.ndarray) -> Any:
    """A (rows, d) factor matrix as an Arrow list<float> array, one row's factors per element (no copy of the
    float32 values beyond the cast)."""
    import pyarrow as pa

    n, d = factors.shape
    flat = pa.array(np.ascontiguousarray(factors, dtype=np.float32).reshape(-1))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)), flat)
