"""The methods under test, each fit on one `Split` and returned as numpy factors with timings.

- gramian      : `gramian.train.IALS` through Spark local[2] (fit wall time includes block building).
- gramian_np   : the same kernels in one process (no Spark), for tuning and the overhead breakdown.
- mllib        : `pyspark.ml.recommendation.ALS(implicitPrefs=True)` on the same session.
- implicit_als : `implicit.cpu.als.AlternatingLeastSquares` (CG, 2 threads, BLAS single-threaded).
- implicit_bpr : `implicit.cpu.bpr.BayesianPersonalizedRanking` (quality only).
- ease, rp3beta: item-item peers (benchmarks/item_item.py), scored by history x item-item matrix.
- popularity   : train counts (the floor every model must beat).

Confidence conventions differ (STACK-NOTES "Peers"): implicit uses c = alpha*r, MLlib c = 1 + alpha*r,
gramian alpha0 on all pairs plus 1 on observed ones, so alpha (peers) ~ 1/alpha0 (gramian).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.datasets import Split
from benchmarks.memory import PeakRSS

METHODS = ("gramian", "rankals", "gramian_np", "mllib", "implicit_als", "implicit_bpr", "ease", "rp3beta",
           "popularity")


@dataclass
class FitResult:
    """Factors of one fit and what it cost (seconds, bytes of RSS of the whole process tree)."""

    method: str
    params: dict[str, Any]
    user_factors: np.ndarray
    item_factors: np.ndarray
    fit_seconds: float
    iterations: int
    epoch_seconds: list[float] = field(default_factory=list)
    start_rss: int = 0
    peak_rss: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    peak_by_command: dict[str, int] = field(default_factory=dict)
    # item-item models (EASE, RP3beta): users -> dense score rows; their factor arrays are empty
    scorer: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def finite(self) -> bool:
        """Whether the model is usable: finite factors (a factor model) or a scorer (item-item)."""
        if self.scorer is not None:
            return True
        return bool(np.isfinite(self.user_factors).all() and np.isfinite(self.item_factors).all())

    @property
    def seconds_per_epoch(self) -> float:
        if self.epoch_seconds:
            return float(np.mean(self.epoch_seconds))
        return self.fit_seconds / max(1, self.iterations)


def _attach(result: FitResult, mem: PeakRSS) -> FitResult:
    """Copy the per-command split of the peak RSS sample into `result`."""
    result.peak_by_command = dict(mem.peak_by_command)
    return result


def transform_weights(w: np.ndarray, how: str) -> np.ndarray:
    """Feedback strength fed to a peer: raw weight, log1p(weight) or binary 1."""
    if how == "raw":
        return w.astype(np.float64)
    if how == "log1p":
        return np.log1p(w)
    if how == "binary":
        return np.ones_like(w, dtype=np.float64)
    raise ValueError(f"weights must be one of raw, log1p, binary, got {how!r}")


# ---------------------------------------------------------------------------------------------- Spark


def spark_session(driver_memory: str | None = None) -> Any:
    """The project's session (local[2], loopback); BLAS single-threaded inside the JVM and workers.

    `driver_memory` overrides the config default (4g), e.g. for the 10M synthetic set.
    """
    import dataclasses
    import os

    # Spark's linalg guide: multi-threaded native BLAS inside executors hurts; numpy here is loaded
    # already, so this only reaches the JVM and the Python workers it starts.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    from gramian.config import SparkConfig
    from gramian.spark import get_session

    cfg = SparkConfig()
    if driver_memory:
        cfg = dataclasses.replace(cfg, driver_memory=driver_memory)
    return get_session(cfg)


def train_dataframe(spark: Any, split: Split, values: np.ndarray | None = None) -> Any:
    """(user_idx int, item_idx int, weight double) DataFrame of the train pairs, cached and counted."""
    import pyarrow as pa

    table = pa.table({
        "user_idx": pa.array(split.train_users.astype(np.int32), pa.int32()),
        "item_idx": pa.array(split.train_items.astype(np.int32), pa.int32()),
        "weight": pa.array((split.train_weights if values is None else values).astype(np.float64)),
    })
    df = spark.createDataFrame(table).repartition(2).cache()
    df.count()
    return df


def fit_gramian(split: Split, params: dict[str, Any], spark: Any, estimator: str = "IALS") -> FitResult:
    """gramian IALS (or RankALS) on Spark; per-epoch seconds and the half-step split come from its history."""
    from gramian import train

    df = train_dataframe(spark, split)
    est = getattr(train, estimator)(**params)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        model = est.fit(df, split.n_users, split.n_items)
        fit_s = time.perf_counter() - t0
    df.unpersist()
    hist = model.history
    loss = [h.loss for h in hist]
    name = "gramian" if estimator == "IALS" else estimator.lower()
    return _attach(FitResult(
        name, params, model.user_array, model.item_array, fit_s, len(hist),
        [h.user_seconds + h.item_seconds for h in hist], mem.start, mem.peak,
        {"loss": loss, "observed": [h.observed for h in hist], "gramian_term": [h.gramian for h in hist],
         "regularization": [h.regularization for h in hist],
         "user_seconds": [h.user_seconds for h in hist], "item_seconds": [h.item_seconds for h in hist],
         "setup_seconds": fit_s - sum(h.user_seconds + h.item_seconds for h in hist)}), mem)


def mllib_blas(spark: Any) -> str:
    """Which BLAS MLlib's netlib layer resolved: JNIBLAS (native libblas.so.3) or the Java fallback."""
    import os

    try:
        jvm = spark.sparkContext._jvm
        name = str(jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getName())
    except Exception as e:  # Connect session or a netlib change: report rather than fail
        return f"unknown ({type(e).__name__})"
    if name.endswith("JNIBLAS"):
        lib = "/usr/lib/x86_64-linux-gnu/libblas.so.3"
        return f"{name} (native: {os.path.realpath(lib) if os.path.exists(lib) else 'libblas.so.3'})"
    return name


def fit_mllib(split: Split, params: dict[str, Any], spark: Any) -> FitResult:
    """MLlib implicit ALS; factors are collected and mapped back to dense ids (missing rows = 0)."""
    from pyspark.ml.recommendation import ALS

    p = dict(params)
    how = p.pop("weights", "raw")
    df = train_dataframe(spark, split, transform_weights(split.train_weights, how))
    als = ALS(implicitPrefs=True, userCol="user_idx", itemCol="item_idx", ratingCol="weight",
              coldStartStrategy="drop", seed=0, **p)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        model = als.fit(df)
        fit_s = time.perf_counter() - t0
        uf = _collect_factors(model.userFactors, split.n_users, p["rank"])
        itf = _collect_factors(model.itemFactors, split.n_items, p["rank"])
        collect_s = time.perf_counter() - t0 - fit_s
    df.unpersist()
    return _attach(FitResult("mllib", {**p, "weights": how}, uf, itf, fit_s, p["maxIter"], [], mem.start, mem.peak,
                     {"collect_seconds": collect_s, "blas": mllib_blas(spark),
                      "epoch_seconds_note": "fit seconds / maxIter (MLlib exposes no per-iteration time)"}), mem)


def _collect_factors(df: Any, n: int, rank: int) -> np.ndarray:
    t = df.toArrow()
    ids = t.column("id").to_numpy()
    feats = np.asarray(t.column("features").combine_chunks().flatten(), dtype=np.float32).reshape(-1, rank)
    out = np.zeros((n, rank), dtype=np.float32)
    out[ids] = feats
    return out


# ------------------------------------------------------------------------------------------- implicit


def fit_implicit_als(split: Split, params: dict[str, Any]) -> FitResult:
    """implicit's CG ALS with BLAS pinned to one thread (its own threads give the parallelism)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    p = dict(params)
    how = p.pop("weights", "raw")
    user_items = split.train_csr(transform_weights(split.train_weights, how)).astype(np.float32)
    model = AlternatingLeastSquares(use_cg=True, num_threads=2, random_state=0, **p)
    epochs: list[float] = []
    last = [0.0]

    def cb(iteration: int, elapsed: float, loss: float | None) -> None:
        now = time.perf_counter()
        epochs.append(now - last[0])
        last[0] = now

    with threadpool_limits(1, "blas"), PeakRSS() as mem:
        t0 = last[0] = time.perf_counter()
        model.fit(user_items, show_progress=False, callback=cb)
        fit_s = time.perf_counter() - t0
    return _attach(FitResult("implicit_als", {**p, "weights": how, "use_cg": True, "num_threads": 2},
                     np.asarray(model.user_factors), np.asarray(model.item_factors), fit_s,
                     p["iterations"], epochs, mem.start, mem.peak), mem)


def fit_implicit_bpr(split: Split, params: dict[str, Any]) -> FitResult:
    """implicit's BPR (quality reference; its factors carry an item-bias column)."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from threadpoolctl import threadpool_limits

    user_items = split.train_csr(np.ones(split.nnz)).astype(np.float32)
    model = BayesianPersonalizedRanking(num_threads=2, random_state=0, **params)
    with threadpool_limits(1, "blas"), PeakRSS() as mem:
        t0 = time.perf_counter()
        model.fit(user_items, show_progress=False)
        fit_s = time.perf_counter() - t0
    return _attach(FitResult("implicit_bpr", {**params, "num_threads": 2}, np.asarray(model.user_factors),
                     np.asarray(model.item_factors), fit_s, params["iterations"], [], mem.start, mem.peak), mem)


def fit_popularity(split: Split) -> FitResult:
    """Score = number of train users of the item (rank-1 'factors')."""
    t0 = time.perf_counter()
    counts = np.bincount(split.train_items, minlength=split.n_items).astype(np.float32)
    return FitResult("popularity", {}, np.ones((split.n_users, 1), np.float32), counts[:, None],
                     time.perf_counter() - t0, 0)


# --------------------------------------------------------------------------- gramian, single process


@dataclass
class SideCSR:
    """One side's CSR with eq. 21 weights, as the Spark blocks hold it (one block = the whole side)."""

    indptr: np.ndarray
    indices: np.ndarray
    alpha: np.ndarray
    target: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)


def side_csrs(split: Split, alpha0: float, confidence: dict[str, Any]) -> tuple[SideCSR, SideCSR]:
    """User-side and item-side CSRs with (alpha_tilde, target) from `observed_weights`."""
    from gramian.kernels import observed_weights

    out = []
    for rows, cols, n in ((split.train_users, split.train_items, split.n_users),
                          (split.train_items, split.train_users, split.n_items)):
        order = np.lexsort((cols, rows))
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        alpha, target = observed_weights(split.train_weights[order], alpha0, **confidence)
        out.append(SideCSR(indptr, cols[order].astype(np.int64), alpha, target))
    return out[0], out[1]


def fit_gramian_numpy(split: Split, params: dict[str, Any], track_loss: bool = True,
                      on_epoch: Callable[[int, np.ndarray, np.ndarray, dict[str, list[float]]], None] | None = None
                      ) -> FitResult:
    """gramian's kernels looped in one process: the Spark trainer's math without Spark.

    Same steps as `gramian.train.als.BlockTrainer.epoch`: solve users against (H, G(H)), cast to
    float32, solve items against (W, G(W)); loss of eq. 26 after the item step. `on_epoch(epoch, W, H, times)`
    (e.g. a validation score at chosen epochs; times: the half-step seconds so far) runs after each epoch;
    its wall time is left out of fit_seconds.
    """
    from gramian.kernels import gramian, ials_loss, regularization_weights, solve_side
    from gramian.train.als import init_factors
    from gramian.train.model import model_config

    cfg = model_config(**{k: v for k, v in params.items() if k not in ("support_power", "name")})
    m = dataclasses.asdict(cfg.resolved(split.n_items, split.n_users))  # alpha0 null: as the Spark trainer
    conf = m["confidence"]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        us, its = side_csrs(split, m["alpha0"], conf)
        lam_u = regularization_weights(m["reg"], m["nu"], us.counts, m["alpha0"], split.n_items,
                                       reg_counts=m["reg_counts"])
        lam_i = regularization_weights(m["reg"], m["nu"], its.counts, m["alpha0"], split.n_users,
                                       reg_counts=m["reg_counts"])
        w = init_factors(split.n_users, m["dim"], m["init_scale"], m["seed"], 0)
        h = init_factors(split.n_items, m["dim"], m["init_scale"], m["seed"], 1)
        kw = {"solver": m["solver"], "cg_steps": m["cg_steps"], "solver_block_size": m["solver_block_size"]}
        user_s, item_s, loss = [], [], []
        hook_s = 0.0
        for e in range(1, m["epochs"] + 1):
            t1 = time.perf_counter()
            w = solve_side(us.indptr, us.indices, us.alpha, us.target, h, gramian(h), m["alpha0"], lam_u, w,
                           **kw).astype(np.float32)
            t2 = time.perf_counter()
            h = solve_side(its.indptr, its.indices, its.alpha, its.target, w, gramian(w), m["alpha0"], lam_i,
                           h, **kw).astype(np.float32)
            t3 = time.perf_counter()
            user_s.append(t2 - t1)
            item_s.append(t3 - t2)
            if track_loss:
                loss.append(ials_loss(us.indptr, us.indices, us.alpha, us.target, w, h, m["alpha0"], lam_u,
                                      lam_i).total)
            if on_epoch is not None:
                t4 = time.perf_counter()
                on_epoch(e, w, h, {"user_seconds": user_s, "item_seconds": item_s})
                hook_s += time.perf_counter() - t4
        fit_s = time.perf_counter() - t0 - hook_s
    epochs = [a + b for a, b in zip(user_s, item_s, strict=True)]
    return _attach(FitResult("gramian_np", m, w, h, fit_s, m["epochs"], epochs,
                     mem.start, mem.peak, {"loss": loss, "user_seconds": user_s, "item_seconds": item_s,
                                           "note": "one process, one thread: kernel time without Spark"}), mem)
