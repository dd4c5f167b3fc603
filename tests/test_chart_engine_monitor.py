"""The engine ServiceMonitor gives each engine and babysitter target the `backend` label the
Backends and Resources dashboards join on, with the value the router names that backend by.

Rendered with the real ``helm template``; its relabelings are then applied as Prometheus
applies a ``replace`` relabeling (the source labels joined by the separator, the anchored
regex, ``${n}`` in the replacement) to the meta labels Prometheus gives an endpoint of a
pod, and the result is compared with the registry's own name for that endpoint
(``k8s_records.record_name``, the name the router's ``backend`` series carry).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from helmchart import CHART, component, documents, of_kind, render
from llmsvc.registry.k8s_records import EndpointSlice, record_name

ENGINE_PORTS = ["http", "babysitter"]


def _expand(replacement: str, match: re.Match[str]) -> str:
    """Go's ``Regexp.Expand`` for ``$n`` and ``${n}``, as Prometheus expands a replacement."""

    def group(m: re.Match[str]) -> str:
        return match.group(int(m.group(1) or m.group(2))) or ""

    return re.sub(r"\$\{(\d+)\}|\$(\d+)", group, replacement)


def relabel(labels: Mapping[str, str], configs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Prometheus's ``replace`` relabeling (the only action the chart uses) over ``labels``."""
    out = dict(labels)
    for config in configs:
        assert config.get("action", "replace").lower() == "replace", config
        value = config.get("separator", ";").join(out.get(s, "") for s in config["sourceLabels"])
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        if match is None:
            continue
        result = _expand(config.get("replacement", "$1"), match)
        if result:
            out[config["targetLabel"]] = result
        else:
            out.pop(config["targetLabel"], None)
    return out


@pytest.fixture(scope="module")
def engine_monitor() -> dict[str, Any]:
    docs = documents(render(values={"metrics": {"serviceMonitor": {"enabled": True}}}))
    (monitor,) = [m for m in of_kind(docs, "ServiceMonitor") if component(m) == "engine"]
    return monitor


def _slice(namespace: str, pod: str | None, address: str) -> EndpointSlice:
    target = {"kind": "Pod", "name": pod} if pod else None
    return EndpointSlice.model_validate(
        {
            "metadata": {"name": "qwen-abcde", "namespace": namespace},
            "endpoints": [{"addresses": [address], "targetRef": target}],
            "ports": [{"name": "http", "port": 8000}],
        }
    )


def _meta_labels(slice_: EndpointSlice, port: str) -> dict[str, str]:
    """What Prometheus's Kubernetes discovery gives the endpoint's target before relabeling."""
    (endpoint,) = slice_.endpoints
    labels = {
        "__address__": f"{endpoint.addresses[0]}:8000",
        "__meta_kubernetes_namespace": slice_.metadata.namespace,
        "__meta_kubernetes_service_name": "qwen",
        "__meta_kubernetes_endpoint_port_name": port,
    }
    if endpoint.target_ref is not None:
        labels["__meta_kubernetes_pod_name"] = endpoint.target_ref.name
    return labels


def test_the_dashboards_join_engine_series_on_backend() -> None:
    """The label the chart sets is the one the dashboards' engine and babysitter queries use."""
    exprs: list[str] = []
    for name in ("backends.json", "resources.json"):
        text = json.dumps(json.loads((CHART / "dashboards" / name).read_text()))
        exprs += re.findall(r'"expr": "((?:[^"\\]|\\.)*)"', text)
    engine = [e for e in exprs if "vllm:" in e or "llmsvc_babysitter_" in e]
    assert engine and all("backend" in e for e in engine), engine


@pytest.mark.parametrize(("namespace", "pod"), [("llm", "qwen-7d9f-x2k4p"), ("team-a", "m-0")])
def test_engine_and_babysitter_targets_get_the_routers_backend_name(
    engine_monitor: dict[str, Any], namespace: str, pod: str
) -> None:
    endpoints = engine_monitor["spec"]["endpoints"]
    assert [e["port"] for e in endpoints] == ENGINE_PORTS
    slice_ = _slice(namespace, pod, "10.0.3.7")
    name = record_name(slice_, slice_.endpoints[0])
    assert name == f"{namespace}.{pod}"
    for endpoint in endpoints:
        labels = relabel(_meta_labels(slice_, endpoint["port"]), endpoint["relabelings"])
        assert labels["backend"] == name, endpoint


def test_an_endpoint_without_a_pod_gets_no_backend(engine_monitor: dict[str, Any]) -> None:
    """No half name ("llm."): the router names such an endpoint by its slice and address."""
    slice_ = _slice("llm", None, "10.0.3.8")
    for endpoint in engine_monitor["spec"]["endpoints"]:
        labels = relabel(_meta_labels(slice_, endpoint["port"]), endpoint["relabelings"])
        assert "backend" not in labels


def test_the_relabel_emulation_can_fail() -> None:
    """The emulation is not a no-op: a wrong replacement gives a wrong name."""
    slice_ = _slice("llm", "p", "10.0.0.1")
    config = {
        "sourceLabels": ["__meta_kubernetes_namespace", "__meta_kubernetes_pod_name"],
        "targetLabel": "backend",
    }
    assert relabel(_meta_labels(slice_, "http"), [config])["backend"] == "llm;p"
    assert relabel(_meta_labels(slice_, "http"), [{**config, "separator": "."}])["backend"] == (
        record_name(slice_, slice_.endpoints[0])
    )
