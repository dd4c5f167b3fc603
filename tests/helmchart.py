"""Render charts/llmsvc with the real ``helm template`` for the chart tests.

The arguments that make ``manifests/install.yaml`` and ``operator/rbac.yaml`` live
here and in the Makefile's ``manifests`` target; the tests that compare those files
with a fresh render fail when the two drift apart.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import jsonschema
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from llmsvc.core.settings import BaseServiceSettings, parse_settings
from tools import ROOT, require_tool

S = TypeVar("S", bound=BaseServiceSettings)

CHART = ROOT / "charts" / "llmsvc"
ALL_FEATURES = ROOT / "tests" / "chart-values" / "all-features.yaml"
RELEASE, NAMESPACE = "llmsvc", "llmsvc"

# manifests/install.yaml: default values and the CRD; the tokens come from Secrets the user
# creates (chart-generated random tokens would be published in the file).
INSTALL_ARGS = (
    "--include-crds",
    "--set",
    "registry.token.existingSecret=llmsvc-registry-token",
    "--set",
    "registry.adminToken.existingSecret=llmsvc-registry-admin-token",
    "--set",
    "router.adminToken.existingSecret=llmsvc-router-admin-token",
    "--set",
    "batch.token.existingSecret=llmsvc-batch-token",
)
RBAC_ARGS = ("--show-only", "templates/operator/rbac.yaml")


class HelmError(AssertionError):
    """``helm`` exited non-zero; the message is its stderr."""


def helm(
    *args: str | Path, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run helm (skipped locally / failed in CI when it is not installed)."""
    argv = [require_tool("helm"), *map(str, args)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise HelmError(f"{' '.join(argv[1:])}: exit {proc.returncode}\n{proc.stderr}")
    return proc


def render(*args: str | Path, values: Mapping[str, Any] | None = None) -> str:
    """``helm template llmsvc charts/llmsvc --namespace llmsvc`` plus ``args`` (and values)."""
    extra: list[str | Path] = list(args)
    for key, value in _flatten(values or {}):
        extra += ["--set-json", f"{key}={json.dumps(value)}"]
    return helm("template", RELEASE, CHART, "--namespace", NAMESPACE, *extra).stdout


def _flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, path + ".")
        else:
            yield path, value


def notes(*args: str) -> str:
    """NOTES.txt as ``helm install --dry-run=client`` prints it (no cluster contacted)."""
    out = helm("install", RELEASE, CHART, "--namespace", NAMESPACE, "--dry-run=client", *args,
               env={"KUBECONFIG": "/nonexistent"}).stdout  # fmt: skip
    return out.split("NOTES:\n", 1)[1]


def documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a render."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(docs: Sequence[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in kinds]


def component(doc: Mapping[str, Any]) -> str:
    return str(doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))


def pod_specs(docs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod spec of every workload, by ``Kind/name``."""
    return {
        f"{doc['kind']}/{doc['metadata']['name']}": doc["spec"]["template"]["spec"]
        for doc in of_kind(docs, "Deployment", "StatefulSet", "DaemonSet", "Job")
    }


def container(docs: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """The container ``name`` (router, registry, operator) of the rendered workloads."""
    for spec in pod_specs(docs).values():
        for item in spec["containers"]:
            if item["name"] == name:
                return dict(item)
    raise AssertionError(f"no container {name!r} rendered")


def validate_strict(doc: Mapping[str, Any], version: str) -> None:
    """``kubernetes-validate --strict`` for one object: the same schemas and the same check as
    ``kubernetes_validate.validate(doc, version, strict=True)``, with each schema loaded once
    (the library re-reads its 1.8 MB definitions file for every object)."""
    _validator(version, str(doc["kind"]), str(doc["apiVersion"])).validate(doc)


@functools.cache
def _definitions(directory: str, version: str) -> Resource[Any]:
    return Resource.from_contents(schema_contents(f"{directory}/_definitions.json", version))


@functools.cache
def _validator(version: str, kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    directory = f"kubernetes-json-schema/v{version}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # rbac.authorization.k8s.io/v1
    schema = schema_contents(f"{directory}/{kind.lower()}-{group}.json", version)
    registry: Registry[Any] = Resource.from_contents(schema) @ (
        _definitions(directory, version) @ Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def component_args(docs: Sequence[dict[str, Any]], name: str) -> list[str]:
    """The flags the chart gives ``llmsvc <name>`` (its container runs ``llmsvc <name> ...``)."""
    item = container(docs, name)
    assert item["command"] == ["llmsvc"]
    assert item["args"][0] == name
    return [str(arg) for arg in item["args"][1:]]


def pod_env(docs: Sequence[dict[str, Any]], name: str) -> dict[str, str]:
    """The container's LLMSVC_* variables as the pod would have them; one from a Secret
    reads ``<secret>/<key>`` (the registry refuses to start without its token)."""
    env: dict[str, str] = {}
    for item in container(docs, name).get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if item["name"].startswith("LLMSVC_") and (ref or "value" in item):
            env[item["name"]] = f"{ref['name']}/{ref['key']}" if ref else str(item["value"])
    return env


def component_settings(cls: type[S], docs: Sequence[dict[str, Any]], name: str) -> S:
    """``llmsvc <name>``'s settings from the chart's flags and the pod's environment; a flag
    naming a token file in a mounted Secret reads ``<secret>/<key>`` from a stand-in file."""
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, pod_env(docs, name)):
        args = _secret_files(docs, name, component_args(docs, name), Path(tmp))
        return parse_settings(cls, args, prog=f"llmsvc {name}")


def _secret_files(
    docs: Sequence[dict[str, Any]], name: str, args: list[str], tmp: Path
) -> list[str]:
    """``args`` with each ``--*-token-file`` in a mounted Secret swapped for a stand-in file."""
    (spec,) = [s for s in pod_specs(docs).values()
               if any(c["name"] == name for c in s["containers"])]  # fmt: skip
    secrets = {v["name"]: v["secret"] for v in spec.get("volumes", []) if "secret" in v}
    files: dict[str, str] = {}
    for mount in container(docs, name).get("volumeMounts", []):
        secret = secrets.get(mount["name"]) or {}
        for item in secret.get("items", []):
            files[f"{mount['mountPath']}/{item['path']}"] = f"{secret['secretName']}/{item['key']}"
    out: list[str] = []
    for arg in args:
        if arg in files and out and out[-1].endswith("-token-file"):
            stand_in = tmp / f"secret-{len(out)}"
            stand_in.write_text(files[arg])
            arg = str(stand_in)
        out.append(arg)
    return out
