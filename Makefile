# The README's two commands: `make demo` (setup + pipeline on the embedded default) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONF   ?= conf/synthetic.yaml

export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gramian run --conf $(CONF) --set storage.root=./warehouse

test: $(STAMP)
	$(PY) -m ruff check lib tests jobs benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check lib tests jobs benchmarks

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf warehouse spark-warehouse metastore_db derby.log .pytest_cache
