"""charts/llmsvc's flow-control values: the router's flags, and API keys as a mounted keys file.

Real ``helm template`` renders (skipped without helm, failed under LLMSVC_REQUIRE_TOOLS=1),
checked with ``kubernetes-validate --strict``, the router's own settings class and the
router's own keys-file parser: the chart can only pass flags and files the router takes.
Fleet-wide figures (queue size, tenants' rpm and tpm) are divided by the replica count,
rounded up, because each router process enforces its own share.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest

from helmchart import (
    CHART,
    HelmError,
    component_args,
    component_settings,
    container,
    documents,
    helm,
    of_kind,
    pod_specs,
    render,
    validate_strict,
)
from llmsvc.core.records import INFERENCE_SERVICE
from llmsvc.router.priority import Priority
from llmsvc.router.settings import RouterSettings
from llmsvc.router.tenants import parse_keys
from procs import HOST, Spawn, free_port, start_registry, wait_until
from tools import ROOT

FLOW = ROOT / "tests" / "chart-values" / "flow-control.yaml"
FLAGS = ("--backend-concurrency", "--saturation-waiting", "--saturation-kv", "--queue-size",
         "--queue-timeout", "--hold-timeout", "--hold-feedback-interval",
         "--api-keys-file")  # fmt: skip
SECRET = "llmsvc-router-api-keys"


@pytest.fixture(scope="module")
def flow_docs() -> list[dict[str, Any]]:
    return documents(render("-f", FLOW))


def router_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return pod_specs(docs)["Deployment/llmsvc-router"]


def keys_file(docs: list[dict[str, Any]], secret: str = SECRET, key: str = "keys.yaml") -> str:
    (found,) = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == secret]
    return base64.b64decode(found["data"][key]).decode()


def tenants(text: str) -> dict[str, Any]:
    """The router's own reading of a keys file: tenant name -> Tenant."""
    return {tenant.name: tenant for _, tenant in parse_keys(text, source="keys.yaml")}


def test_by_default_no_flow_control_flag_and_no_keys_file() -> None:
    docs = documents(render())
    args = component_args(docs, "router")
    assert not set(FLAGS) & set(args)
    assert [v["name"] for v in router_pod(docs)["volumes"]] == ["tmp"]
    assert [m["name"] for m in container(docs, "router")["volumeMounts"]] == ["tmp"]
    settings = component_settings(RouterSettings, docs, "router")
    defaults = RouterSettings()
    assert (settings.queue_size, settings.hold_timeout, settings.backend_concurrency) == (
        defaults.queue_size, defaults.hold_timeout, None)  # fmt: skip


def test_flow_control_values_become_the_routers_flags(flow_docs: list[dict[str, Any]]) -> None:
    settings = component_settings(RouterSettings, flow_docs, "router")
    assert settings.backend_concurrency == 8
    assert (settings.saturation_waiting, settings.saturation_kv) == (4, 0.9)
    assert settings.queue_size == 334, "a fleet-wide 1000 over 3 routers, rounded up"
    assert (settings.queue_timeout, settings.hold_feedback_interval) == (30, 2.5)
    assert settings.hold_timeout == 0, "0 is a value (503 at once), not 'unset'"
    assert settings.api_keys_file == "/etc/llmsvc/api-keys/keys.yaml"
    # The comma list still works beside the file (the helper reads a Secret ref as secret/key).
    assert settings.api_keys == [f"{SECRET}/api-keys"]
    assert keys_file(flow_docs, key="api-keys") == "plain-key"


@pytest.mark.parametrize(
    ("router", "queue_size"),
    [
        ({"replicas": 3}, 334),
        ({"replicas": 1}, 1000),
        ({"replicas": 0}, 1000),  # no replica: no division by zero
        ({"replicas": 7, "autoscaling": {"enabled": True, "minReplicas": 4}}, 250),
    ],
)
def test_the_queue_size_is_divided_by_the_replicas(router: dict[str, Any], queue_size: int) -> None:
    docs = documents(render(values={"router": {**router, "flowControl": {"queueSize": 1000}}}))
    assert component_settings(RouterSettings, docs, "router").queue_size == queue_size


def test_tenants_are_a_keys_file_with_each_routers_share(flow_docs: list[dict[str, Any]]) -> None:
    found = tenants(keys_file(flow_docs))
    assert set(found) == {"chat", "batch", "free"}
    chat, batch, free = found["chat"], found["batch"], found["free"]
    assert (chat.rpm, chat.tpm) == (34, 33334), "100 rpm and 100,000 tpm over 3 routers"
    assert chat.max_priority is Priority.CRITICAL and chat.models == frozenset({"Qwen/Qwen3-8B"})
    assert (batch.rpm, batch.tpm, batch.max_priority) == (1, None, Priority.BATCH)
    assert (free.rpm, free.tpm, free.models) == (None, None, None)
    ring = parse_keys(keys_file(flow_docs), source="keys.yaml")
    digests = {tenant.name: digest for digest, tenant in ring}
    assert digests["batch"].hex() == "9f86d081884c7d659a2feaa0c55ad015" + (
        "a3bf4f1b2b0b822cd15d6c15b0f00a08")  # fmt: skip
    assert digests["chat"] == hashlib.sha256(b"sk-chat-0123").digest()


def test_the_keys_file_is_mounted_from_the_secret(flow_docs: list[dict[str, Any]]) -> None:
    volumes = {v["name"]: v for v in router_pod(flow_docs)["volumes"]}
    assert volumes["api-keys"]["secret"] == {
        "secretName": SECRET, "items": [{"key": "keys.yaml", "path": "keys.yaml"}]}  # fmt: skip
    mounts = {m["name"]: m for m in container(flow_docs, "router")["volumeMounts"]}
    mount = mounts["api-keys"]
    # A directory mount (no subPath): the kubelet replaces the file when the Secret changes.
    assert mount == {"name": "api-keys", "mountPath": "/etc/llmsvc/api-keys", "readOnly": True}
    settings = component_settings(RouterSettings, flow_docs, "router")
    assert settings.api_keys_file == f"{mount['mountPath']}/keys.yaml"


def test_tenants_alone_need_no_comma_list() -> None:
    values = {"router": {"apiKeys": {"enabled": True, "tenants": [{"name": "a", "key": "k1"}]}}}
    docs = documents(render(values=values))
    env = [e["name"] for e in container(docs, "router")["env"]]
    assert "LLMSVC_API_KEYS" not in env
    (secret,) = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == SECRET]
    assert list(secret["data"]) == ["keys.yaml"]
    assert keys_file(docs).splitlines()[-2:] == ['  - name: "a"', '    key: "k1"']
    assert tenants(keys_file(docs))["a"].rpm is None


def test_a_user_managed_keys_file_is_mounted_as_it_is() -> None:
    values = {"router": {"apiKeys": {"enabled": True, "existingSecret": "my-keys",
                                     "fileKey": "tenants.yaml"}}}  # fmt: skip
    docs = documents(render(values=values))
    volumes = {v["name"]: v for v in router_pod(docs)["volumes"]}
    items = [{"key": "tenants.yaml", "path": "keys.yaml"}]
    assert volumes["api-keys"]["secret"] == {"secretName": "my-keys", "items": items}
    assert SECRET not in [s["metadata"]["name"] for s in of_kind(docs, "Secret")]
    assert "LLMSVC_API_KEYS" not in [e["name"] for e in container(docs, "router")["env"]]
    settings = component_settings(RouterSettings, docs, "router")
    assert settings.api_keys_file == "/etc/llmsvc/api-keys/keys.yaml"


def test_an_existing_secret_without_file_key_keeps_the_comma_list() -> None:
    values = {"router": {"apiKeys": {"enabled": True, "existingSecret": "my-keys"}}}
    docs = documents(render(values=values))
    env = {e["name"]: e for e in container(docs, "router")["env"]}
    ref = env["LLMSVC_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "my-keys", "key": "api-keys"}
    assert "--api-keys-file" not in component_args(docs, "router")
    assert "api-keys" not in [v["name"] for v in router_pod(docs)["volumes"]]


@pytest.mark.parametrize("version", ["1.27.0", kubernetes_validate.latest_version()])
def test_the_flow_control_render_is_valid_kubernetes(
    flow_docs: list[dict[str, Any]], version: str
) -> None:
    for doc in flow_docs:
        validate_strict(doc, version)


def test_helm_lint_passes_with_flow_control() -> None:
    out = helm("lint", CHART, "--strict", "-f", FLOW).stdout
    assert "0 chart(s) failed" in out and "[WARNING]" not in out, out


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"flowControl": {"saturationKv": 1.5}}, "saturationKv"),
        ({"flowControl": {"backendConcurrency": 0}}, "backendConcurrency"),
        ({"flowControl": {"queueSize": -1}}, "queueSize"),
        ({"flowControl": {"queueSlots": 3}}, "queueSlots"),
        ({"apiKeys": {"enabled": True, "tenants": [{"name": "a"}]}}, "tenants"),
        ({"apiKeys": {"enabled": True, "tenants": [{"name": "a", "key": "k", "rpm": 0}]}},
         "rpm"),
        ({"apiKeys": {"enabled": True, "tenants": [{"name": "a", "key": "k",
                                                    "maxPriority": "urgent"}]}}, "maxPriority"),
        ({"apiKeys": {"enabled": True, "tenants": [{"name": "a", "key": "k",
                                                    "keySha256": "0" * 64}]}}, "tenants"),
    ],
)  # fmt: skip
def test_the_schema_rejects_flow_control_mistakes(values: Mapping[str, Any], message: str) -> None:
    with pytest.raises(HelmError, match=message):
        render(values={"router": values})


@pytest.mark.slow
def test_the_rendered_router_takes_the_keys_file_and_its_share(
    spawn: Spawn, tmp_path: Path, flow_docs: list[dict[str, Any]]
) -> None:
    """The router container's rendered flags and Secret, run as a local process."""
    _, registry = start_registry(spawn)
    model = "Qwen/Qwen3-8B"
    record = {"name": "llm.qwen", "host": HOST, "port": 9, "type": INFERENCE_SERVICE,
              "metadata": {"models": [model], "ready_endpoints": 0}}  # fmt: skip
    assert httpx.post(f"{registry}/services", json=record, timeout=5).status_code == 201
    keys = tmp_path / "keys.yaml"  # where the pod has the Secret's keys.yaml mounted
    keys.write_text(keys_file(flow_docs))
    args = component_args(flow_docs, "router")
    port = free_port()
    local = {"--host": HOST, "--port": str(port), "--registry-url": registry,
             "--api-keys-file": str(keys)}  # fmt: skip
    args = [local.get(prev, arg) for prev, arg in zip(["", *args[:-1]], args, strict=True)]
    env = {"LLMSVC_API_KEYS": keys_file(flow_docs, key="api-keys")}
    router = f"http://{HOST}:{port}"
    spawn("router", "router", *args, env=env).wait_http(f"{router}/health", timeout=30)

    def models(key: str) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.get(f"{router}/v1/models", headers=headers, timeout=5).status_code

    assert (models("sk-chat-0123"), models("plain-key"), models("nope")) == (200, 200, 401)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    chat = {"Authorization": "Bearer sk-chat-0123"}

    def answered() -> httpx.Response | None:
        resp = httpx.post(f"{router}/v1/chat/completions", json=body, headers=chat, timeout=10)
        return resp if resp.status_code != 404 else None  # 404 until the first sync

    resp = wait_until(answered, timeout=15, interval=0.2, what="the model known")
    # holdTimeout 0 (set, though falsy), and each router's share of the chat tenant's 100 rpm.
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "no_healthy_backend"
    assert resp.headers["x-ratelimit-limit-requests"] == "34"
