"""The API paths of the objects the operator reads and writes itself.

kopf watches and patches the InferenceServices; the operator's
:class:`llmsvc.kube.KubeClient` creates, patches and deletes their children
(Deployment, Service), reads pods, and patches an InferenceService's status
outside a kopf handler, at these paths.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from llmsvc.operator.spec import GROUP, PLURAL, VERSION


def isvc_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def deployment_path(namespace: str, name: str = "") -> str:
    base = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    return f"{base}/{name}" if name else base


def service_path(namespace: str, name: str = "") -> str:
    base = f"/api/v1/namespaces/{namespace}/services"
    return f"{base}/{name}" if name else base


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def object_path(obj: Mapping[str, Any]) -> str:
    """The API path of a built child object (Deployment, Service, KEDA ScaledObject)."""
    kind, meta = obj["kind"], obj["metadata"]
    if kind == "Deployment":
        return deployment_path(meta["namespace"], meta["name"])
    if kind == "Service":
        return service_path(meta["namespace"], meta["name"])
    if kind == "ScaledObject" and obj.get("apiVersion") == "keda.sh/v1alpha1":
        return f"/apis/keda.sh/v1alpha1/namespaces/{meta['namespace']}/scaledobjects/{meta['name']}"
    raise ValueError(f"no API path known for kind {kind!r}")


def collection_of(path: str) -> str:
    return path.rsplit("/", 1)[0]


def iter_owned(items: list[dict[str, Any]], label: str, value: str) -> Iterator[dict[str, Any]]:
    """Objects whose label ``label`` is ``value`` (selectors may be ignored by a server)."""
    for item in items:
        if ((item.get("metadata") or {}).get("labels") or {}).get(label) == value:
            yield item
