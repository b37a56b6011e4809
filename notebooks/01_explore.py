# Databricks notebook source
# MAGIC %md
# MAGIC # gramian 1/3: explore the data
# MAGIC Ingests the configured source (validation, quarantine, dense ids) and splits it, then looks at the
# MAGIC interactions: sizes, density, item popularity and user activity. Library calls only; on Databricks
# MAGIC set `storage_root` (or a catalog in the conf), locally run `python -m gramian.notebook <this file>`.

# COMMAND ----------

dbutils.widgets.text("conf", "conf/synthetic.yaml", "config file")
dbutils.widgets.text("overrides", "", "--set overrides, ';'-separated")
dbutils.widgets.text("storage_root", "", "storage.root (blank: the conf's)")
dbutils.widgets.text("run_id", "notebook", "run id")

# COMMAND ----------

from gramian.data.ingest import run as ingest
from gramian.data.split import run as split
from gramian.notebook import config_from_widgets
from gramian.pipeline import ORDER, execute

cfg = config_from_widgets(dbutils)
run_id = dbutils.widgets.get("run_id")
ingested = execute(spark, cfg, run_id, "ingest", ingest, ORDER)
split_summary = execute(spark, cfg, run_id, "split", split, ORDER)
display(ingested)
display(split_summary)

# COMMAND ----------

# MAGIC %md ## Sizes and density

# COMMAND ----------

from pyspark.sql import functions as F

from gramian import tables

train = tables.read(spark, cfg.storage, "train")
sizes = train.agg(F.count(F.lit(1)).alias("interactions"), F.countDistinct("user_idx").alias("users"),
                  F.countDistinct("item_idx").alias("items")).collect()[0].asDict()
sizes["density"] = sizes["interactions"] / (sizes["users"] * sizes["items"])
display(sizes)

# COMMAND ----------

# MAGIC %md ## Item popularity and user activity (log scale)

# COMMAND ----------

import matplotlib.pyplot as plt
import numpy as np

item_counts = np.sort(train.groupBy("item_idx").count().toPandas()["count"].to_numpy())[::-1]
user_counts = train.groupBy("user_idx").count().toPandas()["count"].to_numpy()
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
left.loglog(np.arange(1, len(item_counts) + 1), item_counts)
left.set(title="item popularity", xlabel="item rank", ylabel="interactions")
right.hist(user_counts, bins=30, log=True)
right.set(title="user activity", xlabel="interactions per user", ylabel="users")
display(fig)
top_items = (train.groupBy("item_idx").count().join(tables.read(spark, cfg.storage, "items")
             .select(F.col("idx").alias("item_idx"), "id"), "item_idx").orderBy(F.desc("count")).limit(10))
display(top_items)
