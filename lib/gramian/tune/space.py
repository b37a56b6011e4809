"""The search space: tune.space turned into Optuna suggestions, and a trial's choice into a model config.

Keys are model keys (`confidence_form` is model.confidence.form); each model searches its own keys
(config.TUNED_KEYS). Ranges were checked when the config was loaded (config._check_tune).

One key is not a model key: `reg_typical`, the regularisation lambda_c = reg * base_c^nu at a typical row
(base_c as the trainer weighs it, kernels.regularization_base: |I_c|, or |I_c| + alpha0 |I| with reg_counts
all). Searching reg and nu side by side couples them: a change of nu rescales lambda at every row (by
base^dnu, ~10-100x over the usual range), so TPE spends its trials on the ridge where reg * base^nu stays
put. Searching reg_typical instead holds lambda at the typical row while nu tilts it across rows;
`model_params` turns the draw into the ordinary model key reg = reg_typical / base_typ^nu for the trial's
nu, reg_counts and alpha0, so a trial is still a plain model config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gramian.config import TUNED_KEYS, ModelConfig, SearchRange, TuneSpaceConfig
from gramian.errors import ConfigError, InputDataError
from gramian.kernels import regularization_base

INT_KEYS = ("dim", "epochs")
REG_TYPICAL = "reg_typical"  # searched in place of reg (both: refused by config._check_tune)


@dataclass(frozen=True)
class Rows:
    """What trials fit, as reg_typical needs it: interactions per user row and per item, and the sizes."""

    users: np.ndarray
    items: np.ndarray
    n_users: int
    n_items: int


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


def baseline(model: ModelConfig, space: TuneSpaceConfig, rows: Rows | None = None) -> dict[str, Any]:
    """The conf's own setting as a trial's params: every searched key whose model value the space can draw.

    Tried first (tune.baseline), so the search starts from the setting it is asked to improve on and the
    profile never scores below it on validation; keys outside the space are left to the sampler. reg_typical
    is model.reg's lambda at the typical row of `rows` (without rows: left to the sampler)."""
    out: dict[str, Any] = {}
    for key, r in searched(space, model.name).items():
        if key == REG_TYPICAL:
            if rows is None:
                continue
            value = model.reg * typical_base(model, rows) ** model.nu
        else:
            value = model_value(model, key)
        if holds(r, value):
            out[key] = int(value) if key in INT_KEYS else value
    return out


def typical_base(model: ModelConfig, rows: Rows) -> float:
    """base_typ: the geometric mean of the median user row's and the median item row's regularisation base.

    base_c is the trainer's (kernels.regularization_base: |I_c|, or |I_c| + alpha0 * n_other with alpha0 resolved
    on these sizes), over rows with interactions; the median is the lower one, an actual row's base, so lambda at
    it is the median row's lambda on each side. Geometric, so a matrix and its transpose agree."""
    m = model.resolved(rows.n_items, rows.n_users)
    bases = []
    for side, counts, n_other in (("user", rows.users, rows.n_items), ("item", rows.items, rows.n_users)):
        c = np.asarray(counts, dtype=np.float64)
        c = c[c > 0]
        if not len(c):
            raise InputDataError(f"tune.space.reg_typical needs {side} rows with interactions, got none of "
                                 f"{len(counts)}. Tune on data with interactions, or search tune.space.reg.")
        base = regularization_base(c, float(m.alpha0), int(n_other), reg_counts=m.reg_counts)
        bases.append(float(np.partition(base, (len(base) - 1) // 2)[(len(base) - 1) // 2]))
    return math.sqrt(bases[0] * bases[1])


def model_params(model: ModelConfig, params: dict[str, Any], rows: Rows | None) -> dict[str, Any]:
    """A trial's draw as model keys: reg_typical becomes reg = reg_typical / base_typ^nu at the trial's nu,
    reg_counts and alpha0 (the other keys pass through), so lambda at the typical row is reg_typical."""
    if REG_TYPICAL not in params:
        return dict(params)
    if rows is None:
        raise ValueError("rows must be given to turn tune.space.reg_typical into model.reg, got None")
    out = {k: v for k, v in params.items() if k != REG_TYPICAL}
    m = apply(model, out)
    out["reg"] = float(params[REG_TYPICAL]) / typical_base(m, rows) ** m.nu
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
