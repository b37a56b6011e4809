"""Compile every numba kernel executors call, by running their real per-task code on tiny inputs.

`gramian.dist.build_zip(jit_cache=True)` runs `warm_up()` in a subprocess that imports gramian from the zip
it just wrote, so numba's on-disk cache gets the exact signatures (dtypes, layouts) a Spark task compiles,
and ships that cache inside the zip. The paths driven: the iALS block solve for every solver, the RankALS
block tasks (user step, exact and descent item steps), an evaluation rank batch (held-out ranks, fold-in,
sampled ranks), exact top-k and the retrieval index's history filter. No Spark session is started.
`warm_executors` runs one model's block tasks in every executor's Python worker of a running session, beside
the driver's reads (the train stage).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa

from gramian.config import ConfidenceConfig, ModelConfig
from gramian.kernels import SOLVERS, gramian
from gramian.kernels.pairwise import Coupling, ItemBasis, item_moments, support_weights, user_moments
from gramian.kernels.ranking import topk_excluding
from gramian.kernels.sampled import negative_weights
from gramian.train.als import SolveParams, _solve_block
from gramian.train.blocks import Block, SideLayout, blocks_from_pairs
from gramian.train.init import init_factors
from gramian.train.pairwise import PairParams, _coupling_block, _descent_block, _item_block, _user_block

log = logging.getLogger(__name__)

DIM = 8  # any rank compiles the same code: numba specialises on dtypes and layouts, not sizes
N_USERS, N_ITEMS = 12, 10


def tiny_pairs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_idx, item_idx, weight) of a small random interaction set, as `als.pairs_of` returns them."""
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, N_USERS * N_ITEMS, size=60))
    return (keys // N_ITEMS).astype(np.int64), (keys % N_ITEMS).astype(np.int64), rng.random(len(keys)) + 0.5


def side_block(rows: np.ndarray, cols: np.ndarray, weight: np.ndarray, n_rows: int, alpha0: float) -> Block:
    """All rows of one side as one CSR block, cut by the trainer's own block code (production dtypes)."""
    layout = SideLayout.balanced(np.bincount(rows, minlength=n_rows), 1, DIM)
    (block, arrays), = blocks_from_pairs(rows, cols, weight, layout, alpha0, ConfidenceConfig())
    start, stop = layout.bounds(block)
    return Block(block, start, stop - start, **arrays)


def warm_ials(users: Block, items: Block, alpha0: float, solvers: tuple[str, ...] = SOLVERS) -> None:
    """The iALS block task (`als._solve_block`) for every solver (or `solvers`), both sides, loss measured after
    it."""
    model = ModelConfig(alpha0=alpha0)
    w = init_factors(N_USERS, DIM, model.init_scale, model.seed, 0)  # float32, as the factor exchange ships
    h = init_factors(N_ITEMS, DIM, model.init_scale, model.seed, 1)
    for solver in solvers:
        for b, other, x0 in ((users, h, w), (items, w, h)):
            p = SolveParams(model.alpha0, model.reg, model.nu, solver, model.cg_steps, model.solver_block_size,
                            other.shape[0], model.reg_counts)
            _solve_block(b, other, gramian(other), x0, p, loss_after=True)


def warm_rankals(users: Block, items: Block, item_support_counts: np.ndarray) -> None:
    """The RankALS block tasks (`train.pairwise`): user step per solver, exact item step, descent item step."""
    model = ModelConfig(name="pairwise")
    w = init_factors(N_USERS, DIM, model.init_scale, model.seed, 0)
    h = init_factors(N_ITEMS, DIM, model.init_scale, model.seed, 1)
    support = support_weights(item_support_counts, model.support_power)
    im = item_moments(h, support)
    for solver in SOLVERS:
        p = PairParams(model.reg, model.nu, solver, model.cg_steps, model.solver_block_size, float(support.sum()),
                       float(items.alpha.sum()))
        _user_block(users, h, w, p, im)
    # the item step's tasks read p's totals, reg and cg_steps, not its solver (the trainer picks the step)
    um = user_moments(users.indptr, users.alpha, w.astype(np.float64))
    basis = ItemBasis.of(um)
    coupling = _coupling_block(items, w, support, p, basis)
    m, mu = Coupling.from_array(np.frombuffer(coupling.column("stats")[0].as_buffer(), np.float64), DIM).solve()
    _item_block(items, w, support, p, basis, m, mu)
    v0 = np.zeros(DIM)
    _descent_block(items, w, h, support, p, um, im, v0)


def warm_evaluation(item_factors: np.ndarray, alpha0: float) -> None:
    """One evaluation rank batch (`evaluate.ranks.rank_batch`): a user with factors, one folded in, sampled
    negatives; and exact top-k (`kernels.ranking.topk_excluding`)."""
    from gramian.evaluate.ranks import Scorer, rank_batch

    n_items, d = item_factors.shape
    present = np.ones(n_items, bool)
    scorer = Scorer(item_factors, present, ModelConfig(alpha0=alpha0), gramian(item_factors.astype(np.float64)),
                    negative_weights("uniform", np.ones(n_items), present), m=4, seed=0, score_batch_size=2,
                    item_block=4)
    lists = pa.list_(pa.int32())
    batch = pa.RecordBatch.from_pydict({
        "user_idx": pa.array([0, 1], pa.int32()),
        "test": pa.array([[1, 2], [3]], lists), "hist": pa.array([[0], [4, 5]], lists),
        "fold_items": pa.array([None, [4, 5]], lists), "fold_w": pa.array([None, [1.0, 2.0]], pa.list_(pa.float64())),
        "factors": pa.array([item_factors[0].tolist(), None], pa.list_(pa.float32())),
    })
    rank_batch(batch, scorer)
    topk_excluding(item_factors[:2], item_factors, np.arange(2), np.array([0, 1, 2]), np.array([0, 1]), 3)


class _ExactSearcher:
    """A stand-in for a ScaNN searcher (exact dot products): `ItemIndex.search` casts its answers as it casts
    ScaNN's, so the index's history filter compiles for the dtypes it sees in production."""

    def __init__(self, item_factors: np.ndarray) -> None:
        self.item_factors = item_factors

    def search_batched(self, q: np.ndarray, final_num_neighbors: int, **_: int) -> tuple[np.ndarray, np.ndarray]:
        scores = q @ self.item_factors.T
        nb = np.argsort(-scores, axis=1)[:, :final_num_neighbors]
        return nb.astype(np.uint32), np.take_along_axis(scores, nb, axis=1)


def warm_retrieval(item_factors: np.ndarray) -> None:
    """Top-n excluding histories through a searcher-backed index (`retrieval.index.topn_excluding`)."""
    from gramian.retrieval.index import IndexParams, ItemIndex, topn_excluding

    h = np.ascontiguousarray(item_factors, np.float32)
    index = ItemIndex("warm-up", "warm-up", IndexParams(kind="scann"), h, np.arange(len(h)).astype(str),
                      _ExactSearcher(h))
    topn_excluding(index, h[:3], np.array([0, 2, 3, 3]), np.array([1, 2, 0]), 3, exact_history_above=100)


def warm_up() -> None:
    """Run every warm-up above (a few seconds of numba compilation with an empty cache, milliseconds warm)."""
    u, i, weight = tiny_pairs()
    alpha0 = 0.1
    users = side_block(u, i, weight, N_USERS, alpha0)
    items = side_block(i, u, weight, N_ITEMS, alpha0)
    warm_ials(users, items, alpha0)
    warm_rankals(users, items, np.bincount(i, minlength=N_ITEMS).astype(np.float64))
    h = init_factors(N_ITEMS, DIM, 0.1, 0, 1)
    warm_evaluation(h, alpha0)
    warm_retrieval(h)


def warm_model(model: ModelConfig) -> None:
    """The block tasks one model trains with (iALS at its solver, or RankALS): what its first half-step loads."""
    u, i, weight = tiny_pairs()
    alpha0 = 0.1
    users = side_block(u, i, weight, N_USERS, alpha0)
    items = side_block(i, u, weight, N_ITEMS, alpha0)
    if model.name == "pairwise":
        warm_rankals(users, items, np.bincount(i, minlength=N_ITEMS).astype(np.float64))
    else:
        warm_ials(users, items, alpha0, (model.solver,))


def executor_slots(spark: Any) -> int:
    """Task slots of the session's executors (classic: defaultParallelism; Connect: spark.default.parallelism)."""
    try:
        return max(1, int(spark.sparkContext.defaultParallelism))
    except Exception:
        try:
            return max(1, int(spark.conf.get("spark.default.parallelism", "2")))
        except Exception:
            return 2


def warm_job(spark: Any, model: ModelConfig) -> Any:
    """A DataFrame whose action runs one task per executor slot, each starting its Python worker (kept for later
    tasks: spark.python.worker.reuse) and loading `model`'s kernels in it (warm_model); rows (pid, seconds, the
    row kernels loaded in that worker)."""
    slots = executor_slots(spark)

    def task(batches: Any) -> Any:
        t0 = time.perf_counter()
        for _ in batches:
            pass
        warm_model(model)
        from gramian.kernels import _rows

        loaded = sorted(name for name, fn in vars(_rows).items() if getattr(fn, "signatures", None))
        yield pa.RecordBatch.from_pydict({"pid": pa.array([os.getpid()], pa.int64()),
                                          "seconds": pa.array([time.perf_counter() - t0], pa.float64()),
                                          "kernels": pa.array([",".join(loaded)], pa.string())})

    return spark.range(0, slots, 1, slots).mapInArrow(task, "pid long, seconds double, kernels string")


def warm_executors(spark: Any, model: ModelConfig) -> threading.Thread | None:
    """Off a local master, run warm_job on a background thread: executors start their Python workers and load the
    kernels while the driver reads the train stage's inputs, not in the first half-step (8 s of a fresh
    cluster's first half-step, 0.4-1 s later ones). Never fails the caller: a failed warm-up is logged."""
    from pyspark.util import inheritable_thread_target

    from gramian.train.handoff import is_local_master

    if is_local_master(spark):
        return None
    try:  # planned here, before the caller's reads: only the action waits on the thread
        job = warm_job(spark, model)
    except Exception as e:
        log.warning("executor warm-up not planned (%s: %s); the first half-step starts the Python workers",
                    type(e).__name__, e)
        return None

    def run() -> None:
        try:
            log.info("executor warm-up job submitted")
            t = job.toArrow()
            log.info("executors warmed: %d Python workers, %.1f s each at most", t.num_rows,
                     max(t.column("seconds").to_pylist(), default=0.0))
        except Exception as e:  # the fit's own jobs start the workers then, as before
            log.warning("executor warm-up failed (%s: %s); the first half-step starts the Python workers",
                        type(e).__name__, e)

    thread = threading.Thread(target=inheritable_thread_target(spark)(run), name="gramian-warm-executors",
                              daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    warm_up()
