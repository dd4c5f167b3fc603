"""Least-privilege RBAC of charts/llmsvc, verb by verb: a widened role fails these tests.

Also: ``operator/rbac.yaml`` (for installs without Helm) equals the chart's render.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from helmchart import RBAC_ARGS, component, documents, of_kind, pod_specs, render
from tools import ROOT

Rules = dict[tuple[str, str], set[str]]
READ = {"get", "list", "watch"}

OPERATOR: Rules = {
    ("llmsvc.io", "inferenceservices"): READ | {"patch"},
    ("llmsvc.io", "inferenceservices/status"): {"patch"},
    ("apps", "deployments"): READ | {"create", "patch", "delete"},
    ("", "services"): {"get", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "events"): {"create"},
    # autoscaling.engine builtin (the default): the Deployments' scale subresource.
    ("apps", "deployments/scale"): {"patch"},
}
# The builtin autoscaler's Role in the release's namespace: the routers' EndpointSlices.
OPERATOR_ROUTERS: Rules = {("discovery.k8s.io", "endpointslices"): {"list"}}
REGISTRY: Rules = {
    ("discovery.k8s.io", "endpointslices"): READ,
    ("", "services"): READ,
}


def rules_of(role: dict[str, Any]) -> Rules:
    """Verbs per (apiGroup, resource); no wildcards, names or non-resource URLs allowed."""
    found: Rules = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


def roles(docs: Sequence[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The component's roles over the watched namespaces (not the operator's routers Role)."""
    return [r for r in of_kind(docs, "Role", "ClusterRole")
            if component(r) == name and not _routers(r)]  # fmt: skip


def bindings(docs: Sequence[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [b for b in of_kind(docs, "RoleBinding", "ClusterRoleBinding")
            if component(b) == name and not _routers(b)]  # fmt: skip


def _routers(obj: dict[str, Any]) -> bool:
    return bool(obj["metadata"]["name"].endswith("-operator-routers"))


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return documents(render())


@pytest.fixture(scope="module")
def namespaced_docs() -> list[dict[str, Any]]:
    return documents(render(values={"watchNamespaces": ["team-a", "team-b"]}))


@pytest.mark.parametrize(("name", "expected"), [("operator", OPERATOR), ("registry", REGISTRY)])
def test_cluster_roles_grant_exactly_what_the_component_uses(
    default_docs: list[dict[str, Any]], name: str, expected: Rules
) -> None:
    (role,) = roles(default_docs, name)
    assert role["kind"] == "ClusterRole"
    assert rules_of(role) == expected
    (binding,) = bindings(default_docs, name)
    assert binding["kind"] == "ClusterRoleBinding"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"llmsvc-{name}", "namespace": "llmsvc"}
    ]
    (spec,) = [s for k, s in pod_specs(default_docs).items() if k.endswith(f"llmsvc-{name}")]
    assert spec["serviceAccountName"] == f"llmsvc-{name}"


@pytest.mark.parametrize(("name", "expected"), [("operator", OPERATOR), ("registry", REGISTRY)])
def test_watched_namespaces_get_roles_and_nothing_cluster_wide(
    namespaced_docs: list[dict[str, Any]], name: str, expected: Rules
) -> None:
    assert not of_kind(namespaced_docs, "ClusterRole", "ClusterRoleBinding")
    found = roles(namespaced_docs, name)
    assert sorted(r["metadata"]["namespace"] for r in found) == ["team-a", "team-b"]
    for role in found:
        assert role["kind"] == "Role" and rules_of(role) == expected
    for binding in bindings(namespaced_docs, name):
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == "llmsvc"  # the release's namespace
    assert sorted(b["metadata"]["namespace"] for b in bindings(namespaced_docs, name)) == [
        "team-a",
        "team-b",
    ]


def test_router_has_no_rbac_and_no_token(default_docs: list[dict[str, Any]]) -> None:
    assert not roles(default_docs, "router") and not bindings(default_docs, "router")
    subjects = [s["name"] for b in of_kind(default_docs, "RoleBinding", "ClusterRoleBinding")
                for s in b["subjects"]]  # fmt: skip
    assert "llmsvc-router" not in subjects
    (account,) = [a for a in of_kind(default_docs, "ServiceAccount") if component(a) == "router"]
    assert account["automountServiceAccountToken"] is False
    (spec,) = [s for k, s in pod_specs(default_docs).items() if k.endswith("llmsvc-router")]
    assert spec["automountServiceAccountToken"] is False


def test_operator_rbac_yaml_equals_the_chart() -> None:
    """operator/rbac.yaml is `make manifests`' render of templates/operator/rbac.yaml."""
    checked_in = (ROOT / "operator" / "rbac.yaml").read_text()
    assert checked_in == render(*RBAC_ARGS), "operator/rbac.yaml is stale: run `make manifests`"
    kinds = [d["kind"] for d in documents(checked_in)]
    assert kinds == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]


@pytest.mark.parametrize("which", ["default_docs", "namespaced_docs"])
def test_the_operator_reads_endpointslices_of_the_routers_namespace_only(
    which: str, request: pytest.FixtureRequest
) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(which)
    (role,) = [r for r in of_kind(docs, "Role", "ClusterRole") if _routers(r)]
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "llmsvc"
    assert rules_of(role) == OPERATOR_ROUTERS
    (binding,) = [b for b in of_kind(docs, "RoleBinding", "ClusterRoleBinding") if _routers(b)]
    assert binding["metadata"]["namespace"] == "llmsvc"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]
    }  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llmsvc-operator", "namespace": "llmsvc"}
    ]
