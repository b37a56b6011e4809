"""Fold-in (§6.3) equals the exact minimiser of the user's brute-force row loss, with training's mapping."""

from __future__ import annotations

import numpy as np
import pytest

from gramian.config import ConfidenceConfig, ModelConfig
from gramian.errors import ConfigError
from gramian.kernels.confidence import observed_weights
from gramian.kernels.foldin import fold_in, fold_in_one
from gramian.kernels.loss import regularization_weights
from gramian.kernels.reference import dense_gradient, dense_row_solution


def _histories(seed: int = 0, n_users: int = 5, n_items: int = 12):
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < 0.35
    mask[0, :] = False  # a user with an empty history folds in to the zero vector
    raw = np.where(mask, rng.integers(1, 20, mask.shape).astype(float), 0.0)
    rows, cols = np.nonzero(mask)
    indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
    return mask, raw, indptr, cols, raw[rows, cols]


@pytest.mark.parametrize("conf", [ConfidenceConfig(), ConfidenceConfig(form="hu", scale="log", beta=2.0, eps=3.0),
                                  ConfidenceConfig(form="rendle", scale="linear", beta=0.5)])
@pytest.mark.parametrize("nu", [0.0, 1.0])
@pytest.mark.parametrize("reg_counts", ["observed", "all"])
def test_fold_in_is_row_minimiser_of_dense_loss(conf: ConfidenceConfig, nu: float, reg_counts: str) -> None:
    mask, raw, indptr, cols, weights = _histories()
    h = np.random.default_rng(1).normal(0, 0.5, (mask.shape[1], 4))
    model = ModelConfig(dim=4, alpha0=0.2, reg=0.05, nu=nu, confidence=conf, reg_counts=reg_counts)
    w = fold_in(indptr, cols, weights, h, model)
    # dense twin: alpha_tilde/target over every pair, zero where unobserved
    a_obs, t_obs = observed_weights(weights, model.alpha0, form=conf.form, scale=conf.scale, beta=conf.beta,
                                    eps=conf.eps)
    a = np.zeros(mask.shape)
    t = np.zeros(mask.shape)
    a[mask], t[mask] = a_obs, t_obs
    lam = regularization_weights(model.reg, nu, mask.sum(axis=1).astype(float), model.alpha0, mask.shape[1],
                                 reg_counts=reg_counts)
    expected = dense_row_solution(a, t, h, model.alpha0, lam)
    np.testing.assert_allclose(w, expected, rtol=1e-9, atol=1e-12)
    assert np.abs(dense_gradient(a, t, w, h, model.alpha0, lam)).max() < 1e-9
    np.testing.assert_array_equal(w[0], 0.0)


def test_fold_in_one_matches_batch_and_default_weights_are_one() -> None:
    mask, raw, indptr, cols, weights = _histories(seed=3)
    h = np.random.default_rng(2).normal(0, 0.5, (mask.shape[1], 3))
    model = ModelConfig(dim=3, alpha0=0.1, reg=0.01)
    batch = fold_in(indptr, cols, None, h, model)
    r = 2
    one = fold_in_one(cols[indptr[r]:indptr[r + 1]], None, h, model)
    np.testing.assert_allclose(one, batch[r], rtol=1e-12)
    # constant confidence ignores the raw weights, so the explicit weights give the same answer
    np.testing.assert_allclose(fold_in(indptr, cols, weights, h, model), batch, rtol=1e-12)


def test_fold_in_rejects_rows_outside_the_catalogue() -> None:
    h = np.zeros((4, 2))
    with pytest.raises(ValueError, match="row 7 is outside the item factors"):
        fold_in_one(np.array([1, 7]), None, h, ModelConfig(dim=2))


def test_fold_in_resolves_a_catalogue_scaled_alpha0_as_training_does() -> None:
    mask, raw, indptr, cols, weights = _histories(seed=5)
    h = np.random.default_rng(4).normal(0, 0.5, (mask.shape[1], 3))
    by_items = ModelConfig(dim=3, alpha0=None, alpha0_total=6.0, alpha0_scale_by="items", reg=0.02)
    fixed = ModelConfig(dim=3, alpha0=6.0 / mask.shape[1], reg=0.02)
    np.testing.assert_allclose(fold_in(indptr, cols, None, h, by_items), fold_in(indptr, cols, None, h, fixed))
    geo = ModelConfig(dim=3, alpha0=None, alpha0_total=6.0, reg=0.02)  # sqrt(|U| |I|): needs the user count
    fixed = ModelConfig(dim=3, alpha0=6.0 / np.sqrt(50 * mask.shape[1]), reg=0.02)
    np.testing.assert_allclose(fold_in(indptr, cols, None, h, geo, n_users=50),
                               fold_in(indptr, cols, None, h, fixed))
    with pytest.raises(ConfigError, match="needs the number of training users"):
        fold_in(indptr, cols, None, h, geo)
