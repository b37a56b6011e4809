"""Distributed RankALS against a single-process numpy run of the same kernels (paper §5.2, docs/rankals.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gramian.config import ModelConfig, TrainConfig
from gramian.kernels import observed_weights
from gramian.kernels.pairwise import PairwiseData, item_descent_step, item_moments, item_step, row_sums, solve_users
from gramian.train import IALSModel, RankALS
from gramian.train.als import init_factors
from gramian.train.checkpoint import Checkpointer
from tests.spark.test_train import N_ITEMS, N_USERS, tiny_pairs


def numpy_fit(pairs: pd.DataFrame, m: ModelConfig, n_users: int = N_USERS,
              n_items: int = N_ITEMS) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The reference: the pairwise kernels in one process, one block per side, float32 between steps."""
    u, i, w = (pairs[c].to_numpy() for c in ("user_idx", "item_idx", "weight"))
    c = m.confidence
    alpha, _ = observed_weights(w, m.resolved(n_items, n_users).alpha0, c.form, c.scale, c.beta, c.eps)  # unused
    data = PairwiseData.from_coo(u, i, alpha, n_users, n_items, m.reg, m.nu, m.support_power)
    W = init_factors(n_users, m.dim, m.init_scale, m.seed, 0)
    H = init_factors(n_items, m.dim, m.init_scale, m.seed, 1)
    losses = []
    for _ in range(m.epochs):
        W = solve_users(data.user_indptr, data.user_indices, data.user_alpha, H, item_moments(H, data.support),
                        data.reg_users, W, solver=m.solver, cg_steps=m.cg_steps).astype(np.float32)
        if m.solver == "cholesky":  # the exact joint item step
            H = item_step(data.item_indptr, data.item_indices, data.item_alpha, W, data.support, data.reg_items,
                          row_sums(data.user_indptr, data.user_alpha)).astype(np.float32)
        else:  # one descent pass and the exact step along it
            H = item_descent_step(data.item_indptr, data.item_indices, data.item_alpha, W, H, data.support,
                                  data.reg_items, data.user_indptr, data.user_indices, data.user_alpha,
                                  cg_steps=m.cg_steps).astype(np.float32)
        losses.append(data.loss(W, H).total)
    return W, H, losses


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    return tiny_pairs()


@pytest.fixture(scope="module")
def train_df(spark, pairs):
    return spark.createDataFrame(pairs)


@pytest.mark.parametrize("solver,support_power,nu,local_files", [
    ("cholesky", 0.0, 1.0, True), ("cg", 0.5, 0.0, True), ("cg", 0.0, 1.0, False)])
def test_spark_rankals_equals_single_process_numpy_run(train_df, pairs, solver, support_power, nu, local_files):
    # local_files: blocks as local files read by block id (local master) or cached block DataFrames (elsewhere)
    est = RankALS(dim=8, epochs=3, solver=solver, reg=0.01 if nu else 1.0, nu=nu, support_power=support_power,
                  confidence={"form": "rendle", "scale": "log", "beta": 1.0, "eps": 1.0},
                  train=TrainConfig(num_user_blocks=3, num_item_blocks=2, local_file_handoff=local_files))
    model = est.fit(train_df, N_USERS, N_ITEMS)
    W, H, losses = numpy_fit(pairs, est.config)
    np.testing.assert_allclose(model.user_array, W, atol=1e-4)
    np.testing.assert_allclose(model.item_array, H, atol=1e-4)
    np.testing.assert_allclose([h.loss for h in model.history], losses, rtol=1e-6)
    assert all(h.user_seconds > 0 and h.item_seconds > 0 for h in model.history)


def test_rankals_loss_never_increases_and_rows_without_data_are_handled(spark, pairs):
    # users beyond N_USERS and items beyond N_ITEMS never occur in train (an empty block on each side)
    est = RankALS(dim=6, epochs=4, reg=0.01, train=TrainConfig(num_user_blocks=4, num_item_blocks=4))
    model = est.fit(spark.createDataFrame(pairs), N_USERS + 40, N_ITEMS + 30)
    losses = [h.loss for h in model.history]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:], strict=False)), losses
    np.testing.assert_array_equal(model.user_array[N_USERS:], 0.0)  # no positives: w_c = 0
    assert np.isfinite(model.item_array).all()  # unseen items are still negatives (s_j = 1): solved


def test_rankals_resumes_from_a_checkpoint_to_the_same_factors(train_df, tmp_path):
    def est(epochs):
        return RankALS(dim=4, epochs=epochs, reg=0.01, train=TrainConfig(checkpoint_every=1))

    full = est(2).fit(train_df, N_USERS, N_ITEMS)
    ckpt = Checkpointer(tmp_path / "ckpt", "fp")
    est(1).fit(train_df, N_USERS, N_ITEMS, ckpt)
    resumed = est(2).fit(train_df, N_USERS, N_ITEMS, ckpt, resume=True)
    assert [h.epoch for h in resumed.history] == [1, 2]
    np.testing.assert_allclose(resumed.item_array, full.item_array, atol=1e-5)
    resumed.save(tmp_path / "model")
    loaded = IALSModel.load(tmp_path / "model")
    assert loaded.config.name == "pairwise"


def test_spark_connect_session_trains_the_same_rankals_factors_as_classic(train_df, pairs, tmp_path):
    from tests.spark.test_train import fit_on_connect

    out = fit_on_connect(pairs, tmp_path, "RankALS")
    classic = RankALS(dim=8, epochs=3, train=TrainConfig(num_user_blocks=3, num_item_blocks=2)).fit(
        train_df, N_USERS, N_ITEMS)
    with np.load(out) as z:
        np.testing.assert_allclose(z["user"], classic.user_array, atol=1e-5)
        np.testing.assert_allclose(z["item"], classic.item_array, atol=1e-5)


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_routed_rankals_equals_the_single_process_numpy_run(train_df, pairs, solver):
    # routed: each block gets only the factor rows its CSR references; 4 extra users make an empty user block
    est = RankALS(dim=6, epochs=3, solver=solver, reg=0.02, support_power=0.5,
                  train=TrainConfig(num_user_blocks=3, num_item_blocks=2, routing="routed"))
    model = est.fit(train_df, N_USERS + 4, N_ITEMS)
    W, H, losses = numpy_fit(pairs, est.config, N_USERS + 4, N_ITEMS)
    np.testing.assert_allclose(model.user_array, W, atol=1e-4)
    np.testing.assert_allclose(model.item_array, H, atol=1e-4)
    np.testing.assert_allclose([h.loss for h in model.history], losses, rtol=1e-6)


def test_routed_rankals_resumes_from_its_checkpoint(train_df, tmp_path):
    cfg = TrainConfig(num_user_blocks=2, num_item_blocks=2, routing="routed", checkpoint_every=1)
    full = RankALS(dim=4, epochs=3, reg=0.01, train=cfg).fit(train_df, N_USERS, N_ITEMS)
    ckpt = Checkpointer(tmp_path / "ckpt", "fp")
    RankALS(dim=4, epochs=2, reg=0.01, train=cfg).fit(train_df, N_USERS, N_ITEMS, ckpt)
    resumed = RankALS(dim=4, epochs=3, reg=0.01, train=cfg).fit(train_df, N_USERS, N_ITEMS, ckpt, resume=True)
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    np.testing.assert_allclose(resumed.item_array, full.item_array, atol=1e-5)
    np.testing.assert_allclose(resumed.history[-1].loss, full.history[-1].loss, rtol=1e-6)
