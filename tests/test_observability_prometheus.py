"""A real Prometheus scraping a running stack: dashboards show data, alerts fire.

The stack: registry, router, four babysitters of the simulated engine (``engine-a``,
``engine-b`` and ``engine-flaky`` (every request answered 500, so the router retries and
passive health takes it out) serving ``sim-model``; ``engine-lonely`` alone serving
``lonely``, one request at a time, 20 tokens/s), and the operator against the
Kubernetes API emulator with one InferenceService. Prometheus (Debian's
``prometheus``) scrapes all of them every second and evaluates a copy of the alert
rules whose ``for:`` durations are 0 s.

After traffic (streamed and not, an unknown model, a bad body, a request that waits in
the router's queue for ``lonely``'s one slot) and a SIGKILLed engine (restarted by its
babysitter): every metric any service exposes is in the documented catalogue, and every
dashboard query, with ``$model``/``$backend`` at "All", returns data. Then
``engine-lonely`` dies with its babysitter: ``LLMSvcNoHealthyBackend``,
``LLMSvcHighErrorRate`` and ``LLMSvcRequestsWithoutBackend`` fire for ``lonely``, whose
requests, held for ``--hold-timeout`` (1 s) without a ready backend, are counted as
rejected (``no_healthy_backend``).
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubeapi import ISVC, KubeAPI, start_kubeapi
from observability import (
    Prometheus,
    catalogue,
    exposed_families,
    fast_rules,
    metric_names,
    panel_queries,
    scrape_config,
    series_family,
    start_prometheus,
    substitute,
)
from procs import (
    HOST,
    Proc,
    ProcGroup,
    Spawn,
    free_port,
    standin_env,
    start_babysitter,
    start_registry,
    start_router,
    wait_until,
)
from tools import require_tool

pytestmark = pytest.mark.slow

ENGINES = {  # name -> (model, extra engine args)
    "engine-a": ("sim-model", ()),
    "engine-b": ("sim-model", ()),
    "engine-flaky": ("sim-model", ("--fail-rate", "1")),
    # One slot (the babysitter advertises --max-num-seqs as max_concurrency) and answers
    # that take real time (a later --time-scale wins): a second request waits in the queue.
    "engine-lonely": (
        "lonely",
        ("--max-num-seqs", "1", "--time-scale", "1", "--decode-tokens-per-s", "20"),
    ),
}
MEMORY_LIMIT = "llmsvc_babysitter_engine_memory_limit_bytes"
CREATED = 'llmsvc_operator_reconciles_total{handler="create",result="success"} 1.0'
# Documented metrics a stack like this one does not export, and why.
NOT_IN_THIS_STACK = {
    "llmsvc_router_load_scrape_errors_total": "only with --strategy least_load, on a failure",
    "llmsvc_registry_kubernetes_": "only with --source kubernetes",
    "llmsvc_router_rejected_requests_total": "once flow control turns one away: lonely's, later",
    "llmsvc_batch_": "the batch service's, which this stack does not run",
    MEMORY_LIMIT: "only where the engine's cgroup has a memory limit",
}
# Series that only an autoscaling event makes (the operator's autoscaler deciding for an
# autoscaled InferenceService, a router it could not ask, a router waking a standby
# engine): none happens in this stack, so the dashboard panels on them stay empty here.
AUTOSCALING_EVENTS = {
    "llmsvc_operator_desired_replicas": "set once the autoscaler decides for a service",
    "llmsvc_operator_current_replicas": "set once the autoscaler decides for a service",
    "llmsvc_operator_scale_events_total": "once the autoscaler changes replicas",
    "llmsvc_operator_demand_fetch_failures_total": "once a router does not answer /demand",
    "llmsvc_router_wakes_total": "once a router wakes a standby engine",
}
HOLD_TIMEOUT_S = 1  # the router's: how long a request for lonely waits once it is down


def chat(router: str, model: str, *, stream: bool = False, max_tokens: int = 4) -> int:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    }
    with httpx.stream(
        "POST", f"{router}/v1/chat/completions", json={**body, "stream": stream}, timeout=30
    ) as resp:
        resp.read()
        return resp.status_code


def start_operator(spawn: Spawn, tmp: Path) -> tuple[Proc, str, KubeAPI]:
    """The operator against the emulator, watching namespace ``obs``; not waited for."""
    api = start_kubeapi(spawn, tmp)
    port = free_port()
    proc = spawn(
        "operator",
        "operator",
        *("--namespace", "obs", "--host", HOST, "--port", str(port)),
        *("--resync-interval", "2", "--status-debounce", "0.05", "--batch-window", "0.02"),
        *("--watch-timeout", "30", "--request-timeout", "5"),
        env={**api.env, "POD_NAME": "llmsvc-operator-0"},
    )
    return proc, f"http://{HOST}:{port}", api


def reconcile_isvc(kube: KubeAPI, operator: str) -> None:
    """Create an InferenceService and wait until the operator's create handler succeeded.

    The emulator does not replay to a new watch what was created between kopf's list
    and its watch, so an object created just then goes unseen: a changed annotation
    every 2 s is a new event the operator sees.
    """
    path = f"{ISVC}/namespaces/obs/inferenceservices/demo"
    isvc = {
        "apiVersion": "llmsvc.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "demo", "namespace": "obs"},
        "spec": {"model": {"name": "sim-model", "uri": "sim-model"}, "engine": {"type": "sim"}},
    }
    kube.create(path.rsplit("/", 1)[0], isvc)
    nudges = itertools.count()

    def reconciled() -> bool:
        if CREATED in httpx.get(f"{operator}/metrics", timeout=5).text:
            return True
        kube.patch(path, {"metadata": {"annotations": {"test/nudge": str(next(nudges))}}})
        return False

    wait_until(reconciled, timeout=20, interval=2, what="the operator's create handler")


def start_stack(spawn: Spawn, tmp: Path, prometheus: str) -> tuple[dict[str, Any], Prometheus]:
    """Everything started at once (each waits for what it needs), then waited for."""
    _, registry = start_registry(spawn)
    # engine-a's babysitter sees one GPU (a stand-in nvidia-smi), for the Resources dashboard.
    gpus = tmp / "gpus.csv"
    gpus.write_text("0, 20000, 81559, 37, 61\n")
    gpu_env = {**standin_env(tmp / "standin-record"), "LLMSVC_STANDIN_GPUS": str(gpus)}
    gpu_flags = ("--gpus", "0", "--gpu-probe", "nvidia-smi", "--resource-interval", "1")
    sitters = {}
    for name, (model, args) in ENGINES.items():
        gpu = name == "engine-a"
        sitters[name] = start_babysitter(
            spawn,
            registry,
            name,
            *(gpu_flags if gpu else ()),
            model=model,
            engine_args=("--time-scale", "0", *args),
            wait=False,
            env=gpu_env if gpu else None,
        )
    operator_proc, operator, kube = start_operator(spawn, tmp)
    _, router = start_router(spawn, registry, "--hold-timeout", str(HOLD_TIMEOUT_S))
    stack = {"registry": registry, "router": router, "sitters": sitters, "operator": operator}
    config = scrape_config(prometheus_jobs(stack), fast_rules(tmp))
    prom = start_prometheus(spawn, tmp, prometheus, config)
    for proc, _, api in sitters.values():
        proc.wait_http(f"{api}/health", timeout=30)
    operator_proc.wait_http(f"{operator}/health", timeout=30)
    reconcile_isvc(kube, operator)
    wait_until(
        lambda: httpx.get(f"{router}/health").json()["healthy_backends"] == len(ENGINES),
        what="the router sees every engine",
    )
    return stack, prom


def prometheus_jobs(stack: dict[str, Any]) -> dict[str, list[tuple[str, dict[str, str]]]]:
    def target(url: str) -> str:
        return url.removeprefix("http://")

    return {
        "llmsvc-router": [(target(stack["router"]), {})],
        "llmsvc-registry": [(target(stack["registry"]), {})],
        "llmsvc-operator": [(target(stack["operator"]), {})],
        # The backend label is the babysitter's --name, as deploy/compose/prometheus.yml sets it.
        "llmsvc-engine": [(target(e), {"backend": n}) for n, (_, e, _) in stack["sitters"].items()],
        "llmsvc-babysitter": [
            (target(a), {"backend": n}) for n, (_, _, a) in stack["sitters"].items()
        ],
    }


def send_traffic(router: str) -> int:
    """Requests of every kind; returns how many the router answered."""
    statuses = []
    for i in range(6):
        statuses.append(chat(router, "sim-model", stream=bool(i % 2)))
        statuses.append(chat(router, "lonely", stream=bool(i % 2)))
    statuses.append(chat(router, "no-such-model"))  # 404, model_name="_unknown"
    bad = httpx.post(f"{router}/v1/chat/completions", content=b"{", timeout=10)
    statuses.append(bad.status_code)
    assert statuses.count(200) == 12, statuses  # engine-flaky's 500s were retried elsewhere
    assert sorted(set(statuses)) == [200, 400, 404], statuses
    return len(statuses)


def queue_behind_a_stream(router: str) -> None:
    """A request for ``lonely`` sent while its one slot is taken by a stream (~2 s long)
    waits in the router's queue, then is answered: queue-wait data for the dashboards."""
    body = {"model": "lonely", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream(
        "POST",
        f"{router}/v1/chat/completions",
        json={**body, "stream": True, "max_tokens": 40},
        timeout=30,
    ) as first:
        assert first.status_code == 200
        lines = first.iter_lines()
        next(lines)  # the engine has started it: the slot is taken for ~2 s
        with ThreadPoolExecutor(1) as pool:
            second = pool.submit(chat, router, "lonely", max_tokens=1)
            assert "data: [DONE]" in list(lines)
            assert second.result(timeout=30) == 200


def kill_engine(api_url: str) -> int:
    pid: int = httpx.get(f"{api_url}/status").json()["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


def documented_metrics_exposed(stack: dict[str, Any]) -> None:
    documented = {m.name for m in catalogue()}
    urls = [stack["router"], stack["registry"], stack["operator"]]
    for _, engine, api in stack["sitters"].values():
        urls += [engine, api]
    exposed: set[str] = set()
    for url in urls:
        families = exposed_families(httpx.get(f"{url}/metrics", timeout=5).text)
        undocumented = families - documented
        assert not undocumented, f"{url}/metrics exposes undocumented {undocumented}"
        exposed |= families
    missing = {
        name
        for name in documented - exposed
        if not any(name.startswith(prefix) for prefix in (*NOT_IN_THIS_STACK, *AUTOSCALING_EVENTS))
    }
    assert not missing, f"documented but exported by no running service: {missing}"


def dashboards_show_data(prom: Prometheus) -> None:
    queries = [
        (f"{board} / {title}", substitute(expr, {"model": ".*", "backend": ".*"}))
        for board, title, expr in panel_queries()
        if not {series_family(n) for n in metric_names(expr)} <= AUTOSCALING_EVENTS.keys()
        and board != "batches"  # the batch service's: not in this stack
        and MEMORY_LIMIT not in metric_names(expr)  # none where the test runs without a limit
    ]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda q: prom.result(q[1]), queries))
    empty = [f"{where}: {q}" for (where, q), got in zip(queries, results, strict=True) if not got]
    assert not empty, "queries without data:\n" + "\n".join(empty)


def firing(prom: Prometheus) -> set[tuple[str, str]]:
    return {(a["labels"]["alertname"], a["labels"].get("model_name", "")) for a in prom.firing()}


def test_dashboards_show_data_and_alerts_fire(spawn: ProcGroup, tmp_path: Path) -> None:
    stack, prom = start_stack(spawn, tmp_path, require_tool("prometheus"))
    router = stack["router"]

    # Two rounds of traffic at least one scrape apart (rates need two samples), and an
    # engine SIGKILLed in between: its babysitter restarts it.
    sent = send_traffic(router)
    wait_until(lambda: prom.result("llmsvc_router_requests_total"), what="a scrape of traffic")
    _, _, api_a = stack["sitters"]["engine-a"]
    killed = kill_engine(api_a)
    wait_until(
        lambda: (
            httpx.get(f"{api_a}/status").json()["pid"] not in (killed, None)
            and httpx.get(f"{api_a}/health").status_code == 200
        ),
        timeout=20,
        what="engine-a restarted",
    )
    wait_until(
        lambda: httpx.get(f"{router}/health").json()["healthy_backends"] >= 3,
        what="engine-a back in the router",
    )
    sent += send_traffic(router)
    queue_behind_a_stream(router)
    sent += 2
    wait_until(
        lambda: prom.result(f"sum(llmsvc_router_requests_total) == {sent}"),
        timeout=10,
        what=f"Prometheus has scraped all {sent} requests",
    )
    wait_until(
        lambda: prom.result('llmsvc_babysitter_restarts_total{reason="Signaled"} > 0'),
        what="the restart scraped",
    )

    wait_until(prom.targets_up, what="Prometheus scrapes every target")
    wait_until(
        lambda: prom.result(
            'llmsvc_operator_reconciles_total{handler="create", result="success"} == 1'
            " and on () sum(llmsvc_operator_inference_services) == 1"
        ),
        what="the operator's reconcile of the InferenceService, scraped",
    )
    documented_metrics_exposed(stack)
    unknown = ("LLMSvcRequestsWithoutBackend", "_unknown")  # the no-such-model requests
    wait_until(lambda: unknown in firing(prom), timeout=10, what=f"alert {unknown} firing")
    assert ("LLMSvcNoHealthyBackend", "lonely") not in firing(prom)

    # The fault: lonely's only engine dies with its babysitter (no deregistration).
    proc, _, api = stack["sitters"]["engine-lonely"]
    engine_pid = httpx.get(f"{api}/status").json()["pid"]
    os.killpg(proc.pid, signal.SIGKILL)
    os.kill(engine_pid, signal.SIGKILL)
    wait_until(
        lambda: prom.result('llmsvc_router_model_healthy_backends{model_name="lonely"} == 0'),
        timeout=10,
        what="the router's gauge of lonely at 0, scraped",
    )
    for _ in range(2):  # failing requests over two scrapes, so that their rate shows
        assert {chat(router, "lonely") for _ in range(3)} == {503}  # after 1 s held each
        time.sleep(1.1)
    wait_until(
        lambda: prom.result(
            'llmsvc_router_rejected_requests_total{model_name="lonely", priority="standard",'
            ' reason="no_healthy_backend"} == 6'
        ),
        timeout=10,
        what="lonely's 6 held-then-503 requests, scraped as rejections",
    )
    expected = {
        ("LLMSvcNoHealthyBackend", "lonely"),
        ("LLMSvcHighErrorRate", "lonely"),
        ("LLMSvcRequestsWithoutBackend", "lonely"),
    }
    wait_until(lambda: expected <= firing(prom), timeout=15, what=f"alerts {expected} firing")
    fired = firing(prom)
    assert ("LLMSvcNoHealthyBackend", "sim-model") not in fired
    assert not {name for name, _ in fired} & {"LLMSvcRegistryUnreachable", "LLMSvcBackendFlapping"}
    # Every panel, now that the traffic includes 5xx (lonely's 503s; an unknown model is a 404).
    dashboards_show_data(prom)
    for proc in spawn.procs:  # stop everything at once; the fixture then waits for each
        proc.signal(signal.SIGTERM)
