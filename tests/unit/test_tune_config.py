"""The `tune` config section, the search space it gives Optuna, and conf files that `extends` another."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from gramian.config import load_config
from gramian.errors import ConfigError
from gramian.kernels import regularization_weights
from gramian.tune import space as S
from gramian.tune.job import budgets
from gramian.tune.profile import profile_dict


@pytest.mark.parametrize(("override", "named"), [
    ("tune.space.reg.low=50", "tune.space.reg.low must be <= high, got low=50.0, high=10.0"),
    ("tune.space.alpha0_total.low=0", "tune.space.alpha0_total.low must be > 0 on a log scale"),
    ("tune.space.dim.choices=[0,8]", "tune.space.dim must hold valid values of model.dim, got 0"),
    ("tune.space.reg.choices=[-1]", "tune.space.reg must hold valid values of model.reg, got -1"),
    ("tune.space.epochs.low=2.5", "tune.space.epochs must have whole-number low/high/step"),
    ("tune.space.reg_counts={low: 1, high: 2, choices: []}", "tune.space.reg_counts must list choices"),
    ("tune.space.confidence_form.choices=[rendle,bogus]", "model.confidence.form"),
    ("tune.space.nu={low: null}", "tune.space.nu must give both low and high"),
    ("tune.space.nu.step=0", "tune.space.nu.step must be > 0 or null, got 0.0"),
    ("tune.space.reg.step=0.5", "tune.space.reg must not combine log: true with a step"),
    ("tune.space.lr={low: 1, high: 2}", "unknown config key 'tune.space.lr'"),
    ("tune.metric=mrr", "tune.metric must be one of"),
    ("tune.trials=0", "tune.trials must be > 0"),
    ("tune.budget_minutes=-1", "tune.budget_minutes must be >= 0"),
    ("tune.validation_fraction=1.5", "tune.validation_fraction must be in (0, 1)"),
])
def test_bad_tune_values_are_refused_naming_the_key(override, named):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert named in str(e.value)


def test_model_keys_of_another_model_are_not_checked_or_searched():
    cfg = load_config(None, ["model.name=pairwise", "model.alpha0=0.01"])  # alpha0_total is not RankALS's
    assert set(S.searched(cfg.tune.space, "pairwise")) == {"reg", "support_power", "dim", "epochs"}


def test_budget_arguments_are_checked():
    cfg = load_config(None, [])
    assert budgets(cfg, None, None, 100.0) == (20, None)
    assert budgets(cfg, 3, 2.0, 100.0) == (3, 220.0)
    for trials, minutes, named in ((0, None, "--trials"), (None, -1.0, "--budget-minutes")):
        with pytest.raises(ConfigError, match=named):
            budgets(cfg, trials, minutes, 0.0)


def test_suggestions_stay_in_the_configured_ranges_and_make_valid_models():
    cfg = load_config(None, ["tune.space.reg={low: 0.01, high: 0.1}", "tune.space.dim.choices=[16]",
                             "tune.space.confidence_scale.choices=[constant,log]", "tune.space.nu=null"])
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        p = S.suggest(trial, cfg.tune.space, "ials")
        assert set(p) == {"alpha0_total", "reg", "reg_counts", "dim", "epochs", "confidence_scale"}  # nu: fixed
        assert 0.01 <= p["reg"] <= 0.1 and p["dim"] == 16 and p["epochs"] in (5, 10, 15, 20, 25)
        assert 30 <= p["alpha0_total"] <= 3000
        m = S.apply(cfg.model, p)
        assert (m.reg, m.dim, m.confidence.scale, m.nu) == (p["reg"], 16, p["confidence_scale"], cfg.model.nu)
        study.tell(trial, 0.0)


def test_a_conf_extends_its_base_and_overrides_it(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("data: {name: b, format: synthetic}\nmodel: {dim: 16, reg: 0.3}\n")
    (tmp_path / "p.yaml").write_text("extends: base.yaml\nmodel: {dim: 32}\n")
    cfg = load_config(tmp_path / "p.yaml")
    assert (cfg.data.name, cfg.model.dim, cfg.model.reg) == ("b", 32, 0.3)
    assert [Path(s).name for s in cfg.sources] == ["defaults.yaml", "base.yaml", "p.yaml"]


def test_extends_refuses_a_missing_file_and_a_cycle(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="extends must name an existing config file, got 'nowhere.yaml'"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\n")
    with pytest.raises(ConfigError, match="must not form a cycle"):
        load_config(tmp_path / "b.yaml")


def test_profile_extends_the_tuned_conf_and_keeps_only_data_overrides(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("data: {name: b, format: synthetic}\n")
    cfg = load_config(tmp_path / "base.yaml", ["split.seed=4", "storage.root=/elsewhere", "train.checkpoint_every=0",
                                               "model.solver=cholesky"])
    doc = profile_dict(cfg, S.apply(cfg.model, {"reg": 0.5}), tmp_path / "base.tuned.yaml")
    assert doc["extends"] == "base.yaml" and doc["split"] == {"seed": 4}
    assert "storage" not in doc and "train" not in doc
    assert doc["model"]["reg"] == 0.5 and doc["model"]["solver"] == "cholesky"
    far = profile_dict(cfg, cfg.model, tmp_path / "profiles" / "p.yaml")
    assert far["extends"] == str((tmp_path / "base.yaml").resolve())  # outside the profile's folder: absolute


def test_a_set_alpha0_that_would_override_the_searched_alpha0_total_is_refused():
    cfg = load_config(None, ["model.alpha0=0.01"])  # loads: only tuning it is refused
    with pytest.raises(ConfigError, match="tune.space.alpha0_total is searched but model.alpha0=0.01"):
        S.check(cfg.model, cfg.tune.space)
    S.check(cfg.model, load_config(None, ["model.alpha0=0.01", "tune.space.alpha0_total=null"]).tune.space)


def test_the_baseline_trial_is_the_conf_setting_where_the_space_can_draw_it():
    cfg = load_config(None, ["model.dim=48", "model.epochs=12", "model.reg=0.3", "model.confidence.scale=log",
                             "tune.space.confidence_scale.choices=[constant,log]"])
    base = S.baseline(cfg.model, cfg.tune.space)
    # dim 48 is not a choice and epochs 12 is off the 5-25 step-5 grid: left to the sampler
    assert base == {"alpha0_total": cfg.model.alpha0_total, "reg": 0.3, "nu": cfg.model.nu,
                    "reg_counts": cfg.model.reg_counts, "confidence_scale": "log"}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(base)
    p = S.suggest(study.ask(), cfg.tune.space, "ials")
    assert {k: p[k] for k in base} == base and p["dim"] in (64, 128, 256) and p["epochs"] % 5 == 0
    assert S.apply(cfg.model, p).reg == 0.3
    on_grid = load_config(None, ["model.epochs=15", "model.dim=64"])
    assert {"epochs": 15, "dim": 64}.items() <= S.baseline(on_grid.model, on_grid.tune.space).items()


def _rows(seed: int = 0) -> S.Rows:
    """Interaction counts with empty rows and a long tail, as a validation carve leaves them."""
    rng = np.random.default_rng(seed)
    users = rng.geometric(0.05, 301) * (rng.random(301) > 0.1)
    items = rng.geometric(0.3, 500) * (rng.random(500) > 0.2)
    return S.Rows(users, items, 301, 500)


def _typical_lambda_brute_force(m, rows: S.Rows) -> float:
    """lambda_c of every row by the trainer's own weights (kernels), the median row's on each side, their
    geometric mean: what reg_typical promises, computed without tune.space."""
    m = m.resolved(rows.n_items, rows.n_users)
    medians = []
    for counts, n_other in ((rows.users, rows.n_items), (rows.items, rows.n_users)):
        lam = regularization_weights(m.reg, m.nu, counts, m.alpha0, n_other, reg_counts=m.reg_counts)
        lam = np.sort(lam[counts > 0])
        medians.append(lam[(len(lam) - 1) // 2])
    return float(np.sqrt(medians[0] * medians[1]))


@pytest.mark.parametrize("reg_counts", ["observed", "all"])
@pytest.mark.parametrize("nu", [0.0, 0.5, 0.77, 1.0, 1.25])
def test_reg_typical_gives_the_reg_whose_lambda_at_the_typical_row_it_names(reg_counts, nu):
    cfg = load_config(None, [])
    rows = _rows()
    params = {"reg_typical": 0.7, "nu": nu, "reg_counts": reg_counts, "alpha0_total": 120.0, "dim": 8}
    model_keys = S.model_params(cfg.model, params, rows)
    assert "reg_typical" not in model_keys and model_keys["nu"] == nu and model_keys["dim"] == 8
    m = S.apply(cfg.model, model_keys)
    assert _typical_lambda_brute_force(m, rows) == pytest.approx(0.7, rel=1e-12)
    if nu > 0:  # reg moves with nu (the coupling reg_typical takes off the search)
        assert m.reg != pytest.approx(0.7)


def test_reg_typical_holds_lambda_while_nu_moves_and_reg_alone_does_not():
    cfg = load_config(None, ["model.reg_counts=observed"])
    rows = _rows(1)
    typical = [_typical_lambda_brute_force(S.apply(cfg.model, S.model_params(cfg.model, {"reg_typical": 2.0,
                                                                                          "nu": nu}, rows)), rows)
               for nu in (0.25, 1.0)]
    assert typical == pytest.approx([2.0, 2.0])
    plain = [_typical_lambda_brute_force(S.apply(cfg.model, {"reg": 2.0, "nu": nu}), rows) for nu in (0.25, 1.0)]
    assert plain[1] / plain[0] > 2  # the same reg at another nu: lambda at the typical row moves with base^dnu


def test_reg_typical_is_searched_in_place_of_reg_and_its_baseline_is_the_conf_reg():
    with pytest.raises(ConfigError, match="tune.space.reg and tune.space.reg_typical must not both be searched.*"
                                          "Set tune.space.reg: null"):
        load_config(None, ["tune.space.reg_typical={low: 0.01, high: 100, log: true}"])
    with pytest.raises(ConfigError, match="tune.space.reg_typical must hold valid values of model.reg, got -1"):
        load_config(None, ["tune.space.reg=null", "tune.space.reg_typical.choices=[-1]"])
    cfg = load_config(None, ["tune.space.reg=null", "tune.space.reg_typical={low: 0.01, high: 100, log: true}",
                             "model.reg=0.3", "model.nu=1.0", "tune.space.nu.step=0.25"])
    assert "reg_typical" in S.searched(cfg.tune.space, "ials") and "reg" not in S.searched(cfg.tune.space, "ials")
    assert "reg_typical" not in S.searched(cfg.tune.space, "pairwise")
    rows = _rows()
    base = S.baseline(cfg.model, cfg.tune.space, rows)
    assert S.apply(cfg.model, S.model_params(cfg.model, base, rows)).reg == pytest.approx(0.3, rel=1e-12)
    assert "reg_typical" not in S.baseline(cfg.model, cfg.tune.space)  # no counts: left to the sampler
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        p = S.suggest(trial, cfg.tune.space, "ials")
        assert 0.01 <= p["reg_typical"] <= 100 and "reg" not in p
        m = S.apply(cfg.model, S.model_params(cfg.model, p, rows))
        assert _typical_lambda_brute_force(m, rows) == pytest.approx(p["reg_typical"], rel=1e-12)
        study.tell(trial, 0.0)


def test_reg_typical_without_rows_that_have_interactions_is_refused():
    from gramian.errors import InputDataError

    cfg = load_config(None, [])
    empty = S.Rows(np.zeros(3), np.array([1.0, 2.0]), 3, 2)
    with pytest.raises(InputDataError, match="reg_typical needs user rows with interactions, got none of 3"):
        S.model_params(cfg.model, {"reg_typical": 1.0}, empty)
