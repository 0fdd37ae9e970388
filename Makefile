# pgqueue: every habit is one command. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-embedded

.DEFAULT_GOAL := help
.PHONY: help install lint format typecheck test test-faults bench bench-quick demo clean

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# One .venv, two stamps: the demo installs pgqueue with the embedded server and the dashboard;
# `install` (and all that needs the dev tools) adds those, which include what the demo needs.
# The distribution was called `pgqueue` before it became pgqueue-tasks: an older .venv may
# still hold that name, which `pip uninstall` removes (nothing happens when it is absent).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip uninstall --quiet --yes pgqueue 2>/dev/null || true
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip uninstall --quiet --yes pgqueue 2>/dev/null || true
	$(BIN)/pip install --quiet -e '.[embedded,web]'
	touch $(DEMO_STAMP)

install: $(STAMP) ## Create .venv and install pgqueue with its dev tools

lint: $(STAMP) ## ruff (lint and format check), mypy, and the import layers (import-linter)
	$(BIN)/ruff check pgqueue tests
	$(BIN)/ruff format --check pgqueue tests
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP) ## Format the code with ruff
	$(BIN)/ruff format pgqueue tests
	$(BIN)/ruff check --fix pgqueue tests

typecheck: $(STAMP) ## mypy on the public API
	$(BIN)/mypy

test: lint ## Lint, then the whole suite against a real PostgreSQL (and RabbitMQ)
	$(BIN)/python -m pytest -q

test-faults: $(STAMP) ## The fault-injection suite only
	$(BIN)/python -m pytest -q tests/faults

bench: $(STAMP) ## Benchmarks against the peers, then workflows (several minutes)
	bash benchmarks/bench.sh
	PYTHONPATH=. $(BIN)/python benchmarks/workflows.py
	PYTHONPATH=. $(BIN)/python benchmarks/chain_floor.py

bench-quick: $(STAMP) ## A short benchmark run (under 3 minutes)
	bash benchmarks/bench.sh --quick

demo: $(DEMO_STAMP) ## Run a worker on a realistic workload with the embedded PostgreSQL
	$(BIN)/pgqueue demo

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
