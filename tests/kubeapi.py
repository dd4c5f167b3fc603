"""The Kubernetes API emulator as a test fixture: a process, a kubeconfig, small helpers.

``kubeapi`` (fixture, in ``conftest.py``) starts ``standins/kube_apiserver.py`` on a free
port and yields a :class:`KubeAPI`. Give ``env={"KUBECONFIG": str(api.kubeconfig)}`` to
``llmsvc operator`` or ``llmsvc registry --source kubernetes`` and they talk to it as to a
cluster. The helpers take API paths, e.g.
``/apis/llmsvc.io/v1alpha1/namespaces/ns/inferenceservices/x``; see the emulator's
docstring for what it does and does not do like a real API server.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from procs import HOST, Proc, free_port

EMULATOR = Path(__file__).resolve().parent / "standins" / "kube_apiserver.py"

ISVC = "/apis/llmsvc.io/v1alpha1"
APPS = "/apis/apps/v1"
CORE = "/api/v1"
DISCOVERY = "/apis/discovery.k8s.io/v1"


def collection(group: str, plural: str, namespace: str | None = None) -> str:
    """The path of a collection: ``collection(APPS, "deployments", "ns")``."""
    return f"{group}/namespaces/{namespace}/{plural}" if namespace else f"{group}/{plural}"


class KubeAPI:
    """A running emulator: its URL, a kubeconfig file for it, and sync request helpers."""

    def __init__(self, proc: Proc, url: str, kubeconfig: Path) -> None:
        self.proc = proc
        self.url = url
        self.kubeconfig = kubeconfig
        self.client = httpx.Client(base_url=url, timeout=10)

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should use this API server."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._json(self.client.post(path, json=obj))

    def get(self, path: str) -> dict[str, Any] | None:
        resp = self.client.get(path)
        return None if resp.status_code == 404 else self._json(resp)

    def list(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._json(self.client.get(path))["items"]
        return items

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/merge-patch+json"}
        return self._json(self.client.patch(path, json=body, headers=headers))

    def delete(self, path: str) -> dict[str, Any] | None:
        resp = self.client.delete(path)
        return None if resp.status_code == 404 else self._json(resp)

    def wait_handled(
        self, path: str, done: Callable[[], Any], *, timeout: float = 30.0, what: str = ""
    ) -> Any:
        """Wait until ``done()`` is truthy, touching the object at ``path`` every second.

        kmock's watch takes its snapshot of existing objects and subscribes to new events
        in two moments: an object created between them, typically right after a
        controller's /health turned 200 while its watches were still opening, is never
        reported to that watch. A real API server has no such gap. Changing an annotation
        makes a MODIFIED event that the watch does see; a controller that never saw the
        object handles it then as new.
        """
        deadline = time.monotonic() + timeout
        touched = time.monotonic()
        pokes = 0
        while time.monotonic() < deadline:
            value = done()
            if value:
                return value
            if time.monotonic() - touched >= 1.0:
                pokes += 1
                annotations = {"test.llmsvc.io/poke": str(pokes)}
                self.client.patch(
                    path, json={"metadata": {"annotations": annotations}},
                    headers={"Content-Type": "application/merge-patch+json"},
                )  # fmt: skip
                touched = time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what or done}")

    def drop_watches(self) -> None:
        """End every open watch stream, as a dropped connection would."""
        self.client.post("/_control/drop-watches").raise_for_status()

    def expire_watches(self, count: int = 1) -> None:
        """Make the next ``count`` watch requests answer ``410 Gone``."""
        self.client.post("/_control/gone", params={"count": count}).raise_for_status()

    def close(self) -> None:
        self.client.close()

    @staticmethod
    def _json(resp: httpx.Response) -> dict[str, Any]:
        if resp.status_code >= 400:
            raise AssertionError(f"{resp.request.method} {resp.request.url}: {resp.text[:500]}")
        body: dict[str, Any] = resp.json()
        return body


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [
            {
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "tester", "namespace": namespace},
            }
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def start_kubeapi(spawn: Any, tmp_path: Path, name: str = "kube-apiserver") -> KubeAPI:
    """Start the emulator with ``spawn`` and wait until it answers."""
    port = free_port()
    proc = spawn(name, sys.executable, str(EMULATOR), "--port", str(port), raw=True)
    url = f"http://{HOST}:{port}"
    proc.wait_http(url + "/version")
    return KubeAPI(proc, url, write_kubeconfig(tmp_path / "kubeconfig", url))
