"""Every HTTP API fuzzed from its own ``/openapi.json`` with schemathesis.

Each service runs as a real process (the real aiohttp stack): the registry
(with a token), a router in front of a babysitter's simulated engine, the
babysitter's API and a simulated engine of its own. For every operation the
document lists, schemathesis generates valid requests (positive) and invalid
ones (negative) and checks each answer:

- no server fault: never a 500, and a 5xx only where the operation documents
  it (the router's 503 "no healthy service for the model"), in the OpenAI shape;
- no hang: every request answers within ``REQUEST_TIMEOUT_S``;
- a documented status code, the documented content type, a body that matches
  the response schema;
- invalid data is rejected (4xx); valid data is accepted, except a 400 whose
  error code names a rule the schema cannot state (:data:`SEMANTIC_400`).

Positive requests to the router and the engine name the served model half of
the time, so the fuzzer gets past the model lookup into the engine.

``FUZZ_EXAMPLES`` (default 6) is the number of examples per operation and mode;
raise it for a deeper run: ``FUZZ_EXAMPLES=500 pytest tests/test_fuzz_openapi.py``.
``FUZZ_SEED`` makes a run random with that seed (the default run is derandomized,
the same examples every time).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Err
from schemathesis.specs.openapi import checks as openapi_checks

from procs import HOST, ProcGroup, Spawn, free_port, start_babysitter, start_registry, start_router

Case = schemathesis.Case[Any]
Operation = schemathesis.APIOperation[Any, Any, Any, Any]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))
SEED = os.environ.get("FUZZ_SEED")
# The longest one request may take before the service counts as hung.
REQUEST_TIMEOUT_S = 10.0
TOKEN = "fuzz-token"
MODEL = "sim-model"

# 400s for schema-valid requests that break a rule no JSON schema can state. Each is a
# documented behaviour, not a gap in the document:
SEMANTIC_400 = {
    # PUT /services/{name}: the body's name must be the path's name.
    "name_mismatch",
    # The simulated engine serves one prompt per request (no batches), see docs/simulated-engine.md.
    "batch_not_supported",
    # The simulated engine's context window (prompt + max_tokens), as vLLM answers it.
    "context_length_exceeded",
}


def no_server_fault(ctx: Any, response: schemathesis.Response, case: Case) -> None:
    """Never a 500; any other 5xx only where documented, and in the OpenAI error shape."""
    status = response.status_code
    if status < 500:
        return
    documented = case.operation.definition.raw.get("responses", {})
    assert status != 500 and str(status) in documented, f"server error {status}: {response.text}"
    error = response.json()["error"]
    assert error["message"] and error["type"], response.text


def valid_data_accepted(ctx: Any, response: schemathesis.Response, case: Case) -> None:
    """schemathesis' positive data acceptance, less the documented semantic 400s."""
    if response.status_code == 400:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if code in SEMANTIC_400:
            return
    openapi_checks.positive_data_acceptance(ctx, response, case)


CHECKS = [
    no_server_fault,
    valid_data_accepted,
    openapi_checks.negative_data_rejection,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
]


@pytest.fixture(scope="module", params=["registry", "router", "engine", "babysitter"])
def service(module_spawn: ProcGroup, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(name, base URL) of one service, with what it needs running beside it."""
    name = request.param
    if name == "engine":
        port = free_port()
        proc = module_spawn(
            "sim-engine", "sim-engine", "--port", str(port), "--model", MODEL, "--time-scale", "0"
        )
        base = f"http://{HOST}:{port}"
        proc.wait_http(f"{base}/health")
        yield name, base
        return
    if name == "babysitter":
        _, _, base = start_babysitter(module_spawn, None, "fuzz-sitter")
        yield name, base
        return
    _, registry = start_registry(module_spawn, "--token", TOKEN, name=f"registry-{name}")
    if name == "registry":
        yield name, registry
        return
    start_babysitter(module_spawn, registry, "fuzz-engine", "--registry-token", TOKEN)
    _, router = start_router(module_spawn, registry, "--registry-token", TOKEN)
    yield name, router


def _served_model(case: Case, use_served: bool) -> Case:
    if use_served and isinstance(case.body, dict) and "model" in case.body:
        case.body = {**case.body, "model": MODEL}
    return case


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s|m)?")


def _short_wait(case: Case) -> Case:
    """A blocking query waits as long as it is asked to (up to 300 s): ask for 1 s at most."""
    wait = (case.query or {}).get("wait")
    match = _DURATION.fullmatch(wait) if isinstance(wait, str) else None
    if match:
        unit = {"ms": 0.001, "m": 60.0}.get(match.group(2) or "s", 1.0)
        if float(match.group(1)) * unit > 1.0:
            case.query = {**(case.query or {}), "wait": "1s"}
    return case


def _cases(
    operation: Operation, mode: schemathesis.GenerationMode, service: str
) -> st.SearchStrategy[Case]:
    cases = operation.as_strategy(generation_mode=mode)
    if service in ("router", "engine") and mode is schemathesis.GenerationMode.POSITIVE:
        return st.tuples(cases, st.booleans()).map(lambda pair: _served_model(*pair))
    if service == "registry":
        return cases.map(_short_wait)
    return cases


def _fuzz(base: str, service: str, mode: schemathesis.GenerationMode) -> list[str]:
    """Fuzz every operation of the service at ``base``; one entry per failing operation."""
    schema = schemathesis.openapi.from_url(base + "/openapi.json", timeout=10)
    failures = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise AssertionError(f"{service}: an operation of its OpenAPI: {result.err()}")
        operation = result.ok()

        @given(case=_cases(operation, mode, service))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=SEED is None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
        )
        def run(case: Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)

        if SEED is not None:
            run = seed(int(SEED))(run)
        try:
            run()
        except Unsatisfiable:
            continue  # nothing to make invalid: an operation without parameters or body
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises a FailureGroup
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_api_survives_fuzzing(service: tuple[str, str], mode: schemathesis.GenerationMode) -> None:
    name, base = service
    failures = _fuzz(base, name, mode)
    assert not failures, "\n\n".join(failures)
    # Still alive and answering (the babysitter may be drained by now: /status, not /health).
    path = "/status" if name == "babysitter" else "/health"
    assert httpx.get(base + path, timeout=10).status_code == 200


def test_fuzz_finding_a_url_without_a_host_is_a_400(spawn: Spawn) -> None:
    """Found by the fuzzer: ``"url": "http://"`` passed validation and then failed in the
    store (a 500). Also ``true`` for a port or a weight (taken as 1 before)."""
    _, registry = start_registry(spawn)
    bad = [({"url": url}, "url") for url in ("http://", "https://:80", "http://[", "http:///x")] + [
        ({"port": True}, "port"),
        ({"weight": True}, "weight"),
    ]
    for fields, param in bad:
        body = {"name": "x", "host": "h", "port": 1, **fields}
        resp = httpx.post(registry + "/services", json=body, timeout=10)
        assert resp.status_code == 400, (fields, resp.text)
        assert resp.json()["error"]["param"] == param
