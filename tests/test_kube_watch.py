"""List + watch (llmsvc.kube.Reflector) against a scripted API server in process.

The server answers LISTs from a queue of bodies and WATCHes from a queue of
scripts (events, an HTTP status, or garbage), so each test decides exactly
what the API server does: resume from a bookmark, 410 in both forms, errors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, Counter

from llmsvc.kube import ENDPOINT_SLICES, Credentials, KubeClient, Reflector, WatchTiming
from llmsvc.registry.k8s_records import EndpointSlice, parse_slice
from procs import HOST

PATH = "/apis/discovery.k8s.io/v1/endpointslices"
OURS = {"llmsvc.io/inference-service": "m"}
Script = list[dict[str, Any]] | int | bytes


def obj(name: str, version: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "resourceVersion": version}
    return {"metadata": {**meta, "labels": OURS if labels is None else labels}}


def event(kind: str, name: str, version: str) -> dict[str, Any]:
    return {"type": kind, "object": obj(name, version)}


def gone_event() -> dict[str, Any]:
    return {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}


class ScriptedAPI:
    def __init__(self) -> None:
        self.lists: list[dict[str, Any] | int] = []
        self.watches: asyncio.Queue[Script] = asyncio.Queue()
        self.requests: list[tuple[str, dict[str, str], str | None]] = []
        app = web.Application()
        app.router.add_get(PATH, self.handle)
        self.server = TestServer(app, host=HOST)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kind = "watch" if request.query.get("watch") == "true" else "list"
        self.requests.append((kind, dict(request.query), request.headers.get("Authorization")))
        if kind == "list":
            body = self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]
            if isinstance(body, int):
                return web.json_response({"message": "boom"}, status=body)
            return web.json_response(body)
        script = await self.watches.get()
        if isinstance(script, int):
            return web.json_response({"code": script, "message": "too old"}, status=script)
        resp = web.StreamResponse()
        await resp.prepare(request)
        if isinstance(script, bytes):
            await resp.write(script)
            return resp
        for item in script:
            await resp.write(orjson.dumps(item) + b"\n")
        return resp

    def of_kind(self, kind: str) -> list[dict[str, str]]:
        return [query for k, query, _ in self.requests if k == kind]


@pytest.fixture
async def api() -> AsyncIterator[ScriptedAPI]:
    scripted = ScriptedAPI()
    await scripted.server.start_server()
    yield scripted
    await scripted.server.close()


class Running:
    def __init__(self, reflector: Reflector[EndpointSlice], restarts: Counter) -> None:
        self.reflector = reflector
        self.restarts = restarts
        self.changes = 0

    def count(self, reason: str) -> float:
        return float(self.restarts.labels(resource="endpointslices", reason=reason)._value.get())

    def names(self) -> set[str]:
        return {name for _, name in self.reflector.objects}


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


async def test_list_then_watch_and_resume_from_the_last_version(api: ScriptedAPI) -> None:
    api.lists.append({"metadata": {"resourceVersion": "10"},
                      "items": [obj("a", "9"), obj("other", "9", labels={"x": "y"})]})  # fmt: skip
    api.watches.put_nowait(
        [event("ADDED", "b", "11"), event("MODIFIED", "a", "12"),
         {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}]
    )  # fmt: skip
    api.watches.put_nowait([event("DELETED", "b", "16")])
    async with running(api) as run:
        await until(lambda: len(api.of_kind("watch")) >= 3)
        assert run.names() == {"a"}, "b was added, then deleted; 'other' is not ours"
        assert run.reflector.synced and not run.reflector.failing
        lists, watches = api.of_kind("list"), api.of_kind("watch")
        assert len(lists) == 1, "a closed stream is resumed, not listed again"
        assert lists[0]["labelSelector"] == "llmsvc.io/inference-service"
        assert [w.get("resourceVersion") for w in watches[:3]] == ["10", "15", "16"]
        assert watches[0]["allowWatchBookmarks"] == "true"
        assert int(watches[0]["timeoutSeconds"]) >= 300
        assert {auth for _, _, auth in api.requests} == {"Bearer t0ken"}
        assert run.count("closed") >= 2 and run.count("expired") == 0
        assert run.changes == 4, "the list, b added, a modified, b deleted"


async def test_gone_in_both_forms_lists_again_and_replaces_the_set(api: ScriptedAPI) -> None:
    api.lists += [
        {"metadata": {"resourceVersion": "1"}, "items": [obj("a", "1"), obj("b", "1")]},
        {"metadata": {"resourceVersion": "5"}, "items": [obj("a", "4")]},
        {"metadata": {"resourceVersion": "9"}, "items": [obj("c", "8")]},
    ]
    api.watches.put_nowait(410)  # the HTTP status
    api.watches.put_nowait([gone_event()])  # the ERROR event
    async with running(api) as run:
        await until(lambda: len(api.of_kind("list")) >= 3 and run.names() == {"c"})
        assert run.count("expired") == 2
        await until(lambda: len(api.of_kind("watch")) >= 3)
        assert api.of_kind("watch")[2]["resourceVersion"] == "9"


async def test_failures_back_off_log_once_and_recover(
    api: ScriptedAPI, caplog: pytest.LogCaptureFixture
) -> None:
    api.lists += [500, 503, 500, {"metadata": {"resourceVersion": "3"}, "items": [obj("a", "2")]}]
    caplog.set_level(logging.INFO, logger="llmsvc.kube")
    async with running(api) as run:
        await until(lambda: run.reflector.synced)
        assert run.names() == {"a"} and not run.reflector.failing
        assert run.count("error") == 3
    down = [r for r in caplog.records if "cannot list or watch" in r.getMessage()]
    assert len(down) == 1, "one line when it goes down, not one per retry"
    assert "HTTP 500" in down[0].getMessage()
    assert any("watching again" in r.getMessage() for r in caplog.records)


async def test_a_garbled_stream_is_an_error_and_the_watch_resumes(api: ScriptedAPI) -> None:
    api.lists.append({"metadata": {"resourceVersion": "1"}, "items": []})
    api.watches.put_nowait(b'{"type": "ADDED", "object": {"metadata": {"name": "x", "labels"')
    api.watches.put_nowait(b"not json\n")
    api.watches.put_nowait([event("ADDED", "b", "2")])
    async with running(api) as run:
        await until(lambda: run.names() == {"b"})
        assert run.count("error") == 1, "a cut-off last line is dropped; a bad line is an error"
        assert len(api.of_kind("list")) == 1


@asynccontextmanager
async def running(api: ScriptedAPI) -> AsyncIterator[Running]:
    restarts = Counter("restarts", "", ["resource", "reason"], registry=CollectorRegistry())
    timing = WatchTiming(backoff=0.01, max_backoff=0.05, request_timeout=5)
    url = str(api.server.make_url("")).rstrip("/")
    credentials = Credentials(server=url, authorization=lambda: "Bearer t0ken")
    client = KubeClient(credentials, request_timeout=timing.request_timeout)
    holder: dict[str, Running] = {}

    def changed() -> None:
        holder["run"].changes += 1

    def restarted(reason: str) -> None:
        restarts.labels(resource="endpointslices", reason=reason).inc()

    reflector = Reflector[EndpointSlice](
        client=client,
        resource=ENDPOINT_SLICES,
        namespace=None,
        label_selector="llmsvc.io/inference-service",
        parse=parse_slice,
        on_change=changed,
        on_restart=restarted,
        timing=timing,
    )
    holder["run"] = Running(reflector, restarts)
    task = asyncio.create_task(reflector.run())
    try:
        yield holder["run"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()
