# Databricks notebook source
# MAGIC %md
# MAGIC # gramian 3/3: publish and inspect top-n
# MAGIC Builds the retrieval index over the run's item factors, publishes every training user's top-n to the
# MAGIC `topn` table (index recall checked against exact scoring), then looks at a few users' lists and at
# MAGIC the fold-in top-n of a user never seen in training.

# COMMAND ----------

dbutils.widgets.text("conf", "conf/synthetic.yaml", "config file")
dbutils.widgets.text("overrides", "", "--set overrides, ';'-separated")
dbutils.widgets.text("storage_root", "", "storage.root (blank: the conf's)")
dbutils.widgets.text("run_id", "notebook", "run id")
dbutils.widgets.text("n", "10", "publish.n")
dbutils.widgets.text("users", "3", "users to show")

# COMMAND ----------

from gramian.notebook import config_from_widgets
from gramian.pipeline import ORDER, execute
from gramian.retrieval.publish import run as publish

cfg = config_from_widgets(dbutils, publish__n="n")
run_id = dbutils.widgets.get("run_id")
published = execute(spark, cfg, run_id, "publish", publish, ORDER)
display(published)
print(f"MLflow run of {run_id}: {published.get('mlflow_run', 'tracking is off')}")

# COMMAND ----------

# MAGIC %md ## A few users' top-n, beside what they trained on

# COMMAND ----------

from pyspark.sql import functions as F

from gramian import tables

topn = tables.read(spark, cfg.storage, "topn").filter(F.col("run_id") == run_id)
some_users = [r[0] for r in topn.select("user_id").distinct().orderBy("user_id")
              .limit(int(dbutils.widgets.get("users"))).collect()]
shown = topn.filter(F.col("user_id").isin(some_users)).orderBy("user_id", "rank")
display(shown)
users = tables.read(spark, cfg.storage, "users").filter(F.col("id").isin(some_users))
items = tables.read(spark, cfg.storage, "items")
history = (tables.read(spark, cfg.storage, "train").join(users.select(F.col("idx").alias("user_idx"),
                                                                     F.col("id").alias("user_id")), "user_idx")
           .join(items.select(F.col("idx").alias("item_idx"), F.col("id").alias("item_id")), "item_idx")
           .groupBy("user_id").agg(F.count(F.lit(1)).alias("trained_on"), F.collect_list("item_id").alias("items")))
display(history)

# COMMAND ----------

# MAGIC %md ## A new user: fold-in (paper §6.3) from a short history

# COMMAND ----------

from gramian.retrieval.recommend import recommend

popular = [r["item_id"] for r in topn.groupBy("item_id").count().orderBy(F.desc("count")).limit(3).collect()]
new_user = recommend(popular, n=int(dbutils.widgets.get("n")), cfg=cfg, run_id=run_id, spark=spark)
display(new_user)
