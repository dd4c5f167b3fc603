"""The whole product on a real cluster: images built, a kind cluster, the chart installed,
the simulated-engine sample applied, a chat completion through the router, uninstall.

Runs only where Docker (with a reachable daemon), kind, helm and kubectl exist; skipped
elsewhere with the reason. Takes minutes (image builds); every wait is bounded.
Keep the cluster for debugging with ``LLMSVC_KIND_KEEP=1``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from helmchart import CHART
from procs import free_port
from tools import ROOT, docker_available, require_tool, tool_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

IMAGES = ("router", "registry", "operator", "babysitter")
PREFIX, TAG = "ghcr.io/llmsvc", "kind-e2e"
SAMPLE = ROOT / "manifests" / "samples" / "sim.yaml"


def _run(*argv: str | Path, timeout: float, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **(env or {})}, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}: exit {proc.returncode}\n" + (
        proc.stdout[-3000:] + proc.stderr[-3000:]
    )
    return proc.stdout


@dataclass(frozen=True)
class Cluster:
    name: str
    kubeconfig: Path
    kubectl: str
    helm: str

    def kubectl_run(self, *args: str, timeout: float = 60) -> str:
        return _run(self.kubectl, "--kubeconfig", self.kubeconfig, *args, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = docker_available()
    if reason is not None:
        pytest.skip(f"needs Docker: {reason}")
    kind = tool_path("kind")
    if kind is None:
        pytest.skip("needs kind (https://kind.sigs.k8s.io) on PATH")
    helm, kubectl = require_tool("helm"), require_tool("kubectl")
    _run("make", "images", f"IMAGE_PREFIX={PREFIX}", f"IMAGE_TAG={TAG}",
         f"IMAGES={' '.join(IMAGES)}", timeout=1500)  # fmt: skip
    name = f"llmsvc-e2e-{os.getpid()}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    _run(kind, "create", "cluster", "--name", name, "--kubeconfig", kubeconfig, "--wait", "180s",
         timeout=400)  # fmt: skip
    try:
        for image in IMAGES:
            _run(kind, "load", "docker-image", f"{PREFIX}/{image}:{TAG}", "--name", name,
                 timeout=300)  # fmt: skip
        yield Cluster(name, kubeconfig, kubectl, helm)
    finally:
        if os.environ.get("LLMSVC_KIND_KEEP") != "1":
            subprocess.run([kind, "delete", "cluster", "--name", name], timeout=300, check=False)


def _wait_ready(cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        phase = cluster.kubectl_run("get", "llmis", "sim", "-o", "jsonpath={.status.phase}")
        if phase == "Ready":
            return
        time.sleep(3)
    described = cluster.kubectl_run("describe", "llmis", "sim")
    pods = cluster.kubectl_run("get", "pods", "-A", "-o", "wide")
    pytest.fail(f"InferenceService sim not Ready in {timeout} s (phase {phase!r})\n"
                f"{described}\n{pods}")  # fmt: skip


def _chat_through_router(cluster: Cluster, timeout: float) -> dict[str, object]:
    port = free_port()
    forward = subprocess.Popen(
        [cluster.kubectl, "--kubeconfig", str(cluster.kubeconfig), "port-forward", "-n",
         "llmsvc", "svc/llmsvc-router", f"{port}:8080"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        last: object = None
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "Hello"}]}
        while time.monotonic() < deadline:
            try:
                reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                                   timeout=30)  # fmt: skip
                if reply.status_code == 200:
                    return dict(reply.json())
                last = reply.text
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(2)
        pytest.fail(f"no chat completion through the router in {timeout} s: {last}")
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def _wait_children_gone(cluster: Cluster, timeout: float) -> None:
    """The operator's Deployment and Service go with their InferenceService."""
    deadline = time.monotonic() + timeout
    left = ""
    while time.monotonic() < deadline:
        left = cluster.kubectl_run("get", "deploy,svc", "-n", "default", "-l",
                                   "llmsvc.io/inference-service=sim", "-o", "name")  # fmt: skip
        if not left.strip():
            return
        time.sleep(2)
    pytest.fail(f"children of the deleted InferenceService still there: {left}")


def test_helm_install_sim_sample_and_chat(cluster: Cluster) -> None:
    kubeconfig = str(cluster.kubeconfig)
    _run(cluster.helm, "install", "llmsvc", CHART, "--kubeconfig", kubeconfig,
         "--namespace", "llmsvc", "--create-namespace", "--wait", "--timeout", "5m",
         "--set", f"image.tag={TAG}", "--set", "image.pullPolicy=Never",
         timeout=400)  # fmt: skip
    try:
        cluster.kubectl_run("apply", "-n", "default", "-f", str(SAMPLE))
        _wait_ready(cluster, timeout=300)
        reply = _chat_through_router(cluster, timeout=120)
        choices = reply["choices"]
        assert isinstance(choices, list) and choices[0]["message"]["content"]
        cluster.kubectl_run("delete", "-n", "default", "-f", str(SAMPLE), "--wait", timeout=180)
        _wait_children_gone(cluster, timeout=60)
    finally:
        _run(cluster.helm, "uninstall", "llmsvc", "--kubeconfig", kubeconfig,
             "--namespace", "llmsvc", "--wait", timeout=300)  # fmt: skip
