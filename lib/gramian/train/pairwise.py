"""Block-distributed RankALS on Spark: ALS for the pairwise square loss (paper §5.2, docs/rankals.md).

Same CSR blocks (local block files on a local master, cached block DataFrames elsewhere), factor exchange,
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
Factors travel whole to every block (closure or local file) or, with train.routing routed (or auto above
train.broadcast_max_mb off a local master), each block receives only the rows its CSR references, as for iALS.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from gramian.config import ConfidenceConfig, ModelConfig, TrainConfig
from gramian.errors import SolverError
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
from gramian.train.als import BlockTrainer, EpochStats, FitState, check_rows_finite
from gramian.train.blocks import Block
from gramian.train.model import IALS, model_config

if TYPE_CHECKING:
    from gramian.storage import Store

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


BlockFn = Callable[[Block, np.ndarray, np.ndarray], pa.RecordBatch]  # (block, other side's rows, own rows)


@dataclass(frozen=True)
class _PairTask:
    """A RankALS block function as the exchange's block task (RankALS shares no arrays through the exchange)."""

    fn: BlockFn

    def __call__(self, b: Block, other: np.ndarray, x0: np.ndarray, shared: Mapping[str, np.ndarray]) -> pa.RecordBatch:
        return self.fn(b, other, x0)


def _user_block(b: Block, items: np.ndarray, x0: np.ndarray, p: PairParams, moments: ItemMoments) -> pa.RecordBatch:
    """User half-step of one block: exact/CG rows against centred items, the block's (A, b, G^C), and for the
    descent item step its share of (sum alpha (y - 1)^2, v0 = sum alpha (y - 1) w) at the current items."""
    lam = user_regularization(p.reg, p.nu, row_sums(b.indptr, b.alpha), p.total_support)
    x = solve_users(b.indptr, b.indices, b.alpha, items, moments, lam, np.array(x0), solver=p.solver,
                    cg_steps=p.cg_steps, solver_block_size=p.block_size).astype(np.float32)
    um = user_moments(b.indptr, b.alpha, x)
    stats = [[um.total], um.b, um.gram.ravel()]
    if p.solver != "cholesky":
        square, v0 = user_side_partials(b.indptr, b.indices, b.alpha, x, items)
        stats += [[square], v0]
    return _record(b, x, np.concatenate(stats), regularization_term(lam, x))


def _item_lambdas(b: Block, support: np.ndarray, p: PairParams) -> np.ndarray:
    return item_regularization(p.reg, p.nu, row_sums(b.indptr, b.alpha), support, p.total_support, p.total_alpha)


def _own(support: np.ndarray, b: Block) -> np.ndarray:
    return np.array(support[b.row_start:b.row_start + b.n_rows], np.float64)


def _coupling_block(b: Block, users: np.ndarray, support: np.ndarray, p: PairParams,
                    basis: ItemBasis) -> pa.RecordBatch:
    """First pass of the exact item step: the block's share of the (m, mu) coupling system."""
    s = _own(support, b)
    c = item_coupling(b.indptr, b.indices, b.alpha, users, basis, s, p.total_support, _item_lambdas(b, s, p))
    return _record(b, None, c.to_array(), 0.0)


def _item_block(b: Block, users: np.ndarray, support: np.ndarray, p: PairParams, basis: ItemBasis, m: np.ndarray,
                mu: np.ndarray) -> pa.RecordBatch:
    """Second pass of the exact item step: new rows, their (S, z, G^I) and the observed-loss partials."""
    s = _own(support, b)
    lam = _item_lambdas(b, s, p)
    h = solve_items(b.indptr, b.indices, b.alpha, users, basis, s, p.total_support, lam, m, mu).astype(np.float32)
    im = item_moments(h, s)
    square, v = item_side_partials(b.indptr, b.indices, b.alpha, h, users)
    stats = np.concatenate([[im.total], im.z, im.gram.ravel(), [square], v])
    return _record(b, h, stats, regularization_term(lam, h))


def _descent_block(b: Block, users: np.ndarray, h0: np.ndarray, support: np.ndarray, p: PairParams,
                   um: UserMoments, im: ItemMoments, v0: np.ndarray) -> pa.RecordBatch:
    """The inexact item step of one block: direction Delta (as `factors`), its line-search share, sum lambda |h|^2."""
    s = _own(support, b)
    lam = _item_lambdas(b, s, p)
    h = np.array(h0, np.float64)
    delta, part = item_descent(b.indptr, b.indices, b.alpha, users, h, s, lam, um, im, v0, cg_steps=p.cg_steps)
    return _record(b, delta.astype(np.float32), part.to_array(), regularization_term(lam, h))


def _totals_block(b: Block) -> pa.RecordBatch:
    """Per item block: interactions and alpha sum of every row (support weights, lambda_i, A)."""
    return pa.RecordBatch.from_pydict({
        "row_start": pa.array([b.row_start], pa.int32()), "n_rows": pa.array([b.n_rows], pa.int32()),
        "counts": pa.array([np.diff(b.indptr).astype(np.float64).tobytes()], pa.binary()),
        "sums": pa.array([row_sums(b.indptr, b.alpha).tobytes()], pa.binary())})


class PairwiseTrainer(BlockTrainer):
    """Runs RankALS epochs over the user and item blocks of one training set (whole or routed factors)."""

    def __init__(self, spark: Any, train_df: Any, n_users: int, n_items: int, model: ModelConfig,
                 train: TrainConfig, exchange: Store | None = None,
                 counts: tuple[np.ndarray, np.ndarray] | None = None,
                 pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        super().__init__(spark, train_df, n_users, n_items, model, train, exchange, counts, pairs)
        try:  # the blocks built above must not outlive a failed setup
            totals = self.map_blocks("item", _totals_block, TOTALS_SCHEMA)
        except BaseException:
            self.release()
            self.close_steps()
            raise
        counts, sums = np.zeros(n_items), np.zeros(n_items)
        for k in range(totals.num_rows):
            start, n = totals.column("row_start")[k].as_py(), totals.column("n_rows")[k].as_py()
            counts[start:start + n] = np.frombuffer(totals.column("counts")[k].as_buffer(), np.float64)
            sums[start:start + n] = np.frombuffer(totals.column("sums")[k].as_buffer(), np.float64)
        self.support = support_weights(counts, model.support_power)
        self.params = PairParams(model.reg, model.nu, model.solver, model.cg_steps, model.solver_block_size,
                                 float(self.support.sum()), float(sums.sum()))

    def _step(self, side: str, fn: BlockFn, other: Any, current: Any, epoch: int,
              new_rows: bool = True) -> tuple[Any, list[np.ndarray], float]:
        """Run fn(block, other rows, own current rows) on every block of `side` in one Spark job (the exchange's).

        Returns (new rows in the exchange's representation, or None when `new_rows` is False; per-block stats;
        summed reg).
        """
        result = self.exchange.step(side, _PairTask(fn), current, other, {}, PAIR_SCHEMA, new_rows)
        out = result.summary
        for blk, bad in zip(out.column("block").to_pylist(), out.column("bad_row").to_pylist(), strict=True):
            check_rows_finite(side, epoch, blk, bad)
        stats = [np.frombuffer(out.column("stats")[k].as_buffer(), np.float64) for k in range(out.num_rows)]
        return result.factors, stats, float(sum(out.column("reg").to_pylist()))

    def item_moments_of(self, items: Any) -> ItemMoments:
        """(S, z, G^I) of the current items (used once, before the first user step of a fit or resume)."""
        d, support = self.model.dim, self.support

        def part(start: int, x: np.ndarray) -> np.ndarray:
            im = item_moments(x, support[start:start + x.shape[0]])
            return np.concatenate([[im.total], im.z, im.gram.ravel()])

        parts = self.exchange.partials(items, part)
        return ItemMoments(sum(float(x[0]) for x in parts), sum(x[1:1 + d] for x in parts),
                           sum(x[1 + d:].reshape(d, d) for x in parts))

    def epoch(self, state: FitState) -> EpochStats:
        """User step, then the item step (exact: coupling + solve; otherwise one descent pass and an exact step
        along it); the loss (eq. 44) after the item step comes from the jobs' partial sums."""
        e, d, p = state.epoch + 1, self.model.dim, self.params
        if "item_z" in state.grams:
            im = ItemMoments(float(state.grams["item_total"][0]), state.grams["item_z"], state.grams["item_gram"])
        else:
            im = self.item_moments_of(state.item_factors)
        t0 = time.perf_counter()
        w, stats, reg_w = self._step("user", functools.partial(_user_block, p=p, moments=im), state.item_factors,
                                     state.user_factors, e)
        um = UserMoments(sum(float(s[0]) for s in stats), sum(s[1:1 + d] for s in stats),
                         sum(s[1 + d:1 + d + d * d].reshape(d, d) for s in stats))
        t1 = time.perf_counter()
        if p.solver == "cholesky":
            h, im, square, v, reg_h = self._exact_item_step(w, state.item_factors, um, e)
        else:
            o = 1 + d + d * d
            square0, v0 = sum(float(s[o]) for s in stats), sum(s[o + 1:o + 1 + d] for s in stats)
            h, im, square, v, reg_h = self._descent_item_step(w, state.item_factors, um, im, square0, v0, e)
        t2 = time.perf_counter()
        terms = pairwise_terms(observed_from_partials(square, v, um, im), um, im, reg_w + reg_h)
        stats_e = EpochStats(e, terms.total, terms.observed, terms.gramian, terms.regularization, t1 - t0, t2 - t1,
                             **self.take_timing())
        state.user_factors, state.item_factors, state.epoch = w, h, e
        state.grams = {"item_total": np.array([im.total]), "item_z": im.z, "item_gram": im.gram}
        state.history.append(stats_e)
        return stats_e

    def _exact_item_step(self, w: Any, items: Any, um: UserMoments,
                         e: int) -> tuple[Any, ItemMoments, float, np.ndarray, float]:
        """Coupling job, 2d x 2d solve on the driver, solve job: the joint minimiser of the item subproblem."""
        d, p, support = self.model.dim, self.params, self.support
        basis = ItemBasis.of(um)

        def coupling_fn(b: Block, users: np.ndarray, _h: np.ndarray) -> pa.RecordBatch:
            return _coupling_block(b, users, support, p, basis)

        _, stats, _ = self._step("item", coupling_fn, w, items, e, new_rows=False)
        coupling = functools.reduce(Coupling.__add__, (Coupling.from_array(s, d) for s in stats))
        try:
            m, mu = coupling.solve()
        except FloatingPointError as exc:
            raise SolverError(f"the item step at epoch {e} has no unique minimiser ({exc}). Increase model.reg.") \
                from exc

        def solve_fn(b: Block, users: np.ndarray, _h: np.ndarray) -> pa.RecordBatch:
            return _item_block(b, users, support, p, basis, m, mu)

        h, stats, reg_h = self._step("item", solve_fn, w, items, e)  # routed: read from the persisted step
        o = 1 + d + d * d
        im = ItemMoments(sum(float(s[0]) for s in stats), sum(s[1:1 + d] for s in stats),
                         sum(s[1 + d:o].reshape(d, d) for s in stats))
        return h, im, sum(float(s[o]) for s in stats), sum(s[o + 1:] for s in stats), reg_h

    def _descent_item_step(self, w: Any, items: Any, um: UserMoments, im: ItemMoments, square0: float,
                           v0: np.ndarray, e: int) -> tuple[Any, ItemMoments, float, np.ndarray, float]:
        """One job: every block's direction and line-search share; the driver moves all items by the exact step.

        The loss is quadratic in the items, so the partial sums give L(H + t Delta) for every t: the step never
        increases it, and the new moments and loss terms follow without another pass (docs/rankals.md).
        """
        d, p, support = self.model.dim, self.params, self.support

        def descent_fn(b: Block, users: np.ndarray, h: np.ndarray) -> pa.RecordBatch:
            return _descent_block(b, users, h, support, p, um, im, v0)

        delta, stats, reg_h0 = self._step("item", descent_fn, w, items, e)
        part = functools.reduce(Descent.__add__, (Descent.from_array(s, d) for s in stats))
        t = part.step(um, im, v0)
        h = self.exchange.move("item", items, delta, t)
        square, v, reg_h = part.partials_at(t, square0, v0, reg_h0)
        log.debug("epoch %d item step: t=%.4f along the descent direction", e, t)
        return h, part.moved(im, t), square, v, reg_h


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
