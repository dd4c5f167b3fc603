"""An autoscaled InferenceService against the real operator and the Kubernetes API emulator.

The operator runs with ``--autoscaler none``: the tests play the autoscaler's part
(they set the Deployment's replicas and the status fields it writes) and the
Deployment controller's (its status). What is checked is the operator's side of the
bargain: with ``spec.autoscaling`` the Deployment's replicas are the autoscaler's
(a spec change keeps them; ``kubectl scale`` of the InferenceService is ignored with
a ``ScaleIgnored`` Event; min/max bound them), the status counts against them and
keeps the autoscaler's fields, and removing autoscaling gives ``spec.replicas`` back.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeapi import APPS, CORE, ISVC, KubeAPI, start_kubeapi
from llmsvc.operator.builders import initial_replicas
from llmsvc.operator.crd import build_crd
from llmsvc.operator.spec import parse_spec
from procs import HOST, free_port, wait_until
from test_operator_e2e import operator_args

NAMESPACES = [f"as{i}" for i in range(6)]
_namespaces = iter(NAMESPACES)
_names = itertools.count()
TIMEOUT = 30.0  # seconds; a passing run takes about one second per wait


@pytest.fixture(scope="module")
def api(module_spawn: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    kube = start_kubeapi(module_spawn, tmp_path_factory.mktemp("kube"))
    port = free_port()
    proc = module_spawn(
        "operator",
        *operator_args(port, "--namespace", ",".join(NAMESPACES)),
        "--autoscaler",
        "none",
        env={**kube.env, "POD_NAME": "llmsvc-operator-0"},
    )
    proc.wait_http(f"http://{HOST}:{port}/health", timeout=30)
    yield kube
    kube.close()


class Autoscaled:
    """One InferenceService with ``spec.autoscaling``, in its own namespace."""

    def __init__(self, api: KubeAPI, *, replicas: int, **autoscaling: Any) -> None:
        self.api = api
        self.namespace = next(_namespaces)
        self.name = f"scaled-{next(_names)}"
        self.path = f"{ISVC}/namespaces/{self.namespace}/inferenceservices/{self.name}"
        self.deployment_path = f"{APPS}/namespaces/{self.namespace}/deployments/{self.name}"
        spec = {
            "model": {"name": "sim-model", "uri": "sim-model"},
            "engine": {"type": "sim"},
            "replicas": replicas,
            "resources": {"gpus": 0},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 4, **autoscaling},
        }
        body = {
            "apiVersion": "llmsvc.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        api.create(f"{ISVC}/namespaces/{self.namespace}/inferenceservices", body)

    def status(self) -> dict[str, Any]:
        found = self.api.get(self.path) or {}
        status: dict[str, Any] = found.get("status") or {}
        return status

    def deployment(self) -> dict[str, Any]:
        found: dict[str, Any] = self.api.wait_handled(
            self.path, lambda: self.api.get(self.deployment_path), timeout=TIMEOUT,
            what="the Deployment",
        )  # fmt: skip
        return found

    def replicas(self) -> int:
        count: int = self.deployment()["spec"]["replicas"]
        return count

    def wait(self, done: Any, what: str) -> Any:
        return self.api.wait_handled(self.path, done, timeout=TIMEOUT, what=what)

    def scale_deployment(self, replicas: int) -> None:
        """What the autoscaler does: the Deployment's replicas, and the Deployment controller's
        status once they are all ready."""
        self.api.patch(self.deployment_path, {"spec": {"replicas": replicas}})
        self.roll_out(ready=replicas)

    def roll_out(self, ready: int) -> None:
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

    def add_pod(self, suffix: str) -> None:
        """A pod as the ReplicaSet and the kubelet would make it (running, not ready)."""
        template = self.deployment()["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{self.name}-{suffix}",
                "namespace": self.namespace,
                "labels": template["metadata"]["labels"],
            },
            "spec": template["spec"],
            "status": {"phase": "Running", "podIP": "10.0.0.5", "conditions": []},
        }
        self.api.create(f"{CORE}/namespaces/{self.namespace}/pods", pod)

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.api.list(f"{CORE}/namespaces/{self.namespace}/events")
            if e.get("reason") == reason and e["involvedObject"]["name"] == self.name
        ]


def engine_args(deployment: dict[str, Any]) -> list[str]:
    (engine,) = deployment["spec"]["template"]["spec"]["containers"]
    args: list[str] = engine["args"]
    return args


def test_a_spec_change_keeps_the_autoscalers_replicas(api: KubeAPI) -> None:
    isvc = Autoscaled(api, replicas=1)
    assert isvc.replicas() == 1  # created at spec.replicas, within 0..4
    isvc.scale_deployment(3)
    status = isvc.wait(lambda: (s := isvc.status()).get("phase") == "Ready" and s, "Ready 3/3")
    assert status["ready"] == "3/3"  # counted against the autoscaler's 3, not spec.replicas 1

    api.patch(isvc.path, {"spec": {"engine": {"args": ["--seed", "7"]}}})
    patched = wait_until(
        lambda: (
            (d := api.get(isvc.deployment_path)) and engine_args(d)[-2:] == ["--seed", "7"] and d
        ),
        timeout=TIMEOUT,
        what="the Deployment patched to the new engine.args",
    )
    assert patched["spec"]["replicas"] == 3

    api.patch(isvc.path, {"spec": {"autoscaling": {"maxReplicas": 2}}})
    wait_until(lambda: isvc.replicas() == 2, timeout=TIMEOUT, what="replicas lowered to max 2")


def test_kubectl_scale_of_an_autoscaled_service_is_ignored(api: KubeAPI) -> None:
    isvc = Autoscaled(api, replicas=1)
    isvc.deployment()
    isvc.scale_deployment(3)
    wait_until(lambda: isvc.status().get("ready") == "3/3", timeout=TIMEOUT, what="3/3")

    # What `kubectl scale llmis <name> --replicas 5` sends: a merge patch of the scale
    # subresource, which writes spec.replicas.
    api.patch(isvc.path + "/scale", {"spec": {"replicas": 5}})
    assert (api.get(isvc.path) or {})["spec"]["replicas"] == 5
    events = wait_until(lambda: isvc.events("ScaleIgnored"), timeout=TIMEOUT, what="ScaleIgnored")
    message = events[-1]["message"]
    assert events[-1]["type"] == "Normal"
    assert "spec.replicas 1 → 5 ignored" in message
    assert "change minReplicas/maxReplicas" in message
    assert isvc.replicas() == 3


def test_removing_autoscaling_restores_spec_replicas_and_drops_its_status(api: KubeAPI) -> None:
    isvc = Autoscaled(api, replicas=2)
    isvc.deployment()
    isvc.scale_deployment(0)
    status = isvc.wait(lambda: (s := isvc.status()).get("phase") == "Ready" and s, "Ready at 0")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ScaledToZero" and "first request" in ready["message"]
    assert status["ready"] == "0/0"

    # The autoscaler's own status fields survive the operator's status refreshes ...
    written = {"desiredReplicas": 0, "lastScaleTime": "2026-12-02T07:00:00Z"}
    api.patch(isvc.path + "/status", {"status": written})
    isvc.add_pod("p1")  # a child event: the status is recomputed, with this endpoint
    isvc.wait(lambda: isvc.status().get("endpoints"), "the pod in the status")
    assert {k: isvc.status().get(k) for k in written} == written
    # ... and the refreshes do not keep patching it (two --resync-interval periods).
    version = (api.get(isvc.path) or {})["metadata"]["resourceVersion"]
    time.sleep(4.5)
    assert (api.get(isvc.path) or {})["metadata"]["resourceVersion"] == version

    api.patch(isvc.path, {"spec": {"autoscaling": None}})
    wait_until(lambda: isvc.replicas() == 2, timeout=TIMEOUT, what="spec.replicas 2 again")
    wait_until(
        lambda: not set(written) & set(isvc.status()),
        timeout=TIMEOUT,
        what="the autoscaler's status fields dropped",
    )


def test_the_autoscaled_sample_is_a_valid_autoscaled_spec() -> None:
    """manifests/samples/autoscaled.yaml (its CEL rules: tests/test_operator_cel.py)."""
    sample = Path(__file__).resolve().parent.parent / "manifests" / "samples" / "autoscaled.yaml"
    spec = parse_spec(yaml.safe_load(sample.read_text())["spec"])
    assert spec.autoscaling is not None and spec.autoscaling.min_replicas == 0
    assert spec.autoscaling.scale_down_seconds == 300
    assert initial_replicas(spec) == 0


def test_the_desired_column_is_shown_with_o_wide() -> None:
    columns = build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    desired = next(c for c in columns if c["name"] == "Desired")
    assert desired == {
        "name": "Desired",
        "type": "integer",
        "priority": 1,
        "jsonPath": ".status.desiredReplicas",
    }
    names = [c["name"] for c in columns]
    assert names.index("Desired") == names.index("Ready") + 1
