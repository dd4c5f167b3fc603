"""Scale from zero and back on Kubernetes, end to end, against the Kubernetes API emulator.

Real processes: the emulator (``tests/kubeapi.py``), ``llmsvc operator`` with its builtin
autoscaler asking the router Service's endpoints for ``GET /demand`` every 0.3 s,
``llmsvc registry --source kubernetes``, ``llmsvc router`` following it (holding requests
up to 30 s) and, for each replica the Deployment asks for, a ``llmsvc sim-engine`` started
by the test's kubelet (``tests/kubelet.py``: it plays the Deployment controller, kubelet
and EndpointSlice controller). The router Service's EndpointSlice points at the router
process, as the EndpointSlice controller would make it for the router's pod.

The issue's test: an InferenceService with ``minReplicas: 0`` is known at zero (listed,
its request held, not 404/503), its held request's demand scales it 0 → 1, the request
gets its answer once the engine is ready, and with no demand for ``scaleDownDelay`` it is
scaled back to 0 and is still known. The second cold start's held stream is told how
long it will likely wait (from the first one, measured by the operator, through the
Service's annotations and the registry's record). A second test has one of the router
Service's endpoints refuse and another never answer: the scale-up still happens.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import metrics
from kubeapi import APPS, CORE, DISCOVERY, ISVC, KubeAPI, start_kubeapi
from kubelet import Kubelet
from procs import HOST, Proc, Spawn, free_port, start_router, wait_until
from test_operator_e2e import operator_args

NS = "llm"
TOKEN = "router-admin-token-e2e"  # the router's admin token, which /demand needs
ROUTER_SERVICE = "llmsvc-router"
SLICES = f"{DISCOVERY}/namespaces/{NS}/endpointslices"
TIMEOUT = 20.0  # seconds for one step; a passing run takes 0.3-3 s per step
SCALE_DOWN_DELAY = 1.0
AUTOSCALE_INTERVAL = 0.3


@dataclass
class Stack:
    api: KubeAPI
    spawn: Spawn
    operator: Proc
    operator_url: str
    registry_url: str
    router_url: str
    router_port: int
    procs: list[Proc]

    def check(self) -> None:
        """Fail at once, with its log, if a process of the stack has ended (a port taken
        by another process between free_port() and its bind ends it, and a wait for its URL
        may have been answered by that other process)."""
        for proc in self.procs:
            assert proc.alive(), f"{proc.name} exited:\n{proc.log()[-2000:]}"


@pytest.fixture(scope="module")
def stack(module_spawn: Spawn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = start_stack(module_spawn, tmp_path_factory.mktemp("kube"))
    yield started
    started.api.close()


def start_stack(module_spawn: Spawn, tmp_path: Path, *router_flags: str) -> Stack:
    """The emulator, the registry, a router (``router_flags`` added), its Service's slice,
    and the operator autoscaling from that Service's routers; each waited for."""
    api = start_kubeapi(module_spawn, tmp_path)
    registry_port = free_port()
    registry = module_spawn(
        "registry", "registry", "--port", str(registry_port), "--source", "kubernetes",
        "--namespace", NS, "--allow-anonymous-writes", env=api.env,
    )  # fmt: skip
    registry_url = f"http://{HOST}:{registry_port}"
    registry.wait_http(f"{registry_url}/health")
    router, router_url = start_router(
        module_spawn, registry_url, "--admin-token", TOKEN, "--hold-timeout", "30",
        "--hold-feedback-interval", "0.2", *router_flags,
    )  # fmt: skip
    router_port = int(router_url.rsplit(":", 1)[1])
    # The router's Service and its EndpointSlice, as the router's Deployment would have.
    api.create(f"{CORE}/namespaces/{NS}/services", router_service())
    api.create(SLICES, router_slice("llmsvc-router-a", router_port))
    operator_port = free_port()
    operator = module_spawn(
        "operator", *operator_args(operator_port, "--namespace", NS),
        "--autoscale-interval", str(AUTOSCALE_INTERVAL),
        "--router-service", f"{NS}/{ROUTER_SERVICE}", "--router-admin-token", TOKEN,
        "--router-timeout", "0.5",
        env={**api.env, "POD_NAME": "llmsvc-operator-0"},
    )  # fmt: skip
    operator_url = f"http://{HOST}:{operator_port}"
    operator.wait_http(f"{operator_url}/health", timeout=30)
    procs = [api.proc, registry, router, operator]
    started = Stack(
        api, module_spawn, operator, operator_url, registry_url, router_url, router_port, procs
    )
    started.check()
    return started


def router_service() -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": "llmsvc-router"}
    ports = [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": ROUTER_SERVICE, "namespace": NS, "labels": selector},
            "spec": {"selector": selector, "ports": ports}}  # fmt: skip


def router_slice(name: str, port: int, *, ready: bool = True) -> dict[str, Any]:
    """A slice of the router Service: one router pod at 127.0.0.1:``port``."""
    labels = {
        "kubernetes.io/service-name": ROUTER_SERVICE,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
    }
    endpoint = {
        "addresses": [HOST],
        "conditions": {"ready": ready},
        "targetRef": {"kind": "Pod", "name": name, "namespace": NS},
    }
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "addressType": "IPv4", "endpoints": [endpoint],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}  # fmt: skip


# -- one autoscaled InferenceService -------------------------------------------------------


class Autoscaled:
    """An InferenceService with ``minReplicas: 0`` and the kubelet that runs its engines."""

    def __init__(self, stack: Stack, name: str, model: str, *, startup_delay: float) -> None:
        self.stack, self.api, self.name, self.model = stack, stack.api, name, model
        self.path = f"{ISVC}/namespaces/{NS}/inferenceservices/{name}"
        self.deployment_path = f"{APPS}/namespaces/{NS}/deployments/{name}"
        self.kubelet = Kubelet(
            stack.api.url, stack.spawn, namespace=NS, name=name, model=model,
            startup_delay=startup_delay,
        )  # fmt: skip
        autoscaling = {
            "minReplicas": 0, "maxReplicas": 1, "targetRequests": 1,
            "scaleUpDelay": "0s", "scaleDownDelay": f"{SCALE_DOWN_DELAY:g}s",
        }  # fmt: skip
        self.api.create(
            f"{ISVC}/namespaces/{NS}/inferenceservices",
            {
                "apiVersion": "llmsvc.io/v1alpha1",
                "kind": "InferenceService",
                "metadata": {"name": name, "namespace": NS},
                "spec": {
                    "model": {"name": model, "uri": "hf://Qwen/Qwen3-0.6B"},
                    "engine": {"type": "sim"},
                    "replicas": 0,
                    "autoscaling": autoscaling,
                },
            },
        )
        self.kubelet.start()

    def close(self) -> None:
        self.kubelet.stop()
        self.api.delete(self.path)

    def wait(self, check: Any, what: str, timeout: float = TIMEOUT) -> Any:
        def checked() -> Any:
            self.stack.check()
            self.kubelet.check()
            return check()

        try:
            return self.api.wait_handled(self.path, checked, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe cluster then: {self.cluster()}") from None

    def cluster(self) -> str:
        """What a failed wait saw: the slices (service, ready addresses and ports), the
        Deployment's replicas and the InferenceService's status."""
        slices = [
            (
                (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name"),
                s["metadata"]["name"],
                [(e["addresses"], e.get("conditions")) for e in s.get("endpoints") or []],
                [p.get("port") for p in s.get("ports") or []],
            )
            for s in self.api.list(SLICES)
        ]
        deployment = self.api.get(self.deployment_path) or {}
        return json.dumps(
            {
                "slices": slices,
                "deployment": [deployment.get("spec", {}).get("replicas"),
                               deployment.get("status")],
                "status": self.status(),
            }
        )  # fmt: skip

    def wait_replicas(self, count: int, *, after: float = 0.0) -> float:
        """When the kubelet saw ``spec.replicas == count`` (after monotonic ``after``)."""

        def seen() -> float | None:
            return next((t for t, n in self.kubelet.seen if n == count and t > after), None)

        found: float = self.wait(seen, f"{self.name}: replicas {count} ({self.kubelet.seen})")
        return found

    def status(self) -> dict[str, Any]:
        found = self.api.get(self.path) or {}
        status: dict[str, Any] = found.get("status") or {}
        return status

    def events(self, reason: str) -> list[str]:
        return [
            e.get("message", "")
            for e in self.api.list(f"{CORE}/namespaces/{NS}/events")
            if e.get("reason") == reason and e["involvedObject"]["name"] == self.name
        ]

    def record(self) -> dict[str, Any] | None:
        """The registry's ``inference-service`` record of the Service, if it has one."""
        resp = httpx.get(f"{self.stack.registry_url}/services/{NS}.{self.name}", timeout=5)
        if resp.status_code != 200:
            return None
        body: dict[str, Any] = resp.json()
        return body if body["type"] == "inference-service" else None


@pytest.fixture
def qwen(stack: Stack) -> Iterator[Autoscaled]:
    isvc = Autoscaled(stack, "qwen", "Qwen/Qwen3-0.6B", startup_delay=1.5)
    yield isvc
    isvc.close()


# -- clients -------------------------------------------------------------------------------


def chat(model: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4, "stream": stream}  # fmt: skip


def demand(router_url: str, model: str) -> dict[str, Any]:
    resp = httpx.get(
        f"{router_url}/demand", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    resp.raise_for_status()
    models: dict[str, dict[str, Any]] = resp.json()["models"]
    return models.get(model, {})


def listed(router_url: str) -> list[str]:
    resp = httpx.get(f"{router_url}/v1/models", timeout=5)
    resp.raise_for_status()
    return [m["id"] for m in resp.json()["data"]]


@dataclass
class Call:
    """A chat request sent from a thread: its answer (or error), when it came."""

    status: int | None = None
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    lines: list[tuple[float, str]] = field(default_factory=list)  # a stream's (time, line)
    done_at: float | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def join(self, timeout: float = 40.0) -> Call:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the request did not end"
        if self.error is not None:
            raise AssertionError(f"the request failed: {self.error!r}") from self.error
        return self


def send(router_url: str, model: str, *, stream: bool = False) -> Call:
    """Start a chat completion in a thread; :meth:`Call.join` waits for its end."""
    call = Call()

    def run() -> None:
        try:
            with (
                httpx.Client(timeout=40) as client,
                client.stream(
                    "POST", f"{router_url}/v1/chat/completions", json=chat(model, stream=stream)
                ) as resp,  # fmt: skip
            ):
                call.status, call.headers = resp.status_code, dict(resp.headers)
                for line in resp.iter_lines():
                    call.lines.append((time.monotonic(), line))
                call.body = "\n".join(line for _, line in call.lines)
        except BaseException as exc:  # kept for join(): a thread's error is otherwise lost
            call.error = exc
        finally:
            call.done_at = time.monotonic()

    call.thread = threading.Thread(target=run, daemon=True)
    call.thread.start()
    return call


# -- the tests -----------------------------------------------------------------------------


def test_scales_from_zero_on_a_held_request_and_back_after_the_delay(
    stack: Stack, qwen: Autoscaled
) -> None:
    router, model = stack.router_url, qwen.model
    # Created at 0: the Deployment has no replica, the model is known all the same.
    qwen.wait_replicas(0)
    qwen.wait(lambda: model in listed(router), "the model listed by the router at zero")
    record = qwen.record()
    assert record is not None and record["metadata"]["ready_endpoints"] == 0
    assert "startup_seconds" not in record["metadata"], "no cold start measured yet"

    # Cycle 1: a plain request is held (not 404/503); its demand scales 0 -> 1.
    first = send(router, model)
    qwen.wait(lambda: demand(router, model).get("held") == 1, "the request held")
    assert first.status is None, f"answered while no engine runs: {first.status} {first.body}"
    up_at = qwen.wait_replicas(1)
    first.join()
    assert first.status == 200, first.body
    assert json.loads(first.body)["choices"][0]["message"]["content"]
    assert first.done_at is not None and first.done_at >= qwen.kubelet.ready_at[0]
    qwen.wait(lambda: any("0 → 1" in m for m in qwen.events("Scaled")), "a Scaled 0 → 1 event")

    # No demand for scaleDownDelay: back to 0 (not at once), the model still known.
    down_at = qwen.wait_replicas(0, after=up_at)
    assert down_at - first.done_at >= SCALE_DOWN_DELAY - 2 * AUTOSCALE_INTERVAL - 0.1, (
        f"scaled down {down_at - first.done_at:.2f} s after the last request's end"
    )
    qwen.wait(lambda: any("1 → 0" in m for m in qwen.events("Scaled")), "a Scaled 1 → 0 event")
    measured = qwen.wait(
        lambda: (r := qwen.record()) and r["metadata"].get("startup_seconds"),
        "the registry's record with the measured cold start",
    )
    # The operator measured it from its scale-up to the first ready endpoint: at least the
    # engine's model load (1.5 s), and within the wait for it.
    assert 1.5 <= measured <= qwen.kubelet.ready_at[0] - (up_at - AUTOSCALE_INTERVAL) + 1.0
    status = qwen.status()
    assert status.get("lastColdStartSeconds") == pytest.approx(measured, abs=0.01)
    assert model in listed(router)

    # Cycle 2: a held stream gets its headers at once, then comment lines that say about
    # how long: the first cold start, less what the current one (the Service says since
    # when, the registry's record carries it) has taken.
    second = send(router, model, stream=True)
    up_again = qwen.wait_replicas(1, after=down_at)
    since = qwen.wait(
        lambda: (r := qwen.record()) and r["metadata"].get("starting_since"),
        "the record's starting_since while the pod starts",
    )
    assert abs(since - time.time()) < TIMEOUT, "a Unix time, of this scale-up"
    second.join()
    assert second.status == 200 and second.headers["content-type"].startswith("text/event-stream")
    comments = [line for t, line in second.lines if line.startswith(":")]
    assert comments and comments[0].startswith(f": waiting for {model}: 0 ahead"), comments
    estimates = [int(m[1]) for c in comments if (m := re.search(r", about (\d+) s$", c))]
    assert estimates, f"no estimate in the held stream's comment lines: {comments}"
    assert all(1 <= e <= math.ceil(measured) + 1 for e in estimates), (estimates, measured)
    data = [line for _, line in second.lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and len(data) >= 2, second.lines
    assert up_again < qwen.kubelet.ready_at[1]

    # Back to 0 again; a new request is held again (headers, a comment line), then the
    # client goes away: nothing stays held.
    qwen.wait_replicas(0, after=up_again)
    qwen.wait(lambda: not qwen.kubelet.replicas, "the engine stopped")
    qwen.wait(lambda: qwen.record() is not None, "the zero-endpoint record back")
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", f"{router}/v1/chat/completions", json=chat(model, stream=True)
        ) as resp,  # fmt: skip
    ):
        assert resp.status_code == 200
        lines = resp.iter_lines()  # kept: a dropped iterator closes the response
        first_line = next(lines)
        assert first_line.startswith(f": waiting for {model}: 0 ahead"), first_line
        assert demand(router, model).get("held") == 1
    wait_until(lambda: demand(router, model).get("held", 0) == 0, timeout=TIMEOUT,
               what="the cancelled request no longer held")  # fmt: skip


class BlackHole:
    """A port that accepts connections and never answers (a hung router)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def test_a_router_down_does_not_stop_the_scale_up(stack: Stack) -> None:
    # Two more router pods in the Service's slices: one refuses (its port is closed), one
    # accepts and never answers. The operator skips both each round and scales anyway.
    dead_port = free_port()
    hung = BlackHole()
    stack.api.create(SLICES, router_slice("llmsvc-router-dead", dead_port))
    stack.api.create(SLICES, router_slice("llmsvc-router-hung", hung.port))
    isvc = Autoscaled(stack, "gemma", "google/gemma-3-1b", startup_delay=0.0)
    try:
        isvc.wait_replicas(0)
        isvc.wait(lambda: isvc.model in listed(stack.router_url), "the model listed")
        call = send(stack.router_url, isvc.model)
        isvc.wait_replicas(1)
        call.join()
        assert call.status == 200, call.body
        text = metrics.scrape(stack.operator_url)
        failed = {
            s.labels.get("router", ""): s.value
            for s in metrics.matching(text, "llmsvc_operator_demand_fetch_failures_total")
        }
        assert failed.get(f"{HOST}:{dead_port}", 0) >= 1, failed
        assert failed.get(f"{HOST}:{hung.port}", 0) >= 1, failed
        assert f"{HOST}:{stack.router_port}" not in failed, failed
    finally:
        isvc.close()
        for name in ("llmsvc-router-dead", "llmsvc-router-hung"):
            stack.api.delete(f"{SLICES}/{name}")
        hung.close()
