"""The registry stops as the router does (``core.serving``): on SIGTERM it closes its
listener, answers what is in flight and what still comes on open connections (with
``Connection: close``), and exits 0.

A router's blocking query is the registry's longest request: one held open when SIGTERM
arrives gets an answer, not a reset.
"""

from __future__ import annotations

import http.client
import signal
import time

import orjson

import metrics
from procs import HOST, Spawn, start_registry, wait_until


def _get(conn: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    conn.request("GET", path)
    return conn.getresponse()


def test_sigterm_answers_a_held_blocking_query_and_open_connections(spawn: Spawn) -> None:
    proc, url = start_registry(spawn, "--log-level", "info")
    port = int(url.rsplit(":", 1)[1])
    idle = http.client.HTTPConnection(HOST, port, timeout=20)
    first = _get(idle, "/services")
    first.read()
    index = first.headers["X-Llmsvc-Index"]
    assert first.status == 200 and index, first.headers
    held = http.client.HTTPConnection(HOST, port, timeout=20)
    held.request("GET", f"/services?index={index}&wait=15s")  # nothing changes: it waits
    wait_until(  # the query has reached its handler and is waiting
        lambda: metrics.value(metrics.scrape(url), "llmsvc_registry_blocking_queries") == 1,
        what="the blocking query waiting",
    )
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    wait_until(lambda: "listener closed" in proc.log(), timeout=10, what="the listener closed")
    # A keep-alive connection idle at the signal is still served, and told to go.
    late = _get(idle, "/health")
    assert late.status == 200, late.read()
    assert late.headers["Connection"].lower() == "close", late.headers
    late.read()
    # The blocking query in flight is answered (the store releases its watchers on stop).
    answer = held.getresponse()
    body = orjson.loads(answer.read())
    assert answer.status == 200, body
    assert answer.headers["Connection"].lower() == "close", answer.headers
    assert body["services"] == [], body
    assert time.monotonic() - started < 10, "the blocking query waited for its own timeout"
    assert proc.popen.wait(15) == 0, proc.log()[-2000:]
