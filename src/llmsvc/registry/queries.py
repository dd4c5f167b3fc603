"""Query parameters of ``GET /services``: filters and the blocking query."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from llmsvc.core.errors import BadRequest

MAX_WAIT = 300.0
"""Seconds: the longest a blocking query may wait."""

DEFAULT_WAIT = 30.0
"""Seconds a blocking query waits when it gives ``index`` but no ``wait``."""

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s|m)?")
_INDEX = re.compile(r"[0-9]{1,19}")
MAX_INDEX = 2**63 - 1
"""The largest change index a query may name (a signed 64-bit integer, as JSON tools keep)."""
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
_BOOLS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True)
class ServiceQuery:
    """What ``GET /services`` was asked for."""

    healthy: bool | None = None
    type_: str | None = None
    model: str | None = None
    index: int | None = None
    wait: float = DEFAULT_WAIT


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``1m`` or plain seconds, capped at :data:`MAX_WAIT`."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    return min(float(match.group(1)) * _UNIT[match.group(2)], MAX_WAIT)


def _bad(param: str, message: str) -> BadRequest:
    return BadRequest(message, param=param, code="invalid_query")


def _nonempty(query: Mapping[str, str], param: str) -> str | None:
    value = query.get(param)
    if value is not None and not value.strip():
        raise _bad(param, f"Query parameter '{param}' must not be empty")
    return value


def parse_service_query(query: Mapping[str, str]) -> ServiceQuery:
    """Validate the query string; a 400 naming the parameter when a value is wrong."""
    healthy: bool | None = None
    if "healthy" in query:
        healthy = _BOOLS.get(query["healthy"].strip().lower())
        if healthy is None:
            raise _bad("healthy", "Query parameter 'healthy' must be 'true' or 'false'")
    index: int | None = None
    if "index" in query:
        text = query["index"].strip()
        if _INDEX.fullmatch(text) is None or int(text) > MAX_INDEX:
            raise _bad("index", f"Query parameter 'index' must be an integer from 0 to {MAX_INDEX}")
        index = int(text)
    wait = DEFAULT_WAIT
    if "wait" in query:
        try:
            wait = parse_duration(query["wait"])
        except ValueError:
            raise _bad(
                "wait",
                "Query parameter 'wait' must be a duration such as 500ms, 30s, 1m or plain seconds",
            ) from None
    return ServiceQuery(
        healthy=healthy,
        type_=_nonempty(query, "type"),
        model=_nonempty(query, "model"),
        index=index,
        wait=wait,
    )
