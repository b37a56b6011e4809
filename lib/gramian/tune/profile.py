"""The tuned profile: a conf file that `extends` the tuned conf and sets the best trial's model section.

`gramian train --conf conf/ml-100k.tuned.yaml` then trains what was tuned on the data it was tuned on: the
profile layers on its base (config.load_config follows `extends`), carries the tune's `--set` overrides of
the data sections (data, generate, split) and the whole model section. Where and how to run (storage,
spark, tracking, train, evaluate, publish) stay the caller's, as for any conf.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from gramian.config import DEFAULTS_FILE, EXTENDS, Config, ModelConfig, _deep_merge, _nest, parse_override

PROFILE_SECTIONS = ("data", "generate", "split")  # --set overrides a profile keeps; model is written whole


def base_file(cfg: Config) -> str | None:
    """The conf file the tune was given (the last file layer, not the package defaults), or None."""
    files = [s for s in cfg.sources if not s.startswith("--set ") and Path(s).name != DEFAULTS_FILE]
    return files[-1] if files else None


def profile_dict(cfg: Config, model: ModelConfig, path: Path) -> dict[str, Any]:
    """The profile's content: extends (relative to the profile's folder), data overrides, the model."""
    doc: dict[str, Any] = {}
    base = base_file(cfg)
    if base is not None:  # relative when the base sits in or below the profile's folder (a repo's conf/)
        rel = os.path.relpath(Path(base).resolve(), path.resolve().parent)
        doc[EXTENDS] = str(Path(base).resolve()) if rel.startswith("..") else rel
    for source in cfg.sources:
        if source.startswith("--set "):
            key, value = parse_override(source[len("--set "):])
            if key.split(".")[0] in PROFILE_SECTIONS:
                _deep_merge(doc, _nest(key, value), {}, source)
    doc["model"] = dataclasses.asdict(model)
    return doc


def write_profile(path: str | Path, cfg: Config, model: ModelConfig, facts: dict[str, Any]) -> Path:
    """Write the profile YAML (facts about the tune as comments on top); return its path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# gramian tune profile: run {facts['run_id']}, {when}",
             f"# best of {facts['trials']} trials (trial {facts['best_trial']}): validation {facts['metric']} = "
             f"{facts['best_value']:.6g}",
             f"# validation: {facts['validation']}",
             f"# train with: gramian train --conf {p}"]
    body = yaml.safe_dump(profile_dict(cfg, model, p), sort_keys=False, default_flow_style=None)
    p.write_text("\n".join(lines) + "\n" + body)
    return p
