"""Operator chaos: SIGKILLed at random points during create/update/delete cycles.

Each cycle starts ``llmsvc operator`` against the API emulator, makes one to three
random changes (create, change the GPU count, delete) to a handful of
InferenceServices at random moments, and SIGKILLs the operator at a random point,
often before it is even ready or in the middle of its work. After the last cycle a
fresh operator must bring everything to the truth: exactly one Deployment and one
Service per InferenceService, owned by it (its current uid) and matching its latest
spec; nothing left of deleted ones (finalizers cleared, no orphaned children); and a
status whose ``observedGeneration`` is the current generation.

``CHAOS_SEED`` replays a run (the seed is in the failure message);
``OPERATOR_CHAOS_CYCLES`` sets the number of cycles (default 20).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from kubeapi import APPS, CORE, ISVC, KubeAPI
from procs import HOST, free_port, wait_until

SEED = int(os.environ.get("CHAOS_SEED", str(random.randrange(1 << 30))))
CYCLES = int(os.environ.get("OPERATOR_CHAOS_CYCLES", "20"))
NAMESPACE = "chaos"
NAMES = ("alpha", "beta", "gamma", "delta")
FINALIZER = "llmsvc.io/finalizer"
OWNED = "llmsvc.io/inference-service"

ISVCS = f"{ISVC}/namespaces/{NAMESPACE}/inferenceservices"
DEPLOYMENTS = f"{APPS}/namespaces/{NAMESPACE}/deployments"
SERVICES = f"{CORE}/namespaces/{NAMESPACE}/services"


def operator_args(port: int) -> list[str]:
    return [
        "operator", "--namespace", NAMESPACE, "--host", HOST, "--port", str(port),
        "--resync-interval", "1", "--status-debounce", "0.05", "--batch-window", "0.02",
        "--watch-timeout", "30", "--request-timeout", "5",
    ]  # fmt: skip


def isvc(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "llmsvc.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": f"model-{name}", "uri": f"hf://org/{name}"},
            "engine": {"type": "vllm"},
            "resources": {"gpus": gpus},
        },
    }


def change_something(api: KubeAPI, rng: random.Random) -> str:
    """One random create, update or delete; what it did, for the failure message."""
    name = rng.choice(NAMES)
    live = api.get(f"{ISVCS}/{name}")
    gpus = rng.choice((1, 2, 4))
    if live is None:
        api.create(ISVCS, isvc(name, gpus))
        return f"create {name} gpus={gpus}"
    if live["metadata"].get("deletionTimestamp"):
        return f"skip {name} (being deleted)"
    if rng.random() < 0.6:
        api.patch(f"{ISVCS}/{name}", {"spec": {"resources": {"gpus": gpus}}})
        return f"update {name} gpus={gpus}"
    api.delete(f"{ISVCS}/{name}")
    return f"delete {name}"


def problems(api: KubeAPI) -> list[str]:
    """Everything that differs from the truth; empty once the operator has converged."""
    found: list[str] = []
    isvcs = {i["metadata"]["name"]: i for i in api.list(ISVCS)}
    deployments = {d["metadata"]["name"]: d for d in api.list(DEPLOYMENTS)}
    services = {s["metadata"]["name"]: s for s in api.list(SERVICES)}
    for name, obj in isvcs.items():
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            found.append(f"{name}: still being deleted (finalizers {meta.get('finalizers')})")
            continue
        if FINALIZER not in meta.get("finalizers", []):
            found.append(f"{name}: no finalizer")
        found += _children_problems(obj, deployments.get(name), services.get(name))
        status = obj.get("status") or {}
        if status.get("observedGeneration") != meta.get("generation"):
            found.append(f"{name}: status observedGeneration {status.get('observedGeneration')}"
                         f" != generation {meta.get('generation')}")  # fmt: skip
        if status.get("phase") != "Progressing":  # no pods ever become ready here
            found.append(f"{name}: phase {status.get('phase')!r}, expected 'Progressing'")
    for kind, objects in (("Deployment", deployments), ("Service", services)):
        for name, obj in objects.items():
            if obj["metadata"].get("labels", {}).get(OWNED) and name not in isvcs:
                found.append(f"orphaned {kind} {name}")
    return found


def _children_problems(
    owner: dict[str, Any], deployment: dict[str, Any] | None, service: dict[str, Any] | None
) -> list[str]:
    name, uid = owner["metadata"]["name"], owner["metadata"]["uid"]
    if deployment is None or service is None:
        return [f"{name}: Deployment {deployment is not None}, Service {service is not None}"]
    found = []
    for child in (deployment, service):
        owners = [o["uid"] for o in child["metadata"].get("ownerReferences", [])]
        if owners != [uid]:
            found.append(f"{name}: {child['kind']} owned by {owners}, not the current {uid}")
    (engine,) = deployment["spec"]["template"]["spec"]["containers"]
    limit = engine["resources"]["limits"].get("nvidia.com/gpu")
    wanted = str(owner["spec"]["resources"]["gpus"])
    if limit != wanted:
        found.append(f"{name}: Deployment has {limit} GPUs, the spec says {wanted}")
    return found


def test_operator_killed_at_random_points_converges(spawn: Any, kubeapi: KubeAPI) -> None:
    rng = random.Random(SEED)
    port = free_port()
    history: list[str] = []
    for cycle in range(CYCLES):
        operator = spawn(f"operator-{cycle}", *operator_args(port), env=kubeapi.env)
        for _ in range(rng.randint(1, 3)):
            time.sleep(rng.uniform(0.0, 0.6))
            history.append(f"cycle {cycle}: {change_something(kubeapi, rng)}")
        time.sleep(rng.uniform(0.0, 0.8))
        operator.kill()  # SIGKILL: no cleanup, wherever it was
        operator.popen.wait(10)
    final = spawn("operator-final", *operator_args(port), env=kubeapi.env)
    final.wait_http(f"http://{HOST}:{port}/health", timeout=30)
    report = f"seed {SEED} (CHAOS_SEED={SEED} replays it); changes:\n" + "\n".join(history)
    try:
        wait_until(lambda: not problems(kubeapi), timeout=60, what="convergence")
    except AssertionError:
        raise AssertionError("\n".join(["not converged:", *problems(kubeapi), report])) from None
    assert any("delete" in h for h in history) and any("update" in h for h in history), report
