"""The router's access log: the request id, and one JSON line per request.

Unit: :func:`request_id` passes a sane client id through and replaces anything else;
:func:`log_access` writes one JSON line on its own handler whatever the root format, and
nothing with ``--no-access-log``. Process: a real router in front of a simulated engine
returns ``X-Request-Id`` and writes the line (tenant, priority, backend, status, tokens)
on its stderr, also for an unknown model's 404.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from llmsvc.core.logging import configure_logging
from llmsvc.router.accesslog import (
    ACCESS_LOGGER,
    REQUEST_ID_HEADER,
    AccessEntry,
    access_log_enabled,
    configure_access_log,
    log_access,
    new_request_id,
    request_id,
)
from procs import HOST, Proc, Spawn, start_router, start_sim_engine, wait_until

HEX_ID = re.compile(r"[0-9a-f]{32}")


def entry(**changes: Any) -> AccessEntry:
    fields: dict[str, Any] = {
        "request_id": "abc",
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "m",
        "tenant": "team-a",
        "priority": "standard",
        "status": 200,
        "backend": "e1",
        "queue_wait_s": 0.12345,
        "hold_s": 0.0,
        "duration_s": 1.23456,
        "prompt_tokens": 12,
        "completion_tokens": 4,
        "stream": False,
        "reason": None,
    }
    return AccessEntry(**{**fields, **changes})


@pytest.fixture
def restore_logging() -> Iterator[None]:
    logger = logging.getLogger(ACCESS_LOGGER)
    root = logging.getLogger()
    saved = (logger.handlers[:], logger.propagate, logger.level, root.handlers[:], root.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]
    root.handlers[:] = saved[3]
    root.setLevel(saved[4])


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc", True),
        ("req-2026-12-02T04:30:00Z/7", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("has space", False),
        ("tab\there", False),
        ("caf\u00e9", False),
        ('{"json":1}', True),
    ],
)
def test_request_id_passes_a_sane_client_id_through(given: str, kept: bool) -> None:
    request = make_mocked_request("POST", "/v1/chat/completions", headers={"X-Request-Id": given})
    got = request_id(request)
    if kept:
        assert got == given
    else:
        assert HEX_ID.fullmatch(got), got
    assert request_id(request) == got  # the same id for every caller of one request


def test_request_id_generated_without_the_header() -> None:
    one = request_id(make_mocked_request("GET", "/v1/models"))
    two = request_id(make_mocked_request("GET", "/v1/models"))
    assert HEX_ID.fullmatch(one) and HEX_ID.fullmatch(two) and one != two
    assert REQUEST_ID_HEADER == "X-Request-Id"


@pytest.mark.usefixtures("restore_logging")
def test_one_json_line_whatever_the_root_format() -> None:
    configure_logging("warning", "text")  # people's format, and a level above INFO
    out = io.StringIO()
    configure_access_log(True, out)
    assert access_log_enabled()
    log_access(entry())
    log_access(entry(request_id="def", status=429, backend=None, reason="queue_full"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert first["logger"] == ACCESS_LOGGER and first["msg"] == "access"
    assert first["level"] == "info" and isinstance(first["ts"], float)
    assert {k: first[k] for k in ("request_id", "tenant", "priority", "status", "backend")} == {
        "request_id": "abc",
        "tenant": "team-a",
        "priority": "standard",
        "status": 200,
        "backend": "e1",
    }
    assert (first["queue_wait_s"], first["duration_s"]) == (0.123, 1.235)
    assert (first["prompt_tokens"], first["completion_tokens"], first["stream"]) == (12, 4, False)
    assert first["reason"] is None
    assert (second["status"], second["backend"], second["reason"]) == (429, None, "queue_full")
    every = {f.name for f in dataclasses.fields(AccessEntry)}
    assert set(first) == {"ts", "level", "logger", "msg", *every}


@pytest.mark.usefixtures("restore_logging")
def test_access_lines_do_not_reach_the_root_handler() -> None:
    """Not twice, and not wrapped in the text format's prefix."""
    root_out, access_out = io.StringIO(), io.StringIO()
    configure_logging("info", "text")
    logging.getLogger().handlers[0].setStream(root_out)  # type: ignore[attr-defined]
    configure_access_log(True, access_out)
    configure_access_log(True, access_out)  # twice: still one handler
    log_access(entry())
    assert root_out.getvalue() == ""
    assert len(access_out.getvalue().splitlines()) == 1


@pytest.mark.usefixtures("restore_logging")
def test_no_access_log_writes_nothing() -> None:
    out = io.StringIO()
    configure_access_log(False, out)
    assert not access_log_enabled()
    log_access(entry())
    assert out.getvalue() == ""


# --- a real router in front of a simulated engine ----------------------------------------------


def access_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            event = orjson.loads(line)
            if event.get("logger") == ACCESS_LOGGER:
                lines.append(event)
    return lines


def line_of(proc: Proc, rid: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        found[:] = [e for e in access_lines(proc) if e["request_id"] == rid]
        return bool(found)

    wait_until(logged, timeout=10, what=f"the access line of {rid}")
    assert len(found) == 1, found
    return found[0]


def static_router(spawn: Spawn, tmp_path: Path, *extra: str) -> tuple[Proc, str]:
    _, port = start_sim_engine(spawn, "e1")
    services = tmp_path / "services.json"
    record = {"name": "e1", "host": HOST, "port": port, "metadata": {"models": ["m"]}}
    services.write_bytes(orjson.dumps({"services": [record]}))
    return start_router(spawn, None, "--static-services", str(services), *extra)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 3}


@pytest.mark.slow
def test_router_access_lines_and_request_ids(spawn: Spawn, tmp_path: Path) -> None:
    proc, router = static_router(spawn, tmp_path)  # --log-format text (the default)
    with httpx.Client(base_url=router, timeout=30) as client:
        resp = client.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"X-Request-Id": "abc", "X-Llmsvc-Priority": "batch"},
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["X-Request-Id"] == "abc"
        usage = resp.json()["usage"]

        unknown = client.post(
            "/v1/chat/completions",
            json={**CHAT, "model": "no-such"},
            headers={"X-Request-Id": "u1"},
        )
        assert unknown.status_code == 404 and unknown.headers["X-Request-Id"] == "u1"

        plain = client.post("/v1/chat/completions", json=CHAT)
        assert plain.status_code == 200
        generated = plain.headers["X-Request-Id"]
        assert HEX_ID.fullmatch(generated), generated

    line = line_of(proc, "abc")
    assert {k: line[k] for k in ("method", "path", "model", "tenant", "priority")} == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "m",
        "tenant": "anonymous",
        "priority": "batch",
    }
    assert (line["status"], line["backend"], line["stream"]) == (200, "e1", False)
    assert line["prompt_tokens"] == usage["prompt_tokens"] > 0
    assert line["completion_tokens"] == usage["completion_tokens"] > 0
    assert line["queue_wait_s"] >= 0 and line["hold_s"] >= 0 and line["duration_s"] > 0

    missing = line_of(proc, "u1")
    assert (missing["status"], missing["model"], missing["backend"]) == (404, "no-such", None)
    assert missing["reason"] == "model_not_found"
    assert line_of(proc, generated)["status"] == 200


@pytest.mark.slow
def test_router_no_access_log(spawn: Spawn, tmp_path: Path) -> None:
    proc, router = static_router(spawn, tmp_path, "--no-access-log")
    resp = httpx.post(f"{router}/v1/chat/completions", json=CHAT, timeout=30)
    assert resp.status_code == 200 and resp.headers["X-Request-Id"]
    proc.stop()
    assert access_lines(proc) == []


def test_a_forked_worker_makes_ids_of_its_own() -> None:
    """The per-process prefix is chosen again after a fork (``--workers``), without a
    ``getpid`` per id: the child's ids never collide with the parent's."""
    parent = new_request_id()
    assert new_request_id()[:16] == parent[:16]  # one prefix per process, a counter after it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then out at once
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"[0-9a-f]{32}", child) and child[:16] != parent[:16]
