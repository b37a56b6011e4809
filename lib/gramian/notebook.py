"""Run the Databricks source notebooks (notebooks/*.py) outside Databricks: a local session and stand-ins.

A notebook sees the globals Databricks gives it: `spark`, `dbutils` (only `dbutils.widgets` is stood in
for), and `display`. Usage: `python -m gramian.notebook notebooks/02_train_evaluate.py --widget dim=16`.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HEADER = "# Databricks notebook source"
CELL = "# COMMAND ----------"


class Widgets:
    """The part of `dbutils.widgets` the notebooks use; values given up front win over the defaults."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._given = {k: str(v) for k, v in (values or {}).items()}
        self._defaults: dict[str, str] = {}

    def text(self, name: str, default_value: str = "", label: str | None = None) -> None:
        self._defaults[name] = str(default_value)

    def dropdown(self, name: str, default_value: str, choices: Sequence[str], label: str | None = None) -> None:
        value = self._given.get(name, default_value)
        if value not in choices:
            raise ValueError(f"widget {name} must be one of {list(choices)}, got {value!r}")
        self._defaults[name] = str(default_value)

    def get(self, name: str) -> str:
        if name in self._given:
            return self._given[name]
        if name not in self._defaults:
            raise ValueError(f"widget {name!r} must be defined (dbutils.widgets.text) before it is read")
        return self._defaults[name]

    def getAll(self) -> dict[str, str]:  # noqa: N802 (Databricks' name)
        return {**self._defaults, **self._given}

    def removeAll(self) -> None:  # noqa: N802 (Databricks' name)
        self._defaults.clear()


class DBUtils:
    """A stand-in for Databricks' `dbutils`: widgets only."""

    def __init__(self, widgets: Mapping[str, str] | None = None) -> None:
        self.widgets = Widgets(widgets)


def config_from_widgets(dbutils: Any, conf: str | None = None, **keys: str) -> Any:
    """The Config the widgets describe: `conf` file, `;`-separated `overrides`, `storage_root`, then `keys`.

    `keys` maps a config key to a widget name, e.g. model_dim="dim" reads widget dim into model.dim;
    `conf` replaces the conf widget's file (e.g. a tuned profile).
    """
    from gramian.config import load_config

    w = dbutils.widgets
    overrides = [o.strip() for o in w.get("overrides").split(";") if o.strip()]
    if w.get("storage_root"):
        overrides.append(f"storage.root={w.get('storage_root')}")
    overrides += [f"{key.replace('__', '.')}={w.get(widget)}" for key, widget in keys.items() if w.get(widget)]
    return load_config(conf or w.get("conf") or None, overrides)


def display(obj: Any, n: int = 20) -> None:
    """Databricks' `display`: show a DataFrame's first rows, a figure's existence, anything else's repr."""
    if hasattr(obj, "show") and hasattr(obj, "columns"):
        obj.show(n, truncate=False)
    elif hasattr(obj, "savefig"):
        print(f"<figure {getattr(obj, 'number', '')}>")
    else:
        print(obj)


def cells(path: str | Path) -> list[str]:
    """The notebook's cells (source format), checking the Databricks header."""
    text = Path(path).read_text()
    if not text.startswith(HEADER):
        raise ValueError(f"{path} must start with {HEADER!r} (Databricks source format)")
    return [c.strip() for c in text[len(HEADER):].split(CELL)]


def run_notebook(path: str | Path, widgets: Mapping[str, str] | None = None, spark: Any = None) -> dict[str, Any]:
    """Execute a source notebook top to bottom with spark/dbutils/display; return its globals."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    cells(path)
    if spark is None:
        from gramian.spark import get_session

        spark = get_session()
    return runpy.run_path(str(path), init_globals={"spark": spark, "dbutils": DBUtils(widgets),
                                                   "display": display}, run_name="__main__")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gramian.notebook NOTEBOOK [--widget name=value ...]`."""
    parser = argparse.ArgumentParser(prog="python -m gramian.notebook", description=__doc__.splitlines()[0])
    parser.add_argument("notebook", help="a notebooks/*.py file in Databricks source format")
    parser.add_argument("--widget", action="append", default=[], metavar="NAME=VALUE", help="set a widget")
    args = parser.parse_args(argv)
    widgets = dict(w.split("=", 1) for w in args.widget)
    run_notebook(args.notebook, widgets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
