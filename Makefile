# CaloTwin: the commands the README names. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.calotwin-installed
export CALOTWIN_HOME ?= $(CURDIR)/.calotwin
export DAGSTER_HOME ?= $(CALOTWIN_HOME)/dagster
HOST ?= 127.0.0.1
PORT ?= 3000
MLFLOW_PORT ?= 5000
NOTEBOOK_PORT ?= 8888
TEST_WORKERS ?= 2
# `make docs` rewrites the configuration reference; CI passes --check, so a stale committed reference fails
CONFIG_REFERENCE ?= --write

.DEFAULT_GOAL := help
.PHONY: help install demo champion test lint format docs ui twin mlflow-ui notebook bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install CaloTwin with its pinned dependencies (idempotent)

# torch first: pip takes the CPU build of 2.13.0; then the project with its pinned Dagster packages
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: install ## Run the loop on embedded defaults and print a summary (data in $CALOTWIN_HOME)
	$(PY) -m dt_assets.demo

champion: install ## Train a generator for the default gates; validate, promote and export it if it passes (40-55 min on 2 cores)
	$(PY) -m dt_assets.champion

# one thread per worker (OMP_NUM_THREADS=1): two workers of two threads each on two cores spin-wait for each other
test: install ## Run the test suite on TEST_WORKERS (2) pytest-xdist workers of one thread, a test module per worker
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# the pre-commit hooks (.pre-commit-config.yaml: ruff, ruff format, codespell, shellcheck) on every file, then mypy on
# the domain packages ([tool.mypy] in pyproject.toml)
lint: install ## ruff lint and format check, codespell, shellcheck (the pre-commit hooks), and mypy on the domain packages
	$(VENV)/bin/pre-commit run --all-files --show-diff-on-failure
	$(VENV)/bin/mypy

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

docs: install ## Regenerate the configuration reference from the Config classes, then build the site into site/ (fails on a warning)
	$(PY) -m dt_assets.config_reference docs/reference/configuration.md $(CONFIG_REFERENCE)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

ui: install ## Start the Dagster UI and daemon on http://127.0.0.1:3000, the loop's sensors on (HOST, PORT to change)
	$(PY) -c 'from dt_assets.home import ensure_dagster_home, ensure_home; ensure_home(); ensure_dagster_home()'
	CALOTWIN_LOOP=on $(VENV)/bin/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

twin: install ## Start the UI and daemon, drop a new simulated batch into landing/ and show the loop react
	$(PY) -m dt_assets.twin --host $(HOST) --port $(PORT)

mlflow-ui: install ## Start the MLflow UI on the embedded tracking store, http://127.0.0.1:5000 (MLFLOW_PORT to change)
	mkdir -p $(CALOTWIN_HOME)/mlflow
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CALOTWIN_HOME)/mlflow/mlflow.db \
		--default-artifact-root $(CALOTWIN_HOME)/mlflow/artifacts -h $(HOST) -p $(MLFLOW_PORT)

# the kernel starts in notebooks/: the homes are passed on as absolute paths; Jupyter runs as root (containers,
# CI) only when told so
notebook: install ## Open notebooks/quickstart.ipynb in JupyterLab on http://127.0.0.1:8888 (after `make demo`; NOTEBOOK_PORT to change)
	CALOTWIN_HOME="$(abspath $(CALOTWIN_HOME))" DAGSTER_HOME="$(abspath $(DAGSTER_HOME))" \
		$(VENV)/bin/jupyter lab notebooks/quickstart.ipynb --no-browser --ip=$(HOST) --port=$(NOTEBOOK_PORT) \
		--ServerApp.root_dir="$(CURDIR)" $(if $(filter 0,$(shell id -u)),--allow-root)

bench: install ## Run the benchmarks in bench/ (prints tables and JSON lines)
	$(PY) bench/simulate.py
	$(PY) bench/codecs.py
	$(PY) bench/ingest.py
	$(PY) bench/train.py
	$(PY) bench/generate.py
	$(PY) bench/validation.py
	$(PY) bench/loop.py
	$(PY) bench/compute.py
	$(PY) bench/fidelity.py --family flow --minutes 5 --out $(CALOTWIN_HOME)/bench/fidelity-flow-5
	$(PY) bench/drivers.py --generator $(CALOTWIN_HOME)/bench/fidelity-flow-5/generator.pt
	$(PY) bench/shapes.py --generator $(CALOTWIN_HOME)/bench/fidelity-flow-5/generator.pt
