# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup services run test lint format bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: the CPU build; otherwise pip may pull a multi-GB CUDA build for `torch>=...`.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The tests also run against an MLflow 2 server, as teams that have not moved to MLflow 3 run
# (its last release, with the SQLAlchemy it was released with: newer ones removed a class it uses).
MLFLOW2 := .venv-mlflow2
MLFLOW2_STAMP := $(MLFLOW2)/.installed-stamp

$(MLFLOW2_STAMP): Makefile
	$(PYTHON) -m venv $(MLFLOW2)
	$(MLFLOW2)/bin/python -m pip install --quiet 'mlflow==2.22.5' 'sqlalchemy==2.0.35'
	touch $(MLFLOW2_STAMP)

# The tests start their own PostgreSQL cluster, SeaweedFS (S3) and MLflow servers and a headless
# browser; this makes sure PostgreSQL and Chromium are installed (the rest comes from PyPI).
services:
	infra/local/ensure-system-packages.sh

run: setup
	$(VENV)/bin/adapterops quickstart

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Two workers, one torch thread each (tests/conftest.py): the suite's CPU time splits over the two
# cores (18 minutes instead of 30 here). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: setup services lint $(MLFLOW2_STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS)

# Every benchmark, then the README's results section and plots from bench/results/*.json.
bench: setup services
	$(PY) -m bench.quality_bench
	$(PY) -m bench.training_cost_bench
	$(PY) -m bench.storage_bench
	$(PY) -m bench.composition_bench
	$(PY) -m bench.madx_demo
	$(PY) -m bench.registry_bench
	$(PY) -m bench.gc_bench
	$(PY) -m bench.move_bench
	$(PY) -m bench.probes_bench
	$(PY) -m bench.startup_bench
	$(PY) -m bench.predict_bench
	$(PY) -m bench.scoring_order_bench
	$(PY) -m bench.gpu_bench
	$(PY) -m bench.multi_lora_bench
	$(PY) -m bench.packing_bench
	$(PY) -m bench.llm_train_check
	$(PY) -m bench.quantized_load_bench
	$(PY) -m bench.lora_init_bench
	$(PY) -m bench.fsdp_memory_bench
	$(PY) -m bench.offload_bench
	$(PY) -m bench.report

# The same in under 10 minutes on two cores; results and report go to bench/results-quick/.
bench-quick: export ADAPTEROPS_BENCH_RESULTS = $(CURDIR)/bench/results-quick
bench-quick: setup services
	$(PY) -m bench.quality_bench --quick
	$(PY) -m bench.training_cost_bench --quick
	$(PY) -m bench.storage_bench
	$(PY) -m bench.composition_bench --quick
	$(PY) -m bench.madx_demo --steps 30
	$(PY) -m bench.registry_bench --quick
	$(PY) -m bench.gc_bench --quick
	$(PY) -m bench.move_bench --quick
	$(PY) -m bench.probes_bench --quick
	$(PY) -m bench.predict_bench --quick
	$(PY) -m bench.scoring_order_bench --quick
	$(PY) -m bench.packing_bench --quick
	$(PY) -m bench.quantized_load_bench --quick
	$(PY) -m bench.lora_init_bench --quick
	$(PY) -m bench.fsdp_memory_bench --quick
	$(PY) -m bench.offload_bench --quick
	$(PY) -m bench.report --markdown bench/results-quick/REPORT.md

clean:
	rm -rf $(VENV) $(MLFLOW2) .adapterops .pytest_cache .mypy_cache .ruff_cache
