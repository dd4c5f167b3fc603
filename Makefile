# llmsvc developer commands. `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Parallel test workers (pytest-xdist); the suite is mostly waiting on real processes.
TEST_WORKERS ?= 4
PYTEST_ARGS ?=

.PHONY: help venv run stop test lint typecheck imports check clean

help:
	@echo "make run     start the demo stack (registry, router, two simulated engines)"
	@echo "make stop    stop it"
	@echo "make test    run the test suite"
	@echo "make check   ruff, mypy --strict, import-linter, then the tests"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/llmsvc up

stop: $(STAMP)
	$(BIN)/llmsvc down

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy src

imports: $(STAMP)
	$(BIN)/lint-imports

check: lint typecheck imports test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache logs
