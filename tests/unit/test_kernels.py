"""The iALS math kernels against their brute-force dense twins (Rendle §5.1, eq. 21-26)."""

from __future__ import annotations

import numpy as np
import pytest

from gramian.kernels import (
    check_finite,
    gramian,
    ials_loss,
    observed_loss,
    observed_weights,
    regularization_base,
    regularization_weights,
    solve_side,
)
from gramian.kernels.reference import (
    cg_rows_slow,
    dense_gradient,
    dense_loss,
    dense_original_loss,
    dense_row_solution,
    random_problem,
)

SEEDS = [0, 1, 2]


def lambdas(p, reg=0.2, nu=0.0, reg_counts="all"):
    """Per-row regularisation of users and items for a reference problem."""
    n_users, n_items = p.A.shape
    lam_u = regularization_weights(reg, nu, (p.A > 0).sum(axis=1), p.alpha0, n_items, reg_counts=reg_counts)
    lam_i = regularization_weights(reg, nu, (p.A > 0).sum(axis=0), p.alpha0, n_users, reg_counts=reg_counts)
    return lam_u, lam_i


def full_loss(p, users, items, lam_u, lam_i):
    """The kernel loss (Gramian trick) of the whole problem, computed from the users' CSR."""
    c = p.rows("users")
    return ials_loss(c.indptr, c.indices, c.alpha, c.target, users, items, p.alpha0, lam_u, lam_i).total


def solve(p, side, x, other, lam, **kw):
    """solve_side for the users (rows of A) or items (rows of A^T) with the Gramian of `other`."""
    c = p.rows(side)
    return solve_side(c.indptr, c.indices, c.alpha, c.target, other, gramian(other), p.alpha0, lam, x, **kw)


def no_increase(before, after):
    """True when `after` is not above `before` beyond rounding."""
    return after <= before + 1e-10 * max(1.0, abs(before))


# ---------------------------------------------------------------------------------------------- loss


@pytest.mark.parametrize("nu", [0.0, 1.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_ials_loss_equals_the_pair_by_pair_dense_loss(seed, nu):
    p = random_problem(n_users=8, n_items=11, d=5, seed=seed)
    lam_u, lam_i = lambdas(p, reg=0.3, nu=nu)
    got = full_loss(p, p.users, p.items, lam_u, lam_i)
    want = dense_loss(p.A, p.T, p.users, p.items, p.alpha0, lam_u, lam_i)
    assert got == pytest.approx(want, rel=1e-10)


def test_ials_loss_terms_are_observed_gramian_and_regularisation():
    p = random_problem(seed=3)
    c = p.rows("users")
    terms = ials_loss(c.indptr, c.indices, c.alpha, c.target, p.users, p.items, p.alpha0, 0.5, 0.25)
    pred = p.users @ p.items.T
    assert terms.observed == pytest.approx(np.sum(p.A * (pred - p.T) ** 2), rel=1e-12)
    assert terms.gramian == pytest.approx(p.alpha0 * np.sum(pred**2), rel=1e-12)
    assert terms.regularization == pytest.approx(0.5 * np.sum(p.users**2) + 0.25 * np.sum(p.items**2))
    assert terms.total == pytest.approx(terms.observed + terms.gramian + terms.regularization)


def test_observed_loss_accepts_int32_csr_and_float32_embeddings():
    p = random_problem(seed=4)
    c = p.rows("users")
    want = observed_loss(c.indptr, c.indices, c.alpha, c.target, p.users, p.items)
    got = observed_loss(
        c.indptr.astype(np.int32),
        c.indices.astype(np.int32),
        c.alpha,
        c.target,
        p.users.astype(np.float32),
        p.items.astype(np.float32),
    )
    assert got == pytest.approx(want, rel=1e-5)


def test_the_eq21_form_differs_from_the_original_weighted_loss_by_a_constant():
    p = random_problem(seed=5)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(3):
        u, i = rng.normal(size=p.users.shape), rng.normal(size=p.items.shape)
        diffs.append(
            dense_original_loss(p.A, p.T, u, i, p.alpha0, 0.1, 0.1) - dense_loss(p.A, p.T, u, i, p.alpha0, 0.1, 0.1)
        )
    assert np.allclose(diffs, diffs[0], rtol=0, atol=1e-10)


def test_gramian_is_xtx_in_float64():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    g = gramian(x)
    assert g.dtype == np.float64
    np.testing.assert_array_equal(g, x.astype(np.float64).T @ x.astype(np.float64))


def test_regularization_weights_scale_with_row_frequency_as_in_revisiting_ials():
    counts = np.array([0, 3, 10])
    allp = {"reg_counts": "all"}
    np.testing.assert_allclose(regularization_weights(0.5, 0.0, counts, 0.1, 20, **allp), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(regularization_weights(0.5, 1.0, counts, 0.1, 20, **allp), [1.0, 2.5, 6.0])
    np.testing.assert_allclose(regularization_weights(2.0, 0.5, counts, 0.0, 20, **allp),
                               [0.0, 2 * 3**0.5, 2 * 10**0.5])


def test_regularization_weights_counting_observed_pairs_only_are_als_wr():
    """reg_counts='observed': lambda_c = reg |I_c|^nu whatever alpha0 (Zhou et al. 2008, Spark MLlib)."""
    counts = np.array([0, 3, 10])
    obs = {"reg_counts": "observed"}
    np.testing.assert_allclose(regularization_weights(0.5, 1.0, counts, 0.1, 20, **obs), [0.0, 1.5, 5.0])
    np.testing.assert_allclose(regularization_weights(0.5, 1.0, counts, 0.7, 9000, **obs), [0.0, 1.5, 5.0])
    np.testing.assert_allclose(regularization_weights(0.5, 0.0, counts, 0.1, 20, **obs), [0.5, 0.5, 0.5])


def test_regularization_base_is_what_the_weights_raise_to_nu():
    """One formula for base_c (the trainer's, fold-in's and tune's reg_typical): |I_c| + alpha0 * n_other or |I_c|."""
    counts = np.array([0, 3, 10])
    np.testing.assert_allclose(regularization_base(counts, 0.1, 20, reg_counts="all"), [2.0, 5.0, 12.0])
    np.testing.assert_allclose(regularization_base(counts, 0.1, 20, reg_counts="observed"), [0.0, 3.0, 10.0])
    for reg_counts in ("all", "observed"):
        base = regularization_base(counts, 0.1, 20, reg_counts=reg_counts)
        np.testing.assert_allclose(regularization_weights(0.5, 0.77, counts, 0.1, 20, reg_counts=reg_counts),
                                   0.5 * base**0.77)

# ----------------------------------------------------------------------------------------- cholesky


@pytest.mark.parametrize("side", ["users", "items"])
@pytest.mark.parametrize("seed", SEEDS)
def test_cholesky_rows_zero_the_gradient_of_the_brute_force_loss(seed, side):
    p = random_problem(n_users=9, n_items=7, d=4, seed=seed)
    lam_u, lam_i = lambdas(p, reg=0.1, nu=1.0)
    if side == "users":
        x = solve(p, "users", p.users, p.items, lam_u, solver="cholesky")
        grad = dense_gradient(p.A, p.T, x, p.items, p.alpha0, lam_u)
    else:
        x = solve(p, "items", p.items, p.users, lam_i, solver="cholesky")
        grad = dense_gradient(p.A.T, p.T.T, x, p.users, p.alpha0, lam_i)
    assert np.abs(grad).max() < 1e-10


@pytest.mark.parametrize("seed", SEEDS)
def test_cholesky_equals_the_dense_row_solution(seed):
    p = random_problem(n_users=10, n_items=12, d=6, seed=seed)
    lam_u, _ = lambdas(p, reg=0.2, nu=1.0)
    got = solve(p, "users", p.users, p.items, lam_u, solver="cholesky")
    np.testing.assert_allclose(got, dense_row_solution(p.A, p.T, p.items, p.alpha0, lam_u), rtol=0, atol=1e-10)


def test_float32_other_and_int32_csr_give_the_float64_answer():
    p = random_problem(n_users=10, n_items=12, d=6, seed=7)
    items32 = p.items.astype(np.float32)
    items64 = items32.astype(np.float64)  # the same numbers, exactly
    c = p.rows("users")
    lam = np.full(10, 0.2)
    narrow = (c.indptr.astype(np.int32), c.indices.astype(np.int32), c.alpha, c.target, items32)
    wide = (c.indptr, c.indices, c.alpha, c.target, items64)
    for solver in ("cholesky", "cg"):  # `other` is only read by the shared gather; skip one more JIT variant
        got = solve_side(*narrow, gramian(items32), p.alpha0, lam, p.users, solver=solver)
        ref = solve_side(*wide, gramian(items64), p.alpha0, lam, p.users, solver=solver)
        assert got.dtype == np.float64 and got.shape == p.users.shape and got.flags.c_contiguous
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    exact = solve_side(*narrow, gramian(items32), p.alpha0, lam, p.users, solver="cholesky")
    np.testing.assert_allclose(exact, dense_row_solution(p.A, p.T, items64, p.alpha0, lam), atol=1e-10)


# ----------------------------------------------------------------------------------------------- cg


@pytest.mark.parametrize("seed", SEEDS)
def test_a_cg_step_never_increases_the_full_loss(seed):
    p = random_problem(n_users=12, n_items=10, d=5, seed=seed, scale=1.0)
    lam_u, lam_i = lambdas(p, reg=0.05, nu=1.0)
    users, items = p.users, p.items
    loss = full_loss(p, users, items, lam_u, lam_i)
    for _ in range(4):
        for steps in (1, 2):
            users = solve(p, "users", users, items, lam_u, solver="cg", cg_steps=steps)
            new = full_loss(p, users, items, lam_u, lam_i)
            assert no_increase(loss, new)
            loss = new
            items = solve(p, "items", items, users, lam_i, solver="cg", cg_steps=steps)
            new = full_loss(p, users, items, lam_u, lam_i)
            assert no_increase(loss, new)
            loss = new


@pytest.mark.parametrize("seed", SEEDS)
def test_cg_with_d_steps_matches_cholesky(seed):
    p = random_problem(n_users=10, n_items=12, d=5, seed=seed)
    lam_u, _ = lambdas(p, reg=0.5)
    exact = solve(p, "users", p.users, p.items, lam_u, solver="cholesky")
    got = solve(p, "users", p.users, p.items, lam_u, solver="cg", cg_steps=5)
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-6)


def test_cg_started_at_the_solution_stays_there():
    p = random_problem(seed=8)
    lam_u, _ = lambdas(p)
    exact = solve(p, "users", p.users, p.items, lam_u, solver="cholesky")
    again = solve(p, "users", exact, p.items, lam_u, solver="cg", cg_steps=3)
    np.testing.assert_allclose(again, exact, atol=1e-12)


def rows_with_counts(counts, n_items=3000, d=6, seed=0, other_dtype=np.float64):
    """A CSR block whose row r observes counts[r] distinct random items, with random weights and start."""
    rng = np.random.default_rng(seed)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = np.concatenate([rng.choice(n_items, c, replace=False) for c in counts]).astype(np.int64)
    alpha, target = rng.uniform(0.5, 3.0, indptr[-1]), rng.uniform(0.5, 2.0, indptr[-1])
    other = rng.normal(0.0, 0.1, (n_items, d)).astype(other_dtype)
    return indptr, indices, alpha, target, other, rng.normal(0.0, 0.3, (len(counts), d)), rng.uniform(0.05, 0.5,
                                                                                                      len(counts))


# the group buffer (_rows._GROUP_OBS = 4096) exactly full after two rows, then rows without observations
FULL_BUFFER = [2048, 2048, 0, 0, 5, 3] + [1] * 26 + [0, 4]
LOCKSTEP_CASES = {
    "buffer exactly full, empty rows at the boundary": FULL_BUFFER,
    "buffer full at the group's last row": [7] * 31 + [4096 - 7 * 31] + [0, 2],
    "row longer than chunk and buffer": [2, 0, 5000, 3, 0] + [4] * 40,
    "three groups of short rows": [0, 1, 2, 3, 9, 0, 4] * 10,
    "only empty rows": [0] * 35,
}


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("case", list(LOCKSTEP_CASES))
def test_lockstep_cg_equals_its_row_by_row_slow_twin(case, steps):
    counts = LOCKSTEP_CASES[case]
    ip, ix, a, t, other, x0, lam = rows_with_counts(counts, n_items=6000, seed=len(counts) + steps)
    g = gramian(other)
    fast = solve_side(ip, ix, a, t, other, g, 0.2, lam, x0, solver="cg", cg_steps=steps)
    slow = cg_rows_slow(ip, ix, a, t, other, g, 0.2, lam, x0, steps)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)
    assert not np.allclose(fast, x0)  # every case moved its rows


@pytest.mark.parametrize("seed", SEEDS)
def test_lockstep_cg_equals_its_slow_twin_on_reference_problems_and_float32_factors(seed):
    p = random_problem(n_users=40, n_items=12, d=5, seed=seed)
    c, lam = p.rows("users"), lambdas(p, reg=0.1, nu=1.0)[0]
    for other in (p.items, p.items.astype(np.float32)):
        fast = solve_side(c.indptr, c.indices, c.alpha, c.target, other, gramian(other), p.alpha0, lam, p.users,
                          solver="cg", cg_steps=2)
        slow = cg_rows_slow(c.indptr, c.indices, c.alpha, c.target, other, gramian(other), p.alpha0, lam, p.users, 2)
        np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)


def test_cg_solves_rows_without_observations_when_the_group_buffer_is_exactly_full():
    """The boundary case on its own: the empty rows after a full buffer get the alpha0 G + lambda I solution."""
    ip, ix, a, t, other, x0, lam = rows_with_counts(FULL_BUFFER, n_items=6000, d=4)
    assert ip[2] - ip[0] == 4096 and ip[4] == ip[2]
    g = gramian(other)
    x = solve_side(ip, ix, a, t, other, g, 0.2, lam, x0, solver="cg", cg_steps=4)  # 4 = d steps: exact
    for r in (2, 3, 32):
        np.testing.assert_allclose(x[r], np.linalg.solve(0.2 * g + lam[r] * np.eye(4), np.zeros(4)), atol=1e-10)


# ----------------------------------------------------------------------------------------- subspace


@pytest.mark.parametrize("block", [1, 3, 6])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_subspace_sweep_never_increases_the_loss(seed, block):
    p = random_problem(n_users=10, n_items=9, d=6, seed=seed, scale=1.0)
    lam_u, lam_i = lambdas(p, reg=0.1, nu=1.0)
    users, items = p.users, p.items
    loss = full_loss(p, users, items, lam_u, lam_i)
    for _ in range(3):
        users = solve(p, "users", users, items, lam_u, solver="subspace", solver_block_size=block)
        new = full_loss(p, users, items, lam_u, lam_i)
        assert no_increase(loss, new)
        items = solve(p, "items", items, users, lam_i, solver="subspace", solver_block_size=block)
        loss, new = new, full_loss(p, users, items, lam_u, lam_i)
        assert no_increase(loss, new)
        loss = new


@pytest.mark.parametrize("seed", SEEDS)
def test_subspace_with_one_block_of_d_equals_cholesky(seed):
    p = random_problem(n_users=10, n_items=12, d=6, seed=seed)
    lam_u, _ = lambdas(p, reg=0.2, nu=1.0)
    exact = solve(p, "users", p.users, p.items, lam_u, solver="cholesky")
    for block in (None, 6):
        got = solve(p, "users", p.users, p.items, lam_u, solver="subspace", solver_block_size=block)
        np.testing.assert_allclose(got, exact, rtol=0, atol=1e-8)


def test_repeated_coordinate_descent_sweeps_converge_to_cholesky():
    p = random_problem(n_users=10, n_items=12, d=4, seed=9)
    lam_u, _ = lambdas(p, reg=0.5)
    exact = solve(p, "users", p.users, p.items, lam_u, solver="cholesky")
    x = p.users
    for _ in range(300):
        x = solve(p, "users", x, p.items, lam_u, solver="subspace", solver_block_size=1)
    np.testing.assert_allclose(x, exact, rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------------- alternation


@pytest.mark.parametrize(
    "kw",
    [{"solver": "cholesky"}, {"solver": "cg", "cg_steps": 3}, {"solver": "subspace", "solver_block_size": 2}],
)
def test_alternating_epochs_decrease_the_loss_monotonically(kw):
    p = random_problem(n_users=15, n_items=13, d=5, density=0.25, seed=11, scale=1.0)
    lam_u, lam_i = lambdas(p, reg=0.05, nu=1.0)
    users, items = p.users, p.items
    losses = [full_loss(p, users, items, lam_u, lam_i)]
    for _ in range(6):
        users = solve(p, "users", users, items, lam_u, **kw)
        items = solve(p, "items", items, users, lam_i, **kw)
        losses.append(full_loss(p, users, items, lam_u, lam_i))
    assert all(no_increase(a, b) for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.9 * losses[0]
    assert losses[-1] == pytest.approx(dense_loss(p.A, p.T, users, items, p.alpha0, lam_u, lam_i), rel=1e-10)


# -------------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("solver", ["cholesky", "cg", "subspace"])
def test_rows_without_observations_solve_alpha0_gramian_plus_lambda(solver):
    p = random_problem(n_users=6, n_items=8, d=3, seed=12)  # last user and last item have no observations
    lam_u, _ = lambdas(p, reg=0.3)
    c = p.rows("users")
    assert c.indptr[-1] == c.indptr[-2]
    x = solve(p, "users", p.users, p.items, lam_u, solver=solver, cg_steps=3)
    np.testing.assert_allclose(x, dense_row_solution(p.A, p.T, p.items, p.alpha0, lam_u), atol=1e-10)
    np.testing.assert_allclose(x[-1], 0.0, atol=1e-12)


@pytest.mark.parametrize("solver", ["cholesky", "cg", "subspace"])
def test_a_block_with_no_observations_at_all_is_solved(solver):
    rng = np.random.default_rng(0)
    other, x0 = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0)
    x = solve_side(
        np.zeros(5, np.int64),
        empty_i,
        empty_f,
        empty_f,
        other,
        gramian(other),
        0.5,
        np.ones(4),
        x0,
        solver=solver,
    )
    np.testing.assert_allclose(x, 0.0, atol=1e-12)
    none = solve_side(
        np.zeros(1, np.int64),
        empty_i,
        empty_f,
        empty_f,
        other,
        gramian(other),
        0.5,
        np.ones(0),
        np.zeros((0, 3)),
        solver=solver,
    )
    assert none.shape == (0, 3)


@pytest.mark.parametrize("solver", ["cholesky", "cg", "subspace"])
def test_rows_longer_than_the_gather_chunk_are_solved_exactly(solver):
    rng = np.random.default_rng(1)
    n_items, d = 5000, 3
    a = np.zeros((2, n_items))
    a[0, rng.choice(n_items, 4500, replace=False)] = rng.uniform(0.5, 2, 4500)
    a[1, :7] = 1.0
    t = np.where(a > 0, 1.0, 0.0)
    items, users = rng.normal(0, 0.1, (n_items, d)), rng.normal(size=(2, d))
    rows, cols = np.nonzero(a)
    indptr = np.array([0, (rows == 0).sum(), rows.size])
    lam = np.full(2, 0.1)
    x = solve_side(
        indptr,
        cols,
        a[rows, cols],
        t[rows, cols],
        items,
        gramian(items),
        0.05,
        lam,
        users,
        solver=solver,
        cg_steps=d,
        solver_block_size=2 if solver == "subspace" else None,
    )
    exact = dense_row_solution(a, t, items, 0.05, lam)
    if solver == "subspace":  # one iCD-style sweep only decreases the row loss; check it did
        g0 = dense_gradient(a, t, users, items, 0.05, lam)
        g1 = dense_gradient(a, t, x, items, 0.05, lam)
        assert np.abs(g1).max() < np.abs(g0).max()
        x = solve_side(
            indptr, cols, a[rows, cols], t[rows, cols], items, gramian(items), 0.05, lam, users, solver=solver
        )
    np.testing.assert_allclose(x, exact, rtol=1e-6, atol=1e-8)


def test_solve_side_leaves_x0_untouched():
    p = random_problem(seed=13)
    before = p.users.copy()
    solve(p, "users", p.users, p.items, lambdas(p)[0], solver="cg")
    np.testing.assert_array_equal(p.users, before)


def test_non_finite_results_are_returned_and_check_finite_names_the_first_bad_row():
    p = random_problem(seed=14)
    x0 = p.users.copy()
    x0[2, 1] = np.nan
    x = solve(p, "users", x0, p.items, lambdas(p)[0], solver="cg")
    assert np.isnan(x[2]).any() and np.isfinite(np.delete(x, 2, axis=0)).all()
    with pytest.raises(FloatingPointError, match=r"user factors.*row is 2"):
        check_finite(x, "user factors")
    check_finite(np.ones((3, 2)), "fine")


def test_a_singular_row_system_gives_nan_not_an_exception():
    other = np.zeros((3, 2))
    x = solve_side(
        np.array([0, 0]),
        np.zeros(0, np.int64),
        np.zeros(0),
        np.zeros(0),
        other,
        gramian(other),
        0.0,
        np.zeros(1),
        np.ones((1, 2)),
        solver="cholesky",
    )
    with pytest.raises(FloatingPointError, match="row is 0"):
        check_finite(x, "x")


# ------------------------------------------------------------------------------------- confidences


def test_rendle_form_gives_confidence_weights_above_alpha0_and_target_one():
    w = np.array([0.0, 2.0, np.e - 1])
    a, t = observed_weights(w, 0.3, "rendle", "constant")
    np.testing.assert_array_equal(a, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(t, [1.0, 1.0, 1.0])
    a, _ = observed_weights(w, 0.3, "rendle", "linear", beta=0.5)
    np.testing.assert_allclose(a, [1.0, 2.0, 1.0 + 0.5 * (np.e - 1)])
    a, t = observed_weights(w, 0.3, "rendle", "log", beta=2.0, eps=1.0)
    np.testing.assert_allclose(a, [1.0, 1.0 + 2 * np.log(3.0), 3.0])
    np.testing.assert_array_equal(t, 1.0)
    a, _ = observed_weights(np.array([4.0]), 0.3, "rendle", "log", beta=1.0, eps=2.0)
    np.testing.assert_allclose(a, [1.0 + np.log(3.0)])


def test_hu_form_shifts_alpha_by_alpha0_and_rescales_the_target():
    a, t = observed_weights(np.array([1.0, 3.0]), 0.5, "hu", "linear", beta=2.0)
    np.testing.assert_allclose(a, [2.0, 6.0])
    np.testing.assert_allclose(t, [2.5 / 2.0, 6.5 / 6.0])
    a, t = observed_weights(np.array([np.e - 1]), 0.5, "hu", "log", beta=1.0, eps=1.0)
    np.testing.assert_allclose(a, [1.0])
    np.testing.assert_allclose(t, [1.5])
    a, t = observed_weights(np.array([0.0, 7.0]), 1.0, "hu", "constant", beta=3.0)
    np.testing.assert_allclose(a, [3.0, 3.0])
    np.testing.assert_allclose(t, [4.0 / 3.0, 4.0 / 3.0])


def test_hu_form_reproduces_hu_et_al_row_system():
    rng = np.random.default_rng(3)
    n_items, d, alpha0, beta, lam = 9, 4, 0.4, 1.5, 0.2
    items = rng.normal(size=(n_items, d))
    cols = np.array([1, 4, 5, 8])
    w = np.array([1.0, 3.0, 0.5, 10.0])
    a, t = observed_weights(w, alpha0, "hu", "linear", beta=beta)
    h = items[cols]
    np.testing.assert_allclose(h.T @ (a * t), h.T @ (alpha0 + beta * w))  # RHS: Y^T C_u p_u
    np.testing.assert_allclose((h * a[:, None]).T @ h, (h * (beta * w)[:, None]).T @ h)  # LHS extra: Y^T (C_u - a0 I) Y
    conf = np.full(n_items, alpha0)
    conf[cols] += beta * w
    pref = np.zeros(n_items)
    pref[cols] = 1.0
    hu = np.linalg.solve((items * conf[:, None]).T @ items + lam * np.eye(d), items.T @ (conf * pref))
    got = solve_side(
        np.array([0, 4]),
        cols,
        a,
        t,
        items,
        gramian(items),
        alpha0,
        np.array([lam]),
        np.zeros((1, d)),
        solver="cholesky",
    )
    np.testing.assert_allclose(got[0], hu, atol=1e-12)


def test_read_only_inputs_reuse_the_compiled_kernels():
    from gramian.kernels import _rows

    p = random_problem(seed=15)
    c = p.rows("users")
    lam = lambdas(p)[0]
    args = [c.indptr, c.indices, c.alpha, c.target, p.items, gramian(p.items), p.alpha0, lam, p.users]
    want = solve_side(*args)
    n_signatures = len(_rows.cg_rows.signatures)
    frozen = []
    for a in args:
        if isinstance(a, np.ndarray):
            a = np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)  # read-only, as from Arrow
            assert not a.flags.writeable
        frozen.append(a)
    np.testing.assert_array_equal(solve_side(*frozen), want)
    assert len(_rows.cg_rows.signatures) == n_signatures
