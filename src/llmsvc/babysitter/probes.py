"""HTTP probes of the engine: health, served models, requests in flight."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

# vLLM's gauges (also exported by the sim engine and by SGLang's vLLM-compatible mode).
IN_FLIGHT_METRICS = frozenset({"vllm:num_requests_running", "vllm:num_requests_waiting"})

_ERRORS = (TimeoutError, aiohttp.ClientError, OSError, ValueError, UnicodeDecodeError)


async def _get(
    session: aiohttp.ClientSession, url: str, timeout: float
) -> tuple[int, bytes] | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.read()
    except _ERRORS:
        return None


async def healthy(session: aiohttp.ClientSession, url: str, *, timeout: float) -> bool:
    """True when ``url`` answers 200."""
    result = await _get(session, url, timeout)
    return result is not None and result[0] == 200


async def models(
    session: aiohttp.ClientSession, base: str, paths: tuple[str, ...], *, timeout: float
) -> list[dict[str, Any]] | None:
    """The model cards the engine serves (OpenAI list shape), or None when it does not answer."""
    for path in paths:
        result = await _get(session, base + path, timeout)
        if result is None or result[0] != 200:
            continue
        cards = _model_cards(result[1])
        if cards is not None:
            return cards
    return None


def _model_cards(raw: bytes) -> list[dict[str, Any]] | None:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return None
    return [c for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)]


async def in_flight(session: aiohttp.ClientSession, base: str, *, timeout: float) -> int | None:
    """Running + waiting requests from the engine's ``/metrics``; None when it has none."""
    result = await _get(session, base + "/metrics", timeout)
    if result is None or result[0] != 200:
        return None
    return count_in_flight(result[1].decode(errors="replace"))


def count_in_flight(text: str) -> int | None:
    """Sum of vLLM's running and waiting gauges in a Prometheus text page."""
    total: float | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in IN_FLIGHT_METRICS:
                    total = (total or 0.0) + sample.value
    except ValueError:
        return None
    return None if total is None else int(total)
