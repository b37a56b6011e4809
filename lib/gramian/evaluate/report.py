"""The human report of an evaluation: a markdown page with the metrics table and two PNG plots.

metric@k curves per model (exact metrics) and the training loss per epoch from the `runs` table, written
to <artifacts>/reports/<run_id>/ in the artifact store (matplotlib, headless Agg backend).
"""

from __future__ import annotations

import io
import json
from typing import Any

from gramian import tables
from gramian.config import Config
from gramian.storage import Store

CURVES = ("recall", "ndcg", "ap", "precision")


def _fmt(v: Any) -> str:
    return "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def metrics_table(rows: list[dict[str, Any]], ks: tuple[int, ...]) -> str:
    """Markdown table: one line per (model, metric, method), one column per k (plus AUC / counts)."""
    lines = ["| model | metric | method | " + " | ".join(f"@{k}" for k in ks) + " | value |",
             "|---|---|---|" + "---|" * (len(ks) + 1)]
    groups: dict[tuple[str, str, str], dict[Any, float]] = {}
    for r in rows:
        method = r["method"] if r.get("sample_size") is None else f"{r['method']} (m={r['sample_size']})"
        groups.setdefault((r["model"], r["metric"], method), {})[r["k"]] = r["value"]
    order = {"exact": 0, "sampled": 1, "corrected": 2, "count": 3}
    for (model, metric, method), vals in sorted(groups.items(),
                                                key=lambda g: (g[0][0], order.get(g[0][2].split()[0], 9), g[0][1])):
        cells = [_fmt(vals.get(k)) for k in ks]
        none = vals.get(None)
        lines.append(f"| {model} | {metric} | {method} | " + " | ".join(cells) + f" | {_fmt(none)} |")
    return "\n".join(lines)


def _losses(spark: Any, cfg: Config, run_ids: list[str]) -> dict[str, list[tuple[int, float]]]:
    from pyspark.sql import functions as F

    if not tables.exists(spark, cfg.storage, "runs"):
        return {}
    rows = (tables.read(spark, cfg.storage, "runs").filter(F.col("run_id").isin(run_ids))
            .select("run_id", "epochs").collect())
    out = {}
    for r in rows:
        try:
            hist = json.loads(r["epochs"] or "[]")
            out[r["run_id"]] = [(int(h["epoch"]), float(h["loss"])) for h in hist]
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def write_report(spark: Any, cfg: Config, run_id: str, rows: list[dict[str, Any]], folder: Store) -> str:
    """Write report.md, metrics_at_k.png and loss.png into the store folder `folder`; return the markdown's URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = tuple(sorted({int(r["k"]) for r in rows if r["k"] is not None}))
    exact = [r for r in rows if r["method"] == "exact" and r["k"] is not None and r["metric"] in CURVES]
    models = sorted({r["model"] for r in exact})
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.4))
    for ax, metric in zip(axes, CURVES, strict=True):
        for model in models:
            pts = sorted((r["k"], r["value"]) for r in exact if r["model"] == model and r["metric"] == metric)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
        ax.set_title(f"{metric}@k (exact)")
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    folder.write_bytes(_png(fig), "metrics_at_k.png")
    plt.close(fig)
    losses = _losses(spark, cfg, [run_id, *cfg.evaluate.compare_runs])
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for rid, pts in losses.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=rid)
    ax.set_title("training loss per epoch (eq. 26)")
    ax.set_xlabel("epoch")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if losses:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no runs row", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    folder.write_bytes(_png(fig), "loss.png")
    plt.close(fig)
    sc = cfg.evaluate.sampled
    md = [f"# Evaluation of run `{run_id}`", "",
          "Exact metrics rank every held-out item among all catalogue items the user has not trained on "
          "(equal scores: lower item id first). `recall` divides hits by |test|, `recall_min` by min(k, |test|). "
          "`item_*` metrics rank each held-out item alone against the user's negatives: `sampled` uses "
          f"m={sc.m} {sc.sampler} negatives, `corrected` is the Krichene & Rendle 2020 estimate "
          f"(bias-variance, gamma={sc.gamma}; importance-weighted rank for popularity negatives), "
          "`exact` the same metric over all negatives.", "",
          metrics_table(rows, ks), "", "![metric@k](metrics_at_k.png)", "", "![training loss](loss.png)", ""]
    folder.write_text("\n".join(md), "report.md")
    return folder.uri_of("report.md")
