# The README's two commands: `make demo` (setup + pipeline on the embedded default) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONF   ?= conf/synthetic.yaml

export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

LINT   := lib tests jobs benchmarks airflow_dags notebooks

.PHONY: setup demo test lint bench bench-cluster bench-cluster-s3 bench-cluster-10m clean dist-zip airflow-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[spark,dev,airflow]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gramian run --conf $(CONF) --set storage.root=./warehouse

test: $(STAMP)
	$(PY) -m ruff check $(LINT)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check $(LINT)

# lib/gramian as a zip for `spark-submit --py-files dist/gramian.zip` (spark-submit does not take wheels)
# with numba's compiled kernels for this machine's CPU (gramian.dist: a fresh cluster does not compile them)
dist-zip: $(STAMP)
	$(PY) -m gramian.dist dist/gramian.zip

# The Airflow face on this machine: a throw-away AIRFLOW_HOME, the DAG run once against local[2] on $(CONF)
AIRFLOW_HOME ?= $(abspath .airflow)
airflow-demo: $(STAMP)
	export AIRFLOW_HOME=$(AIRFLOW_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(abspath airflow_dags) \
	  AIRFLOW__CORE__LOAD_EXAMPLES=False PATH=$(abspath $(VENV))/bin:$$PATH \
	  AIRFLOW_CONN_SPARK_GRAMIAN='{"conn_type": "spark", "host": "local[2]"}' && \
	$(VENV)/bin/airflow db migrate >/dev/null && \
	$(VENV)/bin/airflow dags test gramian_pipeline \
	  -c '{"conf": "$(abspath $(CONF))", "overrides": ["storage.root=$(abspath warehouse-airflow)"]}'

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

# gramian (both factor routings) vs MLlib ALS on one standalone cluster on loopback -> benchmarks/results/cluster.*
bench-cluster: $(STAMP)
	$(PY) -m benchmarks.cluster_bench

# the same on the cluster a deployment has: isolated workers, no shared disk, store on moto's S3 (127.0.0.1) -> cluster-s3.*
bench-cluster-s3: $(STAMP)
	$(PY) -m benchmarks.cluster_bench --storage s3 --methods gramian-auto,gramian-routed,mllib \
	  --disk benchmarks/results/cluster.json

# issue 14's 10M target: synthetic 1M users x 200k items, routed d=128 vs MLlib, 3 GiB executors -> cluster-10m.*
bench-cluster-10m: $(STAMP)
	$(PY) -m benchmarks.cluster_bench --dataset synthetic10m --methods gramian-routed,mllib --dim 128 --epochs 3 \
	  --worker-memory 3g --executor-memory 3g --driver-memory 2g

clean:
	rm -rf warehouse warehouse-airflow spark-warehouse metastore_db derby.log .pytest_cache .airflow dist
