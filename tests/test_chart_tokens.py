"""charts/llmsvc's tokens: three generated Secrets, the components' variables from them, the
router's ServiceMonitor sending its admin token, engine pods getting the write token, and
a registry without a token started with --allow-anonymous-writes (issue 11).

Every render is real ``helm template``; the components' flags and variables are parsed
by their own settings classes, as the pods would.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from helmchart import component_settings, container, documents, notes, of_kind, render
from llmsvc.operator.settings import OperatorSettings
from llmsvc.registry.settings import RegistrySettings
from llmsvc.router.settings import RouterSettings

WRITE, REGISTRY_ADMIN, ROUTER_ADMIN, BATCH = (
    "llmsvc-registry-token",
    "llmsvc-registry-admin-token",
    "llmsvc-router-admin-token",
    "llmsvc-batch-token",
)
MONITORS = ("--set", "metrics.serviceMonitor.enabled=true")


def secrets(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, str]]:
    """(namespace, name) -> decoded data of every Secret."""
    return {
        (s["metadata"]["namespace"], s["metadata"]["name"]): {
            k: base64.b64decode(v).decode() for k, v in s["data"].items()
        }
        for s in of_kind(docs, "Secret")
    }


def env_refs(docs: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """The container's variables that come from a Secret: name -> secretKeyRef."""
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container(docs, name).get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def router_monitor(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [monitor] = [
        m for m in of_kind(docs, "ServiceMonitor") if m["metadata"]["name"].endswith("router")
    ]
    [endpoint] = monitor["spec"]["endpoints"]
    return dict(endpoint)


def test_three_random_tokens_each_in_its_secret() -> None:
    found = secrets(documents(render()))
    tokens = [found[("llmsvc", name)]["token"] for name in (WRITE, REGISTRY_ADMIN, ROUTER_ADMIN)]
    assert len(set(tokens)) == 3 and all(len(t) >= 40 and t.isalnum() for t in tokens)
    assert secrets(documents(render()))[("llmsvc", WRITE)] != found[("llmsvc", WRITE)]


def test_components_get_their_tokens() -> None:
    docs = documents(render())
    assert env_refs(docs, "registry") == {
        "LLMSVC_TOKEN": {"name": WRITE, "key": "token"},
        "LLMSVC_ADMIN_TOKEN": {"name": REGISTRY_ADMIN, "key": "token"},
    }
    assert env_refs(docs, "router") == {
        "LLMSVC_REGISTRY_TOKEN": {"name": WRITE, "key": "token"},
        "LLMSVC_ADMIN_TOKEN": {"name": ROUTER_ADMIN, "key": "token"},
        "LLMSVC_BATCH_TOKEN": {"name": BATCH, "key": "token"},
    }
    router = component_settings(RouterSettings, docs, "router")
    assert router.registry_token is not None and router.admin_token is not None
    assert router.registry_token.get_secret_value() == f"{WRITE}/token"
    registry = component_settings(RegistrySettings, docs, "registry")
    assert registry.token is not None and not registry.allow_anonymous_writes
    # Every namespace watched: the Secret is in the release namespace only, and the
    # operator gives engine pods there the token.
    operator = component_settings(OperatorSettings, docs, "operator")
    assert (operator.registry_token_secret, operator.registry_token_secret_key) == (WRITE, "token")
    assert operator.registry_token_secret_namespaces == ["llmsvc"]


def test_the_router_service_monitor_sends_the_admin_token() -> None:
    endpoint = router_monitor(documents(render(*MONITORS)))
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": ROUTER_ADMIN, "key": "token"},
    }
    others = [
        e
        for m in of_kind(documents(render(*MONITORS)), "ServiceMonitor")
        if not m["metadata"]["name"].endswith(("router", "batch"))  # batch: test_chart_batch
        for e in m["spec"]["endpoints"]
    ]
    assert others and all("authorization" not in e for e in others)


def test_a_registry_without_a_token_allows_anonymous_writes_explicitly() -> None:
    """The registry now refuses to start with neither a token nor the opt-out flag."""
    docs = documents(render("--set", "registry.token.enabled=false"))
    registry = component_settings(RegistrySettings, docs, "registry")
    assert registry.token is None and registry.allow_anonymous_writes
    assert "LLMSVC_REGISTRY_TOKEN" not in env_refs(docs, "router")
    operator = component_settings(OperatorSettings, docs, "operator")
    assert operator.registry_token_secret is None
    assert ("llmsvc", WRITE) not in secrets(docs)
    assert "--allow-anonymous-writes" in notes("--set", "registry.token.enabled=false")


def test_admin_tokens_can_be_turned_off() -> None:
    args = (
        "--set",
        "router.adminToken.enabled=false",
        "--set",
        "registry.adminToken.enabled=false",
    )
    docs = documents(render(*MONITORS, *args))
    assert "authorization" not in router_monitor(docs)
    assert "LLMSVC_ADMIN_TOKEN" not in env_refs(docs, "router")
    assert "LLMSVC_ADMIN_TOKEN" not in env_refs(docs, "registry")
    assert set(secrets(docs)) == {("llmsvc", WRITE), ("llmsvc", BATCH)}


def test_watched_namespaces_get_the_write_token() -> None:
    docs = documents(render("--set", "watchNamespaces={team-a,team-b}"))
    found = secrets(docs)
    copies = {found[(ns, WRITE)]["token"] for ns in ("llmsvc", "team-a", "team-b")}
    assert len(copies) == 1  # one token, in each namespace whose engine pods need it
    assert (("team-a", ROUTER_ADMIN) not in found) and (("team-a", REGISTRY_ADMIN) not in found)
    operator = component_settings(OperatorSettings, docs, "operator")
    assert operator.registry_token_secret == WRITE
    assert operator.registry_token_secret_namespaces == []  # every watched one has it


def test_existing_secrets_and_given_values() -> None:
    docs = documents(
        render(
            *MONITORS,
            "--set",
            "registry.token.existingSecret=mine",
            "--set",
            "registry.token.key=w",
            "--set",
            "router.adminToken.existingSecret=theirs",
            "--set",
            "registry.adminToken.value=given-admin-token",
            "--set",
            "watchNamespaces={team-a}",
            "--set",
            "batch.token.existingSecret=ours",
        )
    )
    assert env_refs(docs, "router")["LLMSVC_REGISTRY_TOKEN"] == {"name": "mine", "key": "w"}
    assert router_monitor(docs)["authorization"]["credentials"] == {
        "name": "theirs",
        "key": "token",
    }
    assert secrets(docs) == {("llmsvc", REGISTRY_ADMIN): {"token": "given-admin-token"}}
    operator = component_settings(OperatorSettings, docs, "operator")
    assert (operator.registry_token_secret, operator.registry_token_secret_key) == ("mine", "w")
    assert operator.registry_token_secret_namespaces == ["llmsvc"]  # yours is here only


@pytest.mark.parametrize("enabled", [True, False])
def test_an_external_registry_gets_a_token_only_from_your_secret(enabled: bool) -> None:
    args = ["--set", "registry.enabled=false", "--set", "router.registryUrl=http://r:8081"]
    if enabled:
        args += ["--set", "registry.token.existingSecret=external"]
    docs = documents(render(*args))
    refs = env_refs(docs, "router")
    assert ("LLMSVC_REGISTRY_TOKEN" in refs) is enabled
    assert ("llmsvc", WRITE) not in secrets(docs)
