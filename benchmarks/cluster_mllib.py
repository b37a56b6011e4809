"""spark-submit job of the cluster benchmark: MLlib implicit ALS on the same Delta `train` table as gramian's train job.

    spark-submit ... benchmarks/cluster_mllib.py --root W --params '{"rank": 64, ...}' --out W/_bench/mllib

Mirrors what `jobs/train.py` does so the two whole jobs compare: read the table, fit, write both factor tables
to Delta. Prints one JSON line (prefix `MLLIB_RESULT `) with the phase timings, measured inside the driver.
"""

from __future__ import annotations

import argparse
import json
import time

T_START = time.perf_counter()


def main() -> None:
    """Fit MLlib ALS (implicitPrefs) on `<root>/train` and write its factors under `--out`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True, help="storage.root of the warehouse holding the train table")
    parser.add_argument("--params", required=True, help="ALS keyword arguments as JSON (rank, maxIter, ...)")
    parser.add_argument("--out", required=True, help="folder for the user/item factor Delta tables")
    args = parser.parse_args()

    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    from benchmarks.peers import mllib_blas
    from gramian import tables
    from gramian.config import SparkConfig, StorageConfig
    from gramian.spark import get_session

    spark = get_session(SparkConfig(executor_jit="default"))  # MLlib computes in its JVMs: their own JIT tiers
    t_session = time.perf_counter()
    params = json.loads(args.params)
    how = params.pop("weights", "raw")
    weight = {"raw": F.col("weight"), "log1p": F.log1p("weight"), "binary": F.lit(1.0)}[how]
    train = (tables.read(spark, StorageConfig(root=args.root), "train")
             .select("user_idx", "item_idx", weight.cast("double").alias("weight")))
    als = ALS(implicitPrefs=True, userCol="user_idx", itemCol="item_idx", ratingCol="weight", seed=0, **params)
    t0 = time.perf_counter()
    model = als.fit(train)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for name, frame in (("user_factors", model.userFactors), ("item_factors", model.itemFactors)):
        frame.write.format("delta").mode("overwrite").save(f"{args.out.rstrip('/')}/{name}")
    write_s = time.perf_counter() - t1
    print("MLLIB_RESULT " + json.dumps({
        "session_seconds": t_session - T_START, "fit_seconds": fit_s, "write_seconds": write_s,
        "job_seconds_in_driver": time.perf_counter() - T_START, "params": {**params, "weights": how},
        "blas": mllib_blas(spark)}), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
