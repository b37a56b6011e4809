"""The distributed trainer against a single-process numpy run of the same kernels, and its failure modes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gramian.config import ConfidenceConfig, ModelConfig, TrainConfig
from gramian.errors import ConfigError, InputDataError, SolverError
from gramian.kernels import gramian, ials_loss, observed_weights, regularization_weights, solve_side
from gramian.train import IALS, IALSModel
from gramian.train.als import FitState, init_factors
from gramian.train.checkpoint import Checkpointer

N_USERS, N_ITEMS = 120, 80


def tiny_pairs(seed: int = 0, n_users: int = N_USERS, n_items: int = N_ITEMS, nnz: int = 1500) -> pd.DataFrame:
    """Random implicit feedback with a popularity skew and integer play counts."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, nnz)
    items = np.minimum((rng.pareto(1.5, nnz) * 8).astype(int), n_items - 1)
    df = pd.DataFrame({"user_idx": users, "item_idx": items}).drop_duplicates()
    df["weight"] = rng.integers(1, 20, len(df)).astype(float)
    return df.astype({"user_idx": "int32", "item_idx": "int32"})


def csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, cols[order].astype(np.int32), vals[order]


def numpy_fit(pairs: pd.DataFrame, m: ModelConfig, n_users: int = N_USERS,
              n_items: int = N_ITEMS) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The reference: the same kernels in one process, each side one block, float32 between steps."""
    u, i, w = (pairs[c].to_numpy() for c in ("user_idx", "item_idx", "weight"))
    c = m.confidence
    sides = {}
    for name, rows, cols, n in (("user", u, i, n_users), ("item", i, u, n_items)):
        indptr, indices, weight = csr(rows, cols, w, n)
        alpha, target = observed_weights(weight, m.alpha0, c.form, c.scale, c.beta, c.eps)
        sides[name] = (indptr, indices, alpha, target)
    W = init_factors(n_users, m.dim, m.init_scale, m.seed, 0)
    H = init_factors(n_items, m.dim, m.init_scale, m.seed, 1)
    losses = []
    for _ in range(m.epochs):
        for name in ("user", "item"):
            indptr, indices, alpha, target = sides[name]
            x, other = (W, H) if name == "user" else (H, W)
            lam = regularization_weights(m.reg, m.nu, np.diff(indptr), m.alpha0, other.shape[0],
                                         reg_counts=m.reg_counts)
            new = solve_side(indptr, indices, alpha, target, other, gramian(other), m.alpha0, lam, x,
                             solver=m.solver, cg_steps=m.cg_steps,
                             solver_block_size=m.solver_block_size).astype(np.float32)
            W, H = (new, H) if name == "user" else (W, new)
        indptr, indices, alpha, target = sides["user"]
        lam_u = regularization_weights(m.reg, m.nu, np.diff(indptr), m.alpha0, n_items, reg_counts=m.reg_counts)
        lam_i = regularization_weights(m.reg, m.nu, np.diff(sides["item"][0]), m.alpha0, n_users,
                                       reg_counts=m.reg_counts)
        losses.append(ials_loss(indptr, indices, alpha, target, W, H, m.alpha0, lam_u, lam_i).total)
    return W, H, losses


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    return tiny_pairs()


@pytest.fixture(scope="module")
def train_df(spark, pairs):
    return spark.createDataFrame(pairs)


@pytest.mark.parametrize("solver,block,reg_counts", [("cg", None, "observed"), ("cholesky", None, "all"),
                                                    ("subspace", 4, "observed")])
def test_spark_fit_equals_single_process_numpy_run(train_df, pairs, solver, block, reg_counts):
    est = IALS(dim=8, epochs=3, solver=solver, solver_block_size=block, alpha0=0.05, reg=0.01, reg_counts=reg_counts,
               confidence={"form": "rendle", "scale": "log", "beta": 1.0, "eps": 1.0},
               train=TrainConfig(num_user_blocks=3, num_item_blocks=2))
    model = est.fit(train_df, N_USERS, N_ITEMS)
    W, H, losses = numpy_fit(pairs, est.config)
    np.testing.assert_allclose(model.user_array, W, atol=1e-4)
    np.testing.assert_allclose(model.item_array, H, atol=1e-4)
    np.testing.assert_allclose([h.loss for h in model.history], losses, rtol=1e-6)


def test_factors_handed_over_in_the_closure_equal_those_handed_over_by_file(train_df):
    """Both exchanges give bit-identical factors and losses; the local one plans each side's job once (3 epochs)."""
    from gramian.train.exchange import Closure, LocalFiles

    made = []

    def fit(flag: bool):
        est = IALS(dim=8, epochs=3, train=TrainConfig(local_file_handoff=flag))

        class Recording(est.trainer_class):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(self)

            def release(self):
                planned.append(len(getattr(self.exchange, "_jobs", ())))
                super().release()

        est.trainer_class = Recording
        return est.fit(train_df, N_USERS, N_ITEMS)

    planned: list[int] = []
    fits = [fit(flag) for flag in (True, False)]
    assert [type(t.exchange) for t in made] == [LocalFiles, Closure]
    assert planned[0] == 2  # one job per side (user, item), re-run every epoch
    assert not made[0].exchange._jobs  # dropped on release
    np.testing.assert_array_equal(fits[0].user_array, fits[1].user_array)
    np.testing.assert_array_equal(fits[0].item_array, fits[1].item_array)
    assert [h.loss for h in fits[0].history] == [h.loss for h in fits[1].history]


@pytest.mark.parametrize("estimator", ["ials", "pairwise"])
def test_factors_through_the_store_equal_the_closure_path_with_empty_blocks_solved_in_tasks(spark, pairs, tmp_path,
                                                                                           estimator):
    """The cluster path's store exchange (CSR and factors read from the store by the Python workers) gives the
    closure path's factors and loss; 200 users without interactions make whole blocks with none, solved in tasks."""
    from gramian.storage import open_store
    from gramian.train import RankALS
    from gramian.train.als import collect_pairs
    from gramian.train.exchange import Closure, StoreFiles

    cls = IALS if estimator == "ials" else RankALS
    df, n_users = spark.createDataFrame(pairs), N_USERS + 200
    made = []

    def fit(exchange: str, store=None, pairs=None):
        est = cls(dim=8, epochs=2, train=TrainConfig(num_user_blocks=4, num_item_blocks=2, local_file_handoff=False,
                                                     exchange=exchange))

        class Recording(est.trainer_class):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(self)

        est.trainer_class = Recording
        return est.fit(df, n_users, N_ITEMS, exchange=store, pairs=pairs)

    closure = fit("closure")
    store = open_store(str(tmp_path / "exchange"))
    cut = fit("auto", store, pairs=collect_pairs(df, n_users, N_ITEMS))  # as the train stage brings a small table
    stored = fit("auto", store)
    trainer = made[-1]
    assert made[-2].nonempty == trainer.nonempty  # the driver wrote the same blocks the Spark tasks did
    np.testing.assert_array_equal(cut.user_array, stored.user_array)
    np.testing.assert_array_equal(cut.item_array, stored.item_array)
    assert isinstance(trainer.exchange, StoreFiles) and isinstance(made[0].exchange, Closure)
    assert trainer.handoff.store is not None and not trainer.blocks  # nothing cached in Spark
    assert len(trainer.nonempty["user"]) < trainer.layouts["user"].num_blocks  # some blocks have no interactions
    assert not store.exists(trainer.handoff.store.uri.rsplit("/", 1)[-1])  # its scratch is gone after the fit
    if estimator == "ials":  # the driver wrote only the initial draws: every later side came as the tasks' files
        assert trainer.handoff._count == 2, trainer.handoff._count
    else:  # RankALS moves the items on the driver: epoch 1's moved items, read by epoch 2, are written by it
        assert trainer.handoff._count == 2 + 1, trainer.handoff._count
    np.testing.assert_allclose(stored.user_array, closure.user_array, atol=1e-6)
    np.testing.assert_allclose(stored.item_array, closure.item_array, atol=1e-6)
    np.testing.assert_allclose([h.loss for h in stored.history], [h.loss for h in closure.history], rtol=1e-9)
    slots = spark.sparkContext.defaultParallelism  # tasks of one job run at most this many at a time
    for fit_ in (closure, stored):  # where each half-step's time went, counted in its block tasks
        for h in fit_.history:
            for side in ("user", "item"):
                kernel, fetch = getattr(h, f"{side}_kernel_seconds"), getattr(h, f"{side}_fetch_seconds")
                assert 0 < kernel + fetch <= slots * getattr(h, f"{side}_seconds"), (side, h)
                assert fetch >= 0
    assert stored.history[0].user_fetch_seconds > 0  # epoch 1 reads every block's CSR and the items from the store


def test_store_exchange_without_a_store_names_the_key(train_df):
    with pytest.raises(ConfigError, match=r"train.exchange: store needs an artifact store"):
        IALS(dim=4, epochs=1, train=TrainConfig(local_file_handoff=False, exchange="store")).fit(
            train_df, N_USERS, N_ITEMS)


def test_factors_do_not_depend_on_the_number_of_blocks(train_df):
    fits = [IALS(dim=8, epochs=2, train=TrainConfig(num_user_blocks=nb, num_item_blocks=nb)).fit(
        train_df, N_USERS, N_ITEMS) for nb in (1, 4)]
    np.testing.assert_allclose(fits[0].user_array, fits[1].user_array, atol=1e-5)
    np.testing.assert_allclose(fits[0].item_array, fits[1].item_array, atol=1e-5)


def test_training_loss_never_increases_with_exact_solver(train_df):
    model = IALS(dim=8, epochs=6, solver="cholesky").fit(train_df, N_USERS, N_ITEMS)
    losses = [h.loss for h in model.history]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(losses, losses[1:], strict=False)), losses
    assert all(h.user_seconds > 0 and h.item_seconds > 0 for h in model.history)


def test_rows_without_interactions_get_zero_factors(spark, pairs):
    # users N_USERS..N_USERS+9 and items N_ITEMS..N_ITEMS+4 exist in the id maps but never in train
    model = IALS(dim=4, epochs=2).fit(spark.createDataFrame(pairs), N_USERS + 10, N_ITEMS + 5)
    # their exact solution is 0 (system α0·G + λI, right-hand side 0); CG from a random start gets close
    scale = np.abs(model.user_array[:N_USERS]).max()
    assert scale > 0.0
    assert np.abs(model.user_array[N_USERS:]).max() < 1e-3 * scale
    assert np.abs(model.item_array[N_ITEMS:]).max() < 1e-3 * np.abs(model.item_array[:N_ITEMS]).max()


def test_planted_low_rank_preferences_are_recovered_better_than_popularity(spark):
    rng = np.random.default_rng(3)
    n_u, n_i, r = 300, 200, 4
    U, V = rng.normal(size=(n_u, r)), rng.normal(size=(n_i, r))
    scores = U @ V.T
    top = np.argsort(-scores, axis=1)[:, :15]  # each user likes their 15 best items
    users = np.repeat(np.arange(n_u), 15)
    items = top.reshape(-1)
    holdout = rng.random(len(users)) < 0.2
    train = pd.DataFrame({"user_idx": users[~holdout].astype("int32"), "item_idx": items[~holdout].astype("int32"),
                          "weight": 1.0})
    model = IALS(dim=8, epochs=10, alpha0=0.05, reg=0.01).fit(spark.createDataFrame(train), n_u, n_i)
    pred = model.user_array @ model.item_array.T
    pred[train.user_idx, train.item_idx] = -np.inf
    pop = np.bincount(train.item_idx, minlength=n_i).astype(float)
    pop_pred = np.tile(pop, (n_u, 1))
    pop_pred[train.user_idx, train.item_idx] = -np.inf

    def hit_rate(p: np.ndarray) -> float:
        top10 = np.argsort(-p, axis=1)[:, :10]
        hits = [items[holdout][users[holdout] == u] for u in range(n_u)]
        return float(np.mean([np.isin(h, top10[u]).mean() for u, h in enumerate(hits) if len(h)]))

    ials, popularity = hit_rate(pred), hit_rate(pop_pred)
    assert ials > popularity + 0.2, f"iALS hit rate {ials:.3f} vs popularity {popularity:.3f}"


def test_resume_continues_a_stopped_run_to_the_same_factors(train_df, tmp_path):
    full = IALS(dim=6, epochs=4).fit(train_df, N_USERS, N_ITEMS)
    ckpt = Checkpointer(tmp_path / "ckpt", "fp")
    IALS(dim=6, epochs=2, train=TrainConfig(checkpoint_every=1)).fit(train_df, N_USERS, N_ITEMS, ckpt)
    assert ckpt.load() is not None and ckpt.load().epoch == 2
    resumed = IALS(dim=6, epochs=4).fit(train_df, N_USERS, N_ITEMS, ckpt, resume=True)
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4]
    np.testing.assert_allclose(resumed.user_array, full.user_array, atol=1e-6)
    np.testing.assert_allclose(resumed.item_array, full.item_array, atol=1e-6)


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    ckpt = Checkpointer(tmp_path, "config-a")
    ckpt.save(FitState(np.zeros((2, 2), np.float32), np.zeros((3, 2), np.float32), epoch=1))
    assert Checkpointer(tmp_path, "config-b").load() is None
    assert Checkpointer(tmp_path, "config-a").load().epoch == 1


def test_nan_during_training_stops_with_epoch_and_block_named(train_df, tmp_path):
    ckpt = Checkpointer(tmp_path, "fp")
    bad_items = init_factors(N_ITEMS, 4, 0.1, 0, 1)
    bad_items[7, 0] = np.nan
    ckpt.save(FitState(init_factors(N_USERS, 4, 0.1, 0, 0), bad_items, epoch=1))
    with pytest.raises(SolverError, match=r"epoch 2, block \d+, row \d+"):
        IALS(dim=4, epochs=3).fit(train_df, N_USERS, N_ITEMS, ckpt, resume=True)


def test_empty_train_set_is_refused(spark):
    empty = spark.createDataFrame([], "user_idx int, item_idx int, weight double")
    with pytest.raises(InputDataError, match="must not be empty"):
        IALS(dim=4, epochs=1).fit(empty, 5, 5)


@pytest.mark.parametrize("kwargs,key", [({"dim": 0}, "model.dim"), ({"reg": -1.0}, "model.reg"),
                                         ({"alpha0": -0.1}, "model.alpha0"),
                                         ({"solver": "sgd"}, "model.solver"),
                                         ({"dim": 4, "solver_block_size": 5}, "solver_block_size")])
def test_invalid_hyper_parameters_are_refused_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        IALS(**kwargs)


def test_non_finite_weights_reaching_the_trainer_are_refused(spark, pairs):
    bad = pairs.copy()
    bad.loc[bad.index[3], "weight"] = np.inf
    with pytest.raises(Exception, match="(?i)finite"):
        IALS(dim=4, epochs=1, confidence=ConfidenceConfig(scale="linear")).fit(
            spark.createDataFrame(bad), N_USERS, N_ITEMS)


def test_model_save_and_load_round_trip(train_df, tmp_path):
    model = IALS(dim=4, epochs=2).fit(train_df, N_USERS, N_ITEMS)
    model.save(tmp_path / "m")
    back = IALSModel.load(tmp_path / "m")
    np.testing.assert_array_equal(back.user_array, model.user_array)
    assert back.config == model.config and [h.loss for h in back.history] == [h.loss for h in model.history]
    rows = model.item_factors.orderBy("idx").limit(2).collect()
    np.testing.assert_allclose(rows[1]["factors"], model.item_array[1], rtol=1e-6)


CONNECT_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, pandas as pd
    from gramian.spark import is_connect, local_connect_session
    from gramian.config import TrainConfig
    from gramian import train
    spark = local_connect_session()  # loopback, a free port: parallel runs do not fight over 15002
    assert is_connect(spark), type(spark)
    pairs = pd.read_parquet(sys.argv[1])
    estimator = getattr(train, sys.argv[5])  # IALS or RankALS
    routing = sys.argv[6]  # auto (whole factors on a local master) or routed (block files)
    model = estimator(dim=8, epochs=3, train=TrainConfig(num_user_blocks=3, num_item_blocks=2, routing=routing)).fit(
        spark.createDataFrame(pairs), int(sys.argv[3]), int(sys.argv[4]))
    np.savez(sys.argv[2], user=model.user_array, item=model.item_array)
    spark.stop()  # and the local server
""")


def fit_on_connect(pairs, tmp_path, estimator: str, routing: str = "auto") -> Path:
    """Fit `estimator` (a gramian.train class name) with `routing` on a Spark Connect local session in a
    subprocess."""
    src = tmp_path / "pairs.parquet"
    pairs.to_parquet(src)
    script = tmp_path / "connect_fit.py"
    script.write_text(CONNECT_SCRIPT)
    out = tmp_path / "connect.npz"
    proc = subprocess.run([sys.executable, str(script), str(src), str(out), str(N_USERS), str(N_ITEMS), estimator,
                           routing],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("routing", ["auto", "routed"])
def test_spark_connect_session_trains_the_same_factors_as_classic(train_df, pairs, tmp_path, routing):
    out = fit_on_connect(pairs, tmp_path, "IALS", routing)
    classic = IALS(dim=8, epochs=3, train=TrainConfig(num_user_blocks=3, num_item_blocks=2)).fit(
        train_df, N_USERS, N_ITEMS)
    with np.load(out) as z:
        np.testing.assert_allclose(z["user"], classic.user_array, atol=1e-5)
        np.testing.assert_allclose(z["item"], classic.item_array, atol=1e-5)


def test_routed_rows_give_the_same_factors_as_whole_factor_matrices(train_df, pairs):
    est = IALS(dim=8, epochs=3, alpha0=None, reg=0.01,  # alpha0 resolved from the sizes (geometric rule)
               train=TrainConfig(num_user_blocks=3, num_item_blocks=2, routing="routed"))
    model = est.fit(train_df, N_USERS + 4, N_ITEMS)  # 4 users without interactions: a block may be empty
    resolved = est.config.resolved(N_ITEMS, N_USERS + 4)
    assert resolved.alpha0 == pytest.approx(350.0 / np.sqrt((N_USERS + 4) * N_ITEMS))
    W, H, losses = numpy_fit(pairs, resolved, N_USERS + 4, N_ITEMS)
    np.testing.assert_allclose(model.user_array, W, atol=1e-4)
    np.testing.assert_allclose(model.item_array, H, atol=1e-4)
    np.testing.assert_allclose([h.loss for h in model.history], losses, rtol=1e-6)
    first = model.user_factors.orderBy("idx").limit(1).collect()[0]
    np.testing.assert_allclose(first["factors"], W[0], rtol=1e-6)


def test_routed_blocks_sized_to_a_small_task_budget_give_the_local_paths_factors(train_df, pairs, monkeypatch):
    """A task budget too small for the default blocks: the routed trainer takes more blocks, each task's estimated
    bytes within the budget, slices factor rows in rows of 5, and still fits what the local path and the
    single-process numpy run fit."""
    from gramian.train import routed

    budget = 9_000.0
    monkeypatch.setattr(routed, "task_budget", lambda spark, local: budget)
    monkeypatch.setattr(routed, "SLICE_BYTES", 4 * 8 * 5)
    made = []

    class Recording(IALS.trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    est = IALS(dim=8, epochs=3, reg=0.01, train=TrainConfig(routing="routed"))
    est.trainer_class = Recording
    model = est.fit(train_df, N_USERS, N_ITEMS)
    layouts = made[-1].layouts
    assert layouts["user"].num_blocks > 2 and layouts["item"].num_blocks > 2
    u = pairs["user_idx"].to_numpy()
    i = pairs["item_idx"].to_numpy()
    counts = {"user": np.bincount(u, minlength=N_USERS), "item": np.bincount(i, minlength=N_ITEMS)}
    for side, other in (("user", "item"), ("item", "user")):
        assert routed.task_bytes(counts[side], counts[other], layouts[side], layouts[other].num_blocks, 8) <= budget
    local = IALS(dim=8, epochs=3, reg=0.01, train=TrainConfig(routing="auto")).fit(train_df, N_USERS, N_ITEMS)
    W, H, losses = numpy_fit(pairs, est.config.resolved(N_ITEMS, N_USERS))
    for got, want in ((model.user_array, local.user_array), (model.item_array, local.item_array),
                      (model.user_array, W), (model.item_array, H)):
        np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose([h.loss for h in model.history], [h.loss for h in local.history], rtol=1e-6)
    np.testing.assert_allclose([h.loss for h in model.history], losses, rtol=1e-6)


def test_routed_run_resumes_from_its_parquet_checkpoint(train_df, tmp_path):
    routed_cfg = TrainConfig(num_user_blocks=2, num_item_blocks=2, routing="routed", checkpoint_every=1)
    full = IALS(dim=4, epochs=3, train=routed_cfg).fit(train_df, N_USERS, N_ITEMS)
    ckpt = Checkpointer(tmp_path / "ckpt", "fp")
    IALS(dim=4, epochs=2, train=routed_cfg).fit(train_df, N_USERS, N_ITEMS, ckpt)
    assert (tmp_path / "ckpt" / "epoch-00002" / "user").is_dir()
    resumed = IALS(dim=4, epochs=3, train=routed_cfg).fit(train_df, N_USERS, N_ITEMS, ckpt, resume=True)
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    np.testing.assert_allclose(resumed.item_array, full.item_array, atol=1e-6)


@pytest.mark.parametrize("estimator", ["ials", "pairwise"])
def test_routed_steps_are_block_files_in_the_store_and_give_the_scratch_folders_factors(train_df, tmp_path,
                                                                                       estimator):
    """With a store, every routed step is a folder of block files there, written by the block tasks (a lost
    executor loses no step), the routes are a file per source block beside them; once the fit is done only the
    two steps its factors are read from stay, and the fit is the one a local master makes in a scratch folder.
    model.close() deletes the rest."""
    from gramian.storage import open_store
    from gramian.train import RankALS
    from gramian.train.exchange import RoutedRows
    from gramian.train.routed import StepFiles

    cls = IALS if estimator == "ials" else RankALS
    cfg = TrainConfig(num_user_blocks=3, num_item_blocks=2, routing="routed")
    made, seen = [], []

    class Recording(cls.trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    def watch(model):  # after each epoch, mid-fit: the routes and the kept steps
        steps = made[-1].steps
        seen.append((steps.store.listdir("routes", "user"), steps.store.listdir("routes", "item"),
                     len([n for n in steps.store.listdir() if n.startswith("step")])))

    def fit(store=None):
        est = cls(dim=8, epochs=4, train=cfg)
        est.trainer_class = Recording
        return est.fit(train_df, N_USERS + 4, N_ITEMS, exchange=store, on_model=watch)

    local = fit()
    assert isinstance(made[-1].exchange, RoutedRows)
    scratch = made[-1].steps.store
    assert scratch.is_local and not scratch.uri.startswith(str(tmp_path))  # a scratch folder of this machine
    store = open_store(str(tmp_path / "exchange"))
    seen.clear()
    stored = fit(store)
    trainer = made[-1]
    steps = trainer.steps
    assert steps.store.uri.startswith(str(tmp_path / "exchange"))
    for user_routes, item_routes, kept in seen:
        assert user_routes == ["src-00000.arrow", "src-00001.arrow"]  # one file per item block
        assert item_routes == [f"src-{b:05d}.arrow" for b in range(3)]
        assert 2 <= kept <= steps.keep  # old steps deleted as the fit goes
    final = {side: trainer.exchange.known(stored._factors[side]) for side in ("user", "item")}
    for side, n_blocks in (("user", 3), ("item", 2)):  # the final factors are the exchange's block files
        assert isinstance(final[side], StepFiles)
        assert final[side].store.listdir() == [f"block-{b:05d}.f32" for b in range(n_blocks)]
    assert sorted(steps.store.listdir()) == sorted(f.store.uri.rsplit("/", 1)[-1] for f in final.values())
    np.testing.assert_allclose(stored.user_array, local.user_array, atol=1e-6)
    np.testing.assert_allclose(stored.item_array, local.item_array, atol=1e-6)
    np.testing.assert_allclose([h.loss for h in stored.history], [h.loss for h in local.history], rtol=1e-9)
    stored.close()
    local.close()
    assert not steps.store.exists() and not scratch.exists()


def test_a_routed_fit_stopped_between_epochs_leaves_no_steps(train_df, tmp_path):
    """A fit stopped by its on_model callback (tune prunes this way) deletes its routed steps and routes."""
    from gramian.storage import open_store

    made = []

    class Recording(IALS.trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    def stop(model):
        assert made[-1].steps.store.exists()  # written so far
        raise _Injected("pruned")

    est = IALS(dim=4, epochs=3, train=TrainConfig(num_user_blocks=2, num_item_blocks=2, routing="routed"))
    est.trainer_class = Recording
    with pytest.raises(_Injected):
        est.fit(train_df, N_USERS, N_ITEMS, exchange=open_store(str(tmp_path / "x")), on_model=stop)
    assert not made[-1].steps.store.exists()


def test_a_persisted_routed_step_holds_its_blocks_and_only_the_last_steps_stay(spark, tmp_path):
    """StepStore.persist writes any factor-block DataFrame as block files whose rows read back as written, and a
    frame of them gives the same blocks; only the last `keep` steps stay in the store."""
    from gramian.storage import open_store
    from gramian.train.blocks import SideLayout
    from gramian.train.routed import StepStore, blocks_frame

    layout = SideLayout((0, 3, 3, 7))  # block 1 has no rows
    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    steps = StepStore(open_store(str(tmp_path / "steps")), keep=2)
    for k in range(3):
        y = x * (k + 1)
        df = spark.createDataFrame([(b, layout.bounds(b)[0], layout.bounds(b)[1] - layout.bounds(b)[0],
                                     bytearray(y[slice(*layout.bounds(b))].tobytes())) for b in range(3)],
                                   "block int, row_start int, n_rows int, factors binary")
        files = steps.persist(df, layout, 2)
        for b in range(3):
            np.testing.assert_array_equal(files.rows(b), y[slice(*layout.bounds(b))])
        back = {r.block: (r.row_start, r.n_rows, bytes(r.factors)) for r in blocks_frame(spark, files).collect()}
        assert back == {r.block: (r.row_start, r.n_rows, bytes(r.factors)) for r in df.collect()}
    assert sorted(steps.store.listdir()) == ["step00002", "step00003"]
    other = SideLayout((0, 4, 7))  # a checkpoint of other blocks: refused, naming the blocks and the remedy
    with pytest.raises(ConfigError, match=r"must be the trainer's \[\(0, 0, 4\), \(1, 4, 7\)\].*--resume"):
        steps.persist(df, other, 2)
    steps.close()
    assert not steps.store.exists()


@pytest.mark.parametrize("cut", ["executors", "driver"])
def test_a_routed_half_step_moves_factor_rows_once_and_solves_block_b_in_partition_b(spark, train_df, pairs, cut,
                                                                                      monkeypatch):
    """The CSR blocks and the routes are in the store (cut by the executors, or by the driver when it holds the
    pairs: then setup runs no Spark job), nothing is cached in Spark, and a routed half-step shuffles once, only
    factor rows (cut where they are read, sent to their block), and each block is solved once, block b in partition
    b (one task per block, not spark.sql.shuffle.partitions)."""
    from pyspark.sql import functions as F

    from gramian.train import als as als_module
    from gramian.train.als import STEP_SCHEMA, BlockTrainer, SolveParams, SolveTask
    from gramian.train.exchange import RoutedRows

    arrays = None
    if cut == "driver":
        arrays = tuple(pairs[c].to_numpy() for c in ("user_idx", "item_idx", "weight"))

        def no_job(*args, **kwargs):
            raise AssertionError("a Spark job in a routed setup whose pairs are on the driver")

        monkeypatch.setattr(als_module, "build_side_blocks", no_job)
        monkeypatch.setattr(als_module, "row_counts", no_job)
        monkeypatch.setattr(als_module.routed, "build_routes", no_job)
    model = IALS(dim=4).config.resolved(N_ITEMS, N_USERS)
    trainer = BlockTrainer(spark, train_df, N_USERS, N_ITEMS, model,
                           TrainConfig(num_user_blocks=3, num_item_blocks=2, routing="routed"), pairs=arrays)
    try:
        ex = trainer.exchange
        assert isinstance(ex, RoutedRows) and not trainer.blocks  # nothing cached in Spark
        assert ex.csr.listdir() == sorted(f"{side}-block{b}.npz" for side, n in (("user", 3), ("item", 2))
                                          for b in range(n))
        state = trainer.initial_state()
        # the initial rows' Gramian is drawn on the driver (no job), equal to the one the block tasks sum
        by_tasks = als_module.routed.factor_gramian(state.item_factors, 4)
        np.testing.assert_allclose(ex.gramian(state.item_factors), by_tasks, rtol=1e-12)
        np.testing.assert_allclose(by_tasks, gramian(init_factors(N_ITEMS, 4, model.init_scale, model.seed, 1)),
                                   rtol=1e-6)
        task = SolveTask(SolveParams.of(model, N_ITEMS), False)
        job = ex.job("user", task, state.user_factors, state.item_factors, {"gram": np.eye(4)}, STEP_SCHEMA)
        plan = job._jdf.queryExecution().executedPlan().toString()
        shuffles = [line for line in plan.splitlines() if "Exchange" in line]
        assert len(shuffles) == 1 and "hashpartitioning(pkey" in shuffles[0] and ", 3)" in shuffles[0], plan
        placed = job.select("block", F.spark_partition_id().alias("p")).collect()
        assert sorted((r.block, r.p) for r in placed) == [(0, 0), (1, 1), (2, 2)]
    finally:
        trainer.release()
        trainer.close_steps()


def test_routes_cut_on_the_driver_are_the_files_the_executors_write(spark, pairs, tmp_path):
    """write_routes_from (the driver, from the CSR it cut) and write_routes (one Spark job reading the CSR from the
    store) write the same route files and count the same rows per destination; every row a block's CSR references
    is routed to it exactly once, from the block that holds it."""
    from gramian.storage import open_store
    from gramian.train import routed
    from gramian.train.blocks import SideLayout, blocks_from_pairs, store_block, write_store_block

    u, i, w = (pairs[c].to_numpy() for c in ("user_idx", "item_idx", "weight"))
    users = SideLayout.balanced(np.bincount(u, minlength=N_USERS), 4, 4)
    items = SideLayout.balanced(np.bincount(i, minlength=N_ITEMS), 3, 4)
    csr = open_store(str(tmp_path / "csr"))
    indices = {}
    for block, arrays in blocks_from_pairs(u, i, w, users, 0.1, ConfidenceConfig()):
        write_store_block(csr, "user", block, arrays)
        indices[block] = arrays["indices"]
    nonempty = frozenset(indices)
    by_driver, n_driver = routed.write_routes_from(indices, items, open_store(str(tmp_path / "driver")))
    by_jobs, n_jobs = routed.write_routes(spark, lambda b: store_block(csr, "user", users, b, nonempty), users,
                                         items, open_store(str(tmp_path / "jobs")))
    assert n_driver == n_jobs and by_driver.sources == by_jobs.sources == frozenset(range(3))
    got: dict[int, list[int]] = {}
    for src in range(3):
        a, b = by_driver.of(src), by_jobs.of(src)
        assert [d for d, _ in a] == [d for d, _ in b]
        assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
        for dst, rows in a:
            assert (items.block_of(rows) == src).all()
            got.setdefault(dst, []).extend(rows.tolist())
    for dst, ind in indices.items():
        assert sorted(got[dst]) == sorted(set(ind.tolist()))
        assert n_driver[dst] == len(set(ind.tolist()))


def test_block_keys_put_block_b_in_spark_partition_b(spark):
    from pyspark.sql import functions as F

    from gramian.train.blocks import murmur3_int, spark_partition_keys

    ints = spark.range(-100, 3000).select(F.col("id").cast("int").alias("v"))
    values = ints.select("v", F.hash("v").alias("h"))
    assert all(murmur3_int(r.v) == r.h for r in values.collect())
    for n in (1, 2, 5, 16):
        keys = spark_partition_keys(n)
        placed = (spark.createDataFrame([(k,) for k in keys], "k int").repartition(n, "k")
                  .select("k", F.spark_partition_id().alias("p")).collect())
        assert sorted((keys.index(r.k), r.p) for r in placed) == [(b, b) for b in range(n)]


def test_each_block_is_built_once_in_its_own_partition(train_df):
    from pyspark.sql import functions as F

    from gramian.train.als import row_counts
    from gramian.train.blocks import SideLayout, build_side_blocks

    users, _ = row_counts(train_df, N_USERS, N_ITEMS)
    layout = SideLayout.balanced(users, 3, 8)
    built = build_side_blocks(train_df, layout, "user_idx", "item_idx", 0.1, ConfidenceConfig())
    rows = built.select("block", "nnz", F.spark_partition_id().alias("p")).collect()
    assert sorted((r.block, r.p) for r in rows) == [(0, 0), (1, 1), (2, 2)]
    assert sum(r.nnz for r in rows) == train_df.count()


def test_counts_without_sizes_stop_at_the_largest_index_and_are_checked_against_the_id_maps(train_df):
    from gramian.train.als import row_counts
    from gramian.train.job import sized

    users, items = row_counts(train_df, N_USERS, N_ITEMS)
    open_users, open_items = row_counts(train_df, None, None)  # the train stage's pass beside the id maps
    for full, open_ended in ((users, open_users), (items, open_items)):
        top = int(np.flatnonzero(full).max())
        assert len(open_ended) == top + 1 and np.array_equal(open_ended, full[:top + 1])
        assert np.array_equal(sized(open_ended, len(full), "user_idx"), full)
    with pytest.raises(InputDataError, match=r"item_idx must be in \[0, 3\), got 3"):
        sized(np.ones(4, np.int64), 3, "item_idx")


class _Injected(RuntimeError):
    """The failure the setup-leak test injects."""


class _FailingCheckpoint:
    def load(self, spark=None):
        raise _Injected("checkpoint unreadable")


@pytest.mark.parametrize("where,estimator,train", [
    ("checkpoint load", "ials", TrainConfig()),
    ("checkpoint load", "ials", TrainConfig(local_file_handoff=False)),
    ("initial state", "ials", TrainConfig(routing="routed", num_user_blocks=2, num_item_blocks=2)),
    ("routes", "ials", TrainConfig(routing="routed", num_user_blocks=2, num_item_blocks=2)),
    ("item totals", "pairwise", TrainConfig()),
    ("item totals", "pairwise", TrainConfig(local_file_handoff=False)),
], ids=["checkpoint-shm", "checkpoint-cached", "initial-state-routed", "routes", "rankals-shm", "rankals-cached"])
def test_a_failure_during_trainer_setup_leaves_no_scratch_file_or_cached_block(train_df, monkeypatch, where,
                                                                                estimator, train):
    from pyspark.storagelevel import StorageLevel

    from gramian.train import RankALS
    from gramian.train import als as als_module
    from gramian.train.pairwise import PairwiseTrainer

    est = (IALS if estimator == "ials" else RankALS)(dim=4, epochs=2, train=train)
    made = []

    class Recording(est.trainer_class):
        def __init__(self, *args, **kwargs):
            made.append(self)
            super().__init__(*args, **kwargs)

    def fail(*args, **kwargs):
        raise _Injected(where)

    monkeypatch.setattr(est, "trainer_class", Recording)
    if where == "initial state":
        monkeypatch.setattr(Recording, "initial_state", fail)
    elif where == "routes":
        monkeypatch.setattr(als_module.routed, "build_routes", fail)
    elif where == "item totals":
        monkeypatch.setattr(PairwiseTrainer, "map_blocks", fail)
    with pytest.raises(_Injected):
        est.fit(train_df, N_USERS, N_ITEMS, _FailingCheckpoint(), resume=where == "checkpoint load")
    (trainer,) = made
    if train.local_file_handoff and train.routing != "routed":
        assert trainer.handoff.folder is not None  # the files existed: now they are gone
        assert not trainer.handoff.folder.exists()
    elif train.routing != "routed":  # routed blocks live in the step store, checked below
        assert trainer.blocks  # blocks were cached: now none is
        assert all(df.storageLevel == StorageLevel.NONE for df in trainer.blocks.values())
    if train.routing == "routed":  # the routed steps' folder (routes, steps) is gone too
        assert trainer.steps.store.is_local and not os.path.exists(trainer.steps.store.path())


@pytest.mark.parametrize("solver,kernel", [("cg", "cg_rows"), ("cholesky", "cholesky_rows")])
def test_the_executor_warm_up_loads_the_solvers_kernels_in_every_slots_worker(spark, solver, kernel):
    """warm_job runs one task per executor slot, each loading the configured solver's row kernel in its Python
    worker (which Spark reuses for later tasks: the cluster benchmark's first half-step shows it; a local session
    may start fresh workers). On a local master warm_executors starts nothing."""
    from gramian import jit_warmup

    warmed = jit_warmup.warm_job(spark, ModelConfig(solver=solver)).toArrow()
    slots = jit_warmup.executor_slots(spark)
    assert warmed.num_rows == slots == spark.sparkContext.defaultParallelism
    assert all(s > 0 for s in warmed.column("seconds").to_pylist())
    assert all(kernel in k.split(",") for k in warmed.column("kernels").to_pylist())
    assert jit_warmup.warm_executors(spark, ModelConfig()) is None
