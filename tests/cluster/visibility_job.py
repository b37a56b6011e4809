"""spark-submit job for the isolation test: which of the driver's local files can the executors see?

The driver writes one file in its working directory, one in /tmp and one in /dev/shm, then every task
reports os.path.exists for each (and for this interpreter, which every node must have) and its executor's
working directory, which names the worker. Prints one short `VISIBILITY <json>` line (distinct answers).
"""

import json
import os
import sys
import tempfile
import uuid

import pyarrow as pa
from pyspark.sql import SparkSession


def main() -> None:
    spark = SparkSession.builder.getOrCreate()
    tag = uuid.uuid4().hex
    paths = [os.path.abspath(f"driver-cwd-{tag}"), os.path.join(tempfile.gettempdir(), f"driver-tmp-{tag}"),
             f"/dev/shm/driver-shm-{tag}"]
    for p in paths:
        with open(p, "w") as f:
            f.write("written by the driver\n")
    probe = [*paths, sys.executable]

    def check(batches):
        for _ in batches:
            pass
        yield pa.RecordBatch.from_pylist([{"cwd": os.getcwd(), "seen": json.dumps([os.path.exists(p) for p in probe])}])

    schema = "cwd string, seen string"
    rows = spark.range(0, 16, numPartitions=16).mapInArrow(check, schema).collect()
    # one entry per distinct (executor cwd, what it saw): the line stays short enough (< PIPE_BUF) to reach the
    # test whole, never split by the JVM's log lines on the same pipe
    seen = sorted({(r["cwd"], r["seen"]) for r in rows})
    out = {"driver": [os.path.exists(p) for p in probe], "paths": probe, "tasks_run": len(rows),
           "tasks": [{"cwd": cwd, "seen": json.loads(s)} for cwd, s in seen]}
    for p in paths:
        os.remove(p)
    print("VISIBILITY " + json.dumps(out), flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
