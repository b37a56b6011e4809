"""The Optuna study of one tune: an embedded SQLite file, kept in a local scratch folder while trials run and
copied to the artifact store (`<artifacts>/tune/<run_id>/study.db`) after every trial, so a killed tune
resumes from it (same --run-id) wherever the store is (a local folder, s3a://, a Volume).

Sampler: TPE (Bergstra et al. 2011), seeded with tune.seed plus the trials already run, so a resumed study
does not replay its first random draws. Pruner: MedianPruner (see gramian.tune.job).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gramian.config import TuneConfig
from gramian.errors import ConfigError
from gramian.storage import Store

log = logging.getLogger(__name__)

STUDY_FILE = "study.db"
SETTINGS_ATTR = "gramian.tune"  # study user attribute: what a resumed study must match


def pruner(tc: TuneConfig) -> Any:
    """MedianPruner after tune.startup_trials finished trials and tune.warmup_epochs epochs, or none."""
    import optuna

    if tc.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=tc.startup_trials, n_warmup_steps=tc.warmup_epochs,
                                       interval_steps=1)


@contextlib.contextmanager
def opened(store: Store, run_id: str, tc: TuneConfig, n_trials: int,
           settings: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    """(study, snapshot): the run's study, restored from the store when it holds one, and the function that
    copies it back there (call it after every trial). The scratch folder is removed on exit.

    TPE draws its first max(2, n_trials // 4) settings (at most 10) at random, then models the results."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # gramian logs one line per trial itself
    with tempfile.TemporaryDirectory(prefix="gramian-tune-") as scratch:
        local = Path(scratch) / STUDY_FILE
        restored = store.exists(STUDY_FILE)
        if restored:
            local.write_bytes(store.read_bytes(STUDY_FILE))
            log.info("resuming study %s from %s", run_id, store.uri_of(STUDY_FILE))
        storage = optuna.storages.RDBStorage(f"sqlite:///{local}")
        try:
            probe = optuna.load_study(study_name=run_id, storage=storage) if restored else None
            finished = len(probe.trials) if probe is not None else 0
            sampler = optuna.samplers.TPESampler(seed=tc.seed + finished,
                                                 n_startup_trials=min(10, max(2, n_trials // 4)))
            study = optuna.create_study(study_name=run_id, storage=storage, direction="maximize",
                                        load_if_exists=True, sampler=sampler, pruner=pruner(tc))
            _check_settings(study, settings, run_id, store)
            _fail_stale(study)

            def snapshot() -> None:
                copy = Path(scratch) / f"{STUDY_FILE}.copy"
                with contextlib.closing(sqlite3.connect(local)) as src, \
                        contextlib.closing(sqlite3.connect(copy)) as dst:
                    src.backup(dst)  # a consistent copy even while the engine holds the file open
                store.write_bytes(copy.read_bytes(), STUDY_FILE)

            snapshot()
            yield study, snapshot
        finally:
            storage.remove_session()
            storage.engine.dispose()


def _check_settings(study: Any, settings: dict[str, Any], run_id: str, store: Store) -> None:
    """Record the settings on a new study; refuse a resumed one whose space, metric or model differ."""
    text = json.dumps(settings, sort_keys=True, default=str)
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if recorded is None:
        study.set_user_attr(SETTINGS_ATTR, text)
        return
    if recorded != text:
        old, new = json.loads(recorded), json.loads(text)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(
            f"tune settings must be the ones run {run_id!r}'s study was started with to resume it, got other "
            f"{', '.join(diff)} (recorded {', '.join(f'{k}={old.get(k)!r}' for k in diff)}; study "
            f"{store.uri_of(STUDY_FILE)}). Tune under a new --run-id, or restore those settings.")


def _fail_stale(study: Any) -> None:
    """Trials left RUNNING by a killed tune are marked failed (their fit is gone)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        log.warning("trial %d of study %s was left running by a stopped tune: marked failed", t.number,
                    study.study_name)
