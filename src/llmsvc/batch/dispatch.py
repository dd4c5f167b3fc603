"""One line at the router: the headers it goes with, what came back, its output line.

The runner (:mod:`llmsvc.batch.runner`) decides what to do with an :class:`Answer`;
this module knows the wire: the router's headers, OpenAI's batch output line shapes,
which refusals mean "the fleet is busy" rather than "this request is bad".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from llmsvc.batch.ids import new_request_id
from llmsvc.batch.settings import BatchSettings
from llmsvc.batch.store import BatchRecord, LineRecord

# The router's header names (llmsvc.router.priority and docs/flow-control.md); the batch
# package may not import the router.
PRIORITY_HEADER = "X-Llmsvc-Priority"
TENANT_HEADER = "X-Llmsvc-Tenant"
BATCH_HEADER = "X-Llmsvc-Batch"
CONTENTION_HEADER = "X-Llmsvc-Contention"
REQUEST_ID_HEADER = "X-Request-Id"

CAPACITY_CODES_503 = frozenset({"queue_timeout", "no_healthy_backend", "draining"})


@dataclass(slots=True)
class Answer:
    """What one attempt of a line got: an HTTP answer, or ``error_code`` without one."""

    status: int | None
    body: Any = None
    request_id: str | None = None
    retry_after: float | None = None
    contention: int = 0
    error_code: str | None = None  # "timeout" | "request_failed" when no answer
    message: str = ""


async def send(
    session: aiohttp.ClientSession, settings: BatchSettings, batch: BatchRecord, line: LineRecord
) -> Answer:
    """One attempt of the line at the router, with the headers of its batch."""
    headers = {
        PRIORITY_HEADER: "standard" if batch.raised else "batch",
        REQUEST_ID_HEADER: f"{batch.id}-{line.index}",
        BATCH_HEADER: batch.id,
    }
    if settings.token is not None:
        headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
    if batch.tenant is not None:
        headers[TENANT_HEADER] = batch.tenant
    url = settings.router_url + line.url
    timeout = aiohttp.ClientTimeout(total=settings.line_timeout)
    try:
        async with session.post(url, json=line.body, headers=headers, timeout=timeout) as resp:
            raw = await resp.read()
            return Answer(
                status=resp.status,
                body=_json_or_text(raw),
                request_id=resp.headers.get(REQUEST_ID_HEADER),
                retry_after=_float(resp.headers.get("Retry-After")),
                contention=int(_float(resp.headers.get(CONTENTION_HEADER)) or 0),
            )
    except TimeoutError:
        return Answer(
            None,
            error_code="timeout",
            message=f"no answer in {settings.line_timeout:g} s",
        )
    except aiohttp.ClientError as exc:
        return Answer(None, error_code="request_failed", message=f"{type(exc).__name__}: {exc}")


def response_line(line: LineRecord, answer: Answer) -> dict[str, Any]:
    """The output (or error) file's line for an HTTP answer, as OpenAI writes it."""
    return {
        "id": new_request_id(),
        "custom_id": line.custom_id,
        "response": {
            "status_code": answer.status,
            "request_id": answer.request_id,
            "body": answer.body,
        },
        "error": None,
    }


def error_line(line: LineRecord, code: str, message: str) -> dict[str, Any]:
    """The error file's line for a line that got no answer (expired, cancelled, lost)."""
    return {
        "id": new_request_id(),
        "custom_id": line.custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def is_refusal(status: int, body: Any) -> bool:
    """429, or a 503 that says the fleet is busy (not broken): try again later, no failure."""
    if status == 429:
        return True
    return status == 503 and _error_code(body) in CAPACITY_CODES_503


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            return code if isinstance(code, str) else None
    return None


def usage_of(body: Any) -> dict[str, int]:
    """OpenAI's usage (prompt/completion tokens) as the batch's input/output tokens."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return {}
    out: dict[str, int] = {}
    for ours, theirs in (
        ("input_tokens", "prompt_tokens"),
        ("output_tokens", "completion_tokens"),
        ("total_tokens", "total_tokens"),
    ):
        value = usage.get(theirs, usage.get(ours))
        if isinstance(value, int) and not isinstance(value, bool):
            out[ours] = value
    return out


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
