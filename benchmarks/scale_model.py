"""A scale model of gramian's iALS training, fitted on runs measured on this machine and projected past it.

Pure Python/numpy: no Spark and no gramian import (it runs while the cores are busy, and it reads only
benchmarks/results/train.json and cluster.json). It fits kernel seconds per (interaction * d) and per
(row * d^2) on the one-thread numpy runs, checks the fit against runs it was not fitted on, prices the bytes,
memory and Spark overhead of a half-step for each factor exchange, and projects 1B interactions
(100M users x 10M items) on 50 and 200 executors. Writes benchmarks/results/scale.{json,md}; docs/scale.md
explains it. Run: `python benchmarks/scale_model.py` (numpy only).
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
GIB = 2**30
CG_STEPS = 3  # model.cg_steps default (conf/defaults.yaml); the fitted constants hold for this value
BROADCAST_MAX_MB = 256  # train.broadcast_max_mb default (conf/defaults.yaml)
NNZ_PER_BLOCK = 4_000_000  # default_num_blocks in lib/gramian/train/als.py: blocks of at most ~4M interactions
CSR_BYTES_PER_NNZ = 20  # indices int32 + alpha float64 + target float64 (lib/gramian/train/blocks.py)
CSR_BYTES_PER_ROW = 8  # indptr int64
TASK_MEMORY_SHARE = 1 / 8  # lib/gramian/train/routed.py: a routed task's estimated bytes per executor memory per core
MAX_BLOCKS = 65_536  # lib/gramian/train/routed.py: the most blocks sized_layouts gives a side


@dataclass(frozen=True)
class Cluster:
    """The hardware a projection assumes: none of these numbers is measured here (docs/scale.md says why)."""

    executors: int
    cores: int = 4  # per executor
    memory_gib: float = 32.0  # per executor, heap + overhead (Python workers)
    shuffle_gbps: float = 0.5  # GB/s per executor through a shuffle (serialise, write, fetch, read): assumed
    driver_collect_gbps: float = 0.3  # GB/s of results collected to the driver through toArrow: assumed
    task_overhead_s: float = 0.001  # driver-side seconds per task launched (~1000 tasks/s): assumed


@dataclass(frozen=True)
class Scenario:
    """The data a projection is for; popularity is the synthetic generator's (benchmarks/datasets.py)."""

    interactions: float = 1e9
    users: int = 100_000_000
    items: int = 10_000_000
    user_exponent: float = 0.6  # power_law_interactions defaults
    item_exponent: float = 0.9


# ---------------------------------------------------------------- inputs from the measured runs

def steady(xs: list[float]) -> float:
    """Median over epochs 2.. (epoch 1 includes numba compilation and Spark warm-up)."""
    return float(np.median(xs[1:])) if len(xs) > 1 else float(xs[0])


def measured(train: dict[str, Any], cluster: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The half-step seconds this model uses, by run, with where each comes from.

    The kernel runs (one-thread numpy on three datasets, local Gowalla at d=64 and 256, local 10M) come from one
    train.json run; when the current train.json no longer has them all at those d (later benchmark runs keep
    other rows), the set recorded in the previous scale.json (`previous`, its "inputs") is kept whole.
    """
    try:
        out = kernel_inputs(train)
    except KeyError:
        if not previous:
            raise
        out = {k: previous["inputs"][k] for k in ("numpy_1proc", "local", "train_date")}
        out["train_source"] = "kept from the previous scale.json (train.json no longer has these runs)"
    return {**out, **cluster_inputs(cluster, previous)}


def kernel_inputs(train: dict[str, Any]) -> dict[str, Any]:
    """The kernel runs of one train.json (KeyError when one is missing or at another d)."""
    runs = {(r["dataset"], r["label"]): r for r in train["runs"]}

    def sides(r: dict[str, Any]) -> dict[str, Any]:
        s = r["split"]
        return {"dim": r["params"].get("dim"), "users": s["users"], "items": s["items"], "nnz": s["train"],
                "user_s": steady(r["extra"]["user_seconds"]), "item_s": steady(r["extra"]["item_seconds"]),
                "epoch_s_steady": steady(r["epoch_seconds"]), "epoch_s_reported": r["seconds_per_epoch"],
                "load_before": r.get("load_before")}

    out: dict[str, Any] = {"numpy_1proc": {}, "local": {}}
    for ds in ("ml-100k", "lastfm-2k", "gowalla"):
        out["numpy_1proc"][ds] = sides(runs[(ds, "gramian numpy 1-proc")])
    out["local"]["gowalla d=64"] = sides(runs[("gowalla", "gramian (defaults)")])
    out["local"]["gowalla d=256"] = sides(runs[("gowalla", "gramian (conf)")])
    out["local"]["synthetic10m d=128"] = sides(runs[("synthetic10m", "gramian (defaults)")])
    if out["local"]["gowalla d=256"]["dim"] != 256:
        raise KeyError("gowalla (conf) is not at d=256")
    out["train_date"] = train["machine"]["date"]
    out["train_source"] = "train.json"
    return out


def cluster_inputs(cluster: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cluster run's per half-step rest, kernel and fetch seconds and Python/JVM peaks (cluster.json); a job the
    run did not have (cluster_bench no longer runs gramian-closure by default) is kept from the previous
    scale.json, and `cluster_kept` names it."""
    out: dict[str, Any] = {"cluster": {}, "cluster_kept": []}
    for job in ("gramian-auto", "gramian-closure", "gramian-routed"):
        if job not in cluster["jobs"] and previous and job in previous["inputs"].get("cluster", {}):
            out["cluster"][job] = previous["inputs"]["cluster"][job]
            out["cluster_kept"].append(job)
            continue
        eps = cluster["jobs"][job]["epochs"]
        row = {}
        for side in ("user", "item"):
            wall = [e[f"{side}_seconds"] for e in eps]
            kernel = [e[f"{side}_kernel_seconds"] for e in eps]
            fetch = [e[f"{side}_fetch_seconds"] for e in eps]
            slots = cluster["cluster"]["workers"] * cluster["cluster"]["cores_per_worker"]
            rest = [w - (k + f) / slots for w, k, f in zip(wall, kernel, fetch, strict=True)]
            row[side] = {"wall": steady(wall), "kernel_sum": steady(kernel), "fetch_sum": steady(fetch),
                         "rest": steady(rest)}
        row["python_peak_mib"] = max(v["python"] for v in cluster["jobs"][job]["worker_peak_by_command_mib"])
        row["java_peak_mib"] = max(v["java"] for v in cluster["jobs"][job]["worker_peak_by_command_mib"])
        out["cluster"][job] = row
    out["cluster_setup"] = {**cluster["cluster"], "load_before": cluster["machine"]["load_before"],
                            "date": cluster["machine"]["date"], "git_commit": cluster["machine"]["git_commit"],
                            "dataset": cluster["dataset"], "dim": cluster["dim"], **cluster["split"]}
    return out


# ---------------------------------------------------------------- kernel seconds

def kernel_terms(nnz: float, rows: float, d: int) -> tuple[float, float]:
    """The two work terms of a CG half-step: interactions*d and rows*d^2 (paper §5.1: steps*(|I_c|d + d^2))."""
    return nnz * d, rows * d * d


def fit_kernel(points: list[dict[str, float]]) -> dict[str, Any]:
    """Least squares (relative error) of seconds = a*nnz*d + b*rows*d^2 over one-thread half-steps."""
    x = np.array([kernel_terms(p["nnz"], p["rows"], p["d"]) for p in points])
    t = np.array([p["seconds"] for p in points])
    (a, b), *_ = np.linalg.lstsq(x / t[:, None], np.ones(len(t)), rcond=None)
    pred = x @ np.array([a, b])
    return {"a_s_per_nnz_d": float(a), "b_s_per_row_d2": float(b),
            "points": [{**p, "predicted": float(q), "error": float(q / p["seconds"] - 1)}
                       for p, q in zip(points, pred, strict=True)]}


def kernel_seconds(k: dict[str, Any], nnz: float, rows: float, d: int, a: float | None = None) -> float:
    """One-core kernel seconds of a half-step over `nnz` interactions and `rows` rows at rank d."""
    w_nnz, w_rows = kernel_terms(nnz, rows, d)
    return (a if a is not None else k["a_s_per_nnz_d"]) * w_nnz + k["b_s_per_row_d2"] * w_rows


def numpy_points(m: dict[str, Any]) -> list[dict[str, float]]:
    """(dataset, side, nnz, rows, d, seconds) of every one-thread numpy half-step (train.json)."""
    pts = []
    for ds, r in m["numpy_1proc"].items():
        for side, rows in (("user", r["users"]), ("item", r["items"])):
            pts.append({"run": f"{ds} {side}", "nnz": r["nnz"], "rows": rows, "d": r["dim"],
                        "seconds": r[f"{side}_s"]})
    return pts


def default_num_blocks(parallelism: int, nnz: float) -> int:
    """lib/gramian/train/als.py default_num_blocks, restated (this script imports no gramian)."""
    return parallelism * math.ceil(max(1, math.ceil(nnz / NNZ_PER_BLOCK)) / parallelism)


def local_half_step(k: dict[str, Any], nnz: float, rows: float, d: int, overhead: float, cores: int = 2,
                    a: float | None = None) -> float:
    """Predicted wall seconds of a local-master half-step: kernel spread over the cores plus fixed overhead."""
    blocks = default_num_blocks(cores, nnz)
    waves = math.ceil(blocks / cores)
    return kernel_seconds(k, nnz, rows, d, a) / blocks * waves + overhead


def checks(m: dict[str, Any], k: dict[str, Any]) -> dict[str, Any]:
    """The fit against runs it was not fitted on: local Spark runs (d=64 gives the overhead) and the cluster."""
    g64 = m["local"]["gowalla d=64"]
    over = {s: g64[f"{s}_s"] - kernel_seconds(k, g64["nnz"], g64[f"{s}s"], 64) / 2 for s in ("user", "item")}
    overhead = float(np.mean(list(over.values())))
    out: dict[str, Any] = {"local_overhead_s": overhead, "local_overhead_by_side": over, "items": []}

    def add(name: str, predicted: float, actual: float, note: str) -> None:
        out["items"].append({"check": name, "predicted": predicted, "measured": actual,
                             "error": predicted / actual - 1, "note": note})

    g256 = m["local"]["gowalla d=256"]
    for s in ("user", "item"):
        add(f"gowalla d=256 local {s} half-step s", local_half_step(k, g256["nnz"], g256[f"{s}s"], 256, overhead),
            g256[f"{s}_s"], "d-scaling: fit at d=64 only")
    syn = m["local"]["synthetic10m d=128"]
    per_side = {s: local_half_step(k, syn["nnz"], syn[f"{s}s"], 128, overhead) for s in ("user", "item")}
    for s in ("user", "item"):
        add(f"synthetic10m d=128 local {s} half-step s", per_side[s], syn[f"{s}_s"], "12x Gowalla's nnz, d=128")
    add("synthetic10m d=128 local s/epoch (epochs 2-3)", sum(per_side.values()), syn["epoch_s_steady"],
        "the 10M check the issue asks for")
    cl = m["cluster"]["gramian-auto"]
    cs = m["cluster_setup"]
    for s, rows in (("user", cs["users"]), ("item", cs["items"])):
        add(f"cluster gowalla d=64 store {s} kernel s (sum over tasks)", kernel_seconds(k, cs["train"], rows, 64),
            cl[s]["kernel_sum"], "same data, Spark Python workers under load")
    return out


def dram_constants(m: dict[str, Any], k: dict[str, Any], overhead: float) -> dict[str, float]:
    """a (s per nnz*d) per side that makes the 10M run's half-steps come out as measured (b, overhead kept).

    Gowalla's fixed-side factors (7.6-10.5 MiB) fit in the CPU caches; the 10M run's (98 MiB of items for
    the user step, 486 MiB of users for the item step) do not, and neither will a 1B block's routed rows:
    the projection uses these, the Gowalla constant gives its lower bound.
    """
    syn = m["local"]["synthetic10m d=128"]
    blocks = default_num_blocks(2, syn["nnz"])
    spread = math.ceil(blocks / 2) / blocks  # 4 blocks on 2 cores: each core runs half of them
    out = {}
    for s in ("user", "item"):
        kernel = (syn[f"{s}_s"] - overhead) / spread
        out[s] = (kernel - k["b_s_per_row_d2"] * syn[f"{s}s"] * 128 * 128) / (syn["nnz"] * 128)
    return out


# ---------------------------------------------------------------- popularity and routed rows

@lru_cache(maxsize=4)
def zipf_weights(n: int, exponent: float) -> np.ndarray:
    """Normalised Zipf weights r^-exponent, r = 1..n (the generator's popularity)."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


def expected_distinct(k: float, weights: np.ndarray) -> float:
    """Expected distinct rows among k draws with these weights: sum(1 - exp(-k w)) (Poisson approximation)."""
    return float(np.sum(-np.expm1(-k * weights)))


@dataclass
class SideShape:
    """One side's block structure at scale: rows, interactions, the heaviest block and routed rows."""

    rows: int
    blocks: int
    nnz_per_block: float
    heaviest_block_nnz: float  # the block that holds the most popular row (skew)
    routed_per_block: float  # distinct other-side rows a typical block references
    routed_heaviest: float  # distinct other-side rows the heaviest block references
    routed_total: float  # summed over blocks: rows shipped per half-step


@lru_cache(maxsize=256)
def side_shapes(sc: Scenario, user_blocks: int, item_blocks: int) -> dict[str, SideShape]:
    """Block sizes and routed rows for both sides under the generator's popularity.

    The most popular row's interactions are distinct pairs, as the generator keeps them: the top item's
    count is the expected number of distinct users among its draws (likewise the top user's items).
    """
    pu, pi = zipf_weights(sc.users, sc.user_exponent), zipf_weights(sc.items, sc.item_exponent)
    top_user = expected_distinct(sc.interactions * pu[0], pi)
    top_item = expected_distinct(sc.interactions * pi[0], pu)
    u_per, i_per = sc.interactions / user_blocks, sc.interactions / item_blocks
    u_typ = expected_distinct(u_per, pi)  # a user block references this many items
    i_typ = expected_distinct(i_per, pu)  # an item block references this many users
    return {
        "user": SideShape(sc.users, user_blocks, u_per, max(u_per, top_user), u_typ, max(u_typ, top_user),
                          u_typ * user_blocks),
        "item": SideShape(sc.items, item_blocks, i_per, max(i_per, top_item), i_typ, max(i_typ, top_item),
                          i_typ * item_blocks),
    }


# ---------------------------------------------------------------- one half-step at scale

OTHER = {"user": "item", "item": "user"}


def exchange_mode(n_users: int, n_items: int, d: int) -> str:
    """What BlockTrainer picks off a local master with the defaults (routing: auto, exchange: auto, the train
    stage's store): routed rows once both factor tables exceed broadcast_max_mb, else the store."""
    factor_mb = (n_users + n_items) * d * 4 / 2**20
    return "routed" if factor_mb > BROADCAST_MAX_MB else "store"


def task_estimate(shapes: dict[str, SideShape], side: str, d: int) -> dict[str, float]:
    """routed.block_task_bytes restated for a typical block and the top row's block: as a destination its CSR,
    own and new rows and routed rows; as a source its rows and the slices cut from them (on average, the other
    side's routed rows over this side's blocks)."""
    s, o = shapes[side], shapes[OTHER[side]]
    rows = s.rows / s.blocks
    dst = s.nnz_per_block * CSR_BYTES_PER_NNZ + rows * CSR_BYTES_PER_ROW + 2 * rows * 4 * d \
        + s.routed_per_block * (4 * d + 4)
    src = rows * 4 * d + o.routed_total / s.blocks * (4 * d + 4)
    top = s.heaviest_block_nnz * CSR_BYTES_PER_NNZ + CSR_BYTES_PER_ROW + 8 * d + s.routed_heaviest * (4 * d + 4)
    return {"typical": max(dst, src), "typical_dst": dst, "typical_src": src, "top_row": top}


def grow(blocks: int, step: int, rows: int) -> int:
    """routed.grow restated: half again, a multiple of `step`, at most a block per row and MAX_BLOCKS."""
    return min(step * math.ceil(max(blocks + 1, math.ceil(blocks * 1.5)) / step), rows, MAX_BLOCKS)


def task_budget(cl: Cluster) -> float:
    """routed.task_budget restated: TASK_MEMORY_SHARE of an executor's memory per core."""
    return cl.memory_gib * GIB / cl.cores * TASK_MEMORY_SHARE


def sized_blocks(sc: Scenario, cl: Cluster, d: int) -> dict[str, int]:
    """routed.sized_layouts restated on the typical block: from default_num_blocks, each side grows by half (a
    multiple of the cores) until its typical task's estimate fits the budget; the top row's block cannot
    shrink (a row is never split) and is reported apart."""
    cores = cl.executors * cl.cores
    n = {s: default_num_blocks(cores, sc.interactions) for s in OTHER}
    rows = {"user": sc.users, "item": sc.items}
    while True:
        shapes = side_shapes(sc, n["user"], n["item"])
        over = [s for s in n if task_estimate(shapes, s, d)["typical"] > task_budget(cl)
                and grow(n[s], cores, rows[s]) > n[s]]
        if not over:
            return n
        for s in over:
            n[s] = grow(n[s], cores, rows[s])


def routed_bytes(shapes: dict[str, SideShape], side: str, other_rows: int, d: int) -> dict[str, float]:
    """Bytes one routed half-step moves (exchange.RoutedRows.job): the CSR stays cached co-partitioned and the
    routes in the store, so only factor rows move: read from the store where they are cut, routed in the one
    shuffle, the block's own rows read and its new rows written by the solving task."""
    s = shapes[side]
    return {
        "fixed side's block files read by the cutting tasks (store)": other_rows * d * 4,
        "routed rows to their block (the one shuffle)": s.routed_total * (4 * d + 4),
        "own current rows read by the solving tasks (store)": s.rows * d * 4,
        "new rows written to the store by the solving tasks": s.rows * d * 4,
    }


def routed_task_memory(nnz: float, rows: float, routed: float, sliced: float, d: int) -> dict[str, float]:
    """Bytes a routed task holds (cut_slices, RoutedRows.job's solve, gather, localise, _solve_block), in the
    larger of its two roles.

    Destination: Python holds the cogrouped Arrow table of routed rows and gather's one concatenated copy
    (2 x routed rows), the CSR and its re-pointed indices, x0 (read from the store), the float64 solution and its
    float32 copy; the JVM the group's sort buffer and Arrow batch (2 x routed rows). Source: its factor rows (read
    from the store) and the slices it cuts, in Python and once in the JVM.
    """
    payload, cut = routed * (4 * d + 4), sliced * (4 * d + 4)
    csr = nnz * CSR_BYTES_PER_NNZ + rows * CSR_BYTES_PER_ROW
    dst = {"python": 2 * payload + csr + nnz * 4 + rows * d * (4 + 8 + 4), "jvm": 2 * payload}
    src = {"python": rows * d * 4 + 2 * cut, "jvm": cut}
    return dst if sum(dst.values()) >= sum(src.values()) else src


ROUTED_STAGES = 2  # read-and-cut (a task per source block), solve (cogroup, writes its block file); the summaries
# come back with the solve stage's collect


def half_step(sc: Scenario, cl: Cluster, k: dict[str, Any], a: float, rest_s: float, d: int, side_name: str,
              shapes: dict[str, SideShape]) -> dict[str, Any]:
    """Seconds and bytes of one routed half-step of `side_name` on cluster `cl` (one task per block and stage)."""
    shape = shapes[side_name]
    other_rows = sc.items if side_name == "user" else sc.users
    cores = cl.executors * cl.cores
    block_kernel = kernel_seconds(k, shape.nnz_per_block, shape.rows / shape.blocks, d, a)
    heavy_kernel = kernel_seconds(k, shape.heaviest_block_nnz, 1, d, a)
    kernel_wall = max(math.ceil(shape.blocks / cores) * block_kernel, heavy_kernel)
    moved = routed_bytes(shapes, side_name, other_rows, d)
    shuffle = sum(moved.values()) / (cl.executors * cl.shuffle_gbps * 1e9)
    gram_bytes = shape.blocks * d * d * 8
    driver = gram_bytes / (cl.driver_collect_gbps * 1e9)
    sched = ROUTED_STAGES * shape.blocks * cl.task_overhead_s
    return {"tasks": shape.blocks, "kernel_wall_s": kernel_wall, "block_kernel_s": block_kernel,
            "heaviest_row_kernel_s": heavy_kernel, "shuffle_s": shuffle, "driver_gramian_s": driver,
            "gramian_bytes": gram_bytes, "scheduling_s": sched, "fixed_s": rest_s, "bytes": moved,
            "seconds": rest_s + sched + shuffle + kernel_wall + driver}


def executor_memory(sc: Scenario, cl: Cluster, d: int, shapes: dict[str, SideShape], side: str,
                    base: dict[str, float]) -> dict[str, float]:
    """Bytes one executor holds in a routed half-step of `side`: `cores` tasks of one block each, plus its share
    of both sides' cached CSR and of the routes its Python workers keep (factor versions live in the store)."""
    s, o = shapes[side], shapes[OTHER[side]]
    rows = s.rows / s.blocks
    typical = routed_task_memory(s.nnz_per_block, rows, s.routed_per_block,
                                 o.routed_total / o.blocks, d)  # the other side's blocks cut this step's slices
    heavy = routed_task_memory(s.heaviest_block_nnz, 1, s.routed_heaviest, 0, d)
    cached = (2 * sc.interactions * CSR_BYTES_PER_NNZ + 4 * (s.routed_total + o.routed_total)) / cl.executors
    task = base["python"] + sum(typical.values())
    hot = base["python"] + sum(heavy.values())
    shared = base["jvm"] + cached
    return {"typical_executor": cl.cores * task + shared,
            "busiest_executor": (cl.cores - 1) * task + max(task, hot) + shared,
            "top_row_task": hot, "typical_task": task, "typical_task_python": base["python"] + typical["python"],
            "cached_share": cached, "routed_rows_heaviest": s.routed_heaviest}


def python_base(m: dict[str, Any]) -> float:
    """A Python worker's own bytes (interpreter, numpy, numba-compiled kernels, pyarrow): the routed Gowalla cluster
    run's peak Python RSS less what the model puts in its largest task (routed rows <= the other side)."""
    cs = m["cluster_setup"]
    blocks = default_num_blocks(cs["workers"] * cs["cores_per_worker"], cs["train"])
    data = max(routed_task_memory(cs["train"] / blocks, rows / blocks, min(cs["train"] / blocks, other), 0,
                                  cs["dim"])["python"]
               for rows, other in ((cs["users"], cs["items"]), (cs["items"], cs["users"])))
    return max(m["cluster"]["gramian-routed"]["python_peak_mib"] * 2**20 - data, 0.0)


JVM_BASE = 1.0 * GIB  # an executor JVM's own heap use before data: assumed (not separable in the measurements)


def project(sc: Scenario, cl: Cluster, k: dict[str, Any], a: dict[str, float], rest: dict[str, float], d: int,
            base: dict[str, float], blocks: dict[str, int] | None = None) -> dict[str, Any]:
    """One epoch (user then item half-step) of the routed path; blocks per side as the trainer sizes them
    (sized_blocks) unless given."""
    n = blocks or sized_blocks(sc, cl, d)
    shapes = side_shapes(sc, n["user"], n["item"])
    steps = {s: half_step(sc, cl, k, a[s], rest["routed"], d, s, shapes) for s in ("user", "item")}
    mem = {s: executor_memory(sc, cl, d, shapes, s, base) for s in steps}
    factors = (sc.users + sc.items) * d * 4
    return {
        "d": d, "executors": cl.executors, "cores": cl.cores, "memory_gib": cl.memory_gib,
        "mode": exchange_mode(sc.users, sc.items, d), "factor_mib": factors / 2**20, "blocks": n,
        "task_budget_bytes": task_budget(cl),
        "task_estimate": {s: task_estimate(shapes, s, d) for s in steps},
        "epoch_s": sum(st["seconds"] for st in steps.values()),
        "bytes_per_epoch": sum(sum(st["bytes"].values()) for st in steps.values()), "half_steps": steps,
        "memory": mem, "executor_gib": max(v["typical_executor"] for v in mem.values()) / GIB,
        "busiest_executor_gib": max(v["busiest_executor"] for v in mem.values()) / GIB,
        "top_row_task_gib": max(v["top_row_task"] for v in mem.values()) / GIB,
        "shapes": {s: asdict(v) for s, v in shapes.items()},
        "store_if_forced": {
            "fixed_side_per_python_worker_gib": {"user": sc.items * d * 4 / GIB, "item": sc.users * d * 4 / GIB},
            "driver_factor_gib": factors / GIB,
            "bytes_per_epoch": (sc.items + sc.users) * d * 4 * cl.executors * cl.cores},
        "bottleneck": bottleneck(steps, mem, cl),
    }


def bottleneck(steps: dict[str, Any], mem: dict[str, Any], cl: Cluster) -> str:
    """Memory when an executor exceeds cl.memory_gib, else the largest time term of the epoch."""
    if max(v["busiest_executor"] for v in mem.values()) > cl.memory_gib * GIB:
        top = max(v["top_row_task"] for v in mem.values()) > max(v["typical_task"] for v in mem.values()) * 2
        return "memory: " + ("the most popular item's block (skew)" if top else "routed rows per block")
    terms = {"shuffle (network)": 0.0, "kernel": 0.0, "skew (top row)": 0.0, "driver Gramian collect": 0.0,
             "task scheduling": 0.0, "fixed per-job overhead": 0.0}
    for st in steps.values():
        terms["shuffle (network)"] += st["shuffle_s"]
        hot = st["heaviest_row_kernel_s"] >= st["kernel_wall_s"] - 1e-12
        terms["skew (top row)" if hot else "kernel"] += st["kernel_wall_s"]
        terms["driver Gramian collect"] += st["driver_gramian_s"]
        terms["task scheduling"] += st["scheduling_s"]
        terms["fixed per-job overhead"] += st["fixed_s"]
    return max(terms, key=lambda t: terms[t])


def check_10m(run: dict[str, Any] | None, k: dict[str, Any], a: dict[str, float], rest: dict[str, float],
              base: dict[str, float]) -> dict[str, Any] | None:
    """The model against the 10M routed cluster run (cluster-10m.json): blocks chosen, s/epoch, rows routed and
    executor memory, predicted with the run's own sizes, cluster and block counts."""
    if run is None or run["jobs"].get("gramian-routed", {"failed": True}).get("failed", False):
        return None
    job, sp = run["jobs"]["gramian-routed"], run["split"]
    sc = Scenario(interactions=float(sp["train"]), users=int(sp["users"]), items=int(sp["items"]))
    cl = Cluster(executors=run["cluster"]["workers"], cores=run["cluster"]["cores_per_worker"],
                 memory_gib=size_gib(run["cluster"]["executor_memory"]))
    blocks = {s: job["blocks"][s]["blocks"] for s in ("user", "item")}
    p = project(sc, cl, k, a, rest, run["dim"], base, blocks)
    eps = job["epochs"]
    out: dict[str, Any] = {"blocks_measured": blocks, "blocks_predicted": sized_blocks(sc, cl, run["dim"]),
                           "projection": p, "items": [], "load_before": run["machine"]["load_before"],
                           "date": run["machine"]["date"], "commit": run["machine"].get("git_commit")}

    def add(name: str, predicted: float, actual: float, note: str = "") -> None:
        out["items"].append({"check": name, "predicted": predicted, "measured": actual,
                             "error": predicted / actual - 1, "note": note})

    for s in ("user", "item"):
        add(f"{s} half-step s (epochs 2-{len(eps)})", p["half_steps"][s]["seconds"],
            steady([e[f"{s}_seconds"] for e in eps]))
    add("s/epoch (epochs 2-)", p["epoch_s"], steady([e["user_seconds"] + e["item_seconds"] for e in eps]),
        "the 10M check the issue asks for")
    for s in ("user", "item"):
        if "routed_rows" in job["blocks"][s]:
            add(f"{s} step: rows routed per half-step", p["shapes"][s]["routed_total"],
                job["blocks"][s]["routed_rows"], "Zipf estimate vs the routes built")
    worst = max(p["memory"][s]["busiest_executor"] for s in ("user", "item"))
    add("executor peak RSS, MiB (busiest)", worst / 2**20, max(job["worker_peak_rss_mib"]),
        "JVM heap is reserved up front: RSS counts it once touched")
    return out


def size_gib(text: str) -> float:
    """A Spark memory size ("3g", "800m") in GiB."""
    t = text.strip().lower()
    return float(t[:-1]) * {"k": 2**-20, "m": 2**-10, "g": 1.0, "t": 1024.0}[t[-1]] if t[-1] in "kmgt" \
        else float(t) / 1024


def main() -> dict[str, Any]:
    """Fit, check, project; write results/scale.json and scale.md; return the document."""
    previous = json.loads((RESULTS / "scale.json").read_text()) if (RESULTS / "scale.json").is_file() else None
    m = measured(json.loads((RESULTS / "train.json").read_text()), json.loads((RESULTS / "cluster.json").read_text()),
                 previous)
    k = fit_kernel(numpy_points(m))
    ck = checks(m, k)
    a_dram = dram_constants(m, k, ck["local_overhead_s"])
    a_low = {s: k["a_s_per_nnz_d"] for s in ("user", "item")}
    rest = {name: float(np.mean([m["cluster"][job][s]["rest"] for s in ("user", "item")]))
            for name, job in (("routed", "gramian-routed"), ("store", "gramian-auto"), ("closure", "gramian-closure"))}
    base = {"python": python_base(m), "jvm": JVM_BASE}
    ten = RESULTS / "cluster-10m.json"
    check = check_10m(json.loads(ten.read_text()) if ten.is_file() else None, k, a_dram, rest, base)
    sc = Scenario()
    rows = []
    for executors in (50, 200):
        for d in (64, 128, 256):
            cl = Cluster(executors=executors)
            defaults = project(sc, cl, k, a_dram, rest, d, base)
            rows.append({"defaults": defaults,
                         "Gowalla-fit kernel": project(sc, cl, k, a_low, rest, d, base, defaults["blocks"])})
    generated = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
                 "numpy": np.__version__}
    doc = {"generated": generated, "inputs": m, "kernel_fit": k, "a_dram_s_per_nnz_d": a_dram, "checks": ck,
           "rest_s": rest, "base_bytes": base, "scenario": asdict(sc), "cluster_assumed": asdict(Cluster(executors=0)),
           "check_10m": check, "projection": rows}
    (RESULTS / "scale.json").write_text(json.dumps(doc, indent=1, default=float))
    (RESULTS / "scale.md").write_text(render(doc))
    return doc


# ---------------------------------------------------------------- markdown

def _g(x: float) -> str:
    """Bytes in GB (1e9) with 3 significant figures."""
    return f"{x / 1e9:.3g}"


def render_fit(doc: dict[str, Any]) -> list[str]:
    """The kernel fit and its residuals."""
    k = doc["kernel_fit"]
    lines = ["## Kernel fit (one thread, no Spark: train.json `gramian numpy 1-proc`, median of epochs 2-15)", "",
             f"seconds = a * nnz * d + b * rows * d^2 with a = {k['a_s_per_nnz_d']:.3e} s, "
             f"b = {k['b_s_per_row_d2']:.3e} s (cg_steps = {CG_STEPS}); "
             "a refit on the 10M run's half-steps (fixed side out of cache): user "
             f"{doc['a_dram_s_per_nnz_d']['user']:.3e} s, item {doc['a_dram_s_per_nnz_d']['item']:.3e} s", "",
             "| half-step | nnz | rows | d | measured s | fitted s | error |", "|---|---|---|---|---|---|---|"]
    for p in k["points"]:
        lines.append(f"| {p['run']} | {p['nnz']:,} | {p['rows']:,} | {p['d']} | {p['seconds']:.4f} | "
                     f"{p['predicted']:.4f} | {p['error']:+.0%} |")
    return lines


def render_checks(doc: dict[str, Any]) -> list[str]:
    """Predictions for runs the fit did not see."""
    ck = doc["checks"]
    lines = ["", "## Checks against runs the fit did not see", "",
             f"Local-master fixed overhead per half-step (Gowalla d=64 local wall less kernel/2): "
             f"{ck['local_overhead_s']:.3f} s", "", "| check | predicted | measured | error | note |",
             "|---|---|---|---|---|"]
    for c in ck["items"]:
        lines.append(f"| {c['check']} | {c['predicted']:.3f} | {c['measured']:.3f} | {c['error']:+.0%} | "
                     f"{c['note']} |")
    c = doc.get("check_10m")
    if not c:
        return lines + ["", "No 10M routed cluster run in benchmarks/results/cluster-10m.json to check against."]
    p = c["projection"]
    lines += ["", f"## Check against the 10M routed cluster run (cluster-10m.json, {c['date']}, commit {c['commit']}, "
              f"load before {', '.join(f'{x:.2f}' for x in c['load_before'])})", "",
              f"Predicted with the run's sizes, {p['executors']} executors x {p['cores']} core of "
              f"{p['memory_gib']:g} GiB, its block counts (user {c['blocks_measured']['user']}, item "
              f"{c['blocks_measured']['item']}; the restated sizing rule picks user {c['blocks_predicted']['user']}, "
              f"item {c['blocks_predicted']['item']}), the kernel constants refit on the local 10M run and the "
              "routed Gowalla cluster run's fixed overhead per half-step.", "",
              "| check | predicted | measured | error | note |", "|---|---|---|---|---|"]
    for x in c["items"]:
        lines.append(f"| {x['check']} | {x['predicted']:,.2f} | {x['measured']:,.2f} | {x['error']:+.0%} | "
                     f"{x['note']} |")
    lines += ["", "Predicted terms per half-step (s): " + "; ".join(
        f"{s}: fixed {st['fixed_s']:.2f}, shuffle {st['shuffle_s']:.2f} ({_g(sum(st['bytes'].values()))} GB), "
        f"kernel {st['kernel_wall_s']:.2f}, scheduling {st['scheduling_s']:.2f}"
        for s, st in p["half_steps"].items())]
    return lines


def render_projection(doc: dict[str, Any]) -> list[str]:
    """The projection table: the trainer's own block sizing, with the 10M-refit and the Gowalla-fit kernels."""
    sc, cl = doc["scenario"], doc["cluster_assumed"]
    lines = ["", f"## Projection: {sc['interactions']:.0e} interactions, {sc['users']:,} users, {sc['items']:,} "
             f"items (Zipf user {sc['user_exponent']}, item {sc['item_exponent']})", "",
             f"Executors of {cl['cores']} cores and {cl['memory_gib']:g} GiB; assumed: shuffle {cl['shuffle_gbps']} "
             f"GB/s per executor, driver collect {cl['driver_collect_gbps']} GB/s, {cl['task_overhead_s'] * 1e3:g} ms "
             "per task. Blocks per side as the trainer sizes them (routed.sized_layouts: a typical task's estimate "
             f"within {TASK_MEMORY_SHARE:.3g} of an executor's memory per core), one task per block and stage.", "",
             "| executors | d | mode | blocks user / item | s/epoch | s/epoch, Gowalla-fit kernel | GB moved/epoch "
             "| GiB/executor typical / busiest | GiB, top-item task | bottleneck |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in doc["projection"]:
        p, g = row["defaults"], row["Gowalla-fit kernel"]
        lines.append(f"| {p['executors']} | {p['d']} | {p['mode']} | {p['blocks']['user']} / {p['blocks']['item']} "
                     f"| {p['epoch_s']:.1f} | {g['epoch_s']:.1f} | {_g(p['bytes_per_epoch'])} | "
                     f"{p['executor_gib']:.1f} / {p['busiest_executor_gib']:.1f} | {p['top_row_task_gib']:.1f} | "
                     f"{p['bottleneck']} |")
    lines += ["", "Per half-step terms (seconds)", "",
              "| executors | d | side | fixed | scheduling | shuffle | kernel wall | top-row kernel | driver Gramian "
              "| GB moved | routed rows/block | top row nnz | task estimate MiB (budget) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in doc["projection"]:
        p = row["defaults"]
        for s, st in p["half_steps"].items():
            sh = p["shapes"][s]
            lines.append(f"| {p['executors']} | {p['d']} | {s} | {st['fixed_s']:.2f} | {st['scheduling_s']:.2f} | "
                         f"{st['shuffle_s']:.1f} | {st['kernel_wall_s']:.1f} | {st['heaviest_row_kernel_s']:.1f} | "
                         f"{st['driver_gramian_s']:.2f} | {_g(sum(st['bytes'].values()))} | "
                         f"{sh['routed_per_block']:,.0f} | {sh['heaviest_block_nnz']:,.0f} | "
                         f"{p['task_estimate'][s]['typical'] / 2**20:,.0f} ({p['task_budget_bytes'] / 2**20:,.0f}) |")
    return lines


def render(doc: dict[str, Any]) -> str:
    """scale.md: inputs, fit, checks, projection."""
    m = doc["inputs"]
    head = ["# Scale model (benchmarks/scale_model.py; explained in docs/scale.md)", "",
            f"Generated {doc['generated']['date']} with Python {doc['generated']['python']}, numpy "
            f"{doc['generated']['numpy']} (no timing taken). Inputs: train.json of {m['train_date']} and cluster.json "
            f"of {m['cluster_setup']['date']} at commit {m['cluster_setup']['git_commit']}.", "",
            "Load averages: benchmarks/results/train.json (local master, load before "
            f"{', '.join(f'{x:.2f}' for x in m['numpy_1proc']['gowalla']['load_before'])}) and cluster.json "
            f"(standalone master + {m['cluster_setup']['workers']} workers x {m['cluster_setup']['cores_per_worker']} "
            f"core on loopback, load before {', '.join(f'{x:.2f}' for x in m['cluster_setup']['load_before'])}). "
            "No Spark was run for this file.", "",
            "Cluster half-step 'rest' (wall less kernel and fetch per slot; median of epochs 2-15): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in doc["rest_s"].items())
            + f". Python worker base {doc['base_bytes']['python'] / 2**20:.0f} MiB (routed run's peak less its "
            f"data); JVM base {doc['base_bytes']['jvm'] / GIB:.1f} GiB (assumed).", ""]
    return "\n".join(head + render_fit(doc) + render_checks(doc) + render_projection(doc)) + "\n"


if __name__ == "__main__":
    main()
    print((RESULTS / "scale.md").read_text())
