"""Block-distributed RankALS on Spark: ALS for the pairwise square loss (paper §5.2, docs/rankals.md).

Same CSR blocks (local block files on a local master, cached block DataFrames elsewhere), factor handoff,
checkpoints and estimator face as iALS (als.BlockTrainer); only the half-steps differ.
With model.solver cg or subspace (the default, cg) an epoch is two Spark jobs:
  user step     every user block solves its rows against centred items and returns them with its share of
                (A, b, G^C) and of v0 = sum alpha (y - 1) w at the current items;
  item descent  every item block takes CG steps on each item's own Newton system (the coupling held fixed)
                and returns that direction with its share of the line search; the driver moves all items by
                the exact minimising step along it (the loss is quadratic in the items), so it never increases.
With model.solver cholesky the item step is exact, in two jobs:
  item coupling every item block returns its share of the 2d x 2d system; the driver solves it for
                (m, mu): the new mean item and the multiplier of the centring constraint;
  item solve    every item block solves h_i = m + B_i^-1 (S q_i - lambda_i m + s_i mu), the exact joint minimiser,
                and returns its share of (S, z, G^I) and of the observed loss term.
Factors travel whole to every block (closure or local file); routed factor tables are not supported yet.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gramian.config import ConfidenceConfig, ModelConfig, TrainConfig
from gramian.errors import ConfigError, SolverError
from gramian.kernels.loss import regularization_term
from gramian.kernels.pairwise import (
    Coupling,
    Descent,
    ItemBasis,
    ItemMoments,
    UserMoments,
    item_coupling,
    item_descent,
    item_moments,
    item_regularization,
    item_side_partials,
    observed_from_partials,
    pairwise_terms,
    row_sums,
    solve_items,
    solve_users,
    support_weights,
    user_moments,
    user_regularization,
    user_side_partials,
)
from gramian.train.als import BlockTrainer, EpochStats, FitState
from gramian.train.blocks import Block, decode_blocks, empty_block, read_local_block
from gramian.train.handoff import resolve
from gramian.train.model import IALS, model_config

log = logging.getLogger(__name__)

PAIR_SCHEMA = "block int, row_start int, n_rows int, factors binary, stats binary, reg double, bad_row int"
TOTALS_SCHEMA = "row_start int, n_rows int, counts binary, sums binary"


@dataclass(frozen=True)
class PairParams:
    """What every block task needs besides data: solver settings and the global totals S and A."""

    reg: float
    nu: float
    solver: str
    cg_steps: int
    block_size: int | None
    total_support: float
    total_alpha: float


def _record(b: Block, x: np.ndarray | None, stats: np.ndarray, reg: float) -> pa.RecordBatch:
    """One block's result row: float32 factors (or none), float64 partial sums, regularisation, first bad row."""
    bad = -1
    if x is not None:
        finite = np.isfinite(x).all(axis=1)
        bad = -1 if finite.all() else int(b.row_start + np.argmin(finite))
    elif not np.isfinite(stats).all():
        bad = b.row_start
    return pa.RecordBatch.from_pydict({
        "block": pa.array([b.block], pa.int32()), "row_start": pa.array([b.row_start], pa.int32()),
        "n_rows": pa.array([b.n_rows], pa.int32()),
        "factors": pa.array([b"" if x is None else x.tobytes()], pa.binary()),
        "stats": pa.array([np.ascontiguousarray(stats, np.float64).tobytes()], pa.binary()),
        "reg": pa.array([float(reg)], pa.float64()), "bad_row": pa.array([bad], pa.int32()),
    })


def _user_block(b: Block, arrays: dict[str, np.ndarray], p: PairParams, moments: ItemMoments) -> pa.RecordBatch:
    """User half-step of one block: exact/CG rows against centred items, the block's (A, b, G^C), and for the
    descent item step its share of (sum alpha (y - 1)^2, v0 = sum alpha (y - 1) w) at the current items."""
    x0 = np.array(arrays["current"][b.row_start:b.row_start + b.n_rows])
    lam = user_regularization(p.reg, p.nu, row_sums(b.indptr, b.alpha), p.total_support)
    x = solve_users(b.indptr, b.indices, b.alpha, arrays["other"], moments, lam, x0, solver=p.solver,
                    cg_steps=p.cg_steps, solver_block_size=p.block_size).astype(np.float32)
    um = user_moments(b.indptr, b.alpha, x)
    stats = [[um.total], um.b, um.gram.ravel()]
    if p.solver != "cholesky":
        square, v0 = user_side_partials(b.indptr, b.indices, b.alpha, x, arrays["other"])
        stats += [[square], v0]
    return _record(b, x, np.concatenate(stats), regularization_term(lam, x))


def _item_lambdas(b: Block, support: np.ndarray, p: PairParams) -> np.ndarray:
    return item_regularization(p.reg, p.nu, row_sums(b.indptr, b.alpha), support, p.total_support, p.total_alpha)


def _coupling_block(b: Block, arrays: dict[str, np.ndarray], p: PairParams, basis: ItemBasis) -> pa.RecordBatch:
    """First pass of the exact item step: the block's share of the (m, mu) coupling system."""
    s = np.array(arrays["support"][b.row_start:b.row_start + b.n_rows])
    c = item_coupling(b.indptr, b.indices, b.alpha, arrays["other"], basis, s, p.total_support,
                      _item_lambdas(b, s, p))
    return _record(b, None, c.to_array(), 0.0)


def _item_block(b: Block, arrays: dict[str, np.ndarray], p: PairParams, basis: ItemBasis, m: np.ndarray,
                mu: np.ndarray) -> pa.RecordBatch:
    """Second pass of the exact item step: new rows, their (S, z, G^I) and the observed-loss partials."""
    s = np.array(arrays["support"][b.row_start:b.row_start + b.n_rows])
    lam = _item_lambdas(b, s, p)
    users = arrays["other"]
    h = solve_items(b.indptr, b.indices, b.alpha, users, basis, s, p.total_support, lam, m, mu).astype(np.float32)
    im = item_moments(h, s)
    square, v = item_side_partials(b.indptr, b.indices, b.alpha, h, users)
    stats = np.concatenate([[im.total], im.z, im.gram.ravel(), [square], v])
    return _record(b, h, stats, regularization_term(lam, h))


def _descent_block(b: Block, arrays: dict[str, np.ndarray], p: PairParams, users: UserMoments,
                   items: ItemMoments, v0: np.ndarray) -> pa.RecordBatch:
    """The inexact item step of one block: direction Delta (as `factors`), its line-search share, sum lambda |h|^2."""
    s = np.array(arrays["support"][b.row_start:b.row_start + b.n_rows])
    lam = _item_lambdas(b, s, p)
    h = np.array(arrays["current"][b.row_start:b.row_start + b.n_rows], np.float64)
    delta, part = item_descent(b.indptr, b.indices, b.alpha, arrays["other"], h, s, lam, users, items, v0,
                               cg_steps=p.cg_steps)
    return _record(b, delta.astype(np.float32), part.to_array(), regularization_term(lam, h))


def _totals_block(b: Block) -> pa.RecordBatch:
    """Per item block: interactions and alpha sum of every row (support weights, lambda_i, A)."""
    return pa.RecordBatch.from_pydict({
        "row_start": pa.array([b.row_start], pa.int32()), "n_rows": pa.array([b.n_rows], pa.int32()),
        "counts": pa.array([np.diff(b.indptr).astype(np.float64).tobytes()], pa.binary()),
        "sums": pa.array([row_sums(b.indptr, b.alpha).tobytes()], pa.binary())})


class PairwiseTrainer(BlockTrainer):
    """Runs RankALS epochs over the cached user and item blocks of one training set (broadcast factors)."""

    def __init__(self, spark: Any, train_df: Any, n_users: int, n_items: int, model: ModelConfig,
                 train: TrainConfig) -> None:
        if train.routing == "routed":
            raise ConfigError("train.routing must be 'auto' or 'broadcast' for model.name=pairwise, got 'routed': "
                              "RankALS sends factors whole to every block; set train.routing=broadcast")
        factor_mb = (n_users + n_items) * model.dim * 4 / 2**20
        if factor_mb > train.broadcast_max_mb:
            log.warning("RankALS factors are %.0f MiB, above train.broadcast_max_mb=%.0f, but are sent whole "
                        "(routing is not implemented for the pairwise loss)", factor_mb, train.broadcast_max_mb)
        super().__init__(spark, train_df, n_users, n_items, model, dataclasses.replace(train, routing="broadcast"))
        counts, sums = np.zeros(n_items), np.zeros(n_items)
        totals = self._run("item", _totals_block, TOTALS_SCHEMA)
        for k in range(totals.num_rows):
            start, n = totals.column("row_start")[k].as_py(), totals.column("n_rows")[k].as_py()
            counts[start:start + n] = np.frombuffer(totals.column("counts")[k].as_buffer(), np.float64)
            sums[start:start + n] = np.frombuffer(totals.column("sums")[k].as_buffer(), np.float64)
        self.support = support_weights(counts, model.support_power)
        self.params = PairParams(model.reg, model.nu, model.solver, model.cg_steps, model.solver_block_size,
                                 float(self.support.sum()), float(sums.sum()))

    def _run(self, side: str, per_block: Callable[[Block], pa.RecordBatch], schema: str) -> pa.Table:
        """One Spark job applying `per_block` to every block of `side`.

        On a local master the job runs over block ids and each task maps its block's CSR files (as the iALS
        half-step does); elsewhere it runs over the cached block DataFrame.
        """
        if self.handoff.enabled:
            folder, layout = str(self.handoff.folder), self.layouts[side]

            def by_id(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                for batch in batches:
                    for block in batch.column("id").to_pylist():
                        yield per_block(read_local_block(folder, side, layout, block))

            ids = self.spark.range(0, layout.num_blocks, 1, layout.num_blocks)
            return ids.mapInArrow(by_id, schema).toArrow()

        def by_row(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                for b in decode_blocks(batch):
                    yield per_block(b)

        return self.blocks[side].mapInArrow(by_row, schema).toArrow()

    def _map_blocks(self, side: str, per_block: Callable[[Block, dict[str, np.ndarray]], pa.RecordBatch],
                    arrays: dict[str, np.ndarray], epoch: int) -> pa.Table:
        """Run `per_block` on every block of `side` (blocks without interactions on the driver); check finiteness."""
        refs = {k: self.handoff.pack(v) for k, v in arrays.items()}
        cache: dict[str, np.ndarray] = {}

        def task(b: Block) -> pa.RecordBatch:
            if not cache:  # once per Python worker and job
                cache.update({k: resolve(r) for k, r in refs.items()})
            return per_block(b, cache)

        try:
            out = self._run(side, task, PAIR_SCHEMA)
        finally:
            for ref in refs.values():
                self.handoff.release(ref)
        layout = self.layouts[side]
        done = set(out.column("block").to_pylist())
        extra = [per_block(empty_block(layout, blk), arrays) for blk in range(layout.num_blocks) if blk not in done]
        if extra:
            out = pa.concat_tables([out, pa.Table.from_batches(extra, schema=out.schema)])
        for blk, bad in zip(out.column("block").to_pylist(), out.column("bad_row").to_pylist(), strict=True):
            if bad >= 0:
                raise SolverError(f"{side} factors must stay finite, got NaN/inf at epoch {epoch}, block {blk}, "
                                  f"row {bad}. Increase model.reg or lower the confidence scale "
                                  "(model.confidence.beta).")
        return out

    def _gather(self, out: pa.Table, n: int) -> tuple[np.ndarray | None, list[np.ndarray], float]:
        """Assemble factor rows, the per-block stats vectors and the summed regularisation of one job."""
        d = self.model.dim
        x = np.empty((n, d), np.float32) if out.num_rows and out.column("factors")[0].as_py() else None
        stats = []
        for k in range(out.num_rows):
            if x is not None:
                start, m = out.column("row_start")[k].as_py(), out.column("n_rows")[k].as_py()
                x[start:start + m] = np.frombuffer(out.column("factors")[k].as_buffer(), np.float32).reshape(m, d)
            stats.append(np.frombuffer(out.column("stats")[k].as_buffer(), np.float64))
        return x, stats, float(sum(out.column("reg").to_pylist()))

    def item_moments_of(self, items: np.ndarray) -> ItemMoments:
        """(S, z, G^I) of the current items (used once, before the first user step of a fit or resume)."""
        return item_moments(items, self.support)

    def epoch(self, state: FitState) -> EpochStats:
        """User step, then the item step (exact: coupling + solve; otherwise one descent pass and an exact step
        along it); the loss (eq. 44) after the item step comes from the jobs' partial sums."""
        e, d, p = state.epoch + 1, self.model.dim, self.params
        if "item_z" in state.grams:
            im = ItemMoments(float(state.grams["item_total"][0]), state.grams["item_z"], state.grams["item_gram"])
        else:
            im = self.item_moments_of(state.item_factors)
        t0 = time.perf_counter()
        out = self._map_blocks("user", functools.partial(_user_block, p=p, moments=im),
                               {"other": state.item_factors, "current": state.user_factors}, e)
        w, stats, reg_w = self._gather(out, self.n_users)
        um = UserMoments(sum(float(s[0]) for s in stats), sum(s[1:1 + d] for s in stats),
                         sum(s[1 + d:1 + d + d * d].reshape(d, d) for s in stats))
        t1 = time.perf_counter()
        if p.solver == "cholesky":
            h, im, square, v, reg_h = self._exact_item_step(w, um, e)
        else:
            o = 1 + d + d * d
            square0, v0 = sum(float(s[o]) for s in stats), sum(s[o + 1:o + 1 + d] for s in stats)
            h, im, square, v, reg_h = self._descent_item_step(w, state.item_factors, um, im, square0, v0, e)
        t2 = time.perf_counter()
        terms = pairwise_terms(observed_from_partials(square, v, um, im), um, im, reg_w + reg_h)
        stats_e = EpochStats(e, terms.total, terms.observed, terms.gramian, terms.regularization, t1 - t0, t2 - t1)
        state.user_factors, state.item_factors, state.epoch = w, h, e
        state.grams = {"item_total": np.array([im.total]), "item_z": im.z, "item_gram": im.gram}
        state.history.append(stats_e)
        return stats_e

    def _exact_item_step(self, w: np.ndarray, um: UserMoments,
                         e: int) -> tuple[np.ndarray, ItemMoments, float, np.ndarray, float]:
        """Coupling job, 2d x 2d solve on the driver, solve job: the joint minimiser of the item subproblem."""
        d, p = self.model.dim, self.params
        arrays = {"other": w, "support": self.support}
        basis = ItemBasis.of(um)
        out = self._map_blocks("item", functools.partial(_coupling_block, p=p, basis=basis), arrays, e)
        _, stats, _ = self._gather(out, self.n_items)
        coupling = functools.reduce(Coupling.__add__, (Coupling.from_array(s, d) for s in stats))
        try:
            m, mu = coupling.solve()
        except FloatingPointError as exc:
            raise SolverError(f"the item step at epoch {e} has no unique minimiser ({exc}). Increase model.reg.") \
                from exc
        out = self._map_blocks("item", functools.partial(_item_block, p=p, basis=basis, m=m, mu=mu), arrays, e)
        h, stats, reg_h = self._gather(out, self.n_items)
        assert h is not None
        o = 1 + d + d * d
        im = ItemMoments(sum(float(s[0]) for s in stats), sum(s[1:1 + d] for s in stats),
                         sum(s[1 + d:o].reshape(d, d) for s in stats))
        return h, im, sum(float(s[o]) for s in stats), sum(s[o + 1:] for s in stats), reg_h

    def _descent_item_step(self, w: np.ndarray, items: np.ndarray, um: UserMoments, im: ItemMoments,
                           square0: float, v0: np.ndarray,
                           e: int) -> tuple[np.ndarray, ItemMoments, float, np.ndarray, float]:
        """One job: every block's direction and line-search share; the driver moves all items by the exact step.

        The loss is quadratic in the items, so the partial sums give L(H + t Delta) for every t: the step never
        increases it, and the new moments and loss terms follow without another pass (docs/rankals.md).
        """
        d, p = self.model.dim, self.params
        arrays = {"other": w, "support": self.support, "current": items}
        out = self._map_blocks("item", functools.partial(_descent_block, p=p, users=um, items=im, v0=v0),
                               arrays, e)
        delta, stats, reg_h0 = self._gather(out, self.n_items)
        assert delta is not None
        part = functools.reduce(Descent.__add__, (Descent.from_array(s, d) for s in stats))
        t = part.step(um, im, v0)
        h = (items + np.float32(t) * delta).astype(np.float32)
        square = square0 + 2.0 * t * part.c1 + t * t * part.c2
        reg_h = reg_h0 + 2.0 * t * part.reg_hd + t * t * part.reg_dd
        log.debug("epoch %d item step: t=%.4f along the descent direction", e, t)
        return h, part.moved(im, t), square, v0 + t * part.v, reg_h


class RankALS(IALS):
    """RankALS estimator: pairwise square loss (eq. 42) by alternating least squares, block-distributed.

    solver="cg" (default): CG user rows and the one-pass descent item step; "cholesky": both steps exact.

    Same fit/checkpoint/model face as IALS; alpha(c,i) comes from `confidence` (form rendle: 1 or 1 + beta w').
    """

    trainer_class = PairwiseTrainer

    def __init__(self, dim: int = 64, reg: float = 0.005, nu: float = 1.0, epochs: int = 15,
                 solver: str = "cg", cg_steps: int = 3, solver_block_size: int | None = None,
                 support_power: float = 0.0, init_scale: float = 0.1, seed: int = 0,
                 confidence: ConfidenceConfig | dict[str, Any] | None = None,
                 train: TrainConfig | None = None) -> None:
        params: dict[str, Any] = dict(name="pairwise", dim=dim, reg=reg, nu=nu, epochs=epochs, solver=solver,
                                      cg_steps=cg_steps, solver_block_size=solver_block_size,
                                      support_power=support_power, init_scale=init_scale, seed=seed)
        if confidence is not None:
            params["confidence"] = confidence
        self.config = model_config(**params)
        self.train_config = train or TrainConfig()
