"""The test Kubernetes API emulator does what the operator and registry tests rely on."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx

from kubeapi import APPS, CORE, DISCOVERY, ISVC, KubeAPI, collection
from procs import wait_until

DEPLOYMENTS = collection(APPS, "deployments", "ns")


def deployment(name: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1}}  # fmt: skip


def test_create_stamps_metadata_and_updates_bump_versions(kubeapi: KubeAPI) -> None:
    created = kubeapi.create(DEPLOYMENTS, deployment("d"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1 and meta["namespace"] == "ns"

    path = f"{DEPLOYMENTS}/d"
    status = kubeapi.patch(path + "/status", {"status": {"readyReplicas": 1}})
    assert int(status["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert status["metadata"]["generation"] == 1, "a status change is not a new generation"
    spec = kubeapi.patch(path, {"spec": {"replicas": 2}})
    assert spec["metadata"]["generation"] == 2
    assert spec["status"] == {"readyReplicas": 1}


def test_stale_resource_version_conflicts_and_json_patch_tests_it(kubeapi: KubeAPI) -> None:
    created = kubeapi.create(DEPLOYMENTS, deployment("d"))
    path = f"{DEPLOYMENTS}/d"
    kubeapi.patch(path, {"metadata": {"labels": {"a": "b"}}})
    stale = created["metadata"]["resourceVersion"]
    resp = kubeapi.client.patch(
        path, json={"metadata": {"resourceVersion": stale, "finalizers": []}},
        headers={"Content-Type": "application/merge-patch+json"},
    )  # fmt: skip
    assert resp.status_code == 409

    current = kubeapi.get(path)
    assert current is not None
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion",
         "value": current["metadata"]["resourceVersion"]},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]  # fmt: skip
    resp = kubeapi.client.patch(
        path, content=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["metadata"]["finalizers"] == ["x"]
    resp = kubeapi.client.patch(  # the same patch again: its resourceVersion is stale now
        path, content=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"}
    )
    assert resp.status_code == 422, resp.text


def test_discovery_knows_the_inference_service_resource(kubeapi: KubeAPI) -> None:
    resources = kubeapi.get(ISVC)
    assert resources is not None
    isvc = next(r for r in resources["resources"] if r["name"] == "inferenceservices")
    assert isvc["kind"] == "InferenceService" and isvc["namespaced"] is True
    names = {r["name"] for r in resources["resources"]}
    assert {"inferenceservices/status", "inferenceservices/scale"} <= names


def _watch(api: KubeAPI, path: str, lines: list[dict[str, Any]], ended: threading.Event) -> None:
    with (
        httpx.Client(base_url=api.url, timeout=20) as client,
        client.stream("GET", path, params={"watch": "true"}) as resp,
    ):
        for line in resp.iter_lines():
            if line.strip():
                lines.append(json.loads(line))
    ended.set()


def test_watch_streams_can_be_dropped_and_expired(kubeapi: KubeAPI) -> None:
    slices = collection(DISCOVERY, "endpointslices")
    lines: list[dict[str, Any]] = []
    ended = threading.Event()
    watcher = threading.Thread(target=_watch, args=(kubeapi, slices, lines, ended), daemon=True)
    watcher.start()
    kubeapi.create(collection(DISCOVERY, "endpointslices", "ns"),
                   {"metadata": {"name": "s"}, "endpoints": []})  # fmt: skip
    wait_until(lambda: lines, what="the ADDED event")
    assert lines[0]["type"] == "ADDED"
    assert not ended.is_set()
    kubeapi.drop_watches()
    assert ended.wait(5), "the watch stream was not dropped"

    kubeapi.expire_watches(1)
    gone: list[dict[str, Any]] = []
    _watch(kubeapi, slices, gone, threading.Event())
    assert gone[0]["type"] == "ERROR" and gone[0]["object"]["code"] == 410


def test_a_change_while_a_watch_sends_the_existing_objects_is_not_lost(kubeapi: KubeAPI) -> None:
    """A watch sends every object, then every change from its start on. The client reads
    nothing until a change is made, so the server is still sending the existing objects
    (more than the sockets hold) when it happens; kmock 0.8 alone lost that change."""
    maps = collection(CORE, "configmaps", "w")
    for i in range(120):
        kubeapi.create(maps, {"metadata": {"name": f"big-{i}"}, "data": {"x": "y" * 60_000}})
    with (
        httpx.Client(base_url=kubeapi.url, timeout=20) as client,
        client.stream("GET", maps, params={"watch": "true"}) as resp,
    ):
        time.sleep(0.5)  # the server fills the socket buffers and waits
        kubeapi.create(maps, {"metadata": {"name": "late"}, "data": {}})
        names = []
        for line in resp.iter_lines():
            if line.strip():
                event = json.loads(line)
                names.append((event["type"], event["object"]["metadata"]["name"]))
                if names[-1][1] == "late":
                    break
    assert len(names) == 121 and names[-1] == ("ADDED", "late")


def test_a_watch_from_a_lists_version_sends_only_what_changed_since(kubeapi: KubeAPI) -> None:
    """As the real API server: a client that listed and then watches from the list's
    resourceVersion gets the changes after it, never again the states it was listed."""
    for name in ("a", "b"):
        kubeapi.create(DEPLOYMENTS, deployment(name))
    listing = kubeapi.client.get(DEPLOYMENTS).json()
    version = listing["metadata"]["resourceVersion"]
    assert version == max((i["metadata"]["resourceVersion"] for i in listing["items"]), key=int)
    kubeapi.patch(f"{DEPLOYMENTS}/b", {"spec": {"replicas": 3}})
    with (
        httpx.Client(base_url=kubeapi.url, timeout=20) as client,
        client.stream(
            "GET", DEPLOYMENTS, params={"watch": "true", "resourceVersion": version}
        ) as resp,
    ):
        kubeapi.create(DEPLOYMENTS, deployment("c"))
        seen = []
        for line in resp.iter_lines():
            if line.strip():
                event = json.loads(line)
                seen.append((event["type"], event["object"]["metadata"]["name"]))
                if len(seen) == 2:
                    break
    assert seen == [("MODIFIED", "b"), ("ADDED", "c")]


def test_generate_name_gives_each_object_its_own_name(kubeapi: KubeAPI) -> None:
    events = "/api/v1/namespaces/ns/events"
    first = kubeapi.create(events, {"metadata": {"generateName": "llmsvc-"}, "reason": "A"})
    second = kubeapi.create(events, {"metadata": {"generateName": "llmsvc-"}, "reason": "B"})
    names = {first["metadata"]["name"], second["metadata"]["name"]}
    assert len(names) == 2 and all(n.startswith("llmsvc-") for n in names)
    assert len(kubeapi.list(events)) == 2


def test_namespaces_and_crds_are_discoverable_cluster_scoped(kubeapi: KubeAPI) -> None:
    core = kubeapi.get("/api/v1")
    assert core is not None
    namespaces = next(r for r in core["resources"] if r["name"] == "namespaces")
    assert namespaces["namespaced"] is False
    crds = kubeapi.get("/apis/apiextensions.k8s.io/v1")
    assert crds is not None and crds["resources"][0]["name"] == "customresourcedefinitions"
