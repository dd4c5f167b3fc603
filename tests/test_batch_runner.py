"""The batch runner against a stand-in router on a real socket and a real SqliteStore.

The stand-in (an in-process aiohttp app on 127.0.0.1) records every request's headers and
answers as each test scripts it: 200 with usage, 429 or 500 for chosen lines, slow answers,
``X-Llmsvc-Contention``. Waits are bounded; timings only order events, never measure speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from llmsvc.batch import runner as runner_module
from llmsvc.batch.ids import new_batch_id
from llmsvc.batch.metrics import BatchMetrics
from llmsvc.batch.runner import Runner
from llmsvc.batch.settings import BatchSettings
from llmsvc.batch.sqlite_store import SqliteStore
from llmsvc.batch.store import BatchRecord, LineRecord, LineSpec
from procs import HOST

CHAT = "/v1/chat/completions"
ENDED = {"completed", "expired", "cancelled", "failed"}
Reply = tuple[int, dict[str, Any], dict[str, str]]


@dataclass
class Seen:
    headers: CIMultiDict[str]
    custom: str
    at: float


@dataclass
class StandIn:
    """A router stand-in: ``decide(custom_id, tries_of_it)`` scripts each answer."""

    decide: Callable[[str, int], Reply] | None = None
    delay: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    tries: dict[str, int] = field(default_factory=dict)
    inflight: int = 0
    max_inflight: int = 0
    url: str = ""
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        custom = body["messages"][0]["content"]
        self.seen.append(Seen(CIMultiDict(request.headers), custom, time.monotonic()))
        self.tries[custom] = self.tries.get(custom, 0) + 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.delay:  # cut short when the test ends
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), self.delay)
            status, answer, headers = (
                self.decide(custom, self.tries[custom]) if self.decide else ok(custom)
            )
        finally:
            self.inflight -= 1
        headers = {"X-Request-Id": request.headers.get("X-Request-Id", ""), **headers}
        return web.json_response(answer, status=status, headers=headers)


def ok(custom: str) -> Reply:
    return (
        200,
        {
            "object": "chat.completion",
            "choices": [{"message": {"role": "assistant", "content": f"re {custom}"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        },
        {},
    )


def error(status: int, code: str) -> Reply:
    return status, {"error": {"message": code, "type": "x", "param": None, "code": code}}, {}


@pytest.fixture
async def router() -> AsyncIterator[StandIn]:
    stand = StandIn()
    app = web.Application()
    app.router.add_post(CHAT, stand.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stand.url = f"http://{HOST}:{port}"
    yield stand
    stand.closing.set()
    await runner.cleanup()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "data")
    yield s
    s.close()


def settings(stand: StandIn, **kw: Any) -> BatchSettings:
    base: dict[str, Any] = {
        "router_url": stand.url,
        "token": "sekrit",
        "tick": 0.05,
        "retry_backoff": 0.05,
        "sample_interval": 0.1,
        "initial_concurrency": 4,
        "max_concurrency": 8,
        "line_timeout": 10.0,
    }
    return BatchSettings(**(base | kw))


def add_batch(
    store: SqliteStore,
    customs: list[str],
    *,
    tenant: str | None = "acme",
    window: float = 86400.0,
    age: float = 0.0,
    metadata: dict[str, str] | None = None,
) -> str:
    now = time.time() - age
    record = BatchRecord(
        id=new_batch_id(),
        tenant=tenant,
        endpoint=CHAT,
        input_file_id="file-0",
        completion_window="24h",
        window_seconds=window,
        created_at=now,
        status="in_progress",
        model="m",
        metadata=metadata,
        times={"in_progress_at": now},
    )
    lines = [
        LineSpec(i, c, "POST", CHAT, {"model": "m", "messages": [{"role": "user", "content": c}]})
        for i, c in enumerate(customs)
    ]
    return store.create_batch(record, lines).id


@contextlib.asynccontextmanager
async def running(runner: Runner) -> AsyncIterator[None]:
    task = asyncio.create_task(runner.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def ended(store: SqliteStore, batch_id: str, timeout: float = 20.0) -> BatchRecord:
    def done() -> bool:
        b = store.get_batch(batch_id)
        return b is not None and b.status in ENDED

    await until(done, timeout)
    batch = store.get_batch(batch_id)
    assert batch is not None
    return batch


def lines_of(store: SqliteStore, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(x) for x in store.file_content(file_id).splitlines()]


def new_runner(store: SqliteStore, s: BatchSettings) -> tuple[Runner, CollectorRegistry]:
    registry = CollectorRegistry()
    return Runner(store, s, BatchMetrics(registry)), registry


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_completes_a_batch_each_custom_id_once(router: StandIn, store: SqliteStore) -> None:
    customs = [f"c{i}" for i in range(25)]
    batch_id = add_batch(store, customs)
    runner, registry = new_runner(store, settings(router))
    async with running(runner):
        batch = await ended(store, batch_id)
    assert batch.status == "completed"
    out = lines_of(store, batch.output_file_id)
    assert sorted(line["custom_id"] for line in out) == sorted(customs)
    assert batch.error_file_id is None
    first = out[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["request_id"] == f"{batch_id}-0"
    assert first["response"]["body"]["choices"][0]["message"]["content"] == "re c0"
    assert batch.usage == {"input_tokens": 75, "output_tokens": 125, "total_tokens": 200}
    output_file = store.get_file(batch.output_file_id or "")
    assert output_file is not None and output_file.tenant == "acme"
    assert output_file.filename == f"{batch_id}_output.jsonl"
    assert output_file.purpose == "batch_output"
    for seen in router.seen:
        assert seen.headers["Authorization"] == "Bearer sekrit"
        assert seen.headers["X-Llmsvc-Tenant"] == "acme"
        assert seen.headers["X-Llmsvc-Priority"] == "batch"
        assert seen.headers["X-Llmsvc-Batch"] == batch_id
        assert seen.headers["X-Request-Id"] == f"{batch_id}-{customs.index(seen.custom)}"
    assert metric(registry, "llmsvc_batch_lines_total", outcome="completed") == 25
    assert metric(registry, "llmsvc_batch_batches_ended_total", status="completed") == 1


async def test_no_tenant_header_for_an_admin_batch(router: StandIn, store: SqliteStore) -> None:
    batch_id = add_batch(store, ["a", "b"], tenant=None)
    runner, _ = new_runner(store, settings(router, token=None))
    async with running(runner):
        assert (await ended(store, batch_id)).status == "completed"
    for seen in router.seen:
        assert "X-Llmsvc-Tenant" not in seen.headers
        assert "Authorization" not in seen.headers


async def test_retries_then_the_error_file(router: StandIn, store: SqliteStore) -> None:
    def decide(custom: str, tries: int) -> Reply:
        if custom == "broken":
            return error(500, "engine_error")
        if custom == "invalid":
            return error(400, "invalid_request_error")
        if custom == "flaky" and tries == 1:
            return error(502, "bad_gateway")
        if custom == "busy" and tries <= 2:
            status, body, _ = error(429, "queue_full")
            return status, body, {"Retry-After": "0"}
        if custom == "queued" and tries <= 3:  # refusals: not counted toward max_attempts
            return error(503, "queue_timeout")
        if custom == "down" and tries <= 3:  # any other 503 is a failure
            return error(503, "service_unavailable")
        return ok(custom)

    router.decide = decide
    batch_id = add_batch(store, ["fine", "broken", "invalid", "flaky", "busy", "queued", "down"])
    runner, registry = new_runner(store, settings(router, max_attempts=3))
    async with running(runner):
        batch = await ended(store, batch_id)
    assert batch.status == "completed"
    out = {line["custom_id"]: line for line in lines_of(store, batch.output_file_id)}
    errors = {line["custom_id"]: line for line in lines_of(store, batch.error_file_id)}
    assert set(out) == {"fine", "flaky", "busy", "queued"}
    assert set(errors) == {"broken", "invalid", "down"}
    assert router.tries == {
        "fine": 1,
        "broken": 3,
        "invalid": 1,
        "flaky": 2,
        "busy": 3,
        "queued": 4,
        "down": 3,
    }
    assert errors["down"]["response"]["status_code"] == 503
    assert errors["broken"]["response"]["status_code"] == 500
    assert errors["invalid"]["response"]["status_code"] == 400
    assert errors["invalid"]["response"]["body"]["error"]["code"] == "invalid_request_error"
    assert errors["invalid"]["error"] is None
    error_file = store.get_file(batch.error_file_id or "")
    assert error_file is not None and error_file.filename == f"{batch_id}_error.jsonl"
    assert metric(registry, "llmsvc_batch_line_attempts_total", result="refused") == 2 + 3
    assert metric(registry, "llmsvc_batch_lines_total", outcome="failed") == 3
    # broken 2, flaky 1, busy 2, queued 3, down 2
    assert metric(registry, "llmsvc_batch_lines_total", outcome="retried") == 10


async def test_a_lost_connection_fails_without_a_response(
    router: StandIn, store: SqliteStore
) -> None:
    batch_id = add_batch(store, ["x"])
    s = settings(router, max_attempts=2, router_url="http://127.0.0.1:9")  # nothing listens
    runner, _ = new_runner(store, s)
    async with running(runner):
        batch = await ended(store, batch_id)
    [line] = lines_of(store, batch.error_file_id)
    assert line["response"] is None and line["error"]["code"] == "request_failed"


async def test_no_answer_in_the_line_timeout(router: StandIn, store: SqliteStore) -> None:
    router.delay = 2.0
    batch_id = add_batch(store, ["slow"])
    runner, _ = new_runner(store, settings(router, max_attempts=2, line_timeout=0.2))
    async with running(runner):
        batch = await ended(store, batch_id)
    [line] = lines_of(store, batch.error_file_id)
    assert line["response"] is None and line["error"]["code"] == "timeout"
    assert router.tries == {"slow": 2}


async def test_earliest_deadline_first(router: StandIn, store: SqliteStore) -> None:
    far = add_batch(store, [f"far{i}" for i in range(6)], window=86400)
    near = add_batch(store, [f"near{i}" for i in range(6)], window=3600)
    runner, _ = new_runner(store, settings(router, initial_concurrency=1, max_concurrency=1))
    async with running(runner):
        await ended(store, far)
        await ended(store, near)
    order = [seen.headers["X-Llmsvc-Batch"] for seen in router.seen]
    assert order == [near] * 6 + [far] * 6


async def test_concurrency_never_above_the_limit(router: StandIn, store: SqliteStore) -> None:
    router.delay = 0.15
    batch_id = add_batch(store, [f"c{i}" for i in range(24)])
    s = settings(router, initial_concurrency=1, max_concurrency=3)
    registry = CollectorRegistry()
    # a pool larger than the limit: only the window holds the lines back
    runner = Runner(store, s, BatchMetrics(registry), session_factory=aiohttp.ClientSession)
    async with running(runner):
        await ended(store, batch_id)
    assert router.max_inflight == 3  # grew from 1 to the limit, never past it
    assert metric(registry, "llmsvc_batch_concurrency_limit") == 3


async def test_a_burst_of_429_halves_the_window_once(router: StandIn, store: SqliteStore) -> None:
    router.delay = 0.2

    def decide(custom: str, tries: int) -> Reply:
        if tries == 1:
            status, body, _ = error(429, "queue_full")
            return status, body, {"Retry-After": "0.3"}
        return ok(custom)

    router.decide = decide
    batch_id = add_batch(store, [f"c{i}" for i in range(8)])
    runner, _ = new_runner(store, settings(router, initial_concurrency=8, max_concurrency=8))
    async with running(runner):
        await until(lambda: len(router.seen) >= 8)
        first_round = router.max_inflight
        await until(lambda: runner.concurrency < 8)
        router.max_inflight = 0
        await ended(store, batch_id)
    assert first_round == 8
    assert router.max_inflight == 4  # 8 halved once, not once per refusal


async def test_contention_header_shrinks_the_window(router: StandIn, store: SqliteStore) -> None:
    def decide(custom: str, tries: int) -> Reply:
        status, body, _ = ok(custom)
        return status, body, {"X-Llmsvc-Contention": "3"}

    router.decide = decide
    router.delay = 0.05
    batch_id = add_batch(store, [f"c{i}" for i in range(12)])
    runner, _ = new_runner(store, settings(router, initial_concurrency=8, max_concurrency=8))
    async with running(runner):
        await ended(store, batch_id)
        assert runner.concurrency < 8


async def test_expiry_keeps_finished_lines(router: StandIn, store: SqliteStore) -> None:
    router.delay = 0.3
    # created 10 s ago with a 11 s window: the deadline is about 1 s away
    batch_id = add_batch(store, [f"c{i}" for i in range(30)], window=11.0, age=10.0)
    runner, registry = new_runner(store, settings(router, initial_concurrency=2, max_concurrency=2))
    async with running(runner):
        batch = await ended(store, batch_id)
        view = runner.sla(batch)
    assert batch.status == "expired" and "expired_at" in batch.times
    out = lines_of(store, batch.output_file_id)
    errors = lines_of(store, batch.error_file_id)
    assert len(out) >= 2  # those answered before the deadline, and the running ones
    assert len(out) + len(errors) == 30
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert all(e["response"] is None for e in errors)
    assert view.sla_status == "violated"
    assert metric(registry, "llmsvc_batch_batches_ended_total", status="expired") == 1


async def test_cancel(router: StandIn, store: SqliteStore) -> None:
    router.delay = 0.1
    batch_id = add_batch(store, [f"c{i}" for i in range(30)])
    runner, _ = new_runner(store, settings(router, initial_concurrency=2, max_concurrency=2))
    async with running(runner):
        await until(lambda: len(router.seen) >= 3)
        store.set_status(batch_id, "cancelling", at=time.time())
        runner.cancel(batch_id)
        batch = await ended(store, batch_id)
        seen_at_end = len(router.seen)
        await asyncio.sleep(0.3)
    assert batch.status == "cancelled" and "cancelled_at" in batch.times
    out = lines_of(store, batch.output_file_id)
    errors = lines_of(store, batch.error_file_id)
    assert len(out) >= 2 and len(out) + len(errors) == 30
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert len(router.seen) == seen_at_end  # nothing sent after the end


async def test_lines_hanging_past_the_grace_end_with_the_batch(
    router: StandIn, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "END_GRACE", 0.3)
    router.delay = 30.0  # the router never answers in the test's time
    batch_id = add_batch(store, [f"c{i}" for i in range(5)])
    runner, _ = new_runner(store, settings(router, initial_concurrency=2, max_concurrency=2))
    async with running(runner):
        await until(lambda: len(router.seen) == 2)
        store.set_status(batch_id, "cancelling", at=time.time())
        runner.cancel(batch_id)
        batch = await ended(store, batch_id, timeout=10.0)
    assert batch.status == "cancelled" and batch.output_file_id is None
    errors = lines_of(store, batch.error_file_id)
    assert [e["error"]["code"] for e in errors] == ["batch_cancelled"] * 5


async def test_raised_priority_only_when_allowed_and_at_risk(
    router: StandIn, store: SqliteStore
) -> None:
    router.delay = 0.02
    # 80 % of the window used: at risk from the first tick
    allowed = add_batch(
        store,
        [f"a{i}" for i in range(5)],
        window=1000,
        age=800,
        metadata={"llmsvc_allow_standard": "true"},
    )
    not_allowed = add_batch(store, [f"n{i}" for i in range(5)], window=1000, age=800)
    on_track = add_batch(
        store, [f"t{i}" for i in range(5)], metadata={"llmsvc_allow_standard": "true"}
    )
    runner, _ = new_runner(store, settings(router, initial_concurrency=1, max_concurrency=1))
    async with running(runner):
        for batch_id in (allowed, not_allowed, on_track):
            await ended(store, batch_id)
    priorities: dict[str, set[str]] = {}
    for seen in router.seen:
        priorities.setdefault(seen.headers["X-Llmsvc-Batch"], set()).add(
            seen.headers["X-Llmsvc-Priority"]
        )
    assert priorities == {allowed: {"standard"}, not_allowed: {"batch"}, on_track: {"batch"}}


async def test_recovered_lines_run_again(router: StandIn, store: SqliteStore) -> None:
    batch_id = add_batch(store, [f"c{i}" for i in range(4)])
    assert len(store.claim(batch_id, 2, now=time.time())) == 2  # "running" when we died
    runner, registry = new_runner(store, settings(router))
    async with running(runner):
        batch = await ended(store, batch_id)
    assert len(lines_of(store, batch.output_file_id)) == 4
    assert metric(registry, "llmsvc_batch_lines_total", outcome="retried") == 2


async def test_a_batch_found_finalizing_is_finalized(router: StandIn, store: SqliteStore) -> None:
    batch_id = add_batch(store, ["a", "b"])
    runner, _ = new_runner(store, settings(router))
    async with running(runner):
        await ended(store, batch_id)
    store.set_status(batch_id, "finalizing", at=time.time())  # as if killed while writing
    runner2, _ = new_runner(store, settings(router))
    async with running(runner2):
        batch = await ended(store, batch_id)
    assert batch.status == "completed"
    assert len(lines_of(store, batch.output_file_id)) == 2
    assert len(router.seen) == 2  # nothing sent twice


async def test_metrics_and_report(router: StandIn, store: SqliteStore) -> None:
    router.delay = 0.05
    batch_id = add_batch(store, [f"c{i}" for i in range(10)])
    runner, registry = new_runner(store, settings(router, initial_concurrency=1, max_concurrency=1))
    async with running(runner):
        await until(
            lambda: (
                metric(registry, "llmsvc_batch_progress_ratio", batch_id=batch_id, tenant="acme")
                > 0
            )
        )
        assert metric(registry, "llmsvc_batch_batches", status="in_progress") == 1
        assert metric(registry, "llmsvc_batch_backlog_lines") > 0
        assert (
            metric(
                registry,
                "llmsvc_batch_sla_status",
                batch_id=batch_id,
                tenant="acme",
                sla_status="on_track",
            )
            == 1
        )
        assert (
            metric(registry, "llmsvc_batch_time_left_seconds", batch_id=batch_id, tenant="acme")
            > 86000
        )
        batch = await ended(store, batch_id)
        await asyncio.sleep(0.2)  # a tick after the end
        assert (
            registry.get_sample_value(
                "llmsvc_batch_progress_ratio", {"batch_id": batch_id, "tenant": "acme"}
            )
            is None
        )
        assert metric(registry, "llmsvc_batch_batches", status="completed") == 1
        assert metric(registry, "llmsvc_batch_batches", status="in_progress") == 0
        report = runner.report()
    [entry] = report["batches"]
    assert entry["id"] == batch_id and entry["met"] is True and entry["samples"]
    assert report["overall"]["met"] == 1 and report["overall"]["on_time_ratio"] == 1.0
    assert batch.status == "completed"


class FlakyStore(SqliteStore):
    """A store whose first ``claim`` fails, as a locked or full disk would."""

    failed = False

    def claim(self, batch_id: str, limit: int, *, now: float) -> list[LineRecord]:
        if not self.failed:
            self.failed = True
            raise OSError("disk I/O error")
        return super().claim(batch_id, limit, now=now)


async def test_a_store_error_does_not_stop_the_runner(router: StandIn, tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "flaky")
    try:
        batch_id = add_batch(store, ["a", "b"])
        runner, _ = new_runner(store, settings(router))
        async with running(runner):
            batch = await ended(store, batch_id)
        assert store.failed and batch.status == "completed"
    finally:
        store.close()


async def test_raised_batch_is_lowered_once_on_track(router: StandIn, store: SqliteStore) -> None:
    router.delay = 0.05
    offset = 800.0  # the runner's clock: 80 % of the window used, at risk
    batch_id = add_batch(
        store,
        [f"c{i}" for i in range(200)],
        window=1000,
        metadata={"llmsvc_allow_standard": "true"},
    )
    s = settings(router, initial_concurrency=1, max_concurrency=1)
    runner = Runner(store, s, BatchMetrics(CollectorRegistry()), clock=lambda: time.time() + offset)

    def priorities() -> list[str]:
        return [seen.headers["X-Llmsvc-Priority"] for seen in router.seen]

    async with running(runner):
        await until(lambda: "standard" in priorities())
        offset = 0.0  # back at the start of the window, going fast: on track
        await until(lambda: priorities()[-1] == "batch")
        record = store.get_batch(batch_id)
        assert record is not None and record.raised is False
    seq = priorities()
    first_batch = seq.index("batch")
    assert set(seq[:first_batch]) == {"standard"}
