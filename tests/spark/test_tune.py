"""`gramian tune` driven through the stages on generated data: ingest -> split -> tune (-> train on the profile).

The module's warehouse is ingested and split once through the CLI; every test tunes under its own run_id on it
with a few trials of a few epochs at d <= 8.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from gramian import tables
from gramian.cli import main
from gramian.config import load_config
from gramian.runs import run_rows
from gramian.tune import job as tune
from gramian.tune import space
from gramian.tune.validation import carve

BASE = """\
data: {name: synthetic, format: synthetic}
generate: {n_users: 200, n_items: 120, n_interactions: 5000, rank: 4, seed: 0}
split: {method: random, test_fraction: 0.2, seed: 0}
model: {dim: 8, epochs: 3}
evaluate: {k: [10, 20]}
tune:
  prune_every: 1
  space: {dim: {choices: [4, 8]}, epochs: {low: 2, high: 3, step: 1}}
"""


def _study(cfg, run_id: str) -> optuna.Study:
    """The study the store holds for run_id (what a resumed tune restores)."""
    db = Path(cfg.storage.root) / "_artifacts" / "tune" / run_id / "study.db"
    return optuna.load_study(study_name=run_id, storage=f"sqlite:///{db}")


def _rows(spark, cfg, run_id: str) -> list[dict]:
    rows = tables.read(spark, cfg.storage, "tuning").filter(run_rows(run_id)).orderBy("trial").collect()
    return [r.asDict() for r in rows]


@pytest.fixture(scope="module")
def wh(spark, tmp_path_factory):
    """A conf folder with base.yaml, a warehouse ingested and split by the CLI, and one CLI tune (3 trials) run
    while the `test` table is moved away (the tune must not need it)."""
    tmp = tmp_path_factory.mktemp("tune")
    conf = tmp / "conf"
    conf.mkdir()
    (conf / "base.yaml").write_text(BASE)
    root = tmp / "wh"
    sets = ["--set", f"storage.root={root}"]
    for stage in ("ingest", "split"):
        assert main([stage, "--conf", str(conf / "base.yaml"), *sets, "--run-id", "d"]) == 0
    hidden = tmp / "test-hidden"
    shutil.move(root / "test", hidden)
    try:
        code = main(["tune", "--conf", str(conf / "base.yaml"), *sets, "--set", "generate.seed=0",
                     "--run-id", "cli", "--trials", "3", "--write-profile", str(conf / "base.tuned.yaml")])
    finally:
        shutil.move(hidden, root / "test")
    cfg = load_config(conf / "base.yaml", [f"storage.root={root}"])
    return {"conf": conf, "root": root, "cfg": cfg, "code": code}


def test_cli_tune_runs_end_to_end_without_the_test_table(wh):
    assert wh["code"] == 0
    assert (wh["conf"] / "base.tuned.yaml").is_file()


def test_tuning_table_has_one_row_per_trial_with_the_params_optuna_chose(spark, wh):
    cfg = wh["cfg"]
    rows = _rows(spark, cfg, "cli")
    study = _study(cfg, "cli")
    assert [r["trial"] for r in rows] == [t.number for t in study.trials] == [0, 1, 2]  # --trials 3 honoured
    assert study.trials[0].params == space.baseline(cfg.model, cfg.tune.space)  # the conf's own setting first
    assert study.trials[0].params["dim"] == cfg.model.dim and study.trials[0].params["epochs"] == cfg.model.epochs
    for row, t in zip(rows, study.trials, strict=True):
        assert json.loads(row["params"]) == t.params
        assert set(t.params) == {"alpha0_total", "reg", "nu", "reg_counts", "dim", "epochs"}
        assert row["state"] == {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}[t.state.name]
        assert row["seconds"] > 0 and row["started"] is not None
        if row["state"] == "complete":
            assert row["value"] == pytest.approx(t.value)
            assert row["epochs"] == t.params["epochs"]
            assert json.loads(row["metrics"])["recall@20"] == pytest.approx(row["value"])


def test_each_trial_is_a_nested_mlflow_run_under_the_tune_run(wh):
    from mlflow import MlflowClient

    from gramian.tracking import PART_TAG, RUN_TAG, tracking_uri

    client = MlflowClient(tracking_uri(wh["cfg"]))
    exp = client.get_experiment_by_name("gramian")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_TAG}` = 'cli'")
    parent = [r for r in runs if PART_TAG not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get(PART_TAG, "").startswith("tune/trial-")]
    assert len(parent) == 1 and len(trials) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent[0].info.run_id}
    for r in trials:
        assert "model.reg" in r.data.params and "recall_at_20" in r.data.metrics


def test_best_profile_loads_as_a_conf_over_its_base_and_trains(spark, wh):
    from gramian.train import job as train

    profile = wh["conf"] / "base.tuned.yaml"
    doc = yaml.safe_load(profile.read_text())
    assert doc["extends"] == "base.yaml"  # beside its base: relative, so the folder can move
    best = _study(wh["cfg"], "cli").best_trial
    cfg = load_config(profile, [f"storage.root={wh['root']}"])
    assert cfg.model == space.apply(wh["cfg"].model, best.params)
    assert cfg.generate == wh["cfg"].generate and cfg.split == wh["cfg"].split  # the base's data settings
    summary = train.run(spark, cfg, "tuned")
    assert summary["dim"] == best.params["dim"] and summary["epochs"] == best.params["epochs"]
    trained = json.loads(tables.read(spark, cfg.storage, "runs").filter(run_rows("tuned")).first()["config"])
    assert trained["model"]["reg"] == pytest.approx(best.params["reg"])


def test_validation_split_is_carved_from_train_only(spark, wh):
    cfg = wh["cfg"]
    val = carve(spark, cfg)
    try:
        key = ["user_idx", "item_idx"]
        train = tables.read(spark, cfg.storage, "train").select(*key)
        test = tables.read(spark, cfg.storage, "test").select(*key)
        fit, held = val.parts["train"].select(*key), val.parts["test"].select(*key)
        assert held.count() > 0 and held.join(test, key).count() == 0 and fit.join(test, key).count() == 0
        assert fit.unionByName(held).exceptAll(train).count() == 0  # every validation pair is a train pair
        assert fit.count() + held.count() == train.count()
        assert held.join(fit, key).count() == 0
    finally:
        val.release()


def test_a_killed_tune_resumes_its_study_from_the_store(spark, wh, monkeypatch):
    """A killed tune resumes from the store's study; the best trial's model keys (reg_typical's reg) are read back
    from the trial's record, never recomputed, whichever run fit it."""
    cfg = load_config(wh["conf"] / "base.yaml", [f"storage.root={wh['root']}", "tune.space.reg=null",
                                                  "tune.space.reg_typical={low: 0.1, high: 10, log: true}"])
    real = tune.run_trial

    def killed_at_second(spark_, cfg_, val, trial, *args):
        if trial.number == 1:
            raise KeyboardInterrupt  # the process dies mid-trial: only the store's copy survives
        return real(spark_, cfg_, val, trial, *args)

    monkeypatch.setattr(tune, "run_trial", killed_at_second)
    with pytest.raises(KeyboardInterrupt):
        tune.run(spark, cfg, "resume", trials=2)
    assert [t.number for t in _study(cfg, "resume").trials] == [0]
    first = _rows(spark, cfg, "resume")[0]
    monkeypatch.setattr(tune, "run_trial", real)
    converted, real_model_params = [], space.model_params

    def model_params(*args):
        converted.append(args[1])
        return real_model_params(*args)

    monkeypatch.setattr(space, "model_params", model_params)
    profile = wh["root"] / "resume.tuned.yaml"
    summary = tune.run(spark, cfg, "resume", trials=2, write_profile=str(profile))
    assert summary["trials"] == 2 and summary["trials_this_run"] == 1
    rows = _rows(spark, cfg, "resume")
    assert [r["trial"] for r in rows] == [0, 1]
    assert rows[0]["params"] == first["params"] and rows[0]["started"] == first["started"]  # trial 0 kept
    assert len(converted) == 1  # trial 1's draw, once, to fit it; the summary and the profile read the record
    best = _study(cfg, "resume").best_trial
    fit = json.loads(rows[best.number]["params"])  # the row logs the draw and the reg it gave
    assert best.user_attrs[tune.MODEL_PARAMS] == {k: v for k, v in fit.items() if k != "reg_typical"}
    assert summary["best_params"] == fit
    assert load_config(profile, [f"storage.root={wh['root']}"]).model.reg == pytest.approx(fit["reg"])


def test_a_clearly_bad_trial_is_pruned_after_a_reasonable_one(spark, wh, monkeypatch):
    settings = iter([0.1, 1e5])  # reg: a reasonable setting, then one that shrinks every factor to ~0

    def fixed(trial, space_, name):
        reg = next(settings)
        return {"reg": trial.suggest_float("reg", reg, reg)}

    monkeypatch.setattr(space, "suggest", fixed)
    cfg = load_config(wh["conf"] / "base.yaml", [f"storage.root={wh['root']}", "model.epochs=3",
                                                  "tune.startup_trials=1", "tune.warmup_epochs=0",
                                                  "tune.baseline=false"])  # both trials' reg as drawn here
    summary = tune.run(spark, cfg, "prune", trials=2)
    good, bad = _rows(spark, cfg, "prune")
    assert good["state"] == "complete" and good["epochs"] == 3
    assert bad["state"] == "pruned" and bad["epochs"] == 1 and bad["note"] == "pruned"
    assert bad["value"] < good["value"]
    assert summary["best_trial"] == 0 and summary["pruned"] == 1


def test_the_wall_clock_budget_stops_a_running_trial_and_starts_no_other(spark, wh, monkeypatch):
    later = [0.0]
    real_clock, real_call = tune.clock, tune.Monitor.__call__
    monkeypatch.setattr(tune, "clock", lambda: real_clock() + later[0])

    def epoch_then_an_hour(self, model):
        later[0] = 3600.0  # the budget runs out during the first epoch
        real_call(self, model)

    monkeypatch.setattr(tune.Monitor, "__call__", epoch_then_an_hour)
    summary = tune.run(spark, wh["cfg"], "budget", trials=5, budget_minutes=10)
    rows = _rows(spark, wh["cfg"], "budget")
    assert summary["stopped_by"] == "budget" and summary["trials"] == 1
    assert len(rows) == 1 and rows[0]["state"] == "pruned" and rows[0]["epochs"] == 1
    assert "budget" in rows[0]["note"] and rows[0]["value"] is not None
    with pytest.raises(Exception, match="must complete a trial to write a profile"):
        tune.run(spark, wh["cfg"], "budget2", trials=5, budget_minutes=1e-6, write_profile=str(wh["root"] / "x.yaml"))


def test_the_budget_counts_from_the_end_of_the_validation_carve(spark, wh, monkeypatch):
    later = [0.0]
    real_clock, real_carve = tune.clock, tune.carve
    monkeypatch.setattr(tune, "clock", lambda: real_clock() + later[0])

    def an_hour_long_carve(spark_, cfg_):
        val = real_carve(spark_, cfg_)
        later[0] = 3600.0  # start-up and carve took an hour: none of it is the trials' budget
        return val

    monkeypatch.setattr(tune, "carve", an_hour_long_carve)
    summary = tune.run(spark, wh["cfg"], "carve-clock", trials=1, budget_minutes=10)
    assert summary["stopped_by"] == "trials" and summary["complete"] == 1
    assert summary["baseline_trial"] == 0 and summary["baseline_value"] == pytest.approx(summary["best_value"])


def test_every_trial_fits_with_the_counts_the_carve_made(spark, wh, monkeypatch):
    from gramian.train.model import IALS

    given, real_fit = [], IALS.fit

    def fit(self, *args, **kwargs):
        given.append(kwargs.get("counts"))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(IALS, "fit", fit)
    summary = tune.run(spark, wh["cfg"], "counts", trials=2)
    assert len(given) == 2 and given[0] is given[1]  # counted once, by the carve
    users, items = given[0]
    assert int(users.sum()) == int(items.sum()) == summary["validation"]["validation_train"]


def test_a_resumed_study_refuses_another_search_space(spark, wh):
    from gramian.errors import ConfigError

    cfg = load_config(wh["conf"] / "base.yaml", [f"storage.root={wh['root']}", "tune.space.dim.choices=[16]"])
    with pytest.raises(ConfigError, match="space"):
        tune.run(spark, cfg, "cli", trials=4)


def test_pairwise_tunes_its_own_keys(spark, wh):
    cfg = load_config(wh["conf"] / "base.yaml", [f"storage.root={wh['root']}", "model.name=pairwise"])
    summary = tune.run(spark, cfg, "pairwise", trials=1)
    (row,) = _rows(spark, cfg, "pairwise")
    assert set(json.loads(row["params"])) == {"reg", "support_power", "dim", "epochs"}
    assert summary["trials"] == 1 and row["state"] == "complete" and row["value"] > 0


def test_the_profile_keeps_data_overrides_but_not_where_to_run(wh):
    doc = yaml.safe_load((wh["conf"] / "base.tuned.yaml").read_text())
    assert set(doc) == {"extends", "generate", "model"}  # --set generate.seed kept, --set storage.root not
    assert doc["generate"] == {"seed": 0}


def test_a_tune_whose_every_trial_fails_is_an_error_quoting_the_first(spark, wh, monkeypatch):
    from gramian.errors import GramianError

    monkeypatch.setattr(tune, "run_trial", lambda *a: tune.Outcome(state="failed", note="SolverError: boom"))
    with pytest.raises(GramianError, match="must not all fail, got 2 failed of 2.*SolverError: boom"):
        tune.run(spark, wh["cfg"], "allfail", trials=2)
    assert [r["state"] for r in _rows(spark, wh["cfg"], "allfail")] == ["failed", "failed"]


def test_reg_typical_trials_fit_the_reg_it_gives_and_the_profile_holds_that_reg(spark, wh, monkeypatch):
    from gramian.kernels import regularization_weights
    from gramian.train.model import IALS

    fitted, real_fit = [], IALS.fit

    def fit(self, *args, **kwargs):
        fitted.append((self.config, kwargs.get("counts"), args[1], args[2]))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(IALS, "fit", fit)
    cfg = load_config(wh["conf"] / "base.yaml", [f"storage.root={wh['root']}", "tune.space.reg=null",
                                                  "tune.space.reg_typical={low: 0.1, high: 10, log: true}"])
    profile = wh["root"] / "typical.tuned.yaml"
    summary = tune.run(spark, cfg, "typical", trials=2, write_profile=str(profile))
    rows = _rows(spark, cfg, "typical")
    assert len(rows) == len(fitted) == 2
    for row, (model, (users, items), n_users, n_items) in zip(rows, fitted, strict=True):
        params = json.loads(row["params"])
        assert set(params) == {"alpha0_total", "reg_typical", "reg", "nu", "reg_counts", "dim", "epochs"}
        assert model.reg == pytest.approx(params["reg"]) and model.nu == pytest.approx(params["nu"])
        m = model.resolved(n_items, n_users)
        median = []  # brute force: every row's lambda by the kernels, the median row's on each side
        for counts, n_other in ((users, n_items), (items, n_users)):
            lam = regularization_weights(m.reg, m.nu, counts, m.alpha0, n_other, reg_counts=m.reg_counts)
            lam = np.sort(lam[np.asarray(counts) > 0])
            median.append(lam[(len(lam) - 1) // 2])
        assert np.sqrt(median[0] * median[1]) == pytest.approx(params["reg_typical"], rel=1e-9)
    best = rows[summary["best_trial"]]
    trained = load_config(profile, [f"storage.root={wh['root']}"]).model
    assert trained.reg == pytest.approx(json.loads(best["params"])["reg"])
    assert summary["best_params"]["reg"] == pytest.approx(trained.reg)
