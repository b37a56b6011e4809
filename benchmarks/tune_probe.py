"""Single gramian fits on a dataset's tune-stage validation, scored every few epochs (issue 17: where the wins are).

    python -m benchmarks.tune_probe --dataset lastfm-2k --set dim=128 --set reg=0.4 [--epochs 30 --every 5]

One process, one thread (`peers.fit_gramian_numpy`'s steps: the Spark trainer's math without Spark), on the
pairs `gramian tune` fits and scored on the pairs it holds out (datasets.validation_split), Recall@20 after
every `--every` epochs: the curve shows what epochs would have given without a second fit. Settings are the
package defaults (conf/defaults.yaml) with `--set key=value` overrides (confidence.scale=log for the nested
key). Each fit appends one record to benchmarks/results/tune_probe.json. Never reads the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks import datasets as D
from benchmarks.evaluation import evaluate

PROBE_JSON = Path(__file__).parent / "results" / "tune_probe.json"


def settings(overrides: list[str]) -> dict[str, Any]:
    """The package defaults' model section with `key=value` overrides (YAML values), as IALS keywords."""
    from gramian.config import load_config

    m = dataclasses.asdict(load_config().model)
    for key in ("name", "support_power"):
        m.pop(key)
    for text in overrides:
        key, _, raw = text.partition("=")
        value = yaml.safe_load(raw)
        if key.startswith("confidence."):
            m["confidence"][key.split(".", 1)[1]] = value
        elif key in m:
            m[key] = value
        else:
            raise SystemExit(f"--set key must be a model key, got {key!r}")
    return m


def curve(val: D.Split, params: dict[str, Any], every: int) -> list[tuple[int, float]]:
    """(epoch, validation Recall@20) after every `every` epochs and the last of a fit with `params`."""
    from benchmarks.peers import side_csrs
    from gramian.kernels import gramian, regularization_weights, solve_side
    from gramian.train.als import init_factors
    from gramian.train.model import model_config

    m = dataclasses.asdict(model_config(**params).resolved(val.n_items, val.n_users))
    us, its = side_csrs(val, m["alpha0"], m["confidence"])
    lam_u = regularization_weights(m["reg"], m["nu"], us.counts, m["alpha0"], val.n_items, reg_counts=m["reg_counts"])
    lam_i = regularization_weights(m["reg"], m["nu"], its.counts, m["alpha0"], val.n_users,
                                   reg_counts=m["reg_counts"])
    w = init_factors(val.n_users, m["dim"], m["init_scale"], m["seed"], 0)
    h = init_factors(val.n_items, m["dim"], m["init_scale"], m["seed"], 1)
    kw = {"solver": m["solver"], "cg_steps": m["cg_steps"], "solver_block_size": m["solver_block_size"]}
    out = []
    for e in range(1, m["epochs"] + 1):
        w = solve_side(us.indptr, us.indices, us.alpha, us.target, h, gramian(h), m["alpha0"], lam_u, w,
                       **kw).astype(np.float32)
        h = solve_side(its.indptr, its.indices, its.alpha, its.target, w, gramian(w), m["alpha0"], lam_i, h,
                       **kw).astype(np.float32)
        if e % every == 0 or e == m["epochs"]:
            out.append((e, float(evaluate(val, w, h, ks=(20,))["recall@20"])))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="lastfm-2k")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    val = D.validation_split(D.load(args.dataset))
    params = settings(args.overrides)
    load = os.getloadavg()
    t0 = time.perf_counter()
    c = curve(val, params, args.every)
    rec = {"dataset": args.dataset, "validation": val.notes["split"], "label": args.label,
           "overrides": args.overrides, "params": params, "curve": c, "best": max(c, key=lambda x: x[1]),
           "seconds": round(time.perf_counter() - t0, 1), "load_before": load}
    doc = json.loads(PROBE_JSON.read_text()) if PROBE_JSON.is_file() else []
    doc.append(rec)
    PROBE_JSON.write_text(json.dumps(doc, indent=1))
    print(f"{args.dataset} {' '.join(args.overrides) or 'defaults'}: "
          + " ".join(f"e{e}={r:.4f}" for e, r in c) + f"  ({rec['seconds']} s, load {load[0]:.1f})")


if __name__ == "__main__":
    main()
