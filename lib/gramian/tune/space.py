"""The search space: tune.space turned into Optuna suggestions, and a trial's choice into a model config.

Keys are model keys (`confidence_form` is model.confidence.form); each model searches its own keys
(config.TUNED_KEYS). Ranges were checked when the config was loaded (config._check_tune).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gramian.config import TUNED_KEYS, ModelConfig, SearchRange, TuneSpaceConfig
from gramian.errors import ConfigError

INT_KEYS = ("dim", "epochs")


def searched(space: TuneSpaceConfig, model_name: str) -> dict[str, SearchRange]:
    """The keys searched for `model_name`, with their ranges (keys set to null are not searched)."""
    return {k: r for k in TUNED_KEYS[model_name] if (r := getattr(space, k)) is not None}


def check(model: ModelConfig, space: TuneSpaceConfig) -> None:
    """ConfigError when the model config would silently override a searched key (a set alpha0 beats alpha0_total)."""
    if "alpha0_total" in searched(space, model.name) and model.alpha0 is not None:
        raise ConfigError(f"tune.space.alpha0_total is searched but model.alpha0={model.alpha0!r} is set, which "
                          f"overrides it. Set model.alpha0=null, or tune.space.alpha0_total=null to tune at this "
                          f"alpha0.")


def suggest(trial: Any, space: TuneSpaceConfig, model_name: str) -> dict[str, Any]:
    """One setting drawn by the trial's sampler (TPE): {key: value} for every searched key."""
    out: dict[str, Any] = {}
    for key, r in searched(space, model_name).items():
        if r.choices:
            out[key] = trial.suggest_categorical(key, list(r.choices))
        elif key in INT_KEYS:
            out[key] = trial.suggest_int(key, int(r.low), int(r.high), step=int(r.step or 1), log=r.log)
        else:
            out[key] = trial.suggest_float(key, float(r.low), float(r.high), step=r.step, log=r.log)
    return out


def model_value(model: ModelConfig, key: str) -> Any:
    """The model config's value of tune.space key `key` (confidence_form is model.confidence.form)."""
    if key.startswith("confidence_"):
        return getattr(model.confidence, key.split("_", 1)[1])
    return getattr(model, key)


def holds(r: SearchRange, value: Any) -> bool:
    """Whether the searched range or choices `r` can draw `value` (on its step grid, if it has one)."""
    if r.choices:
        return value in r.choices
    if isinstance(value, bool) or not isinstance(value, int | float) or not r.low <= value <= r.high:
        return False
    if r.step is None:
        return True
    k = (value - r.low) / r.step
    return abs(k - round(k)) < 1e-9


def baseline(model: ModelConfig, space: TuneSpaceConfig) -> dict[str, Any]:
    """The conf's own setting as a trial's params: every searched key whose model value the space can draw.

    Tried first (tune.baseline), so the search starts from the setting it is asked to improve on and the
    profile never scores below it on validation; keys outside the space are left to the sampler."""
    out: dict[str, Any] = {}
    for key, r in searched(space, model.name).items():
        value = model_value(model, key)
        if holds(r, value):
            out[key] = int(value) if key in INT_KEYS else value
    return out


def apply(model: ModelConfig, params: dict[str, Any]) -> ModelConfig:
    """`model` with a trial's params (confidence_* into model.confidence), validated like any model config."""
    from gramian.train.model import model_config

    data = dataclasses.asdict(model)
    for key, value in params.items():
        if key.startswith("confidence_"):
            data["confidence"][key.split("_", 1)[1]] = value
        else:
            data[key] = value
    return model_config(**data)


def describe(space: TuneSpaceConfig, model_name: str) -> dict[str, Any]:
    """The searched ranges as plain data (recorded in the study: a resumed study must search the same space)."""
    return {k: dataclasses.asdict(r) | {"choices": list(r.choices)} for k, r in searched(space, model_name).items()}
