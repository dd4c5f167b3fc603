"""``llmsvc registry --source kubernetes`` against the Kubernetes API emulator, end to end.

A real registry process reads EndpointSlices and Services from the emulator
(``tests/kubeapi.py``) through a kubeconfig; a real router follows it and
routes to a simulated engine whose address is in an EndpointSlice.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

import metrics
from kubeapi import CORE, DISCOVERY, ISVC, KubeAPI, collection, write_kubeconfig
from procs import HOST, Proc, Spawn, free_port, llmsvc_args, start_router, wait_until

NS = "llm"
MODEL = "Qwen/Qwen3-0.6B"  # a '/' a label cannot hold: the annotation carries it
SLICES = collection(DISCOVERY, "endpointslices", NS)
SERVICES = collection(CORE, "services", NS)
LABELS = {
    "app.kubernetes.io/managed-by": "llmsvc",
    "llmsvc.io/inference-service": "qwen",
    "llmsvc.io/model": "Qwen-Qwen3-0.6B",
    "kubernetes.io/service-name": "qwen",
}


def service_obj(weight: int = 1) -> dict[str, Any]:
    labels = {k: v for k, v in LABELS.items() if k != "kubernetes.io/service-name"}
    annotations = {"llmsvc.io/model": MODEL, "llmsvc.io/weight": str(weight)}
    selector = {"llmsvc.io/inference-service": "qwen"}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "qwen", "labels": labels, "annotations": annotations},
            "spec": {"clusterIP": "None", "selector": selector}}  # fmt: skip


def endpoint(pod: str, address: str = "10.1.0.1", ready: bool = True) -> dict[str, Any]:
    return {"addresses": [address], "conditions": {"ready": ready},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}  # fmt: skip


def slice_obj(name: str, endpoints: list[dict[str, Any]], port: int = 8000) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": LABELS}, "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"},
                      {"name": "babysitter", "port": port + 1, "protocol": "TCP"}]}  # fmt: skip


def services(url: str, **params: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/services", params=params, timeout=10)
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def names(url: str, **params: str) -> list[str]:
    return [s["name"] for s in services(url, **params)["services"]]


def metric(url: str, name: str, **labels: str) -> float:
    return metrics.value(metrics.scrape(url, timeout=10), name, **labels)


def restarts(url: str, resource: str, *reasons: str) -> float:
    name = "llmsvc_registry_kubernetes_watch_restarts_total"
    return sum(metric(url, name, resource=resource, reason=reason) for reason in reasons)


def k8s_registry(spawn: Spawn, api: KubeAPI, *extra: str) -> tuple[Proc, str]:
    port = free_port()
    proc = spawn("registry", "registry", "--port", str(port), "--source", "kubernetes",
                 "--allow-anonymous-writes", *extra, env=api.env)  # fmt: skip
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health")
    wait_until(lambda: synced(url), what="the first lists")
    return proc, url


def synced(url: str) -> bool:
    health = httpx.get(f"{url}/health", timeout=5).json()
    return bool(health["kubernetes"]["synced"])


def test_slices_become_records_and_follow_the_endpoints(spawn: Spawn, kubeapi: KubeAPI) -> None:
    kubeapi.create(SERVICES, service_obj(weight=3))
    kubeapi.create(
        SLICES, slice_obj("qwen-a", [endpoint("qwen-0"), endpoint("qwen-1", "10.1.0.2")])
    )
    _, url = k8s_registry(spawn, kubeapi, "--all-namespaces")

    wait_until(lambda: names(url) == ["llm.qwen-0", "llm.qwen-1"], what="two records")
    record = services(url, model=MODEL)["services"][0]
    assert (record["host"], record["port"], record["type"]) == ("10.1.0.1", 8000, "openai-api")
    assert record["weight"] == 3 and record["status"] == "healthy"
    assert record["metadata"]["models"] == [MODEL]
    meta = record["metadata"]
    assert (meta["namespace"], meta["inference_service"], meta["pod"], meta["source"]) == (
        NS, "qwen", "qwen-0", "kubernetes")  # fmt: skip
    health = httpx.get(f"{url}/health", timeout=5).json()
    assert health["source"] == "kubernetes"
    assert health["kubernetes"] == {"namespaces": None, "synced": True, "watching": True,
                                    "records": 2}  # fmt: skip

    # An HTTP registration lives beside them; a Kubernetes name is read-only over HTTP.
    http = {"name": "laptop", "host": "127.0.0.1", "port": 9, "metadata": {"models": [MODEL]}}
    assert httpx.post(f"{url}/services", json=http, timeout=5).status_code == 201
    refused = httpx.delete(f"{url}/services/llm.qwen-0", timeout=5)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "managed_by_source"

    # Not ready: kept, unhealthy (the router skips it). A blocking query wakes at once.
    index = int(httpx.get(f"{url}/services", timeout=5).headers["X-Llmsvc-Index"])
    with httpx.Client(timeout=30) as client:
        eps = [endpoint("qwen-0", ready=False), endpoint("qwen-1", "10.1.0.2")]
        kubeapi.patch(f"{SLICES}/qwen-a", {"endpoints": eps})
        woken = client.get(f"{url}/services", params={"index": index, "wait": "20s"})
    assert woken.elapsed.total_seconds() < 5
    assert int(woken.headers["X-Llmsvc-Index"]) > index
    wait_until(lambda: names(url, healthy="false") == ["llm.qwen-0"], what="qwen-0 unhealthy")
    assert names(url, healthy="true") == ["laptop", "llm.qwen-1"]

    # The slice goes: its records go; the HTTP registration stays, and the Service, now
    # without a ready endpoint, keeps one record that names its model (known, not routed).
    kubeapi.delete(f"{SLICES}/qwen-a")
    wait_until(lambda: names(url) == ["laptop", "llm.qwen"], what="records removed with the slice")
    idle = services(url, model=MODEL, type="inference-service")["services"]
    seen = [(r["name"], r["status"], r["host"], r["metadata"]["ready_endpoints"]) for r in idle]
    assert seen == [("llm.qwen", "unhealthy", "qwen.llm.svc", 0)]
    assert metric(url, "llmsvc_registry_kubernetes_records") == 1
    kubeapi.delete(f"{SERVICES}/qwen")
    wait_until(lambda: names(url) == ["laptop"], what="the record removed with the Service")
    assert metric(url, "llmsvc_registry_kubernetes_records") == 0


def test_a_dropped_watch_resumes_and_a_410_lists_again(spawn: Spawn, kubeapi: KubeAPI) -> None:
    kubeapi.create(SERVICES, service_obj())
    kubeapi.create(SLICES, slice_obj("qwen-a", [endpoint("qwen-0")]))
    _, url = k8s_registry(spawn, kubeapi, "--namespace", NS)
    wait_until(lambda: names(url) == ["llm.qwen-0"], what="the first record")

    kubeapi.drop_watches()
    # the emulator ends the stream: "closed" (docs: the server ended the stream), no "error"
    wait_until(lambda: restarts(url, "endpointslices", "closed") >= 1, what="a restart")
    assert restarts(url, "endpointslices", "error") == 0
    kubeapi.create(SLICES, slice_obj("qwen-b", [endpoint("qwen-1", "10.1.0.2")]))
    wait_until(lambda: names(url) == ["llm.qwen-0", "llm.qwen-1"], what="a change after resuming")

    kubeapi.expire_watches(2)  # the next watch of each resource answers 410 Gone
    kubeapi.drop_watches()
    wait_until(lambda: restarts(url, "endpointslices", "expired") >= 1
               and restarts(url, "services", "expired") >= 1, what="410s")  # fmt: skip
    kubeapi.delete(f"{SLICES}/qwen-a")
    wait_until(lambda: names(url) == ["llm.qwen-1"], what="a change after listing again")
    health = httpx.get(f"{url}/health", timeout=5).json()["kubernetes"]
    assert health["namespaces"] == [NS] and health["watching"]


def test_the_registry_keeps_trying_while_the_api_is_down(
    spawn: Spawn, kubeapi: KubeAPI, tmp_path: Path
) -> None:
    # A kubeconfig that points at a port where nothing listens yet.
    port = free_port()
    config = write_kubeconfig(tmp_path / "down", f"http://{HOST}:{port}")
    reg_port = free_port()
    proc = spawn("registry", "registry", "--port", str(reg_port), "--source", "kubernetes",
                 "--allow-anonymous-writes", env={"KUBECONFIG": str(config)})  # fmt: skip
    url = f"http://{HOST}:{reg_port}"
    health = proc.wait_http(f"{url}/health").json()
    assert health["kubernetes"]["synced"] is False
    assert health["kubernetes"]["namespaces"] == ["default"], "the kubeconfig context's"
    wait_until(lambda: not httpx.get(f"{url}/health", timeout=5).json()["kubernetes"]["watching"])
    assert names(url) == []
    log = proc.log()
    assert log.count("cannot list or watch") == 2, "one line per watch going down, not per retry"
    assert "Traceback" not in log


def test_without_credentials_it_exits_1_with_one_line(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")
    }
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    args = llmsvc_args(
        "registry", "--port", str(free_port()), "--source", "kubernetes", "--token", "t0k3n"
    )
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "llmsvc registry: error: no Kubernetes credentials: set KUBECONFIG, create "
        "~/.kube/config, or run in a pod with a service account"
    ]
    env["KUBECONFIG"] = str(tmp_path / "missing")
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "cannot load Kubernetes credentials" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_router_following_the_registry_routes_to_an_engine_in_a_slice(
    spawn: Spawn, kubeapi: KubeAPI
) -> None:
    engine_port = free_port()
    engine = spawn("engine", "sim-engine", "--port", str(engine_port), "--model-name", MODEL,
                   "--time-scale", "0")  # fmt: skip
    engine.wait_http(f"http://{HOST}:{engine_port}/health")
    _, url = k8s_registry(spawn, kubeapi, "--all-namespaces")
    # No hold: a known model without a ready endpoint is answered 503 at once.
    _, router = start_router(spawn, url, "--hold-timeout", "0")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    def answer(status: int) -> httpx.Response | None:
        resp = httpx.post(f"{router}/v1/chat/completions", json=body, timeout=10)
        return resp if resp.status_code == status else None

    def listed() -> bool:
        models = httpx.get(f"{router}/v1/models", timeout=5).json()["data"]
        return MODEL in [m["id"] for m in models]

    # The InferenceService's Service exists, no endpoint yet (starting, or scaled to
    # zero): the model is known (listed; 503, not 404).
    kubeapi.create(SERVICES, service_obj())
    waiting = wait_until(lambda: answer(503), timeout=15, interval=0.2, what="a 503")
    assert waiting.json()["error"]["code"] == "no_healthy_backend"
    assert listed()

    kubeapi.create(SLICES, slice_obj("qwen-a", [endpoint("qwen-0", HOST)], port=engine_port))
    resp = wait_until(lambda: answer(200), timeout=15, interval=0.2, what="a chat routed")
    assert resp.json()["choices"][0]["message"]["content"]

    # The slice goes: the Service still names the model, 503 again.
    kubeapi.delete(f"{SLICES}/qwen-a")
    again = wait_until(lambda: answer(503), timeout=15, interval=0.2, what="503 at zero")
    assert again.json()["error"]["code"] == "no_healthy_backend" and listed()

    # The Service goes too: no record lists the model any more; the router forgets it,
    # and answers as OpenAI does for a model that does not exist (404, not a retryable 503).
    kubeapi.delete(f"{SERVICES}/qwen")
    gone = wait_until(lambda: answer(404), timeout=15, interval=0.2, what="the model forgotten")
    assert gone.json()["error"]["code"] == "model_not_found"
    assert MODEL in gone.json()["error"]["message"]
    assert not listed()


def maintenance(url: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{url}/maintenance", timeout=10)
    resp.raise_for_status()
    entries: list[dict[str, Any]] = resp.json()["maintenance"]
    return entries


def test_a_services_maintenance_annotation_is_a_registry_entry(
    spawn: Spawn, kubeapi: KubeAPI
) -> None:
    until = "2099-01-15T14:00:00+01:00"
    service = service_obj()
    service["metadata"]["annotations"] |= {"llmsvc.io/maintenance": "GPU driver update",
                                           "llmsvc.io/maintenance-until": until}  # fmt: skip
    kubeapi.create(SERVICES, service)
    _, url = k8s_registry(spawn, kubeapi, "--all-namespaces")
    [entry] = wait_until(lambda: maintenance(url), what="the entry")
    assert (entry["model"], entry["backend"], entry["message"], entry["source"]) == (
        MODEL, None, "GPU driver update", "kubernetes")  # fmt: skip
    assert entry["until"].replace("Z", "+00:00") == "2099-01-15T13:00:00+00:00"
    # The HTTP API cannot delete it (only the annotation's removal ends it).
    refused = httpx.delete(f"{url}/maintenance/{MODEL.replace('/', '%2F')}", timeout=5)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "managed_by_source"

    # An unparsable end: the entry stays, without an end; the registry says why, once.
    index = int(httpx.get(f"{url}/maintenance", timeout=5).headers["X-Llmsvc-Index"])
    with httpx.Client(timeout=30) as client:
        kubeapi.patch(f"{SERVICES}/qwen", {"metadata": {"annotations": {
            "llmsvc.io/maintenance-until": "after lunch"}}})  # fmt: skip
        woken = client.get(f"{url}/maintenance", params={"index": index, "wait": "20s"})
    assert woken.elapsed.total_seconds() < 5, "a blocking query wakes at the change"
    assert [e["until"] for e in woken.json()["maintenance"]] == [None]

    kubeapi.patch(f"{SERVICES}/qwen", {"metadata": {"annotations": {
        "llmsvc.io/maintenance": None, "llmsvc.io/maintenance-until": None}}})  # fmt: skip
    wait_until(lambda: maintenance(url) == [], what="the entry gone with the annotation")


@pytest.mark.slow
def test_the_operator_carries_an_inference_services_maintenance_to_the_registry(
    spawn: Spawn, kubeapi: KubeAPI
) -> None:
    """InferenceService annotation -> the operator's Service -> the registry's entry."""
    port = free_port()
    operator = spawn("operator", "operator", "--namespace", NS, "--host", HOST, "--port",
                     str(port), "--status-debounce", "0.05", "--batch-window", "0.02",
                     "--resync-interval", "1",  # an annotation alone is seen at the resync
                     env={**kubeapi.env, "POD_NAME": "llmsvc-operator-0"})  # fmt: skip
    operator.wait_http(f"http://{HOST}:{port}/health", timeout=30)
    _, url = k8s_registry(spawn, kubeapi, "--namespace", NS)
    isvc_path = f"{ISVC}/namespaces/{NS}/inferenceservices/qwen"
    annotations = {"llmsvc.io/maintenance": "moving racks"}
    kubeapi.create(f"{ISVC}/namespaces/{NS}/inferenceservices", {
        "apiVersion": "llmsvc.io/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "qwen", "annotations": annotations},
        "spec": {"model": {"name": MODEL, "uri": "hf://Qwen/Qwen3-0.6B"},
                 "engine": {"type": "vllm"}, "replicas": 1, "resources": {"gpus": 1}}})  # fmt: skip
    [entry] = kubeapi.wait_handled(isvc_path, lambda: maintenance(url), what="the entry")
    assert (entry["model"], entry["message"], entry["source"]) == (
        MODEL, "moving racks", "kubernetes")  # fmt: skip
    # Known at zero endpoints meanwhile: the Service's record names the model.
    assert names(url, type="inference-service") == ["llm.qwen"]

    kubeapi.patch(isvc_path, {"metadata": {"annotations": {"llmsvc.io/maintenance": None}}})
    wait_until(lambda: maintenance(url) == [], what="the entry gone with the annotation")
    service = kubeapi.get(f"{SERVICES}/qwen")
    assert service is not None
    assert "llmsvc.io/maintenance" not in service["metadata"]["annotations"]

    # Set again on the running InferenceService (an annotation change alone: no spec change).
    again = {
        "llmsvc.io/maintenance": "back soon",
        "llmsvc.io/maintenance-until": "2099-01-01T00:00:00Z",
    }
    kubeapi.patch(isvc_path, {"metadata": {"annotations": again}})
    [entry] = wait_until(lambda: maintenance(url), what="the entry set again")
    assert (entry["message"], entry["until"].replace("Z", "+00:00")) == (
        "back soon", "2099-01-01T00:00:00+00:00")  # fmt: skip
