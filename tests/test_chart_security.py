"""Pod security of every workload charts/llmsvc renders (Pod Security Standards "restricted"),
resources, and probes on each component's /health."""

from __future__ import annotations

from typing import Any

import pytest

from helmchart import ALL_FEATURES, documents, pod_specs, render

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.fixture(scope="module", params=["default", "all-features"])
def pods(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    args = ("-f", ALL_FEATURES) if request.param == "all-features" else ()
    specs = pod_specs(documents(render(*args)))
    assert len(specs) == 4, sorted(specs)  # router, registry, operator, batch
    return specs


def test_pods_run_as_non_root_with_runtime_default_seccomp(
    pods: dict[str, dict[str, Any]],
) -> None:
    for name, spec in pods.items():
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] >= 1000, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        # no LLMSVC_PORT=tcp://… from a Service named "llmsvc" in the namespace
        assert spec["enableServiceLinks"] is False, name


def test_containers_are_restricted(pods: dict[str, dict[str, Any]]) -> None:
    for name, spec in pods.items():
        for item in spec["containers"] + spec.get("initContainers", []):
            assert item["securityContext"] == RESTRICTED_CONTAINER, f"{name}/{item['name']}"


def test_read_only_root_gets_a_writable_tmp(pods: dict[str, dict[str, Any]]) -> None:
    for name, spec in pods.items():
        volumes = {v["name"]: v for v in spec["volumes"]}
        for item in spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in item["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], name


def test_containers_have_requests_and_a_memory_limit(pods: dict[str, dict[str, Any]]) -> None:
    for name, spec in pods.items():
        for item in spec["containers"]:
            resources = item["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name


def test_probes_ask_each_component_for_health(pods: dict[str, dict[str, Any]]) -> None:
    ports = {"router": 8080, "registry": 8081, "operator": 8090, "batch": 8082}
    for name, spec in pods.items():
        (item,) = spec["containers"]
        declared = {p["name"]: p["containerPort"] for p in item["ports"]}
        assert declared == {"http": ports[item["name"]]}, name
        for probe in ("readinessProbe", "livenessProbe"):
            if item["name"] == "batch":  # its /health needs the token: the image's script
                command = item[probe]["exec"]["command"]
                assert command[:3] == ["/opt/llmsvc/bin/python", "/opt/llmsvc/healthcheck.py",
                                       "8082"], name  # fmt: skip
                assert command[3] == "--token-file", name
                continue
            assert item[probe]["httpGet"] == {"path": "/health", "port": "http"}, name
