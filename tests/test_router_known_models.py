"""A registry record of type ``inference-service`` makes its models known, never routed.

The registry's Kubernetes source keeps such a record for an InferenceService's Service
with no ready endpoint (starting, failing, scaled to zero). The router must list the
model in ``/v1/models`` and answer it as a known model without a backend (hold, then
503 ``no_healthy_backend``), not as an unknown one (404 ``model_not_found``).
"""

from __future__ import annotations

from typing import Any

import httpx

from llmsvc.core.records import INFERENCE_SERVICE, ServiceRecord
from llmsvc.router.backends import BackendPool
from procs import Spawn, start_registry, start_router, wait_until

MODEL = "Qwen/Qwen3-0.6B"


def idle_record(name: str = "llm.qwen", **metadata: Any) -> ServiceRecord:
    meta = {"models": [MODEL], "source": "kubernetes", "ready_endpoints": 0, **metadata}
    return ServiceRecord.model_validate(
        {"name": name, "host": "qwen.llm.svc", "port": 8000, "type": INFERENCE_SERVICE,
         "status": "unhealthy", "metadata": meta}
    )  # fmt: skip


def test_an_inference_service_record_names_a_known_model_without_a_backend() -> None:
    pool = BackendPool(max_fails=1, fail_timeout=10)
    pool.set_registry([idle_record()])
    assert pool.knows(MODEL) and pool.known_models() == [MODEL]
    assert len(pool) == 0 and pool.models() == [], "never a backend"
    assert not pool.knows("other")


def test_the_model_is_forgotten_with_the_record() -> None:
    pool = BackendPool(max_fails=1, fail_timeout=10)
    pool.set_registry([idle_record()])
    pool.set_registry([])
    assert not pool.knows(MODEL) and pool.known_models() == []


def test_a_router_answers_a_model_at_zero_endpoints_503_not_404(spawn: Spawn) -> None:
    _, registry = start_registry(spawn)
    # A stand-in for the Kubernetes source's record (this registry takes it over HTTP).
    meta = {"models": [MODEL], "ready_endpoints": 0}
    record = {"name": "llm.qwen", "host": "127.0.0.1", "port": 9, "type": INFERENCE_SERVICE,
              "metadata": meta}  # fmt: skip
    created = httpx.post(f"{registry}/services", json=record, timeout=5)
    assert created.status_code == 201
    lease = {"X-Llmsvc-Lease": created.json()["lease"]}
    _, router = start_router(spawn, registry, "--hold-timeout", "0")

    def listed() -> bool:
        models = httpx.get(f"{router}/v1/models", timeout=5).json()["data"]
        return MODEL in [m["id"] for m in models]

    wait_until(listed, timeout=15, what="the model in /v1/models")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    resp = httpx.post(f"{router}/v1/chat/completions", json=body, timeout=10)
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "no_healthy_backend"
    assert resp.headers.get("Retry-After")
    unknown = httpx.post(
        f"{router}/v1/chat/completions", json={**body, "model": "nope"}, timeout=10
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"

    # The record goes (an endpoint became ready, or the InferenceService was deleted):
    # with nothing else naming it, the model is unknown again.
    gone = httpx.delete(f"{registry}/services/llm.qwen", headers=lease, timeout=5)
    assert gone.status_code in (200, 204), gone.text
    wait_until(lambda: not listed(), timeout=15, what="the model leaving /v1/models")
