"""The cluster's part the Kubernetes API emulator has none of, for one InferenceService.

:class:`Kubelet` is a thread that does what the Deployment controller, the kubelet and the
EndpointSlice controller would do for one Deployment. It keeps an empty EndpointSlice for
the Service (a Service scaled to zero has one) and follows ``spec.replicas``: for each
replica wanted it starts a ``llmsvc sim-engine`` process standing for the pod's engine
(``startup_delay`` as its model load) behind a Pod not yet ready, waits for its
``/health`` (the readiness probe), then makes the Pod Ready, adds a slice with the
engine's ``127.0.0.1:<port>`` as a ready endpoint, and counts it ready in the
Deployment's status. For each replica no longer wanted it removes the endpoint and the
ready count first (as the controllers do for a terminating pod), then deletes the Pod and
stops the engine. Every replica count it saw, with when, is in :attr:`Kubelet.seen`.

An error in the thread is kept and raised by :meth:`Kubelet.check` (every wait of the
tests calls it), so a broken cluster fails the test at once, with the cause.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from kubeapi import APPS, CORE, DISCOVERY
from procs import HOST, Proc, Spawn, free_port

MERGE = {"Content-Type": "application/merge-patch+json"}
ENGINE_READY_TIMEOUT = 30.0  # seconds for a sim engine's /health (its start is ~1 s here)


@dataclass
class Replica:
    pod: str
    proc: Proc
    port: int


class Kubelet(threading.Thread):
    """Runs the engines of one InferenceService's Deployment as its replicas say."""

    def __init__(
        self,
        api_url: str,
        spawn: Spawn,
        *,
        namespace: str,
        name: str,
        model: str,
        startup_delay: float = 0.0,
    ) -> None:
        super().__init__(name=f"kubelet-{name}", daemon=True)
        self.namespace, self.isvc, self.model = namespace, name, model
        self.startup_delay = startup_delay
        self.deployment_path = f"{APPS}/namespaces/{namespace}/deployments/{name}"
        self.service_path = f"{CORE}/namespaces/{namespace}/services/{name}"
        self.slices = f"{DISCOVERY}/namespaces/{namespace}/endpointslices"
        self.slice_name = f"{name}-k8s01"
        self.seen: list[tuple[float, int]] = []  # (monotonic time, spec.replicas) on change
        self.ready_at: list[float] = []  # monotonic time each replica's endpoint became ready
        self.replicas: list[Replica] = []
        self.error: BaseException | None = None
        self._spawn = spawn
        self._client = httpx.Client(base_url=api_url, timeout=10)
        self._halt = threading.Event()
        self._pods = 0
        self._slice_labels: dict[str, str] = {}

    # -- what the tests read -----------------------------------------------------------

    def check(self) -> None:
        """Raise what went wrong in the thread, if anything did."""
        if self.error is not None:
            raise AssertionError(f"the test's kubelet failed: {self.error!r}") from self.error

    def replicas_now(self) -> int | None:
        return self.seen[-1][1] if self.seen else None

    def stop(self) -> None:
        """End the thread and every engine it started."""
        self._halt.set()
        self.join(30)
        for replica in self.replicas:
            replica.proc.stop()
        self._client.close()

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._ensure_slice()
            while not self._halt.is_set():
                self._step()
                self._halt.wait(0.05)
        except BaseException as exc:  # kept for check(): a thread's error is otherwise lost
            self.error = exc

    def _step(self) -> None:
        resp = self._client.get(self.deployment_path)
        if resp.status_code == 404:
            return
        resp.raise_for_status()
        deployment: dict[str, Any] = resp.json()
        wanted = int(deployment["spec"].get("replicas", 1))
        if not self.seen or self.seen[-1][1] != wanted:
            self.seen.append((time.monotonic(), wanted))
        if wanted > len(self.replicas):
            self._start(deployment)
        elif wanted < len(self.replicas):
            self._remove(deployment)

    def _ensure_slice(self) -> None:
        """The Service's EndpointSlice, empty, as the EndpointSlice controller makes it."""
        deadline = time.monotonic() + 30
        while (resp := self._client.get(self.service_path)).status_code == 404:
            if self._halt.is_set() or time.monotonic() > deadline:
                raise AssertionError(f"no Service {self.service_path} within 30 s")
            time.sleep(0.05)
        resp.raise_for_status()
        self._slice_labels = {
            **(resp.json()["metadata"].get("labels") or {}),
            "kubernetes.io/service-name": self.isvc,
        }
        body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": self.slice_name,
                "namespace": self.namespace,
                "labels": self._slice_labels,
            },
            "addressType": "IPv4",
            "endpoints": [],
            "ports": [
                {"name": "http", "port": 8000, "protocol": "TCP"},
                {"name": "babysitter", "port": 8001, "protocol": "TCP"},
            ],
        }
        self._client.post(self.slices, json=body).raise_for_status()

    def _start(self, deployment: dict[str, Any]) -> None:
        """A pod created at once (not ready), its engine started; ready once it answers."""
        self._pods += 1
        pod = f"{self.isvc}-{self._pods}"
        pods = f"{CORE}/namespaces/{self.namespace}/pods"
        template = deployment["spec"]["template"]
        self._client.post(
            pods,
            json={
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod,
                    "namespace": self.namespace,
                    "labels": template["metadata"]["labels"],
                },
                "spec": template["spec"],
                "status": {
                    "phase": "Pending",
                    "conditions": [{"type": "Ready", "status": "False"}],
                },
            },
        ).raise_for_status()
        ready = len(self.replicas)
        self._set_status(deployment, replicas=ready + 1, ready=ready)
        port = free_port()
        proc = self._spawn(
            f"engine-{pod}", "sim-engine", "--port", str(port), "--model-name", self.model,
            "--engine-id", pod, "--time-scale", "0", "--startup-delay", str(self.startup_delay),
        )  # fmt: skip
        replica = Replica(pod, proc, port)
        self.replicas.append(replica)
        proc.wait_http(f"http://{HOST}:{port}/health", timeout=ENGINE_READY_TIMEOUT)
        running = {
            "phase": "Running",
            "podIP": HOST,
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        self._client.patch(
            f"{pods}/{pod}/status", json={"status": running}, headers=MERGE
        ).raise_for_status()
        self.ready_at.append(time.monotonic())  # before: a request may end as soon as it is
        self._add_endpoint(replica)
        self._set_status(deployment, replicas=ready + 1, ready=ready + 1)

    def _remove(self, deployment: dict[str, Any]) -> None:
        """Out of the Service and the counts first, then the pod and its engine go."""
        replica = self.replicas.pop()
        self._remove_endpoint(replica)
        count = len(self.replicas)
        self._set_status(deployment, replicas=count, ready=count)
        self._client.delete(f"{CORE}/namespaces/{self.namespace}/pods/{replica.pod}")
        replica.proc.stop()

    def _add_endpoint(self, replica: Replica) -> None:
        """A slice of the Service holding the replica's endpoint, ready.

        The endpoints of one slice share its ports; these engines listen on different
        ports of one address, so each gets its own slice, as the EndpointSlice controller
        groups endpoints by their ports.
        """
        body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{self.slice_name}-{replica.pod}",
                "namespace": self.namespace,
                "labels": self._slice_labels,
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [HOST],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "targetRef": {"kind": "Pod", "name": replica.pod, "namespace": self.namespace},
                }
            ],
            "ports": [
                {"name": "http", "port": replica.port, "protocol": "TCP"},
                {"name": "babysitter", "port": replica.port + 1, "protocol": "TCP"},
            ],
        }
        self._client.post(self.slices, json=body).raise_for_status()

    def _remove_endpoint(self, replica: Replica) -> None:
        self._client.delete(f"{self.slices}/{self.slice_name}-{replica.pod}").raise_for_status()

    def _set_status(self, deployment: dict[str, Any], *, replicas: int, ready: int) -> None:
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        self._client.patch(
            f"{self.deployment_path}/status", json={"status": status}, headers=MERGE
        ).raise_for_status()
