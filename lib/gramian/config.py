"""One typed, frozen configuration tree: YAML files layered on defaults, plus `--set a.b=v` overrides.

Strict on purpose: an unknown key, a wrong type or an out-of-range value is a ConfigError that
names the key and the file (or `--set`) it came from, so a typo never silently trains a default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gramian.errors import ConfigError
from gramian.storage import is_relative, resolve_root

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DEFAULTS_FILE = "defaults.yaml"


def _check(rule: str, test: Callable[[Any], bool]) -> dict[str, Any]:
    """Field metadata: a range rule, quoted in the error message when `test` fails."""
    return {"rule": rule, "test": test}


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _fraction(v: Any) -> bool:
    return 0 < v < 1


USERS_RULE = "'all', 'changed' or 'active_since:<days>' (days a positive number, e.g. active_since:7)"
TABLE_NAME_RULE = "a table name of letters, digits and '_' (not starting with a digit), or null"


def publish_users(value: str) -> tuple[str, float | None]:
    """publish.users as (mode, days): ('all', None), ('changed', None) or ('active_since', days); ConfigError else."""
    if value in ("all", "changed"):
        return value, None
    head, _, days = str(value).partition(":")
    try:
        n = float(days) if head == "active_since" else math.nan
    except ValueError:
        n = math.nan
    if not (math.isfinite(n) and n > 0):
        raise ConfigError(f"publish.users must be {USERS_RULE}, got {value!r}")
    return head, n


def _users_ok(v: Any) -> bool:
    try:
        publish_users(v)
    except ConfigError:
        return False
    return True


@dataclass(frozen=True)
class StorageConfig:
    """Where tables live (a folder of Delta tables at any Hadoop URI or mounted path, or a catalog.schema) and
    where artifacts live (checkpoints, index, reports: `artifacts`, else <root>/_artifacts)."""

    root: str = "./warehouse"
    catalog: str | None = None
    schema: str | None = None
    artifacts: str | None = None


@dataclass(frozen=True)
class SparkConfig:
    """How to build a session when none exists; ignored when one is already running."""

    master: str = "local[2]"
    app_name: str = "gramian"
    driver_memory: str = "4g"
    ivy_dir: str | None = None  # None: $GRAMIAN_IVY_DIR, else ~/.cache/gramian/ivy (see ivy_folder)
    log_level: str = "WARN"
    conf: dict[str, str] = field(default_factory=dict)
    # The executors' JIT compilers: "c1" adds -XX:TieredStopAtLevel=1 to spark.executor.extraJavaOptions (unless
    # they already choose a JIT level). gramian's kernels run in the executors' Python workers; their JVMs move
    # bytes and write tables, and C2's compiler threads cost more CPU than its code wins back in a job's life
    # (README "JVM settings"). "default": the JVM's own tiers. No effect on a local master (no executor JVMs).
    executor_jit: Literal["c1", "default"] = "c1"

    @property
    def ivy_folder(self) -> str:
        """The Ivy jar cache, expanded; $GRAMIAN_IVY_DIR gives CI or parallel runs their own cache."""
        return os.path.expanduser(self.ivy_dir or os.environ.get("GRAMIAN_IVY_DIR") or "~/.cache/gramian/ivy")


@dataclass(frozen=True)
class ColumnsConfig:
    """Source column names (or 0-based positions for headerless text) of the four logical columns."""

    user: str = "user_id"
    item: str = "item_id"
    weight: str | None = None
    ts: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """What to ingest and how to read it."""

    name: str = "synthetic"
    format: Literal["csv", "parquet", "delta", "lightgcn", "synthetic"] = "synthetic"
    path: str | None = None
    test_path: str | None = None
    sep: str = ","
    header: bool = True
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    ts_format: str | None = None
    duplicates: Literal["sum", "max", "count"] = "sum"
    min_weight: float | None = None


@dataclass(frozen=True)
class GenerateConfig:
    """Synthetic implicit feedback: power-law item popularity over planted low-rank preferences."""

    n_users: int = field(default=2000, metadata=_check("> 0", _positive))
    n_items: int = field(default=1000, metadata=_check("> 0", _positive))
    n_interactions: int = field(default=50_000, metadata=_check("> 0", _positive))
    rank: int = field(default=8, metadata=_check("> 0", _positive))
    popularity_exponent: float = field(default=1.0, metadata=_check(">= 0", _non_negative))
    signal: float = field(default=3.0, metadata=_check(">= 0", _non_negative))
    timestamps: bool = True
    counts: bool = True
    seed: int = 0


@dataclass(frozen=True)
class SplitConfig:
    """How interactions become train and test."""

    method: Literal["random", "leave_last", "strong", "given"] = "random"
    test_fraction: float = field(default=0.2, metadata=_check("in (0, 1)", _fraction))
    leave_last_k: int = field(default=1, metadata=_check("> 0", _positive))
    min_interactions: int = field(default=2, metadata=_check("> 0", _positive))
    holdout_users: float = field(default=0.1, metadata=_check("in (0, 1)", _fraction))
    seed: int = 0


@dataclass(frozen=True)
class ConfidenceConfig:
    """How an observed pair's feedback strength becomes its weight α(c,i) (kernels.observed_weights)."""

    form: Literal["rendle", "hu"] = "rendle"
    scale: Literal["constant", "linear", "log"] = "constant"
    beta: float = field(default=1.0, metadata=_check("> 0", _positive))
    eps: float = field(default=1.0, metadata=_check("> 0", _positive))


@dataclass(frozen=True)
class ModelConfig:
    """The recommender and its hyper-parameters, in the paper's names."""

    name: Literal["ials", "pairwise"] = "ials"  # pairwise: RankALS, docs/rankals.md
    dim: int = field(default=64, metadata=_check("> 0", _positive))
    epochs: int = field(default=15, metadata=_check("> 0", _positive))
    # alpha0 = null: alpha0_total / n, n from alpha0_scale_by (geometric: sqrt(|U| |I|), the same rule for a
    # matrix and its transpose), so one setting carries over to data of another size
    alpha0: float | None = field(default=None, metadata=_check(">= 0 or null", _non_negative))
    alpha0_total: float = field(default=350.0, metadata=_check("> 0", _positive))
    alpha0_scale_by: Literal["geometric", "items", "users"] = "geometric"
    reg: float = field(default=0.2, metadata=_check(">= 0", _non_negative))
    nu: float = field(default=0.75, metadata=_check(">= 0", _non_negative))
    # lambda_c = reg * base^nu, base = |I_c| (observed: ALS-WR, MLlib) or |I_c| + alpha0 |I| (all: Rendle 2022)
    reg_counts: Literal["observed", "all"] = "observed"
    solver: Literal["cg", "cholesky", "subspace"] = "cg"
    cg_steps: int = field(default=3, metadata=_check("> 0", _positive))
    solver_block_size: int | None = None
    init_scale: float = field(default=0.1, metadata=_check("> 0", _positive))
    seed: int = 0
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    support_power: float = field(default=0.0, metadata=_check(">= 0", _non_negative))  # pairwise: s_j ~ |U_j|^p

    def resolved(self, n_items: int, n_users: int | None = None) -> ModelConfig:
        """This config with alpha0 fixed for `n_users` x `n_items` training data (alpha0_total / n when null)."""
        if self.alpha0 is not None:
            return self
        if n_items <= 0:
            raise ConfigError(f"model.alpha0=null scales by the data size, got {n_items} items: "
                              "train on a non-empty item set or set model.alpha0")
        if self.alpha0_scale_by == "items":
            return dataclasses.replace(self, alpha0=self.alpha0_total / n_items)
        if n_users is None or n_users <= 0:
            raise ConfigError(f"model.alpha0=null with alpha0_scale_by={self.alpha0_scale_by!r} needs the number "
                              f"of training users, got {n_users!r}: pass the run's resolved model config (its "
                              "`runs` row records alpha0) or set model.alpha0")
        n = float(n_users) if self.alpha0_scale_by == "users" else math.sqrt(float(n_users) * float(n_items))
        return dataclasses.replace(self, alpha0=self.alpha0_total / n)


@dataclass(frozen=True)
class TrainConfig:
    """Distribution of the trainer: data blocks, checkpoints, routing."""

    num_user_blocks: int = field(default=0, metadata=_check(">= 0 (0 = auto)", _non_negative))
    num_item_blocks: int = field(default=0, metadata=_check(">= 0 (0 = auto)", _non_negative))
    checkpoint_every: int = field(default=5, metadata=_check(">= 0 (0 = never)", _non_negative))
    broadcast_max_mb: float = field(default=256.0, metadata=_check(">= 0", _non_negative))
    # train tables of at most this many interactions come to the driver (one scan) to be counted and cut into
    # CSR blocks there, instead of a counting job and a shuffle per side on the executors; 0 = never
    driver_pairs_max: int = field(default=5_000_000, metadata=_check(">= 0 (0 = never)", _non_negative))
    routing: Literal["auto", "broadcast", "routed"] = "auto"
    local_file_handoff: bool = True
    exchange: Literal["auto", "store", "closure"] = "auto"  # whole factors off a local master: see train.handoff
    warm_start: str | None = None  # "published", a run_id, or None (cold): train.warm


@dataclass(frozen=True)
class SampledConfig:
    """Sampled metrics, always reported beside their correction (Krichene & Rendle 2020)."""

    m: int = field(default=100, metadata=_check("> 0", _positive))
    sampler: Literal["uniform", "popularity"] = "uniform"
    seed: int = 0
    enabled: bool = True
    gamma: float = field(default=0.01, metadata=_check(">= 0", _non_negative))  # bias-variance trade-off


@dataclass(frozen=True)
class EvaluateConfig:
    """Which metrics at which cut-offs."""

    k: tuple[int, ...] = (10, 20, 50, 100)
    per_user: bool = False
    sampled: SampledConfig = field(default_factory=SampledConfig)
    popularity: bool = True  # the popularity baseline in the same metrics table
    compare_runs: tuple[str, ...] = ()  # other run_ids whose factors are evaluated beside this run's
    score_batch_size: int = field(default=256, metadata=_check("> 0", _positive))  # users per matrix product
    item_block: int = field(default=8192, metadata=_check("> 0", _positive))  # items per matrix product
    users_per_task: int = field(default=4096, metadata=_check("> 0", _positive))


@dataclass(frozen=True)
class PublishConfig:
    """Top-n publishing and its index."""

    n: int = field(default=100, metadata=_check("> 0", _positive))
    min_index_recall: float = field(default=0.9, metadata=_check(">= 0", _non_negative))
    index_dir: str | None = None
    brute_force_below: int = field(default=20_000, metadata=_check(">= 0", _non_negative))
    num_leaves: int = field(default=0, metadata=_check(">= 0 (0 = auto)", _non_negative))
    num_leaves_to_search: int = field(default=0, metadata=_check(">= 0 (0 = auto)", _non_negative))
    search_fraction: float = field(default=0.05, metadata=_check("in (0, 1]", lambda v: 0 < v <= 1))
    training_sample_size: int = field(default=100_000, metadata=_check("> 0", _positive))
    quantize: Literal["auto", "ah", "none"] = "auto"
    dims_per_block: int = field(default=2, metadata=_check("> 0", _positive))
    anisotropic_threshold: float = 0.2
    reorder: int = field(default=0, metadata=_check(">= 0", _non_negative))
    reorder_factor: float = field(default=4.0, metadata=_check(">= 1", lambda v: v >= 1))
    exact_history_above: int = field(default=500, metadata=_check(">= 0", _non_negative))
    recall_sample: int = field(default=1000, metadata=_check("> 0", _positive))
    batch_size: int = field(default=1024, metadata=_check("> 0", _positive))
    partitions: int = field(default=0, metadata=_check(">= 0 (0 = as read)", _non_negative))
    seed: int = 0
    # which users are scored (the rest keep their current lists): retrieval.publish, README "Daily retraining"
    users: str = field(default="all", metadata=_check(USERS_RULE, _users_ok))
    item_filter: str | None = field(default=None, metadata=_check(  # items flagged unavailable never published
        TABLE_NAME_RULE, lambda v: re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) is not None))


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking of every stage (gramian.tracking): where runs go, and whether they are logged at all."""

    enabled: bool = True
    uri: str | None = None   # null: $MLFLOW_TRACKING_URI, else SQLite under a local storage.root
    experiment: str = "gramian"
    log_model: bool = True   # the trained model as an MLflow pyfunc (fold-in top-n)


@dataclass(frozen=True)
class SearchRange:
    """One searched key of `tune.space`: a numeric range [low, high] (log scale, step) or a list of choices.

    `choices`, when not empty, replace the range (so a narrowed YAML overlay need not clear low/high).
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()


def _range(low: float, high: float, log: bool = False, step: float | None = None) -> Any:
    return field(default_factory=lambda: SearchRange(low=low, high=high, log=log, step=step))


def _choices(*values: Any) -> Any:
    return field(default_factory=lambda: SearchRange(choices=values))


@dataclass(frozen=True)
class TuneSpaceConfig:
    """What `gramian tune` searches, by model key; null: not searched (the model section's value is used).

    iALS searches alpha0_total, reg, nu, reg_counts, dim, epochs and the confidence keys; RankALS
    (model.name pairwise) reg, support_power, dim, epochs (TUNED_KEYS). confidence_* are off by default.
    reg_typical (iALS, off by default) searches lambda at a typical row in place of reg (tune.space module).
    """

    alpha0_total: SearchRange | None = _range(30.0, 3000.0, log=True)
    reg: SearchRange | None = _range(1e-4, 10.0, log=True)
    reg_typical: SearchRange | None = None  # e.g. {low: 0.01, high: 100, log: true}, with reg: null
    nu: SearchRange | None = _range(0.0, 1.25)
    reg_counts: SearchRange | None = _choices("observed", "all")
    dim: SearchRange | None = _choices(64, 128, 256)  # larger d wins once regularised (Rendle et al. 2022)
    epochs: SearchRange | None = _range(5.0, 25.0, step=5.0)
    confidence_form: SearchRange | None = None
    confidence_scale: SearchRange | None = None
    support_power: SearchRange | None = _range(0.0, 1.0)


# model.name -> the tune.space keys searched for it (the others do not apply to that model)
TUNED_KEYS: dict[str, tuple[str, ...]] = {
    "ials": ("alpha0_total", "reg", "reg_typical", "nu", "reg_counts", "dim", "epochs", "confidence_form",
             "confidence_scale"),
    "pairwise": ("reg", "support_power", "dim", "epochs", "confidence_scale"),
}


@dataclass(frozen=True)
class TuneConfig:
    """`gramian tune`: the validation metric, budgets, pruning and the search space (gramian.tune)."""

    metric: Literal["recall", "recall_min", "precision", "ap", "ndcg"] = "recall"
    k: int = field(default=20, metadata=_check("> 0", _positive))
    trials: int = field(default=20, metadata=_check("> 0", _positive))  # the study's total (--trials)
    budget_minutes: float = field(default=0.0, metadata=_check(">= 0 (0 = none)", _non_negative))
    validation_fraction: float | None = field(default=None, metadata=_check("in (0, 1) or null", _fraction))
    seed: int = 0
    pruner: Literal["median", "none"] = "median"
    prune_every: int = field(default=5, metadata=_check("> 0", _positive))  # epochs between validation checks
    startup_trials: int = field(default=2, metadata=_check(">= 0", _non_negative))  # trials before pruning
    warmup_epochs: int = field(default=2, metadata=_check(">= 0", _non_negative))  # no pruning before this epoch
    baseline: bool = True  # a new study's first trial is the conf's own model setting (tune.space.baseline)
    space: TuneSpaceConfig = field(default_factory=TuneSpaceConfig)


@dataclass(frozen=True)
class Config:
    """The whole configuration tree; sections and key names are the ones scripts and docs rely on."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    sources: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for the `runs` table and logs)."""
        d = dataclasses.asdict(self)
        d.pop("sources", None)
        return d


# ---------------------------------------------------------------- loading


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any], origin: dict[str, str], src: str,
                prefix: str = "") -> None:
    for key, value in over.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(base.get(key), dict) and key != "conf":
            _deep_merge(base[key], value, origin, src, dotted + ".")
        elif isinstance(value, Mapping) and key != "conf":
            base[key] = {}
            _deep_merge(base[key], value, origin, src, dotted + ".")
        else:
            base[key] = value
            origin[dotted] = src


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file must exist, got {str(path)!r}. Pass a path under conf/, e.g. "
                          f"conf/ml-100k.yaml.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level, got "
                          f"{type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Split one `--set section.key=value` into its dotted key and YAML-typed value."""
    if "=" not in text:
        raise ConfigError(f"--set must look like section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set key must be dotted like model.dim, got {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for part in parts[:-1]:
        cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value
    return out


def _coerce(tp: Any, value: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp`; int -> float and list -> tuple are the only coercions."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{key} must be {_type_name(tp)}, got {value!r} ({where})")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, where)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key} must be one of {list(args)}, got {value!r} ({where})")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            value = [value]
        return tuple(_coerce(args[0], v, key, where) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        return {str(k): str(v) if not isinstance(v, bool) else str(v).lower() for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, data: Mapping[str, Any], origin: Mapping[str, str], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "sources"}
    if cls is ModelConfig and "alpha0_items" in data:
        data = _legacy_model(data, origin, prefix)
    for key in data:
        if key not in fields:
            dotted = f"{prefix}{key}"
            where = origin.get(dotted) or _first_origin(origin, dotted + ".")
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key {dotted!r} ({where}). Known keys here: {known}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        dotted = f"{prefix}{name}"
        tp = hints[name]
        value = data[name]
        optional = _optional_dataclass(tp)
        if optional is not None and value is None:
            kwargs[name] = None
            continue
        if optional is not None:
            tp = optional
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted} must be a mapping, got {value!r} ({origin.get(dotted, '?')})")
            kwargs[name] = _build(tp, value, origin, dotted + ".")
            continue
        where = origin.get(dotted, "defaults")
        value = _coerce(tp, value, dotted, where)
        check = f.metadata.get("test")
        if check is not None and value is not None and not check(value):
            raise ConfigError(f"{dotted} must be {f.metadata['rule']}, got {value!r} ({where})")
        kwargs[name] = value
    return cls(**kwargs)


def _optional_dataclass(tp: Any) -> Any:
    """The dataclass of an `X | None` annotation (a section that may be null), else None."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) and type(None) in typing.get_args(tp) \
        else None


def _legacy_model(data: Mapping[str, Any], origin: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """Model sections of earlier versions (`alpha0_items`: alpha0 = c/|I|, reg counts all pairs) keep their meaning."""
    def set_here(key: str) -> bool:  # set by the user's file, an override or a stored row, not the defaults
        return key in data and not origin.get(prefix + key, "").endswith(DEFAULTS_FILE)

    if set_here("alpha0_total") or set_here("alpha0_scale_by"):
        raise ConfigError(f"{prefix}alpha0_items is the old name of {prefix}alpha0_total with alpha0_scale_by=items "
                          f"({origin.get(prefix + 'alpha0_items', '?')}): keep only alpha0_total and alpha0_scale_by")
    out = {k: v for k, v in data.items() if k != "alpha0_items"}
    out.update(alpha0_total=data["alpha0_items"], alpha0_scale_by="items")
    if not set_here("reg_counts"):
        out["reg_counts"] = "all"
    return out


def _first_origin(origin: Mapping[str, str], prefix: str) -> str:
    for k, v in origin.items():
        if k.startswith(prefix):
            return v
    return "?"


EXTENDS = "extends"  # a conf file's key naming the file it layers on (a tuned profile extends its base)


def _layers(path: Path, base_dir: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """`path`'s YAML and, first, the files it `extends` (recursively): the layers to merge, base first.

    `extends: FILE` is found beside `path` first, then as given (absolute or from the working folder),
    then by name under conf/.
    """
    data = _read_yaml(path)
    base = data.pop(EXTENDS, None)
    if base is None:
        return [(path, data)]
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{EXTENDS} must name a config file, got {base!r} ({path}). Write e.g. "
                          f"{EXTENDS}: ml-100k.yaml")
    expanded = Path(os.path.expanduser(os.path.expandvars(base)))
    candidates = [path.parent / expanded, expanded, base_dir / expanded.name]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ConfigError(f"{EXTENDS} must name an existing config file, got {base!r} ({path}); looked at "
                          f"{', '.join(str(c) for c in candidates)}.")
    chain = (*seen, path.resolve())
    if found.resolve() in chain:
        raise ConfigError(f"{EXTENDS} must not form a cycle, got {base!r} ({path}) which is already being loaded "
                          f"({' -> '.join(str(c) for c in chain)}).")
    return [*_layers(found, base_dir, chain), (path, data)]


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                conf_dir: str | Path | None = None) -> Config:
    """Load defaults, then `path` (a dataset/profile file, after the files it `extends`), then `--set` overrides;
    validate strictly."""
    base_dir = Path(conf_dir) if conf_dir else CONF_DIR
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    sources: list[str] = []
    defaults = base_dir / DEFAULTS_FILE
    if defaults.is_file():
        _deep_merge(merged, _read_yaml(defaults), origin, str(defaults))
        sources.append(str(defaults))
    if path is not None:
        p = Path(path)
        if not p.is_file() and (base_dir / p.name).is_file() and not p.parent.parts:
            p = base_dir / p.name
        for layer, data in _layers(p, base_dir):
            _deep_merge(merged, data, origin, str(layer))
            sources.append(str(layer))
    for text in overrides:
        key, value = parse_override(text)
        _deep_merge(merged, _nest(key, value), origin, f"--set {text}")
        sources.append(f"--set {text}")
    cfg = _build(Config, merged, origin)
    data = dataclasses.replace(cfg.data, path=expand_path(cfg.data.path),
                               test_path=expand_path(cfg.data.test_path))
    cfg = dataclasses.replace(cfg, data=data, storage=_resolved_storage(cfg.storage, origin),
                              sources=tuple(sources))
    _cross_checks(cfg)
    return cfg


def _resolved_storage(st: StorageConfig, origin: Mapping[str, str]) -> StorageConfig:
    """storage.root / storage.artifacts made absolute once, here on the driver (URIs are left as given).

    Under spark-submit cluster deploy mode the driver's working directory is a scratch folder on some
    cluster node, so a relative path there is refused rather than resolved.
    """
    out = {}
    for key in ("root", "artifacts"):
        value = getattr(st, key)
        if value is None:
            continue
        if is_relative(value) and _cluster_deploy_mode():
            raise ConfigError(f"storage.{key} must be an absolute path or a URI under spark-submit cluster deploy "
                              f"mode, got {value!r} ({origin.get('storage.' + key, 'defaults')}). The driver runs "
                              f"in a scratch folder of a cluster node: set storage.{key}=s3a://bucket/path (or "
                              f"abfss://, gs://, hdfs://, a /Volumes/... path).")
        out[key] = resolve_root(value)
    return dataclasses.replace(st, **out)


def _cluster_deploy_mode() -> bool:
    """True in a driver that spark-submit started in cluster deploy mode (YARN; Kubernetes' driver pod)."""
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):  # not launched by spark-submit: nothing to ask
        return False
    try:
        from pyspark import SparkConf, SparkContext

        SparkContext._ensure_initialized()
        conf = SparkConf()  # backed by the JVM's system properties: spark-submit's settings
        return (conf.get("spark.submit.deployMode", "client") == "cluster"
                or conf.get("spark.kubernetes.submitInDriver", "false") == "true")
    except Exception:  # noqa: BLE001 - no JVM to ask: treat as client mode
        return False


def data_root() -> str:
    """The shared datasets folder: $GRAMIAN_DATA, else ../shared/data beside the checkout."""
    return os.environ.get("GRAMIAN_DATA") or str(CONF_DIR.parent.parent / "shared" / "data")


def expand_path(path: str | None) -> str | None:
    """Expand `${GRAMIAN_DATA}`, other environment variables and `~` in a configured path."""
    if path is None:
        return None
    path = path.replace("${GRAMIAN_DATA}", data_root())
    return os.path.expanduser(os.path.expandvars(path))


def _cross_checks(cfg: Config) -> None:
    """Rules that involve more than one key."""
    m = cfg.model
    if m.solver_block_size is not None and not 1 <= m.solver_block_size <= m.dim:
        raise ConfigError(f"model.solver_block_size must be in [1, model.dim={m.dim}], got "
                          f"{m.solver_block_size}. Use model.dim for exact ALS, 1 for iCD.")
    if any(k <= 0 for k in cfg.evaluate.k):
        raise ConfigError(f"evaluate.k must hold positive cut-offs, got {list(cfg.evaluate.k)}")
    d = cfg.data
    if d.format != "synthetic" and not d.path:
        raise ConfigError(f"data.path must be set when data.format is {d.format!r}. Set it in the conf "
                          f"file or with --set data.path=...")
    if cfg.split.method == "given" and not d.test_path:
        raise ConfigError("data.test_path must be set when split.method is 'given'.")
    if cfg.split.method == "leave_last" and not d.columns.ts and d.format not in ("synthetic",):
        raise ConfigError("split.method 'leave_last' needs timestamps: set data.columns.ts.")
    _check_tune(cfg)


_INT_KEYS = ("dim", "epochs")
_CHOICE_KEYS = ("reg_counts", "confidence_form", "confidence_scale")


def _check_tune(cfg: Config) -> None:
    """Every searched key of tune.space gives a usable range or choices, each a valid value of its model key."""
    space = cfg.tune.space
    if "reg_typical" in TUNED_KEYS[cfg.model.name] and space.reg is not None and space.reg_typical is not None:
        raise ConfigError(f"tune.space.reg and tune.space.reg_typical must not both be searched (reg_typical "
                          f"sets reg from each trial's nu), got reg {_range_text(space.reg)} and reg_typical "
                          f"{_range_text(space.reg_typical)}. Set tune.space.reg: null to search reg_typical.")
    for key in TUNED_KEYS[cfg.model.name]:
        r = getattr(space, key)
        if r is None:
            continue
        name = f"tune.space.{key}"
        if r.choices:
            values = list(r.choices)
        else:
            if key in _CHOICE_KEYS:
                raise ConfigError(f"{name} must list choices (it is categorical), got {_range_text(r)}. "
                                  f"Set {name}.choices, e.g. [{getattr(cfg.model, key, 'a, b')}], or null.")
            if r.low is None or r.high is None:
                raise ConfigError(f"{name} must give both low and high (or choices), got {_range_text(r)}. "
                                  f"Set both, or {name}: null to keep model.{key} fixed.")
            if r.low > r.high:
                raise ConfigError(f"{name}.low must be <= high, got low={r.low!r}, high={r.high!r}.")
            if r.log and r.low <= 0:
                raise ConfigError(f"{name}.low must be > 0 on a log scale, got {r.low!r}. Raise low or set "
                                  f"{name}.log: false.")
            if r.step is not None and r.step <= 0:
                raise ConfigError(f"{name}.step must be > 0 or null, got {r.step!r}.")
            if r.log and r.step is not None:
                raise ConfigError(f"{name} must not combine log: true with a step, got step={r.step!r}. "
                                  f"Drop one of them.")
            if key in _INT_KEYS and any(v is not None and float(v) != int(v) for v in (r.low, r.high, r.step)):
                raise ConfigError(f"{name} must have whole-number low/high/step (model.{key} is an integer), got "
                                  f"{_range_text(r)}.")
            values = [r.low, r.high]
        model_key = "reg" if key == "reg_typical" else key  # lambda at a typical row: a reg value's rule
        for v in values:
            _check_model_value(model_key,
                               int(v) if key in _INT_KEYS and isinstance(v, float) and v.is_integer() else v, name)


def _range_text(r: SearchRange) -> str:
    return f"low={r.low!r}, high={r.high!r}, log={r.log!r}, step={r.step!r}, choices={list(r.choices)!r}"


def _check_model_value(key: str, value: Any, name: str) -> None:
    """ConfigError naming `name` when `value` is not a valid model value for tune.space key `key`."""
    if key.startswith("confidence_"):
        sub = key.split("_", 1)[1]
        data: dict[str, Any] = {"confidence": {sub: value}}
        dotted = f"model.confidence.{sub}"
    else:
        data, dotted = {key: value}, f"model.{key}"
    try:
        _build(ModelConfig, data, {dotted: name}, "model.")
    except ConfigError as e:
        raise ConfigError(f"{name} must hold valid values of {dotted}, got {value!r}: {e}") from None
