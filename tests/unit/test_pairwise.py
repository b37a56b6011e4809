"""RankALS kernels (pairwise square loss, paper §5.2 eq. 42-45) against their triple-by-triple twins."""

from __future__ import annotations

import numpy as np
import pytest

from gramian.kernels.pairwise import (
    Coupling,
    Descent,
    ItemBasis,
    PairwiseData,
    fit_pairwise,
    item_coupling,
    item_descent,
    item_descent_step,
    item_moments,
    item_side_partials,
    item_step,
    observed_from_partials,
    pairwise_loss,
    row_sums,
    solve_items,
    solve_users,
    support_weights,
    user_moments,
    user_side_partials,
)
from gramian.kernels.reference import random_problem
from gramian.kernels.reference_pairwise import dense_pairwise_gradients, dense_pairwise_loss, jacobi_item_update

SEEDS = [0, 1, 2]
SETTINGS = [  # (support_power, nu, constant alpha)
    (0.0, 0.0, True),
    (0.0, 1.0, False),
    (0.8, 0.0, False),
    (0.5, 1.0, True),
]


def setup(seed, power=0.0, nu=0.0, constant=False, reg=0.2, n_users=8, n_items=11, d=4, **kw):
    """A random problem, its pairwise data and the dense alpha matrix the brute-force twin sums over."""
    p = random_problem(n_users=n_users, n_items=n_items, d=d, seed=seed, **kw)
    a = np.where(p.A > 0, 1.0, 0.0) if constant else p.A
    u, i = np.nonzero(a > 0)
    data = PairwiseData.from_coo(u, i, a[u, i], n_users, n_items, reg=reg, nu=nu, support_power=power)
    return p, a, data


def users_step(data, users, items, **kw):
    return solve_users(data.user_indptr, data.user_indices, data.user_alpha, items,
                       item_moments(items, data.support), data.reg_users, users, **kw)


def items_step(data, users):
    return item_step(data.item_indptr, data.item_indices, data.item_alpha, users, data.support, data.reg_items,
                     row_sums(data.user_indptr, data.user_alpha))


def brute(a, data, users, items):
    return dense_pairwise_loss(a, data.support, users, items, data.reg_users, data.reg_items)


def grads(a, data, users, items):
    return dense_pairwise_gradients(a, data.support, users, items, data.reg_users, data.reg_items)


def no_increase(before, after):
    return after <= before + 1e-10 * max(1.0, abs(before))


# ---------------------------------------------------------------------------------------------- loss


@pytest.mark.parametrize("power,nu,constant", SETTINGS)
@pytest.mark.parametrize("seed", SEEDS)
def test_gramian_form_loss_equals_the_triple_by_triple_sum(seed, power, nu, constant):
    p, a, data = setup(seed, power, nu, constant, scale=1.0)
    got = data.loss(p.users, p.items).total
    assert got == pytest.approx(brute(a, data, p.users, p.items), rel=1e-6)


def test_loss_terms_are_centred_observed_gramian_and_regularisation():
    p, a, data = setup(3, 0.5, 0.0, False)
    terms = data.loss(p.users, p.items)
    zero_reg = pairwise_loss(data.user_indptr, data.user_indices, data.user_alpha, p.users, p.items, data.support,
                             0.0, 0.0)
    assert zero_reg.regularization == 0.0
    assert terms.total - terms.regularization == pytest.approx(zero_reg.total, rel=1e-12)
    assert terms.regularization == pytest.approx(
        data.reg_users @ np.sum(p.users**2, axis=1) + data.reg_items @ np.sum(p.items**2, axis=1), rel=1e-12)
    assert terms.gramian >= 0.0


def test_loss_is_invariant_to_shifting_every_item_when_unregularised():
    p, a, data = setup(4)
    args = (data.user_indptr, data.user_indices, data.user_alpha)
    before = pairwise_loss(*args, p.users, p.items, data.support, 0.0, 0.0).total
    after = pairwise_loss(*args, p.users, p.items + np.array([0.3, -1.0, 2.0, 0.5]), data.support, 0.0, 0.0).total
    assert after == pytest.approx(before, rel=1e-10)


def test_block_moments_add_up_to_the_whole():
    p, a, data = setup(5, 0.7)
    whole = item_moments(p.items, data.support)
    parts = item_moments(p.items[:4], data.support[:4]) + item_moments(p.items[4:], data.support[4:])
    np.testing.assert_allclose(parts.gram, whole.gram, atol=1e-12)
    np.testing.assert_allclose(parts.z, whole.z, atol=1e-12)
    ip = data.user_indptr
    top = user_moments(ip[:5], data.user_alpha[:ip[4]], p.users[:4])
    rest = user_moments(ip[4:] - ip[4], data.user_alpha[ip[4]:], p.users[4:])
    both = user_moments(ip, data.user_alpha, p.users)
    np.testing.assert_allclose((top + rest).gram, both.gram, atol=1e-12)
    np.testing.assert_allclose((top + rest).b, both.b, atol=1e-12)


def test_item_side_partials_give_the_centred_observed_term():
    p, a, data = setup(11, 0.4, 1.0)
    terms = data.loss(p.users, p.items)
    square, v = item_side_partials(data.item_indptr, data.item_indices, data.item_alpha, p.items, p.users)
    observed = observed_from_partials(square, v, user_moments(data.user_indptr, data.user_alpha, p.users),
                                      item_moments(p.items, data.support))
    assert observed == pytest.approx(terms.observed, rel=1e-10)


def test_support_weights_have_mean_one_and_follow_popularity():
    counts = np.array([0.0, 1.0, 4.0, 9.0])
    np.testing.assert_array_equal(support_weights(counts), np.ones(4))
    s = support_weights(counts, 0.5)
    assert s.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(s / s[1], [0.0, 1.0, 2.0, 3.0])


@pytest.mark.parametrize("counts,power,match", [
    (np.array([1.0, -2.0]), 0.5, "counts"),
    (np.array([1.0, 2.0]), -1.0, "power"),
    (np.zeros(3), 1.0, "power=0"),
])
def test_support_weights_reject_bad_input_naming_the_value(counts, power, match):
    with pytest.raises(ValueError, match=match):
        support_weights(counts, power)


# ---------------------------------------------------------------------------------------- user step


@pytest.mark.parametrize("power,nu,constant", SETTINGS)
@pytest.mark.parametrize("seed", SEEDS)
def test_user_step_zeroes_the_gradient_of_the_brute_force_loss(seed, power, nu, constant):
    p, a, data = setup(seed, power, nu, constant)
    w = users_step(data, p.users, p.items, solver="cholesky")
    g_users, _ = grads(a, data, w, p.items)
    assert np.abs(g_users).max() < 1e-9
    np.testing.assert_array_equal(w[-1], 0.0)  # the user without positives


@pytest.mark.parametrize("solver,kw", [("cg", {"cg_steps": 2}), ("subspace", {"solver_block_size": 2})])
def test_inexact_user_solvers_never_increase_the_loss(solver, kw):
    p, a, data = setup(6, 0.5, 1.0)
    before = brute(a, data, p.users, p.items)
    w = users_step(data, p.users, p.items, solver=solver, **kw)
    assert no_increase(before, brute(a, data, w, p.items))


# ---------------------------------------------------------------------------------------- item step


@pytest.mark.parametrize("power,nu,constant", SETTINGS)
@pytest.mark.parametrize("seed", SEEDS)
def test_item_step_is_the_joint_minimiser_of_the_brute_force_loss(seed, power, nu, constant):
    p, a, data = setup(seed, power, nu, constant)
    h = items_step(data, p.users)
    _, g_items = grads(a, data, p.users, h)
    assert np.abs(g_items).max() < 1e-9


def test_item_step_split_into_blocks_equals_the_whole():
    p, a, data = setup(7, 0.6, 1.0, n_items=13)
    basis = ItemBasis.of(user_moments(data.user_indptr, data.user_alpha, p.users))
    s_total = float(data.support.sum())
    ip, ix, al = data.item_indptr, data.item_indices, data.item_alpha
    blocks = [(0, 5), (5, 6), (6, 13)]

    def part(lo, hi):
        return ip[lo:hi + 1] - ip[lo], ix[ip[lo]:ip[hi]], al[ip[lo]:ip[hi]]

    coupling = None
    for lo, hi in blocks:
        c = item_coupling(*part(lo, hi), p.users, basis, data.support[lo:hi], s_total, data.reg_items[lo:hi])
        coupling = c if coupling is None else coupling + Coupling.from_array(c.to_array(), 4)
    m, mu = coupling.solve()
    h = np.vstack([solve_items(*part(lo, hi), p.users, basis, data.support[lo:hi], s_total, data.reg_items[lo:hi],
                               m, mu) for lo, hi in blocks])
    np.testing.assert_allclose(h, items_step(data, p.users), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(basis.q @ m, data.support @ h / s_total, atol=1e-9)  # m is the new mean item


@pytest.mark.parametrize("n_users,d", [(30, 3), (6, 8)])
def test_item_step_is_exact_for_items_with_more_and_fewer_users_than_d(n_users, d):
    p, a, data = setup(12, 0.5, 1.0, n_users=n_users, d=d, density=0.5)
    h = items_step(data, p.users)
    _, g_items = grads(a, data, p.users, h)
    assert np.abs(g_items).max() < 1e-8 * max(1.0, np.abs(grads(a, data, p.users, p.items)[1]).max())


def test_item_step_beats_the_per_item_jacobi_update_of_the_published_method():
    p, a, data = setup(8, 0.0, 0.0, scale=1.0)
    exact = brute(a, data, p.users, items_step(data, p.users))
    jacobi_h = jacobi_item_update(a, data.support, p.users, p.items, data.reg_items)
    _, g_items = grads(a, data, p.users, jacobi_h)
    assert np.abs(g_items).max() > 1e-3  # not the minimiser of the item subproblem
    assert exact < brute(a, data, p.users, jacobi_h)


def test_item_step_rejects_zero_reg_naming_the_remedy():
    p, a, data = setup(9, reg=0.0)
    with pytest.raises(ValueError, match="raise reg"):
        items_step(data, p.users)


# ---------------------------------------------------------------------------------------- trainer


@pytest.mark.parametrize("power,nu,constant", SETTINGS)
@pytest.mark.parametrize("seed", SEEDS)
def test_every_half_step_never_increases_the_loss(seed, power, nu, constant):
    p, a, data = setup(seed, power, nu, constant, reg=0.05, scale=1.0)
    w, h = p.users, p.items
    loss = brute(a, data, w, h)
    for _ in range(5):
        w = users_step(data, w, h)
        after_users = brute(a, data, w, h)
        h = items_step(data, w)
        after_items = brute(a, data, w, h)
        assert no_increase(loss, after_users) and no_increase(after_users, after_items)
        loss = after_items


def test_fit_converges_to_a_stationary_point_and_ranks_planted_positives_first():
    rng = np.random.default_rng(0)
    n_users, n_items, d = 60, 40, 3
    truth = rng.normal(size=(n_users, d)) @ rng.normal(size=(d, n_items))
    top = np.argsort(-truth, axis=1)[:, :6]
    u = np.repeat(np.arange(n_users), 6)
    i = top.ravel()
    data = PairwiseData.from_coo(u, i, np.ones(u.size), n_users, n_items, reg=0.01, nu=1.0)
    w0, h0 = rng.normal(0, 0.1, (n_users, d)), rng.normal(0, 0.1, (n_items, d))
    w, h, history = fit_pairwise(data, w0, h0, epochs=60)
    assert all(b <= a + 1e-9 * a for a, b in zip(history, history[1:], strict=False))
    assert (history[-2] - history[-1]) / history[-1] < 1e-4
    scores = w @ h.T
    ranks = np.argsort(-scores, axis=1)[:, :6]
    hit = np.mean([len(set(ranks[c]) & set(top[c])) / 6 for c in range(n_users)])
    assert hit > 0.8


def test_cg_trainer_decreases_the_loss_every_epoch():
    p, a, data = setup(10, 0.3, 1.0, reg=0.05)
    _, _, history = fit_pairwise(data, p.users, p.items, epochs=6, solver="cg", cg_steps=2)
    assert all(b <= a + 1e-9 * a for a, b in zip(history, history[1:], strict=False))


def test_every_model_name_in_the_config_selects_an_estimator_of_that_name():
    import typing

    from gramian.config import ModelConfig
    from gramian.train.job import ESTIMATORS
    from gramian.train.pairwise import PairwiseTrainer, RankALS

    names = typing.get_args(typing.get_type_hints(ModelConfig)["name"])
    assert set(names) == set(ESTIMATORS)
    assert ESTIMATORS["pairwise"] is RankALS and RankALS.trainer_class is PairwiseTrainer
    assert RankALS(dim=8, support_power=0.5).config.name == "pairwise"


# --------------------------------------------------------------------------- inexact item step (descent)


def descent_parts(data, users, items, cg_steps=3, rows=None):
    """Direction and line-search share of item rows lo:hi (all by default), with the whole problem's moments."""
    um = user_moments(data.user_indptr, data.user_alpha, users)
    im = item_moments(items, data.support)
    _, v0 = user_side_partials(data.user_indptr, data.user_indices, data.user_alpha, users, items)
    lo, hi = rows or (0, items.shape[0])
    ip, ix, al = data.item_indptr, data.item_indices, data.item_alpha
    delta, part = item_descent(ip[lo:hi + 1] - ip[lo], ix[ip[lo]:ip[hi]], al[ip[lo]:ip[hi]], users, items[lo:hi],
                               data.support[lo:hi], data.reg_items[lo:hi], um, im, v0, cg_steps=cg_steps)
    return delta, part, um, im, v0


def descend(data, users, items, **kw):
    return item_descent_step(data.item_indptr, data.item_indices, data.item_alpha, users, items, data.support,
                             data.reg_items, data.user_indptr, data.user_indices, data.user_alpha, **kw)


def test_user_side_partials_equal_the_item_side_ones():
    p, a, data = setup(3, 0.5, 1.0)
    by_users = user_side_partials(data.user_indptr, data.user_indices, data.user_alpha, p.users, p.items)
    by_items = item_side_partials(data.item_indptr, data.item_indices, data.item_alpha, p.items, p.users)
    np.testing.assert_allclose(by_users[0], by_items[0], rtol=1e-12)
    np.testing.assert_allclose(by_users[1], by_items[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("power,nu,constant", SETTINGS)
@pytest.mark.parametrize("seed", SEEDS)
def test_line_search_polynomial_is_the_brute_force_loss_along_the_direction(seed, power, nu, constant):
    p, a, data = setup(seed, power, nu, constant, scale=1.0)
    delta, part, um, im, v0 = descent_parts(data, p.users, p.items)
    base = brute(a, data, p.users, p.items)
    l1, l2 = part.coefficients(um, im, v0)
    assert l1 < 0 < l2  # a descent direction of a strictly convex quadratic
    for t in (-0.5, 0.3, 1.0, 2.5):
        np.testing.assert_allclose(base + t * l1 + t * t * l2, brute(a, data, p.users, p.items + t * delta),
                                   rtol=1e-9)
    t = part.step(um, im, v0)
    moved = item_moments(p.items + t * delta, data.support)
    np.testing.assert_allclose(part.moved(im, t).z, moved.z, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(part.moved(im, t).gram, moved.gram, rtol=1e-10, atol=1e-12)
    # the exact step along the direction is where the brute-force derivative vanishes
    _, g_items = grads(a, data, p.users, p.items + t * delta)
    assert abs(np.sum(g_items * delta)) < 1e-8 * np.abs(g_items).sum() * np.abs(delta).max() + 1e-10


def test_descent_split_into_blocks_equals_the_whole():
    p, a, data = setup(7, 0.6, 1.0, n_items=13)
    whole_delta, whole, *_ = descent_parts(data, p.users, p.items)
    parts = [descent_parts(data, p.users, p.items, rows=r) for r in ((0, 5), (5, 6), (6, 13))]
    np.testing.assert_allclose(np.vstack([x[0] for x in parts]), whole_delta, rtol=1e-12, atol=1e-14)
    summed = parts[0][1] + Descent.from_array(parts[1][1].to_array(), 4) + parts[2][1]
    np.testing.assert_allclose(summed.to_array(), whole.to_array(), rtol=1e-10, atol=1e-12)


def test_repeated_descent_steps_never_increase_the_loss_and_reach_the_exact_item_step():
    p, a, data = setup(4, 0.5, 1.0, reg=0.05, scale=1.0)
    exact = brute(a, data, p.users, items_step(data, p.users))
    h, losses = p.items, [brute(a, data, p.users, p.items)]
    for _ in range(150):
        h = descend(data, p.users, h, cg_steps=4)
        losses.append(brute(a, data, p.users, h))
    assert all(no_increase(x, y) for x, y in zip(losses, losses[1:], strict=False))
    assert losses[1] - exact < 0.2 * (losses[0] - exact)  # the first step already does most of the work
    assert losses[-1] - exact < 1e-5 * (losses[0] - exact)  # linear convergence to the joint minimiser
    _, g_items = grads(a, data, p.users, h)
    assert np.abs(g_items).max() < 1e-3 * np.abs(grads(a, data, p.users, p.items)[1]).max()


def test_descent_trainer_decreases_the_loss_every_epoch_and_tracks_the_exact_one():
    p, a, data = setup(11, 0.3, 1.0, reg=0.05)
    _, _, exact = fit_pairwise(data, p.users, p.items, epochs=8, solver="cholesky")
    _, _, inexact = fit_pairwise(data, p.users, p.items, epochs=8, solver="cg", cg_steps=3)
    assert all(b <= a + 1e-9 * a for a, b in zip(inexact, inexact[1:], strict=False))
    assert inexact[-1] < 1.02 * exact[-1]


def test_descent_with_the_group_buffer_exactly_full_equals_item_by_item():
    """Items 0 and 1 fill the lockstep group buffer (4096 observations) exactly; items 2, 3 have no users."""
    rng = np.random.default_rng(5)
    n_users, d = 3000, 4
    counts = [2048, 2048, 0, 0, 6, 3, 9]
    u = np.concatenate([rng.choice(n_users, c, replace=False) for c in counts])
    i = np.repeat(np.arange(len(counts)), counts)
    data = PairwiseData.from_coo(u, i, rng.uniform(0.5, 2.0, u.size), n_users, len(counts), reg=0.2, nu=1.0)
    users, items = rng.normal(0, 0.1, (n_users, d)), rng.normal(0, 0.3, (len(counts), d))
    whole_delta, whole, *_ = descent_parts(data, users, items)
    parts = [descent_parts(data, users, items, rows=(r, r + 1)) for r in range(len(counts))]
    np.testing.assert_allclose(np.vstack([x[0] for x in parts]), whole_delta, rtol=1e-10, atol=1e-14)
    summed = parts[0][1]
    for part in parts[1:]:
        summed = summed + part[1]
    np.testing.assert_allclose(summed.to_array(), whole.to_array(), rtol=1e-10, atol=1e-12)
    assert np.abs(whole_delta[2:4]).max() > 0  # the empty items still move (regularisation and G^C)
