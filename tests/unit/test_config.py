"""The typed config: layering, overrides, and errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gramian.config import CONF_DIR, Config, load_config, parse_override
from gramian.errors import ConfigError


def test_defaults_file_lists_exactly_the_keys_of_the_typed_config():
    import dataclasses

    import yaml

    raw = yaml.safe_load((CONF_DIR / "defaults.yaml").read_text())

    def keys(cls, prefix=""):
        out = set()
        for f in dataclasses.fields(cls):
            if f.name == "sources":
                continue
            if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
                sub = getattr(cls(), f.name).__class__
                out |= keys(sub, f"{prefix}{f.name}.")
            else:
                out.add(prefix + f.name)
        return out

    def yaml_keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            if isinstance(v, dict) and k != "conf" and prefix != "tune.space.":  # a space entry is one range
                out |= yaml_keys(v, f"{prefix}{k}.")
            else:
                out.add(prefix + k)
        return out

    assert yaml_keys(raw) == keys(Config)


@pytest.mark.parametrize("name", ["synthetic", "ml-100k", "lastfm-2k", "gowalla", "dense-ml1m", "dense-2k"])
def test_every_dataset_file_loads(name):
    cfg = load_config(CONF_DIR / f"{name}.yaml")
    assert cfg.data.name == name
    assert str(CONF_DIR / f"{name}.yaml") in cfg.sources


def test_set_overrides_win_over_files_and_are_typed():
    cfg = load_config(CONF_DIR / "ml-100k.yaml", ["model.dim=128", "model.alpha0=0.5", "evaluate.k=[5, 10]",
                                                  "spark.conf={spark.sql.shuffle.partitions: 8}"])
    assert cfg.model.dim == 128 and cfg.model.alpha0 == 0.5
    assert cfg.evaluate.k == (5, 10)
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": "8"}


def test_int_is_accepted_where_a_float_is_expected():
    assert load_config(None, ["model.reg=1"]).model.reg == 1.0


@pytest.mark.parametrize("override,message", [
    ("model.dimm=3", r"unknown config key 'model.dimm' \(--set model.dimm=3\)"),
    ("model.dim=abc", r"model.dim must be int, got 'abc'"),
    ("model.dim=0", r"model.dim must be > 0, got 0"),
    ("model.reg=-1", r"model.reg must be >= 0, got -1"),
    ("model.solver=sgd", r"model.solver must be one of \['cg', 'cholesky', 'subspace'\]"),
    ("split.test_fraction=1.5", r"split.test_fraction must be in \(0, 1\)"),
    ("data.header=maybe", r"data.header must be bool"),
    ("model.solver_block_size=100", r"model.solver_block_size must be in \[1, model.dim=64\]"),
    ("evaluate.k=[0, 10]", r"evaluate.k must hold positive cut-offs"),
    ("nosection.key=1", r"unknown config key 'nosection'"),
])
def test_bad_override_is_an_error_naming_the_key_and_source(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_value_in_a_file_names_that_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  epochs: -2\n")
    with pytest.raises(ConfigError, match=rf"model.epochs must be > 0, got -2 \({bad}\)"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("modle:\n  dim: 2\n")
    with pytest.raises(ConfigError, match=rf"unknown config key 'modle' \({typo}\)"):
        load_config(typo)


def test_missing_or_malformed_file_is_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="must exist"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_file_formats_that_need_a_path_require_one():
    with pytest.raises(ConfigError, match="data.path must be set"):
        load_config(None, ["data.format=csv"])


def test_gramian_data_variable_points_dataset_paths(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("GRAMIAN_DATA", str(tmp_path))
    cfg = load_config(CONF_DIR / "ml-100k.yaml")
    assert cfg.data.path == str(tmp_path / "ml-100k" / "u.data")


def test_override_syntax_errors_are_reported():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("model.dim")
    with pytest.raises(ConfigError, match="dotted"):
        parse_override(".dim=3")


def test_alpha0_null_scales_with_the_data_size() -> None:
    cfg = load_config(None, [])
    assert cfg.model.alpha0 is None and cfg.model.alpha0_scale_by == "geometric"
    m = cfg.model.resolved(2000, 500)
    assert m.alpha0 == pytest.approx(cfg.model.alpha0_total / 1000.0)  # sqrt(500 * 2000)
    assert m.resolved(10) is m  # a fixed alpha0 is kept whatever the catalogue
    by_items = load_config(None, ["model.alpha0_scale_by=items", "model.alpha0_total=400"]).model
    assert by_items.resolved(2000).alpha0 == pytest.approx(0.2)  # users not needed
    by_users = load_config(None, ["model.alpha0_scale_by=users"]).model
    assert by_users.resolved(2000, 700).alpha0 == pytest.approx(cfg.model.alpha0_total / 700)
    fixed = load_config(None, ["model.alpha0=0.05"]).model
    assert fixed.resolved(2000).alpha0 == 0.05
    with pytest.raises(ConfigError, match="non-empty item set"):
        cfg.model.resolved(0, 5)
    with pytest.raises(ConfigError, match="needs the number of training users, got None"):
        cfg.model.resolved(2000)
    with pytest.raises(ConfigError, match="model.alpha0_total must be > 0"):
        load_config(None, ["model.alpha0_total=0"])
    with pytest.raises(ConfigError, match="alpha0_scale_by"):
        load_config(None, ["model.alpha0_scale_by=catalogue"])
    with pytest.raises(ConfigError, match="reg_counts"):
        load_config(None, ["model.reg_counts=some"])


def test_model_sections_of_earlier_versions_keep_their_meaning() -> None:
    """`alpha0_items: c` was alpha0 = c/|I| with the regularisation counting all pairs."""
    old = load_config(None, ["model.alpha0_items=400"]).model
    assert (old.alpha0_total, old.alpha0_scale_by, old.reg_counts) == (400.0, "items", "all")
    assert old.resolved(1600).alpha0 == pytest.approx(0.25)
    kept = load_config(None, ["model.alpha0_items=400", "model.reg_counts=observed"]).model
    assert kept.reg_counts == "observed"
    with pytest.raises(ConfigError, match="old name of model.alpha0_total"):  # both given by the user
        load_config(None, ["model.alpha0_items=400", "model.alpha0_total=300"])
