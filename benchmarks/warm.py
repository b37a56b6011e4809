"""Daily retraining replay (issue 18): warm start from yesterday's model against a cold fit, on tomorrow's data.

A time-ordered data set is replayed as days: the first `--history` share of its interactions (by timestamp)
is day 0, the rest is cut into `--days` slices of equal size. On day t the model is trained on everything
before the cut and evaluated on the next slice (Recall@20 over every item, the user's train items excluded,
users and items unseen before the cut left out). Ids are assigned in order of first appearance, as gramian's
append-only id maps do, so yesterday's rows are today's rows of the same ids.

- cold: the package defaults from the random init (model.epochs, 15);
- warm: from the previous day's warm model (day 1 from day 0's cold fit), `--warm-epochs` epochs; new users
  and items start from the random init (gramian.train.warm.warm_rows, what train.warm_start does).

Both fit with gramian's IALS on the same local Spark session; fit seconds include block building. Recall is
compared per user (paired 95% interval of warm - cold). Data: ml-100k (timestamps) and a generated stream
(power-law pairs in a random order). Writes benchmarks/results/warm.{json,md}.

    python -m benchmarks.warm [--data ml-100k,stream] [--days 4] [--warm-epochs 1,2,3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.datasets import Split, _csr_from_pairs, data_root, power_law_interactions
from benchmarks.evaluation import evaluate_by_user, paired_difference
from benchmarks.peers import spark_session, train_dataframe

RESULTS = Path(__file__).parent / "results"
K = 20


@dataclass
class Stream:
    """Interactions in time order with first-appearance dense ids."""

    name: str
    users: np.ndarray  # int32, ordered by time
    items: np.ndarray
    weights: np.ndarray


def first_appearance(ids: np.ndarray) -> np.ndarray:
    """Dense ids numbered by first appearance (an append-only id map over a time-ordered stream)."""
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse].astype(np.int32)


def load_stream(name: str) -> Stream:
    """ml-100k ordered by timestamp (weight = rating), or a generated power-law stream (weight 1)."""
    if name == "ml-100k":
        df = pd.read_csv(data_root() / "ml-100k" / "u.data", sep="\t", header=None,
                         names=["user", "item", "rating", "ts"]).sort_values("ts", kind="stable")
        u, i, w = df["user"].to_numpy(), df["item"].to_numpy(), df["rating"].to_numpy(np.float64)
    elif name == "stream":
        u, i = power_law_interactions(20_000, 5_000, 400_000, seed=7)
        w = np.ones(len(u))
    else:
        raise ValueError(f"--data must list ml-100k or stream, got {name!r}")
    return Stream(name, first_appearance(u), first_appearance(i), w)


def day_split(s: Stream, start: int, stop: int) -> Split:
    """Train on interactions [0, start), test on [start, stop) among users and items seen before `start`."""
    n_users, n_items = int(s.users[:start].max()) + 1, int(s.items[:start].max()) + 1
    tu, ti = s.users[start:stop], s.items[start:stop]
    known = (tu < n_users) & (ti < n_items)
    train = pd.DataFrame({"u": s.users[:start], "i": s.items[:start], "w": s.weights[:start]})
    train = train.groupby(["u", "i"], as_index=False)["w"].max()  # a repeated pair keeps its strongest weight
    pairs = set(zip(train["u"].to_numpy().tolist(), train["i"].to_numpy().tolist(), strict=True))
    fresh = np.array([(a, b) not in pairs for a, b in zip(tu[known].tolist(), ti[known].tolist(), strict=True)],
                     bool)
    te_u, te_i = tu[known][fresh], ti[known][fresh]
    indptr, indices = _csr_from_pairs(te_u, te_i, n_users)
    return Split(s.name, n_users, n_items, train["u"].to_numpy(np.int32), train["i"].to_numpy(np.int32),
                 train["w"].to_numpy(np.float64), indptr, indices)


def fit(spark: Any, split: Split, epochs: int, start: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
    """One gramian IALS fit (defaults but `epochs`), cold or from `start` (previous day's factors)."""
    from gramian.train import IALS
    from gramian.train.als import FitState
    from gramian.train.init import init_factors
    from gramian.train.warm import warm_rows

    est = IALS(epochs=epochs)
    initial = None
    df = train_dataframe(spark, split)
    t0 = time.perf_counter()
    if start is not None:
        m = est.config
        w = init_factors(split.n_users, m.dim, m.init_scale, m.seed, 0)
        h = init_factors(split.n_items, m.dim, m.init_scale, m.seed, 1)
        warm_rows(w, np.arange(len(start[0])), start[0])
        warm_rows(h, np.arange(len(start[1])), start[1])
        initial = FitState(w, h)
    model = est.fit(df, split.n_users, split.n_items, initial=initial)
    seconds = time.perf_counter() - t0
    df.unpersist()
    w, h = model.user_array, model.item_array
    means, per_user = evaluate_by_user(split, w, h, (K,))
    return {"seconds": seconds, "epochs": epochs, "recall": means[f"recall@{K}"], "per_user": per_user[f"recall@{K}"],
            "factors": (w, h), "epoch_seconds": sum(s.user_seconds + s.item_seconds for s in model.history)}


def replay(spark: Any, s: Stream, days: int, history: float, warm_epochs: list[int]) -> list[dict[str, Any]]:
    """Per day: cold fit, warm fits at each of `warm_epochs`, Recall@20 and the paired warm - cold interval."""
    n = len(s.users)
    cuts = [int(n * history) + (n - int(n * history)) * d // days for d in range(days + 1)]
    rows, previous = [], None
    for d in range(days):
        split = day_split(s, cuts[d], cuts[d + 1])
        cold = fit(spark, split, 15, None)
        row: dict[str, Any] = {"day": d, "train": split.nnz, "users": split.n_users, "items": split.n_items,
                               "test": split.n_test, "cold": {k: cold[k] for k in ("seconds", "epochs", "recall")}}
        chained = cold
        if previous is not None:
            row["warm"] = []
            for e in warm_epochs:
                warm = fit(spark, split, e, previous)
                diff = paired_difference(warm["per_user"], cold["per_user"])
                row["warm"].append({"epochs": e, "seconds": warm["seconds"], "recall": warm["recall"],
                                    "time_ratio": warm["seconds"] / cold["seconds"], "recall_diff": diff,
                                    "within_interval": diff["high"] >= 0})
                chained = warm  # the daily loop continues from the largest warm fit
        previous = chained["factors"]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items()}, default=float), flush=True)
    return rows


def render(result: dict[str, Any]) -> str:
    """Markdown: per data set and day, cold vs warm seconds, Recall@20, the paired interval and the target."""
    lines = ["# Daily retraining: warm start vs cold fit (gramian IALS, package defaults, local Spark)", "",
             f"{result['date']}, {result['machine']}, load average {result['load']}, commit {result['commit']}.",
             "Warm starts from the previous day's warm model (day 1 from day 0's cold fit); cold is 15 epochs from "
             "the random init. Seconds are the whole fit (block building included). Target: warm reaches cold's "
             "Recall@20 (the paired 95% interval of warm - cold reaches 0) in <= 1/3 of cold's time.", "",
             "| data | day | train | test | cold s | cold R@20 | warm epochs | warm s | time ratio | warm R@20 | "
             "warm - cold (95%) | target |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in result["data"].items():
        for r in rows:
            c = r["cold"]
            for w in r.get("warm", [{}]):
                if not w:
                    lines.append(f"| {name} | {r['day']} | {r['train']} | {r['test']} | {c['seconds']:.1f} | "
                                 f"{c['recall']:.4f} | (day 0: cold only) | | | | | |")
                    continue
                dd = w["recall_diff"]
                ok = w["within_interval"] and w["time_ratio"] <= 1 / 3
                lines.append(f"| {name} | {r['day']} | {r['train']} | {r['test']} | {c['seconds']:.1f} | "
                             f"{c['recall']:.4f} | {w['epochs']} | {w['seconds']:.1f} | {w['time_ratio']:.2f} | "
                             f"{w['recall']:.4f} | {dd['mean']:+.4f} [{dd['low']:+.4f}, {dd['high']:+.4f}] | "
                             f"{'met' if ok else 'missed'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ml-100k,stream")
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--history", type=float, default=0.8)
    p.add_argument("--warm-epochs", default="1,2,3")
    p.add_argument("--commit", default=os.environ.get("GIT_COMMIT", "?"))
    a = p.parse_args(argv)
    spark = spark_session()
    epochs = [int(e) for e in a.warm_epochs.split(",")]
    result: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
                              "commit": a.commit, "data": {}}
    for name in a.data.split(","):
        result["data"][name] = replay(spark, load_stream(name), a.days, a.history, epochs)
    result["load"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "warm.json").write_text(json.dumps(result, indent=1, default=float))
    (RESULTS / "warm.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
