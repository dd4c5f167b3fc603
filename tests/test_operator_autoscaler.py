"""The real operator's builtin autoscaler against the Kubernetes API emulator.

A stand-in router (a threaded HTTP server on 127.0.0.1 whose ``GET /demand`` the test
sets per model) is the router Service's endpoint, in an EndpointSlice as the
EndpointSlice controller would make it; the operator runs with ``--router-service``
and ``--autoscale-interval 0.2``. The tests play the Deployment controller and the
kubelet where the emulator has none (a pod and ``status.readyReplicas``). Every scale
write is read back from the emulator's ``/_control/scales`` (the scale subresource),
with when it happened, so the delays are checked against the stand-in's own record of
what it answered, not against this machine's speed. Part B2 runs a real router and
registry end to end; this file is the operator's side alone.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import metrics
from kubeapi import APPS, CORE, DISCOVERY, ISVC, KubeAPI, start_kubeapi
from llmsvc.kube import Credentials, KubeClient
from llmsvc.operator.autoscaler import Autoscaler
from llmsvc.operator.demand_source import DemandSource, ModelDemand, ready_addresses, summed
from llmsvc.operator.metrics import OperatorMetrics
from procs import HOST, Proc, free_port, wait_until
from test_operator_e2e import isvc_body, operator_args

NAMESPACES = [f"as{i}" for i in range(8)]
ROUTER_NAMESPACE = "llmsvc"
ROUTER_SERVICE = "llmsvc-router"
TOKEN = "router-admin-secret"
TIMEOUT = 30.0
SCALING_SINCE = "llmsvc.io/scaling-since"
COLD_START = "llmsvc.io/cold-start-seconds"

_namespaces = iter(NAMESPACES)
_names = itertools.count()


# -- summing and finding routers (pure) -------------------------------------------------


def test_demand_sums_over_routers_ready_is_the_most_kv_the_mean() -> None:
    one = {"models": {"m": {"demand": 5, "queued": 1, "held": 2, "ready": 2,
                            "kv_cache_usage": 0.5}}}  # fmt: skip
    two = {"models": {"m": {"demand": 3, "queued": 0, "held": 1, "ready": 1,
                            "kv_cache_usage": None},
                      "n": {"demand": 1, "queued": 1, "held": 0, "ready": 0,
                            "kv_cache_usage": 0.9}}}  # fmt: skip
    three = {"models": {"m": {"demand": 0, "queued": 0, "held": 0, "ready": 2,
                              "kv_cache_usage": 0.7}}}  # fmt: skip
    models = summed([one, two, three])
    m = models["m"]
    assert (m.demand, m.waiting, m.ready) == (8, 4, 2)
    assert m.kv_cache == pytest.approx(0.6)  # of the two routers that knew it
    assert models["n"] == ModelDemand(demand=1, waiting=1, kv_cache=0.9, ready=0)


def test_router_addresses_are_the_ready_endpoints_on_the_named_port() -> None:
    slice_ = {
        "ports": [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8080}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},  # terminating
            {"addresses": ["10.0.0.3"]},  # ready unset: ready (the API's meaning)
            {"addresses": ["fd00::4"], "conditions": {"ready": True}},
        ],
    }
    assert ready_addresses(slice_, "http") == ["10.0.0.1:8080", "10.0.0.3:8080", "[fd00::4]:8080"]
    assert ready_addresses(slice_, "grpc") == []


# -- a stand-in router -----------------------------------------------------------------


class StandInRouter:
    """``GET /demand`` answering what the test set, recording when it said what."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.answers: list[tuple[float, dict[str, int]]] = []  # (time, model -> demand)
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        router = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with router.lock:
                    router.auth.add(self.headers.get("Authorization", ""))
                    body = {"models": dict(router.models), "total": 0}
                    router.answers.append(
                        (time.time(), {m: e["demand"] for m, e in router.models.items()})
                    )
                if self.path != "/demand":
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set(self, model: str, *, in_flight: int = 0, held: int = 0) -> float:
        """The demand of ``model`` from now on; when it was set."""
        entry = {
            "in_flight": in_flight,
            "queued": 0,
            "queued_by_priority": {},
            "held": held,
            "demand": in_flight + held,
            "kv_cache_usage": None,
            "ready": 0,
        }
        with self.lock:
            self.models[model] = entry
            return time.time()

    def last_nonzero(self, model: str) -> float:
        with self.lock:
            return max(t for t, seen in self.answers if seen.get(model, 0) > 0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def endpoint_slice(name: str, port: int, *, service: str = ROUTER_SERVICE) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ROUTER_NAMESPACE,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [HOST], "conditions": {"ready": True}}],
    }


SLICES = f"{DISCOVERY}/namespaces/{ROUTER_NAMESPACE}/endpointslices"


# -- the cluster -------------------------------------------------------------------------


class Cluster:
    def __init__(self, api: KubeAPI, proc: Proc, url: str, router: StandInRouter) -> None:
        self.api, self.proc, self.url, self.router = api, proc, url, router

    def scales(self, namespace: str, name: str) -> list[dict[str, Any]]:
        writes: list[dict[str, Any]] = self.api.client.get("/_control/scales").json()["scales"]
        return [w for w in writes if (w["namespace"], w["name"]) == (namespace, name)]


@pytest.fixture(scope="module")
def cluster(module_spawn: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    api = start_kubeapi(module_spawn, tmp_path_factory.mktemp("kube"))
    router = StandInRouter()
    api.create(SLICES, endpoint_slice(f"{ROUTER_SERVICE}-a", router.port))
    # Another Service's slice in the namespace (the emulator ignores label selectors): the
    # operator must filter by the label itself, or it would ask a port where nothing listens.
    api.create(SLICES, endpoint_slice("other-x", free_port(), service="not-the-router"))
    port = free_port()
    args = operator_args(port, "--namespace", ",".join(NAMESPACES))
    args += [
        "--router-service",
        f"{ROUTER_NAMESPACE}/{ROUTER_SERVICE}",
        "--autoscale-interval",
        "0.2",
        "--router-timeout",
        "0.5",
        "--router-admin-token",
        TOKEN,
    ]
    proc = module_spawn("operator", *args, env={**api.env, "POD_NAME": "llmsvc-operator-0"})
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health", timeout=30)
    yield Cluster(api, proc, url, router)
    router.close()
    api.close()


class Isvc:
    """An autoscaled InferenceService (its own namespace and model) and its paths."""

    def __init__(self, cluster: Cluster, **autoscaling: Any) -> None:
        self.cluster, self.api = cluster, cluster.api
        self.namespace = next(_namespaces)
        self.name = f"auto-{next(_names)}"
        self.model = f"model-{self.name}"
        self.path = f"{ISVC}/namespaces/{self.namespace}/inferenceservices/{self.name}"
        self.deployment_path = f"{APPS}/namespaces/{self.namespace}/deployments/{self.name}"
        self.service_path = f"{CORE}/namespaces/{self.namespace}/services/{self.name}"
        body = isvc_body(
            self.name,
            self.namespace,
            model={"name": self.model, "uri": "hf://Qwen/Qwen3-8B"},
            replicas=0,
            autoscaling={"minReplicas": 0, "maxReplicas": 3, **autoscaling},
        )
        self.api.create(f"{ISVC}/namespaces/{self.namespace}/inferenceservices", body)

    def delete(self) -> None:
        """Gone at the end of a test, so that later rounds have fewer services to scale."""
        if self.api.get(self.path) is not None:
            self.api.delete(self.path)

    def status(self) -> dict[str, Any]:
        found = self.api.get(self.path)
        assert found is not None
        status: dict[str, Any] = found.get("status") or {}
        return status

    def replicas(self) -> int | None:
        found = self.api.get(self.deployment_path)
        return None if found is None else int(found["spec"]["replicas"])

    def wait_replicas(self, replicas: int, *, timeout: float = TIMEOUT) -> None:
        self.api.wait_handled(
            self.path,
            lambda: self.replicas() == replicas,
            timeout=timeout,
            what=f"{replicas} replicas (now {self.replicas()}, status {self.status()})",
        )

    def wait_status(self, key: str, timeout: float = TIMEOUT) -> Any:
        return wait_until(
            lambda: self.status().get(key) is not None and self.status()[key],
            timeout=timeout,
            what=f"status.{key} (now {self.status()})",
        )

    def annotations(self) -> dict[str, str]:
        found = self.api.get(self.service_path)
        assert found is not None
        annotations: dict[str, str] = found["metadata"].get("annotations") or {}
        return annotations

    def events(self, reason: str) -> list[str]:
        return [
            str(e.get("message"))
            for e in self.api.list(f"{CORE}/namespaces/{self.namespace}/events")
            if e.get("reason") == reason and e["involvedObject"]["name"] == self.name
        ]

    def condition(self) -> dict[str, Any] | None:
        return next(
            (c for c in self.status().get("conditions") or [] if c["type"] == "Autoscaling"),
            None,
        )

    def become_ready(self) -> None:
        """One ready pod and the Deployment controller's status, as the cluster would."""
        deployment = self.api.get(self.deployment_path)
        assert deployment is not None
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{self.name}-p1", "namespace": self.namespace, "labels": labels},
            "spec": deployment["spec"]["template"]["spec"],
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.9",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        self.api.create(f"{CORE}/namespaces/{self.namespace}/pods", pod)
        replicas = deployment["spec"]["replicas"]
        status = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": 1,
            "availableReplicas": 1,
        }
        self.api.patch(self.deployment_path + "/status", {"status": status})


# -- the tests ---------------------------------------------------------------------------

New = Callable[..., Isvc]


@pytest.fixture
def new(cluster: Cluster) -> Iterator[New]:
    """Make autoscaled InferenceServices; delete them after the test."""
    made: list[Isvc] = []

    def make(**autoscaling: Any) -> Isvc:
        made.append(Isvc(cluster, **autoscaling))
        return made[-1]

    yield make
    for isvc in made:
        isvc.delete()


def test_from_zero_to_one_and_back_after_the_scale_down_delay(cluster: Cluster, new: New) -> None:
    router = cluster.router
    isvc = new(scaleDownDelay="1s")
    router.set(isvc.model)  # demand 0
    wait_until(lambda: isvc.status().get("desiredReplicas") == 0, timeout=TIMEOUT, what="seen")
    assert isvc.replicas() == 0
    condition = wait_until(isvc.condition, timeout=TIMEOUT, what="an Autoscaling condition")
    assert (condition["status"], condition["reason"]) == ("True", "DemandKnown"), condition
    assert f"Bearer {TOKEN}" in router.auth

    router.set(isvc.model, held=3)
    isvc.wait_replicas(1)
    writes = cluster.scales(isvc.namespace, isvc.name)
    assert [w["replicas"] for w in writes] == [1]  # through the scale subresource
    scale = cluster.api.get(isvc.deployment_path + "/scale")
    assert scale is not None and scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1
    assert scale["status"]["selector"] == f"llmsvc.io/inference-service={isvc.name}"
    assert wait_until(lambda: isvc.events("Scaled"), timeout=TIMEOUT) == [
        "Scaled 0 → 1: 3 requests waiting"
    ]
    assert isvc.wait_status("lastScaleTime").endswith("Z")
    wait_until(lambda: isvc.status().get("desiredReplicas") == 1, timeout=TIMEOUT)
    since = float(isvc.annotations()[SCALING_SINCE])
    assert abs(since - writes[0]["at"]) < 5

    isvc.become_ready()
    cold = isvc.wait_status("lastColdStartSeconds")
    assert 0 < cold < 60
    annotations = wait_until(
        lambda: SCALING_SINCE not in (a := isvc.annotations()) and a, timeout=TIMEOUT
    )
    assert float(annotations[COLD_START]) == pytest.approx(cold, abs=0.01)

    router.set(isvc.model, held=0)
    isvc.wait_replicas(0)
    down = cluster.scales(isvc.namespace, isvc.name)[-1]
    assert down["replicas"] == 0
    # Not before a full second without demand, by the stand-in's own record of its answers.
    assert down["at"] - router.last_nonzero(isvc.model) >= 1.0
    scaled = wait_until(lambda: len(m := isvc.events("Scaled")) == 2 and m, timeout=TIMEOUT)
    assert scaled[1].startswith("Scaled 1 → 0: idle for ")


def test_max_replicas_is_respected(cluster: Cluster, new: New) -> None:
    isvc = new(maxReplicas=2)
    cluster.router.set(isvc.model, in_flight=60, held=40)
    isvc.wait_replicas(2)
    time.sleep(1.0)  # five more rounds at demand 100
    assert [w["replicas"] for w in cluster.scales(isvc.namespace, isvc.name)] == [2]
    assert isvc.events("Scaled") == ["Scaled 0 → 2: 40 requests waiting"]


def test_a_lowered_max_applies_during_scaling(cluster: Cluster, new: New) -> None:
    isvc = new(maxReplicas=3, scaleDownDelay="60s")
    cluster.router.set(isvc.model, in_flight=100)
    isvc.wait_replicas(3)
    cluster.api.patch(isvc.path, {"spec": {"autoscaling": {"maxReplicas": 1}}})
    isvc.wait_replicas(1)
    changed = time.time()
    time.sleep(1.0)  # rounds at demand 100 with the new policy
    assert isvc.replicas() == 1
    later = [w for w in cluster.scales(isvc.namespace, isvc.name) if w["at"] > changed]
    assert all(w["replicas"] <= 1 for w in later), later


def test_a_router_that_does_not_answer_is_skipped_and_said(cluster: Cluster, new: New) -> None:
    silent = socket.socket()
    silent.bind((HOST, 0))
    silent.listen(8)  # accepts connections, never answers
    port = silent.getsockname()[1]
    name = f"{ROUTER_SERVICE}-silent"
    cluster.api.create(SLICES, endpoint_slice(name, port))
    try:
        isvc = new(scaleDownDelay="60s")
        cluster.router.set(isvc.model, held=20)
        isvc.wait_replicas(3)  # the answering router's demand is used
        condition = wait_until(
            lambda: (c := isvc.condition()) and c["reason"] == "RouterUnreachable" and c,
            timeout=TIMEOUT,
            what=f"a RouterUnreachable condition (now {isvc.condition()})",
        )
        assert condition["status"] == "False"
        assert f"{HOST}:{port}" in condition["message"]
        assert "other 1 router" in condition["message"]
        text = metrics.scrape(cluster.url)
        router = f"{HOST}:{port}"
        assert metrics.value(text, "llmsvc_operator_demand_fetch_failures_total", router=router) > 0
    finally:
        cluster.api.delete(f"{SLICES}/{name}")
        silent.close()
    wait_until(
        lambda: (c := isvc.condition()) and c["status"] == "True",
        timeout=TIMEOUT,
        what="the condition back to True",
    )


def test_metrics_show_the_autoscaler(cluster: Cluster, new: New) -> None:
    isvc = new()
    cluster.router.set(isvc.model, held=9)
    isvc.wait_replicas(2)
    labels = {"namespace": isvc.namespace, "inference_service": isvc.name}

    def current_two() -> str | None:
        text = metrics.scrape(cluster.url)
        found = metrics.matching(text, "llmsvc_operator_current_replicas", **labels)
        return text if found and found[0].value == 2 else None

    text = wait_until(current_two, timeout=TIMEOUT, what="current replicas 2 in /metrics")
    assert metrics.value(text, "llmsvc_operator_desired_replicas", **labels) == 2
    assert metrics.value(text, "llmsvc_operator_current_replicas", **labels) == 2
    scale_ups = metrics.value(text, "llmsvc_operator_scale_events_total", direction="up", **labels)
    assert scale_ups == 1
    assert metrics.matching(text, "llmsvc_operator_cold_start_seconds_bucket", le="1800.0")

    isvc.delete()  # its gauges go (its counters stay)
    wait_until(
        lambda: (
            not metrics.matching(
                metrics.scrape(cluster.url), "llmsvc_operator_current_replicas", **labels
            )
        ),
        timeout=TIMEOUT,
        what="the deleted service's gauges gone",
    )


# -- --autoscaler keda -------------------------------------------------------------------


def test_keda_mode_keeps_one_scaled_object_per_autoscaled_service(
    cluster: Cluster, spawn: Any
) -> None:
    """A second operator, on namespaces of its own, leaves the scaling to KEDA."""
    api, namespace = cluster.api, "kd0"
    port = free_port()
    args = [*operator_args(port, "--namespace", namespace), "--autoscaler", "keda"]
    args += ["--autoscale-interval", "0.2", "--keda-prometheus-url", "http://prom.test:9090"]
    proc = spawn("operator-keda", *args, env=api.env)
    proc.wait_http(f"http://{HOST}:{port}/health", timeout=30)
    name = "kd-model"
    path = f"{ISVC}/namespaces/{namespace}/inferenceservices/{name}"
    scaled_path = f"/apis/keda.sh/v1alpha1/namespaces/{namespace}/scaledobjects/{name}"
    body = isvc_body(
        name,
        namespace,
        model={"name": "kd-model", "uri": "hf://Qwen/Qwen3-8B"},
        replicas=0,
        autoscaling={"minReplicas": 0, "maxReplicas": 3, "scaleDownDelay": "90s"},
    )
    api.create(f"{ISVC}/namespaces/{namespace}/inferenceservices", body)
    scaled = api.wait_handled(path, lambda: api.get(scaled_path), timeout=TIMEOUT)
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == name
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 3, 90)
    assert "http://prom.test:9090" in str(spec["triggers"])

    api.patch(path, {"spec": {"autoscaling": {"maxReplicas": 5}}})
    wait_until(
        lambda: (api.get(scaled_path) or {}).get("spec", {}).get("maxReplicaCount") == 5,
        timeout=TIMEOUT,
        what="the ScaledObject following the spec",
    )
    api.patch(path, {"spec": {"autoscaling": None}})
    wait_until(lambda: api.get(scaled_path) is None, timeout=TIMEOUT, what="it deleted")
    assert cluster.scales(namespace, name) == []  # the operator itself scaled nothing


# -- one round at a time, in process, with an injected clock -----------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def plain_objects(api: KubeAPI, namespace: str, name: str, *, replicas: int) -> None:
    """The InferenceService and its children as an operator would have left them."""
    body = isvc_body(
        name,
        namespace,
        model={"name": name, "uri": "hf://Qwen/Qwen3-8B"},
        autoscaling={"minReplicas": 0, "maxReplicas": 3, "scaleDownDelay": "10s"},
    )
    api.create(f"{ISVC}/namespaces/{namespace}/inferenceservices", body)
    api.create(
        f"{APPS}/namespaces/{namespace}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {OWNER_LABEL: name}}},
            "status": {"replicas": replicas, "readyReplicas": 0},
        },
    )
    api.create(
        f"{CORE}/namespaces/{namespace}/services",
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}},
    )


OWNER_LABEL = "llmsvc.io/inference-service"


def autoscaler(api: KubeAPI, clock: Clock, source: str | None) -> tuple[Autoscaler, KubeClient]:
    client = KubeClient(Credentials(server=api.url), request_timeout=5)
    found = OperatorMetrics(CollectorRegistry())
    demand = None
    if source is not None:
        demand = DemandSource(
            api=client, service=source, port_name="http", token=None, timeout=0.5, metrics=found
        )
    scaler = Autoscaler(
        api=client,
        metrics=found,
        mode="builtin",
        interval=1.0,
        namespaces=["ns"],
        source=demand,
        prometheus_url="http://unused",
        clock=clock,
    )
    return scaler, client


async def test_a_cold_start_an_earlier_operator_began_is_measured(kubeapi: KubeAPI) -> None:
    plain_objects(kubeapi, "ns", "m", replicas=1)
    service = f"{CORE}/namespaces/ns/services/m"
    kubeapi.patch(service, {"metadata": {"annotations": {SCALING_SINCE: "1000.000"}}})
    clock = Clock(1005.0)
    scaler, client = autoscaler(kubeapi, clock, source=None)
    try:
        await scaler.round()  # not ready yet: nothing measured
        status = kubeapi.get(f"{ISVC}/namespaces/ns/inferenceservices/m") or {}
        assert "lastColdStartSeconds" not in (status.get("status") or {})
        kubeapi.patch(
            f"{APPS}/namespaces/ns/deployments/m/status", {"status": {"readyReplicas": 1}}
        )
        clock.now = 1012.5
        await scaler.round()
    finally:
        await scaler.close()
        await client.close()
    found = kubeapi.get(f"{ISVC}/namespaces/ns/inferenceservices/m") or {}
    assert found["status"]["lastColdStartSeconds"] == 12.5
    annotations = (kubeapi.get(service) or {})["metadata"]["annotations"]
    assert annotations.get(COLD_START) == "12.5"
    assert SCALING_SINCE not in annotations
    assert kubeapi.get(f"{APPS}/namespaces/ns/deployments/m")["spec"]["replicas"] == 1  # type: ignore[index]


async def test_unknown_demand_is_not_zero_demand(kubeapi: KubeAPI) -> None:
    """Routers that exist but cannot be asked: replicas stay; no router Service: demand 0."""
    plain_objects(kubeapi, "ns", "m", replicas=2)
    clock = Clock(1000.0)
    path = f"{APPS}/namespaces/ns/deployments/m"
    scaler, client = autoscaler(kubeapi, clock, source="llmsvc/no-endpoints")
    try:
        for _ in range(3):
            await scaler.round()
            clock.now += 60  # far past scaleDownDelay
        assert (kubeapi.get(path) or {})["spec"]["replicas"] == 2
        status = (kubeapi.get(f"{ISVC}/namespaces/ns/inferenceservices/m") or {})["status"]
        condition = next(c for c in status["conditions"] if c["type"] == "Autoscaling")
        assert (condition["status"], condition["reason"]) == ("False", "NoRouters")
    finally:
        await scaler.close()
        await client.close()

    scaler, client = autoscaler(kubeapi, clock, source=None)
    try:
        await scaler.round()  # a fresh autoscaler: what runs counts as needed, at first
        clock.now += 11
        await scaler.round()
    finally:
        await scaler.close()
        await client.close()
    assert (kubeapi.get(path) or {})["spec"]["replicas"] == 0
