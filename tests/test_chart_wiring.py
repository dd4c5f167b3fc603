"""The chart's three containers, run as local processes with exactly the flags and environment
it renders (Secrets resolved), against the Kubernetes API emulator: the operator turns the
sim sample into a Deployment and Service, an EndpointSlice for that Service (made by hand
here: no kubelet, no EndpointSlice controller) lists a local simulated engine, and a chat
completion goes through the router. Only the listen address, the ports and the router's
registry URL are changed to run on 127.0.0.1.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from helmchart import container, documents, of_kind, render
from kubeapi import APPS, CORE, DISCOVERY, ISVC, KubeAPI, collection
from procs import HOST, Proc, Spawn, free_port, wait_until
from tools import ROOT

pytestmark = pytest.mark.slow

NS = "llm"
TOKEN = "chart-wiring-token"


def localize(args: Sequence[str], replace: dict[str, str]) -> list[str]:
    """``args`` with the value after each flag in ``replace`` swapped."""
    out = list(args)
    for index, arg in enumerate(out[:-1]):
        if arg in replace:
            out[index + 1] = replace[arg]
    return out


def resolved_env(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    """The container's environment as the kubelet would give it (Secrets decoded)."""
    secrets = {s["metadata"]["name"]: s["data"] for s in of_kind(docs, "Secret")}
    env: dict[str, str] = {}
    for item in container(docs, name).get("env", []):
        source = item.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[item["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
        elif "fieldRef" in source:
            env[item["name"]] = f"{name}-pod"
        else:
            env[item["name"]] = item["value"]
    return env


def start(spawn: Spawn, docs: list[dict[str, Any]], name: str, port: int,
          extra_env: dict[str, str], replace: dict[str, str]) -> Proc:  # fmt: skip
    """Start the chart's ``name`` container as a local process on ``port`` (not waited for)."""
    args = localize(container(docs, name)["args"], {"--host": HOST, "--port": str(port), **replace})
    return spawn(name, *args, env={**resolved_env(docs, name), **extra_env})


def mounted_tokens(docs: list[dict[str, Any]], name: str, tmp: Path) -> dict[str, str]:
    """``--*-token-file`` flags of ``name`` pointing into a mounted Secret, as local files
    holding the Secret's value (the builtin autoscaler's router admin token)."""
    secrets = {s["metadata"]["name"]: s["data"] for s in of_kind(docs, "Secret")}
    pods = [d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment")]
    (spec,) = [p for p in pods if any(c["name"] == name for c in p["containers"])]
    volumes = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    args = container(docs, name)["args"]
    replace: dict[str, str] = {}
    for mount in container(docs, name).get("volumeMounts", []):
        for item in volumes.get(mount["name"], {}).get("items", []):
            path = f"{mount['mountPath']}/{item['path']}"
            for flag, value in itertools.pairwise(args):
                if value == path and flag.endswith("-token-file"):
                    local = tmp / f"{mount['name']}-{item['path']}"
                    data = secrets[volumes[mount["name"]]["secretName"]][item["key"]]
                    local.write_bytes(base64.b64decode(data))
                    replace[flag] = str(local)
    return replace


def endpoint_slice(service: dict[str, Any], port: int) -> dict[str, Any]:
    """What the EndpointSlice controller makes of the operator's Service, for one local pod."""
    labels = {**service["metadata"]["labels"], "kubernetes.io/service-name": "sim"}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "sim-abcde", "namespace": NS, "labels": labels},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [HOST], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "name": "sim-0", "namespace": NS}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"},
                      {"name": "babysitter", "port": port + 1, "protocol": "TCP"}]}  # fmt: skip


def test_rendered_components_serve_the_sim_sample(
    spawn: Spawn, kubeapi: KubeAPI, tmp_path: Path
) -> None:
    # Every namespace is watched: the engine pods' namespace gets the write token the way
    # docs/kubernetes.md says (its Secret there, and the operator told so).
    extra = ["--registry-token-secret-namespaces", f"llmsvc,{NS}"]
    values = {"registry": {"token": {"value": TOKEN}}, "operator": {"extraArgs": extra}}
    docs = documents(render(values=values))
    ports = {name: free_port() for name in ("registry", "operator", "router")}
    registry, router = (f"http://{HOST}:{ports[n]}" for n in ("registry", "router"))
    tokens = mounted_tokens(docs, "operator", tmp_path)
    procs = [
        start(spawn, docs, "registry", ports["registry"], kubeapi.env, {}),
        start(spawn, docs, "operator", ports["operator"], kubeapi.env, tokens),
        start(spawn, docs, "router", ports["router"], {}, {"--registry-url": registry}),
    ]
    for proc, port in zip(procs, ports.values(), strict=True):
        proc.wait_http(f"http://{HOST}:{port}/health", timeout=30)

    # The registry's write token is the chart's Secret (reads need it too); a delete sends
    # the registration's lease.
    record = {"name": "probe", "host": HOST, "port": 9, "metadata": {"models": ["x"]}}
    assert httpx.post(f"{registry}/services", json=record, timeout=5).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    created = httpx.post(f"{registry}/services", json=record, headers=auth, timeout=5)
    assert created.is_success
    lease = {**auth, "X-Llmsvc-Lease": created.json()["lease"]}
    assert httpx.delete(f"{registry}/services/probe", headers=lease, timeout=5).is_success
    # The router's admin views need the router's admin token, from its Secret.
    admin = {"Authorization": f"Bearer {resolved_env(docs, 'router')['LLMSVC_ADMIN_TOKEN']}"}
    assert httpx.get(f"{router}/stats", timeout=5).status_code == 401
    assert httpx.get(f"{router}/stats", headers=admin, timeout=5).status_code == 200

    sample = yaml.safe_load((ROOT / "manifests" / "samples" / "sim.yaml").read_text())
    sample["metadata"]["namespace"] = NS  # the emulator does not fill it in from the path
    kubeapi.create(collection(ISVC, "inferenceservices", NS), sample)
    service = kubeapi.wait_handled(
        f"{collection(ISVC, 'inferenceservices', NS)}/sim",
        lambda: kubeapi.get(f"{collection(CORE, 'services', NS)}/sim"),
        timeout=30, what="the operator's Service",
    )  # fmt: skip
    deployment = kubeapi.get(f"{collection(APPS, 'deployments', NS)}/sim")
    assert deployment is not None
    engine = deployment["spec"]["template"]["spec"]["containers"][0]
    assert engine["image"] == "ghcr.io/llmsvc/babysitter:0.1.0"  # the chart's --image-*
    [token] = [e for e in engine["env"] if e["name"] == "LLMSVC_REGISTRY_TOKEN"]
    ref = {"name": "llmsvc-registry-token", "key": "token", "optional": False}
    assert token["valueFrom"]["secretKeyRef"] == ref  # the babysitter's control endpoints

    port = free_port(pair=True)
    sim = spawn("engine", "sim-engine", "--port", str(port), "--model-name", "sim-model")
    sim.wait_http(f"http://{HOST}:{port}/v1/models")
    kubeapi.create(collection(DISCOVERY, "endpointslices", NS), endpoint_slice(service, port))

    body = {"model": "sim-model", "messages": [{"role": "user", "content": "Hello"}]}

    def chat() -> httpx.Response | None:
        reply = httpx.post(f"{router}/v1/chat/completions", json=body, timeout=10)
        return reply if reply.status_code == 200 else None

    reply = wait_until(chat, timeout=20, interval=0.2, what="a chat through the router")
    assert reply.json()["choices"][0]["message"]["content"]
    assert reply.headers["X-Llmsvc-Backend"] == f"{NS}.sim-0"
