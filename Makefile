# `make repro` and `make test` each work from a fresh clone: both run `make setup` first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test test-fast lint bench sources paper-table ablations clean-venv

setup: $(STAMP)
	@bash scripts/install-debs.sh
	@$(BIN)/ddb sources

# Re-installs only when the requirements or the project metadata change.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

repro: setup
	$(BIN)/dvc repro

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Two pytest workers (pytest-xdist), one test file each at a time: the end-to-end tests are
# mostly Python start-up and imports of their stage processes (one core each), so two of
# them run side by side; the tiny project they share is built once (tests/conftest.py),
# which also orders the files longest first (hence --no-loadscope-reorder).
PYTEST_WORKERS ?= 2
PYTEST_XDIST := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: setup lint
	$(BIN)/pytest $(PYTEST_XDIST) --durations=25

test-fast: setup
	$(BIN)/pytest $(PYTEST_XDIST) -m "not slow"

# The whole method on the tiny profile (conf/debug/tiny.yaml) in a scratch project
# .quickstart/ (the workspace's outputs untouched): its table is .quickstart/quickstart.md.
.PHONY: quickstart
quickstart: setup
	$(BIN)/ddb quickstart

bench: setup
	$(BIN)/python benchmarks/time_pipeline.py

# Commands over DVC experiments (queued, run one at a time in temporary copies of the repo).
paper-table: setup
	$(BIN)/ddb paper-table

ablations: setup
	$(BIN)/ddb ablations

sources: $(STAMP)
	$(BIN)/ddb sources

clean-venv:
	rm -rf $(VENV)
