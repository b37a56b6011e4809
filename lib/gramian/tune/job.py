"""`gramian tune`: search the model's settings on a validation split carved from `train`; best -> a profile.

Every trial is an ordinary fit by the train stage's estimator (gramian.train IALS / RankALS) on the
validation-train part, scored after each `tune.prune_every` epochs on the held-out part with the evaluate
stage's exact metrics. Settings come from Optuna's TPE sampler (tune.space); a trial is pruned when its
metric at an epoch falls below the median of the earlier trials' at that epoch (MedianPruner, after
tune.startup_trials trials and tune.warmup_epochs epochs). MedianPruner rather than successive halving or
Hyperband: a tune here runs tens of trials, not hundreds; the median rule prunes from the second trial on
and needs no brackets to fill, and it compares trials at the same epoch, so a trial drawing more epochs is
not cut for being early in its schedule.

A new study's first trial is the conf's own model setting (tune.baseline; the keys the space can draw, the
others sampled), so the search starts from the setting it is asked to improve on, and the summary reports
that trial's value beside the best.

Budgets: the study's total trials (--trials, tune.trials) and wall-clock minutes (--budget-minutes,
tune.budget_minutes), counted from the end of the validation carve (Spark start-up and the carve are the same
for any budget, so they do not eat into the trials' time): no trial starts past the budget, and a running
one stops at its next epoch past it (recorded as pruned). One `tuning` row per trial (replaced when a resumed
study reruns a trial number); with tracking on, one nested MLflow run per trial under the run's MLflow run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gramian import storage, tables, tracking
from gramian.config import Config
from gramian.errors import ConfigError, GramianError
from gramian.runs import check_run_id, run_where
from gramian.tune import space as S
from gramian.tune.study import STUDY_FILE, opened
from gramian.tune.validation import Validation, carve, score

log = logging.getLogger(__name__)
progress = logging.getLogger("gramian.progress")  # one line per trial, visible without -v

clock = time.monotonic  # the budget's clock (tests move it)
BASELINE = "baseline"  # user attribute of the trial that ran the conf's own setting (tune.baseline)
MODEL_PARAMS = "model_params"  # user attribute: the model keys the trial fit (S.model_params), read back for the best
TUNING_TABLE = "tuning"
TUNING_SCHEMA = ("run_id string, trial int, params string, value double, metrics string, state string, "
                 "epochs int, seconds double, started timestamp, note string")


class Stop(Exception):  # noqa: N818 - a control signal, not an error
    """Raised by the epoch monitor to end a trial early: pruned, or past the wall-clock budget."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Outcome:
    """What one trial left: its state, last validation metrics, epochs trained, seconds, a note."""

    state: str = "failed"  # complete | pruned | failed
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    seconds: float = 0.0
    note: str | None = None
    model_params: dict[str, Any] = field(default_factory=dict)  # the draw as model keys (S.model_params)


class Monitor:
    """The fit's per-epoch hook (IALS.fit on_model): score every prune_every epochs, report, prune, stop."""

    def __init__(self, spark: Any, cfg: Config, val: Validation, trial: Any, epochs: int, deadline: float | None,
                 tracker: Any) -> None:
        self.spark, self.cfg, self.val, self.trial = spark, cfg, val, trial
        self.epochs, self.deadline, self.tracker = epochs, deadline, tracker
        self.key = f"{cfg.tune.metric}@{cfg.tune.k}"
        self.metrics: dict[str, float] = {}
        self.epoch = 0

    def __call__(self, model: Any) -> None:
        e = model.history[-1].epoch
        self.epoch = e
        over = self.deadline is not None and clock() >= self.deadline
        if e % self.cfg.tune.prune_every and e < self.epochs and not over:
            return
        self.metrics = score(self.spark, self.cfg, self.val, model)
        self.trial.report(self.metrics[self.key], e)
        tracking.safe(self.tracker.log_metrics, {_mlflow_name(k): v for k, v in self.metrics.items()}, e)
        if e < self.epochs and over:
            raise Stop("stopped at the wall-clock budget")
        if e < self.epochs and self.trial.should_prune():
            raise Stop("pruned")


def _mlflow_name(key: str) -> str:
    return key.replace("@", "_at_")


def run(spark: Any, cfg: Config, run_id: str, trials: int | None = None, budget_minutes: float | None = None,
        write_profile: str | None = None) -> dict[str, Any]:
    """Tune cfg.model on a validation split of `train`; write `tuning` rows and, if asked, the best profile."""
    check_run_id(run_id)
    S.check(cfg.model, cfg.tune.space)
    started = time.perf_counter()
    n_trials, _ = budgets(cfg, trials, budget_minutes, 0.0)  # checked before any Spark work
    val = carve(spark, cfg)
    rows = S.Rows(val.counts[0], val.counts[1], val.n_users, val.n_items)  # tune.space.reg_typical's base
    _, deadline = budgets(cfg, trials, budget_minutes, clock())  # the budget is the trials' time
    store = storage.artifact_store(cfg.storage, spark).child("tune", run_id)
    settings = {"model": cfg.model.name, "metric": cfg.tune.metric, "k": cfg.tune.k,
                "space": S.describe(cfg.tune.space, cfg.model.name),
                "validation": {k: val.summary[k] for k in ("method", "seed", "fraction", "train_version")}}
    try:
        with opened(store, run_id, cfg.tune, n_trials, settings) as (study, snapshot):
            if cfg.tune.baseline and not study.get_trials(deepcopy=False):  # a new study: the conf's setting first
                study.enqueue_trial(S.baseline(cfg.model, cfg.tune.space, rows), user_attrs={BASELINE: True})
            ran, stopped = search(spark, cfg, run_id, val, study, snapshot, n_trials, deadline, rows)
            summary, best = summarise(study, cfg, run_id, ran, stopped, val)
    finally:
        val.release()
    if write_profile is not None:
        if best is None:
            raise GramianError(f"tune must complete a trial to write a profile, got none of {summary['trials']} "
                               f"complete (run {run_id!r}). Raise --budget-minutes or --trials, or "
                               f"tune.warmup_epochs to prune later.")
        from gramian.tune.profile import write_profile as write

        facts = {"run_id": run_id, "trials": summary["trials"], "best_trial": summary["best_trial"],
                 "metric": summary["metric"], "best_value": summary["best_value"],
                 "validation": describe_validation(val)}
        model = S.apply(cfg.model, best)
        summary["profile"] = str(write(write_profile, cfg, model, facts))
    summary["study"] = store.uri_of(STUDY_FILE)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def budgets(cfg: Config, trials: int | None, budget_minutes: float | None, t0: float) -> tuple[int, float | None]:
    """(the study's total trials, the wall-clock deadline or None): arguments over tune.trials/budget_minutes."""
    n = cfg.tune.trials if trials is None else trials
    minutes = cfg.tune.budget_minutes if budget_minutes is None else budget_minutes
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ConfigError(f"--trials must be a positive integer, got {n!r}. Pass e.g. --trials 20.")
    if not isinstance(minutes, int | float) or minutes < 0:
        raise ConfigError(f"--budget-minutes must be >= 0 (0 = none), got {minutes!r}. Pass e.g. --budget-minutes 30.")
    return n, (t0 + 60.0 * minutes if minutes > 0 else None)


def search(spark: Any, cfg: Config, run_id: str, val: Validation, study: Any, snapshot: Any, n_trials: int,
           deadline: float | None, rows: S.Rows) -> tuple[int, str]:
    """Run trials until the study holds n_trials finished ones or the deadline passes: (trials run, why stopped)."""
    from optuna.trial import TrialState

    ran = 0
    exchange = storage.artifact_store(cfg.storage, spark).child("tune", run_id, "exchange")  # off a local master
    while True:
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                            TrialState.FAIL)))
        if done >= n_trials:
            return ran, "trials"
        if deadline is not None and clock() >= deadline:
            return ran, "budget"
        trial = study.ask()
        params = S.suggest(trial, cfg.tune.space, cfg.model.name)
        started = datetime.now(UTC)
        child = _child_tracker(trial.number, params)
        out = run_trial(spark, cfg, val, trial, params, deadline, child, exchange, rows)
        derived = {k: v for k, v in out.model_params.items() if k not in params}  # reg_typical's: the reg it gave
        params = {**params, **derived}
        state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}[out.state]
        key = f"{cfg.tune.metric}@{cfg.tune.k}"
        if out.note:
            trial.set_user_attr("note", out.note)
        if out.model_params:  # the reg it fit, kept with the trial (a resumed study's best may be an earlier run's)
            trial.set_user_attr(MODEL_PARAMS, out.model_params)
        study.tell(trial, out.metrics[key] if out.state == "complete" else None, state=state)
        write_row(spark, cfg, run_id, trial.number, params, out, started, key)
        _close_child(child, out, derived)
        snapshot()
        ran += 1
        value = out.metrics.get(key)
        progress.info("tune %s trial %d (%d/%d): %s %s after %d epochs, %.1f s%s %s", run_id, trial.number, done + 1,
                      n_trials, out.state, f"{key} {value:.4f}" if value is not None else "", out.epochs,
                      out.seconds, f" ({out.note})" if out.note and out.state != "complete" else "",
                      json.dumps(params))


def run_trial(spark: Any, cfg: Config, val: Validation, trial: Any, params: dict[str, Any],
              deadline: float | None, tracker: Any, exchange: Any = None, rows: S.Rows | None = None) -> Outcome:
    """Fit one setting on validation-train with the train stage's estimator, scoring as it goes."""
    from gramian.train.job import ESTIMATORS

    t0 = time.perf_counter()
    out = Outcome()
    monitor: Monitor | None = None
    try:
        out.model_params = S.model_params(cfg.model, params, rows)
        model_cfg = S.apply(cfg.model, out.model_params)
        monitor = Monitor(spark, cfg, val, trial, model_cfg.epochs, deadline, tracker)
        estimator = ESTIMATORS[model_cfg.name].from_config(model_cfg, cfg.train)
        model = estimator.fit(val.train, val.n_users, val.n_items, on_epoch=lambda stats: None, exchange=exchange,
                              on_model=monitor, counts=val.counts)
        model.close()  # scored epoch by epoch: routed steps are not kept to the end of the study
        out.state = "complete"
    except Stop as s:
        out.state, out.note = "pruned", s.reason
    except Exception as e:  # a diverging setting is a result of the search, not the end of it
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        out.state, out.note = "failed", f"{type(e).__name__}: {first}"
        log.warning("tune trial %d failed: %s", trial.number, out.note)
    if monitor is not None:
        out.metrics, out.epochs = monitor.metrics, monitor.epoch
    if out.state == "complete" and not out.metrics:
        out.state, out.note = "failed", "no validation metric was computed"
    out.seconds = time.perf_counter() - t0
    return out


def write_row(spark: Any, cfg: Config, run_id: str, number: int, params: dict[str, Any], out: Outcome,
              started: datetime, key: str) -> None:
    """This trial's `tuning` row, replacing one of the same (run_id, trial) left by an earlier attempt."""
    row = {"run_id": run_id, "trial": int(number), "params": json.dumps(params, sort_keys=True),
           "value": out.metrics.get(key), "metrics": json.dumps(out.metrics, sort_keys=True),
           "state": out.state, "epochs": int(out.epochs), "seconds": round(out.seconds, 3), "started": started,
           "note": out.note}
    tables.write(tables.local_frame(spark, [row], TUNING_SCHEMA), cfg.storage, TUNING_TABLE,
                 replace_where=f"{run_where(run_id)} AND trial = {int(number)}", files=1)


def _child_tracker(number: int, params: dict[str, Any]) -> Any:
    """The trial's nested MLflow run under the run's (a NullTracker when tracking is off)."""
    parent = tracking.active()
    if not hasattr(parent, "child"):
        return tracking.NullTracker()
    try:
        child = parent.child(f"tune/trial-{number:04d}")
        child.log_params({f"model.{k.replace('confidence_', 'confidence.')}": v for k, v in params.items()})
        return child
    except Exception as e:  # never lose a trial to the tracking server
        log.warning("MLflow logging of trial %d failed (%s: %s)", number, type(e).__name__, e)
        return tracking.NullTracker()


def _close_child(child: Any, out: Outcome, derived: dict[str, Any]) -> None:
    if derived:  # model keys the draw did not name (reg_typical's reg); the draw was logged at the start
        tracking.safe(child.log_params, {f"model.{k}": v for k, v in derived.items()})
    tracking.safe(child.set_tags, {"gramian.tune.state": out.state, "gramian.tune.note": out.note or ""})
    tracking.safe(child.log_metrics, {"trial_seconds": out.seconds, "epochs_trained": out.epochs})


def summarise(study: Any, cfg: Config, run_id: str, ran: int, stopped: str,
              val: Validation) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The stage summary (counts by state, the best complete trial, why the search stopped) and the model keys the
    best trial fit (None without a complete trial)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == st for t in trials) for s, st in
             (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL))}
    out: dict[str, Any] = {"run_id": run_id, "model": cfg.model.name, "metric": f"{cfg.tune.metric}@{cfg.tune.k}",
                           "trials": len(trials), "trials_this_run": ran, **count, "stopped_by": stopped,
                           "validation": val.summary}
    if trials and count["failed"] == len(trials):
        note = next((t.user_attrs.get("note") for t in trials if t.user_attrs.get("note")), "see the tuning table")
        raise GramianError(f"tune trials must not all fail, got {len(trials)} failed of {len(trials)} (run {run_id!r}; "
                           f"first: {note}). Fix the cause, or narrow tune.space away from diverging settings.")
    base = next((t for t in trials if t.user_attrs.get(BASELINE)), None)
    if base is not None:
        out.update(baseline_trial=base.number, baseline_value=_last_value(base))
    model_params = None
    if count["complete"]:
        best = study.best_trial
        model_params = recorded_model_params(best)
        out.update(best_trial=best.number, best_value=best.value,
                   best_params={**best.params, **model_params})  # and reg_typical's reg
        tracking.safe(tracking.active().log_metrics, {f"tune.best_{_mlflow_name(out['metric'])}": best.value})
    return out, model_params


def recorded_model_params(trial: Any) -> dict[str, Any]:
    """The model keys a finished trial fit, as `search` recorded them with it (never recomputed: the record is
    what the fit used, whichever run of a resumed study ran it)."""
    recorded = trial.user_attrs.get(MODEL_PARAMS)
    if recorded is None:
        raise GramianError(f"tune trial {trial.number} must record the model keys it fit (user attribute "
                           f"{MODEL_PARAMS!r}), got none: its study was written by an older gramian. Tune under a "
                           f"new --run-id.")
    return dict(recorded)


def _last_value(trial: Any) -> float | None:
    """A finished trial's value, else its last reported one (a pruned trial's), else None."""
    if trial.value is not None:
        return float(trial.value)
    steps = sorted(trial.intermediate_values)
    return float(trial.intermediate_values[steps[-1]]) if steps else None


def describe_validation(val: Validation) -> str:
    """One line: how validation was carved and how big it is."""
    s = val.summary
    return (f"split.method {s['method']}, fraction {s['fraction']}, seed {s['seed']} on train version "
            f"{s['train_version']}: {s['validation_train']} pairs fit, {s['validation_test']} held out "
            f"({s['validation_users']} users)")
