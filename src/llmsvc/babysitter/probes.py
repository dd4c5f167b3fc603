"""Probes of the engine: health, served models, requests in flight.

Requests in flight come from the engine's own gauges where it has them
(vLLM's, SGLang's, llama.cpp's); otherwise :func:`open_connections` estimates
them without a proxy, from the kernel's table of TCP connections to the
engine's port (``/proc/net/tcp``), the babysitter's own probes left out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

# Running and waiting requests: vLLM's gauges (also the sim engine's), SGLang's, llama.cpp's.
IN_FLIGHT_METRICS = frozenset(
    {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
    }
)
TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
ESTABLISHED = "01"

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


def open_connections(port: int) -> int | None:
    """Established TCP connections to local ``port`` not made by this process; None if unknown.

    Idle keep-alive connections count too, so the estimate errs on the side of waiting.
    """
    rows = _tcp_rows()
    if rows is None:
        return None
    ours = _own_socket_inodes()
    # Our own connections to the engine: their local ports, seen from the engine's side.
    our_ports = {local[1] for local, remote, inode in rows if inode in ours and remote[1] == port}
    return sum(
        1
        for local, remote, inode in rows
        if local[1] == port and inode not in ours and remote[1] not in our_ports
    )


_Row = tuple[tuple[str, int], tuple[str, int], str]


def _tcp_rows() -> list[_Row] | None:
    rows: list[_Row] = []
    found = False
    for table in TCP_TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == ESTABLISHED:
                rows.append((_address(parts[1]), _address(parts[2]), parts[9]))
    return rows if found else None


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.partition(":")
    return host, int(port, 16)


def _own_socket_inodes() -> set[str]:
    inodes: set[str] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes
