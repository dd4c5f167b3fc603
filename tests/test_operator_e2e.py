"""The real ``llmsvc operator`` against the Kubernetes API emulator.

One emulator and one operator (namespaced mode, one namespace per test) serve the
module; the tests play the cluster's part where the emulator has none: they patch
a Deployment's status and create pods as the Deployment controller and kubelet
would. A separate operator checks ``--all-namespaces``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import metrics
from kubeapi import APPS, CORE, ISVC, KubeAPI, start_kubeapi
from procs import HOST, Proc, free_port, wait_until

NAMESPACES = [f"op{i}" for i in range(12)]
_namespaces = iter(NAMESPACES)
_names = itertools.count()
OWNER = "llmsvc.io/inference-service"
TIMEOUT = 30.0  # seconds; a loaded CI machine is slow, a passing run takes ~1 s per wait


def operator_args(port: int, *scope: str) -> list[str]:
    return [
        "operator",
        *scope,
        "--host",
        HOST,
        "--port",
        str(port),
        "--resync-interval",
        "2",
        "--status-debounce",
        "0.05",
        "--batch-window",
        "0.02",
        "--watch-timeout",
        "30",
        "--request-timeout",
        "5",
        "--image-prefix",
        "registry.test/llmsvc",
        "--image-tag",
        "9.9.9",
    ]


@pytest.fixture(scope="module")
def cluster(module_spawn: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    api = start_kubeapi(module_spawn, tmp_path_factory.mktemp("kube"))
    port = free_port()
    proc = module_spawn(
        "operator",
        *operator_args(port, "--namespace", ",".join(NAMESPACES)),
        env={**api.env, "POD_NAME": "llmsvc-operator-0"},
    )
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health", timeout=30)
    yield Cluster(api, proc, url)
    api.close()


class Cluster:
    def __init__(self, api: KubeAPI, proc: Proc, url: str) -> None:
        self.api, self.proc, self.url = api, proc, url


# -- objects ---------------------------------------------------------------------------


def isvc_body(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"name": "Qwen3-8B", "uri": "hf://Qwen/Qwen3-8B"},
        "engine": {"type": "vllm"},
        "replicas": 1,
        "resources": {"gpus": 2},
    }
    body.update(spec)
    return {
        "apiVersion": "llmsvc.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


class Isvc:
    """One InferenceService in its own namespace, and the paths of what it owns."""

    def __init__(self, cluster: Cluster, name: str | None = None, **spec: Any) -> None:
        self.api = cluster.api
        self.namespace = next(_namespaces)
        self.name = name or f"model-{next(_names)}"
        self.path = f"{ISVC}/namespaces/{self.namespace}/inferenceservices/{self.name}"
        self.deployment_path = f"{APPS}/namespaces/{self.namespace}/deployments/{self.name}"
        self.service_path = f"{CORE}/namespaces/{self.namespace}/services/{self.name}"
        self.body = self.api.create(
            f"{ISVC}/namespaces/{self.namespace}/inferenceservices",
            isvc_body(self.name, self.namespace, **spec),
        )

    def get(self) -> dict[str, Any]:
        found = self.api.get(self.path)
        assert found is not None
        return found

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.get().get("status") or {}
        return status

    def wait_phase(self, phase: str) -> dict[str, Any]:
        found: dict[str, Any] = self.api.wait_handled(
            self.path,
            lambda: (s := self.status()).get("phase") == phase and s,
            timeout=TIMEOUT,
            what=f"phase {phase} (now {self.status()})",
        )
        return found

    def deployment(self) -> dict[str, Any]:
        found: dict[str, Any] = self.api.wait_handled(
            self.path, lambda: self.api.get(self.deployment_path), timeout=TIMEOUT,
            what="the Deployment",
        )  # fmt: skip
        return found

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.api.list(f"{CORE}/namespaces/{self.namespace}/events")
            if e.get("reason") == reason and e["involvedObject"]["name"] == self.name
        ]

    def wait_event(self, reason: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = wait_until(
            lambda: self.events(reason), timeout=TIMEOUT, what=f"a {reason} event"
        )
        return found[-1]

    def add_pod(self, suffix: str, *, ready: bool, ip: str, **status: Any) -> None:
        """A pod as the ReplicaSet and kubelet would make it."""
        deployment = self.deployment()
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        pod_status = {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            **status,
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{self.name}-{suffix}",
                "namespace": self.namespace,
                "labels": labels,
            },
            "spec": deployment["spec"]["template"]["spec"],
            "status": pod_status,
        }
        self.api.create(f"{CORE}/namespaces/{self.namespace}/pods", pod)

    def roll_out(self, ready: int) -> None:
        """The Deployment controller's status for ``ready`` ready replicas."""
        deployment = self.deployment()
        replicas = deployment["spec"]["replicas"]
        status = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        self.api.patch(self.deployment_path + "/status", {"status": status})


def engine_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    engine: dict[str, Any] = next(c for c in containers if c["name"] == "engine")
    return engine


# -- the tests --------------------------------------------------------------------------


def test_create_makes_a_deployment_and_a_service(cluster: Cluster) -> None:
    isvc = Isvc(cluster)
    deployment = isvc.deployment()
    uid = isvc.get()["metadata"]["uid"]

    engine = engine_container(deployment)
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert engine["image"] == "registry.test/llmsvc/babysitter-vllm:9.9.9"
    assert engine["command"] == ["llmsvc", "babysitter"]
    assert engine["startupProbe"]["httpGet"] == {"path": "/health", "port": "babysitter"}
    assert engine["readinessProbe"]["httpGet"]["path"] == "/health"
    assert engine["livenessProbe"]["httpGet"]["path"] == "/status"
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("InferenceService", isvc.name, uid)
    assert owner["controller"] is True

    service = wait_until(
        lambda: cluster.api.get(isvc.service_path), timeout=TIMEOUT, what="the Service"
    )
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {OWNER: isvc.name}
    assert service["metadata"]["ownerReferences"][0]["uid"] == uid

    assert "llmsvc.io/finalizer" in isvc.get()["metadata"]["finalizers"]
    status = wait_until(lambda: isvc.status().get("phase"), timeout=TIMEOUT, what="a phase")
    assert status == "Progressing"  # the Deployment exists, no replica is ready
    assert isvc.status()["selector"] == f"{OWNER}={isvc.name}"
    created = isvc.wait_event("Created")
    assert (
        created["source"]["component"] == "llmsvc-operator"
        and created["reportingComponent"] == "llmsvc-operator"
    )


def test_a_rolled_out_deployment_makes_it_ready(cluster: Cluster) -> None:
    isvc = Isvc(cluster)
    isvc.deployment()
    isvc.add_pod("a1", ready=True, ip="10.0.0.7")
    isvc.roll_out(ready=1)

    status = isvc.wait_phase("Ready")
    assert status["readyReplicas"] == 1
    assert {"pod": f"{isvc.name}-a1", "ip": "10.0.0.7", "ready": True} in status["endpoints"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    isvc.wait_event("Ready")


def test_a_spec_change_patches_the_deployment(cluster: Cluster) -> None:
    isvc = Isvc(cluster, nodeSelector={"gpu": "h100", "zone": "a"})
    first = isvc.deployment()
    assert first["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "h100", "zone": "a"}

    cluster.api.patch(
        isvc.path,
        {
            "spec": {
                "resources": {"gpus": 4},
                "engine": {"args": ["--tensor-parallel-size", "4"]},
                "nodeSelector": {"zone": None},
            }
        },
    )

    def rolled() -> dict[str, Any] | None:
        deployment = cluster.api.get(isvc.deployment_path)
        engine = engine_container(deployment or first)
        return deployment if engine["resources"]["limits"]["nvidia.com/gpu"] == "4" else None

    deployment = wait_until(rolled, timeout=TIMEOUT, what="the Deployment patched")
    engine = engine_container(deployment)
    assert engine["args"][-2:] == ["--tensor-parallel-size", "4"]
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert deployment["metadata"]["generation"] > first["metadata"]["generation"]
    assert "Deployment" in isvc.wait_event("Updated")["message"]


@pytest.mark.parametrize(
    "pod_status",
    [
        {"lastState": {"terminated": {"exitCode": 1, "message": "OOMKilled: engine used 81 GiB"}}},
        {"lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
    ],
    ids=["babysitter-message", "kubelet-reason"],
)
def test_an_oom_killed_pod_degrades_it(cluster: Cluster, pod_status: dict[str, Any]) -> None:
    isvc = Isvc(cluster)
    isvc.deployment()
    container_status = {
        "name": "engine",
        "ready": False,
        "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        **pod_status,
    }
    isvc.add_pod("b1", ready=False, ip="10.0.0.8", containerStatuses=[container_status])
    isvc.roll_out(ready=0)

    status = isvc.wait_phase("Degraded")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "OOMKilled"
    assert f"{isvc.name}-b1" in degraded["message"]
    assert "OOMKilled" in isvc.wait_event("Degraded")["message"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"resources": {"gpus": -1}}, "spec.resources.gpus"),
        ({"engine": {"type": "tensorrt"}}, "spec.engine.type"),
        ({"name": "9-starts-with-a-digit"}, "metadata.name"),
    ],
    ids=["negative-gpus", "unknown-engine", "bad-name"],
)
def test_an_invalid_spec_is_explained_and_creates_nothing(
    cluster: Cluster, spec: dict[str, Any], field: str
) -> None:
    isvc = Isvc(cluster, **spec)
    status = isvc.wait_phase("Failed")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "InvalidSpec"
    assert field in ready["message"]
    assert field in isvc.wait_event("InvalidSpec")["message"]
    assert cluster.api.get(isvc.deployment_path) is None
    assert cluster.api.get(isvc.service_path) is None
    assert failed_count(cluster) >= 1


def failed_count(cluster: Cluster) -> float:
    return metrics.value(metrics.scrape(cluster.url), FAILED_GAUGE)


FAILED_GAUGE = 'llmsvc_operator_inference_services{phase="Failed"}'


def test_delete_removes_the_children_and_the_finalizer(cluster: Cluster) -> None:
    isvc = Isvc(cluster)
    isvc.deployment()
    wait_until(lambda: cluster.api.get(isvc.service_path), timeout=TIMEOUT, what="the Service")

    cluster.api.delete(isvc.path)

    wait_until(lambda: cluster.api.get(isvc.path) is None, timeout=TIMEOUT, what="isvc gone")
    assert cluster.api.get(isvc.deployment_path) is None
    assert cluster.api.get(isvc.service_path) is None


def test_health_metrics_and_openapi(cluster: Cluster) -> None:
    Isvc(cluster).deployment()
    health = httpx.get(f"{cluster.url}/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["watching"] == NAMESPACES

    def counted() -> str | None:
        text = httpx.get(f"{cluster.url}/metrics", timeout=5).text
        return text if 'handler="create",result="success"} 0.0' not in text else None

    text = wait_until(counted, timeout=TIMEOUT, what="a counted create")
    assert "llmsvc_operator_reconciles_total" in text
    assert 'llmsvc_operator_reconcile_duration_seconds_bucket{handler="create"' in text
    assert 'llmsvc_operator_inference_services{phase="Progressing"}' in text

    spec = httpx.get(f"{cluster.url}/openapi.json", timeout=5).json()
    assert {"/health", "/metrics"} <= set(spec["paths"])
    missing = httpx.get(f"{cluster.url}/nope", timeout=5)
    assert missing.status_code == 404
    assert set(missing.json()["error"]) >= {"message", "type", "param", "code"}


def test_all_namespaces_and_resume_after_a_restart(spawn: Any, kubeapi: KubeAPI) -> None:
    """--all-namespaces; a spec changed while the operator was down is applied when it is back."""
    port = free_port()
    args = operator_args(port, "--all-namespaces")
    first = spawn("operator-all", *args, env=kubeapi.env)
    first.wait_http(f"http://{HOST}:{port}/health", timeout=30)
    namespace = "anywhere"
    kubeapi.create(f"{ISVC}/namespaces/{namespace}/inferenceservices", isvc_body("m", namespace))
    path = f"{APPS}/namespaces/{namespace}/deployments/m"
    isvc_path = f"{ISVC}/namespaces/{namespace}/inferenceservices/m"
    deployment = kubeapi.wait_handled(
        isvc_path, lambda: kubeapi.get(path), timeout=TIMEOUT, what="the Deployment"
    )
    assert engine_container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    first.stop()

    isvc = f"{ISVC}/namespaces/{namespace}/inferenceservices/m"
    kubeapi.patch(isvc, {"spec": {"resources": {"gpus": 1}}})
    second = spawn("operator-again", *args, env=kubeapi.env)
    second.wait_http(f"http://{HOST}:{port}/health", timeout=30)

    def gpus() -> str:
        live = kubeapi.get(path) or deployment
        limit: str = engine_container(live)["resources"]["limits"]["nvidia.com/gpu"]
        return limit

    wait_until(lambda: gpus() == "1", timeout=TIMEOUT, what="the Deployment patched on resume")
    assert kubeapi.get(f"{CORE}/namespaces/{namespace}/services/m") is not None
