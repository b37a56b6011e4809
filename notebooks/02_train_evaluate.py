# Databricks notebook source
# MAGIC %md
# MAGIC # gramian 2/3: train and evaluate
# MAGIC Trains iALS on the split written by notebook 1 with the hyper-parameters in the widgets (or, with widget
# MAGIC `tune_trials` > 0, with the best of a small `gramian tune` search), evaluates the run (exact metrics on
# MAGIC the full catalogue, sampled beside their correction) and plots loss and metrics.

# COMMAND ----------

dbutils.widgets.text("conf", "conf/synthetic.yaml", "config file")
dbutils.widgets.text("overrides", "", "--set overrides, ';'-separated")
dbutils.widgets.text("storage_root", "", "storage.root (blank: the conf's)")
dbutils.widgets.text("run_id", "notebook", "run id")
dbutils.widgets.text("dim", "32", "model.dim")
dbutils.widgets.text("epochs", "10", "model.epochs")
dbutils.widgets.text("alpha0", "", "model.alpha0 (blank: the conf's)")
dbutils.widgets.text("reg", "", "model.reg (blank: the conf's)")
dbutils.widgets.text("tune_trials", "0", "tune first with this many trials (0: train the widgets' setting)")

# COMMAND ----------

from gramian import tables
from gramian.evaluate.job import run as evaluate
from gramian.notebook import config_from_widgets
from gramian.pipeline import ORDER, execute
from gramian.runs import run_rows
from gramian.train.job import run as train

cfg = config_from_widgets(dbutils, model__dim="dim", model__epochs="epochs", model__alpha0="alpha0",
                          model__reg="reg")
run_id = dbutils.widgets.get("run_id")

# COMMAND ----------

# MAGIC %md ## Tune first (optional)
# MAGIC With `tune_trials` > 0: `gramian tune` searches tune.space on a validation split carved from `train` (never
# MAGIC `test`), one row per trial in the `tuning` table, and writes the best setting as a profile; training below
# MAGIC takes that profile as its conf. Narrow the search with `overrides`, e.g. `tune.space.dim.choices=[32]`.

# COMMAND ----------

import os
import tempfile

from gramian.tune.job import run as tune

tune_trials = int(dbutils.widgets.get("tune_trials") or 0)
if tune_trials > 0:
    profile = os.path.join(tempfile.gettempdir(), f"gramian-{run_id}.tuned.yaml")
    tuned = execute(spark, cfg, f"{run_id}-tune", "tune", tune, ORDER, trials=tune_trials, write_profile=profile)
    display(tables.read(spark, cfg.storage, "tuning").filter(run_rows(f"{run_id}-tune")).orderBy("trial"))
    cfg = config_from_widgets(dbutils, conf=profile)  # the profile, plus the overrides and storage_root widgets

# COMMAND ----------

trained = execute(spark, cfg, run_id, "train", train, ORDER)
display(trained)

# COMMAND ----------

# MAGIC %md ## Training loss per epoch

# COMMAND ----------

import json

import matplotlib.pyplot as plt
from pyspark.sql import functions as F

from gramian import tables
from gramian.runs import run_rows

epochs = json.loads(tables.read(spark, cfg.storage, "runs").filter(run_rows(run_id)).first()["epochs"])
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot([e["epoch"] for e in epochs], [e["loss"] for e in epochs], marker="o")
ax.set(title=f"training loss, run {run_id}", xlabel="epoch", ylabel="loss (eq. 26)")
display(fig)

# COMMAND ----------

# MAGIC %md ## Evaluation

# COMMAND ----------

evaluated = execute(spark, cfg, run_id, "evaluate", evaluate, ORDER)
display(evaluated)
metrics = (tables.read(spark, cfg.storage, "metrics").filter(run_rows(run_id) & ~F.col("model").contains("@"))
           .toPandas())
display(metrics[["metric", "k", "method", "value"]].sort_values(["method", "metric", "k"]))

# COMMAND ----------

exact = metrics[(metrics["method"] == "exact") & metrics["metric"].isin(["recall", "ndcg", "precision", "ap"])]
fig, ax = plt.subplots(figsize=(6, 4))
for name, rows in exact.sort_values("k").groupby("metric"):
    ax.plot(rows["k"], rows["value"], marker="o", label=name)
ax.set(title=f"exact metrics @k, run {run_id}", xlabel="k", ylabel="value")
ax.legend()
display(fig)

# COMMAND ----------

# MAGIC %md ## MLflow run
# MAGIC Train and evaluate logged to one MLflow run tagged `gramian.run_id` (config as params, loss per epoch,
# MAGIC metrics at every k, the report, the model as a pyfunc). On Databricks it is in the workspace's tracking.

# COMMAND ----------

print(f"MLflow run of {run_id}: {evaluated.get('mlflow_run', 'tracking is off (tracking.enabled: false)')}")
