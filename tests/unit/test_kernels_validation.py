"""Every kernel argument check fires with a message naming the argument and value, and a remedy."""

from __future__ import annotations

import numpy as np
import pytest

from gramian.kernels import gramian, ials_loss, observed_weights, regularization_weights, solve_side


def good_args():
    """A valid 3-row, 4-column, d=2 solve_side call."""
    rng = np.random.default_rng(0)
    other = rng.normal(size=(4, 2))
    return {
        "indptr": np.array([0, 2, 2, 3]),
        "indices": np.array([0, 3, 1]),
        "alpha": np.array([1.0, 2.0, 0.5]),
        "target": np.ones(3),
        "other": other,
        "gramian_other": gramian(other),
        "alpha0": 0.1,
        "reg": np.full(3, 0.1),
        "x0": rng.normal(size=(3, 2)),
    }


def test_the_good_arguments_are_accepted():
    assert solve_side(**good_args()).shape == (3, 2)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"solver": "lu"}, "solver='lu'"),
        ({"cg_steps": 0}, "cg_steps=0"),
        ({"cg_steps": 2.5}, "cg_steps=2.5"),
        ({"solver": "subspace", "solver_block_size": 0}, "solver_block_size=0"),
        ({"solver": "subspace", "solver_block_size": 3}, "solver_block_size=3"),
        ({"alpha0": -0.5}, "alpha0=-0.5"),
        ({"reg": np.array([0.1, -1.0, 0.1])}, "reg[1]=-1.0"),
        ({"reg": np.full(2, 0.1)}, "reg must be a scalar or have shape (3,)"),
        ({"x0": np.zeros((3, 5))}, "other must have d=5 columns"),
        ({"x0": np.zeros(3)}, "x0 must be 2-D"),
        ({"gramian_other": np.eye(3)}, "gramian_other must have shape (2, 2)"),
        ({"indptr": np.array([0, 2, 3])}, "indptr must have n_rows + 1 = 4"),
        ({"indptr": np.array([0, 3, 2, 3])}, "indptr must start at 0, be non-decreasing"),
        ({"indptr": np.array([0.0, 2.0, 2.0, 3.0])}, "indptr must be a 1-D integer array"),
        ({"indices": np.array([0, 4, 1])}, "indices[1]=4"),
        ({"indices": np.array([0, -1, 1])}, "indices[1]=-1"),
        ({"alpha": np.ones(2)}, "alpha must have shape (3,)"),
        ({"alpha": np.array([1.0, -2.0, 1.0])}, "alpha[1]=-2.0"),
        ({"target": np.ones(4)}, "target must have shape (3,)"),
    ],
)
def test_solve_side_rejects_bad_arguments_by_name(change, needle):
    args = good_args()
    args.update(change)
    with pytest.raises(ValueError) as err:
        solve_side(**args)
    assert needle in str(err.value)
    assert ":" in str(err.value)  # a remedy follows the diagnosis


def test_solve_side_does_not_raise_on_nan_inputs():
    args = good_args()
    args["alpha"] = np.array([1.0, np.nan, 0.5])
    x = solve_side(**args)
    assert np.isnan(x[0]).all() and np.isfinite(x[1:]).all()


@pytest.mark.parametrize(
    ("weight", "kw", "needle"),
    [
        ([1.0], {"form": "als"}, "form='als'"),
        ([1.0], {"scale": "sqrt"}, "scale='sqrt'"),
        ([1.0, np.nan], {}, "weight[1]=nan"),
        ([1.0, 2.0, -1.0], {}, "weight[2]=-1.0"),
        ([1.0, np.inf], {}, "weight[1]=inf"),
        ([1.0, 2.0], {"form": "rendle", "scale": "linear", "beta": -1.0}, "beta > 0"),
        ([1.0, 0.0], {"form": "hu", "scale": "linear"}, "alpha_tilde[1]=0.0"),
        ([1.0], {"form": "hu", "scale": "constant", "beta": 0.0}, "beta > 0"),
        ([1.0], {"alpha0": -1.0}, "alpha0=-1.0"),
        ([1.0], {"scale": "log", "eps": 0.0}, "eps=0.0"),
        ([1.0], {"beta": np.nan}, "beta=nan"),
    ],
)
def test_observed_weights_rejects_bad_arguments_by_name(weight, kw, needle):
    args = {"alpha0": 0.1, **kw}
    with pytest.raises(ValueError) as err:
        observed_weights(np.array(weight), **args)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((-1.0, 0.0, np.ones(2), 0.1, 5), "reg=-1.0"),
        ((1.0, np.inf, np.ones(2), 0.1, 5), "nu=inf"),
        ((1.0, 0.0, np.array([1.0, -2.0]), 0.1, 5), "counts[1]=-2.0"),
        ((1.0, 0.0, np.ones(2), -0.1, 5), "alpha0=-0.1"),
        ((1.0, 0.0, np.ones(2), 0.1, -5), "n_other=-5"),
        ((1.0, -1.0, np.array([0.0, 1.0]), 0.0, 5), "nu=-1.0"),
        ((1.0, -1.0, np.array([0.0, 1.0]), 0.5, 5, "observed"), "reg_counts='observed'"),
        ((1.0, 1.0, np.ones(2), 0.1, 5, "pairs"), "reg_counts='pairs'"),
    ],
)
def test_regularization_weights_rejects_bad_arguments_by_name(args, needle):
    *positional, reg_counts = args if len(args) == 6 else (*args, "all")
    with pytest.raises(ValueError) as err:
        regularization_weights(*positional, reg_counts=reg_counts)
    assert needle in str(err.value)


def test_ials_loss_rejects_misshaped_regularisation_by_name():
    a = good_args()
    with pytest.raises(ValueError, match="reg_other must be a scalar or have shape"):
        ials_loss(a["indptr"], a["indices"], a["alpha"], a["target"], a["x0"], a["other"], 0.1, 0.1, np.ones(3))
    with pytest.raises(ValueError, match="alpha0=-1"):
        ials_loss(a["indptr"], a["indices"], a["alpha"], a["target"], a["x0"], a["other"], -1, 0.1, 0.1)
