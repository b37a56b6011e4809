"""Strong generalisation on ml-100k (Rendle et al. 2022 protocol): the metrics table of one evaluated run.

Run the stages first (any checkout), e.g.
    for s in ingest split train evaluate; do gramian $s --conf conf/ml-100k.yaml --set storage.root=WH \\
      --set split.method=strong --set split.holdout_users=0.2 --run-id strong1; done
then record it under a label (before / after a change) and render the table:
    python -m benchmarks.strong_split --warehouse WH --run-id strong1 --label after --commit abc1234
(`--report WH/_runs/strong1/report/report.md` reads the evaluate report instead, without a Spark session).
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

from gramian.config import StorageConfig

RESULTS = Path(__file__).parent / "results"
ROWS = [("recall", 20, "exact"), ("ndcg", 20, "exact"), ("auc", None, "exact"), ("users_evaluated", None, "count"),
        ("users_folded_in", None, "count"), ("test_users_missing_factors", None, "count"),
        ("item_ap", 10, "corrected"), ("item_ap", 10, "exact"), ("item_recall", 20, "corrected"),
        ("item_recall", 20, "exact")]


def collect(warehouse: str, run_id: str) -> dict[str, dict[str, float]]:
    """{model: {"metric@k/method": value}} of `run_id` in the warehouse's metrics table."""
    from gramian import tables
    from gramian.spark import get_session

    spark = get_session()
    rows = tables.read(spark, StorageConfig(root=warehouse), "metrics").filter(f"run_id = '{run_id}'").collect()
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        key = f"{r['metric']}@{r['k']}/{r['method']}" if r["k"] is not None else f"{r['metric']}/{r['method']}"
        out.setdefault(r["model"], {})[key] = float(r["value"])
    return out


def from_report(path: str) -> dict[str, dict[str, float]]:
    """The same dict read from the run's evaluate report (report.md, values at 4 decimals): no Spark needed."""
    out: dict[str, dict[str, float]] = {}
    ks: list[int | None] = []
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:3] == ["model", "metric", "method"]:
            ks = [int(c[1:]) for c in cells[3:-1]] + [None]
            continue
        if not ks or len(cells) != 3 + len(ks) or set(cells[0]) <= {"-"}:
            continue
        model, metric, method = cells[0], cells[1], cells[2].split()[0]
        for k, cell in zip(ks, cells[3:], strict=True):
            if cell:
                key = f"{metric}@{k}/{method}" if k is not None else f"{metric}/{method}"
                out.setdefault(model, {})[key] = float(cell)
    return out


def render(results: dict) -> str:
    """Markdown: one line per (label, model) with the ROWS columns."""
    heads = [f"{m}@{k}" if k else m for m, k, _ in ROWS]
    methods = [meth for _, _, meth in ROWS]
    lines = ["# Strong generalisation on ml-100k (split.method strong, holdout_users 0.2)", "",
             "Held-out users (20%) are absent from `train`; evaluate folds each one in from its `foldin` history "
             "(exact iALS user-row solve against the run's item factors, paper §6.3) and ranks its `test` items "
             "among all items outside that history. Default model config (conf/ml-100k.yaml, iALS d=64, 15 epochs).",
             "", "| run | model | " + " | ".join(f"{h} ({m})" for h, m in zip(heads, methods, strict=True)) + " |",
             "|---|---|" + "---|" * len(ROWS)]
    for label, res in results.items():
        for model in ("ials", "popularity"):
            vals = res["metrics"].get(model, {})
            cells = []
            for m, k, meth in ROWS:
                key = f"{m}@{k}/{meth}" if k else f"{m}/{meth}"
                v = vals.get(key)
                cells.append("" if v is None else (f"{v:.0f}" if meth == "count" else f"{v:.4f}"))
            lines.append(f"| {label} ({res['commit']}) | {model} | " + " | ".join(cells) + " |")
    lines += ["", "Runs: " + "; ".join(f"{lb}: {r['date']}, {r['machine']}" for lb, r in results.items()), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warehouse", required=True)
    p.add_argument("--report", default=None, help="read the run's report.md instead of the metrics table")
    p.add_argument("--run-id", default="strong1")
    p.add_argument("--label", required=True)
    p.add_argument("--commit", required=True)
    a = p.parse_args()
    path = RESULTS / "strong_split.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[a.label] = {"commit": a.commit, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                        "machine": f"{platform.machine()}, {platform.python_version()}",
                        "source": a.report or f"{a.warehouse} metrics table",
                        "metrics": from_report(a.report) if a.report else collect(a.warehouse, a.run_id)}
    path.write_text(json.dumps(results, indent=1, sort_keys=True))
    (RESULTS / "strong_split.md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
