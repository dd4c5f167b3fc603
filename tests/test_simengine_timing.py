"""The timing model observed from outside, in process, with real (short) durations."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from llmsvc.core.serving import bind_sockets, serving
from llmsvc.simengine.app import create_app
from llmsvc.simengine.settings import SimEngineSettings
from procs import free_port

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
LABELS = {"model_name": "sim-model", "engine": "0"}


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(**overrides: Any) -> Client:
        settings = SimEngineSettings(**overrides)
        client: Client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
        return client

    return make


async def metric(client: Client, name: str, **labels: str) -> float:
    text = await (await client.get("/metrics")).text()
    want = {**LABELS, **labels}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == want:
                return float(sample.value)
    raise AssertionError(f"no sample {name} {want}")


async def wait_metric(
    client: Client, name: str, predicate: Callable[[float], bool], timeout: float = 3.0
) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = await metric(client, name)
        if predicate(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


async def ttft(client: Client, prompt: str, max_tokens: int = 1) -> float:
    """Seconds from sending a streamed completion to its first token chunk."""
    start = time.perf_counter()
    body = {"model": "sim-model", "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    async with client.post("/v1/completions", json=body) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data: {"):
                elapsed = time.perf_counter() - start
                await resp.read()
                return elapsed
    raise AssertionError("no token chunk")


async def test_ttft_grows_with_prompt_length(make_client: MakeClient) -> None:
    client = await make_client(prefill_tokens_per_s=2000, prefix_cache_tokens=0)
    short = await ttft(client, "x" * 40)  # 10 tokens: 5 ms
    long = await ttft(client, "y" * 4800)  # 1200 tokens: 600 ms
    assert long - short > 0.4
    assert long < 2.0


async def test_repeated_prefix_lowers_ttft(make_client: MakeClient) -> None:
    client = await make_client(prefill_tokens_per_s=4000)
    shared = "The same long system prompt, over and over. " * 110  # ~4900 chars
    first = await ttft(client, shared + "First question?")
    second = await ttft(client, shared + "Second question, a different one?")
    assert first > 0.25
    assert second < first / 3
    hits = await metric(client, "vllm:prefix_cache_hits_total")
    queries = await metric(client, "vllm:prefix_cache_queries_total")
    assert 1100 < hits < queries


async def test_tokens_per_second_fall_with_concurrency(make_client: MakeClient) -> None:
    client = await make_client(decode_tokens_per_s=100, decode_slowdown=0.5)
    body = {"model": "sim-model", "prompt": "hello", "max_tokens": 21}

    async def duration() -> float:
        start = time.perf_counter()
        resp = await client.post("/v1/completions", json=body)
        assert resp.status == 200
        await resp.read()
        return time.perf_counter() - start

    alone = await duration()  # 20 steps of 10 ms
    together = await asyncio.gather(*(duration() for _ in range(5)))  # 20 steps of 30 ms
    assert alone >= 0.19
    assert min(together) > 1.8 * alone


async def test_requests_beyond_max_num_seqs_wait(make_client: MakeClient) -> None:
    client = await make_client(max_num_seqs=2, decode_tokens_per_s=50)
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 15}  # ~0.3 s each
    tasks = [asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(5)]
    waiting = await wait_metric(client, "vllm:num_requests_waiting", lambda v: v == 3)
    assert waiting == 3
    assert await metric(client, "vllm:num_requests_running") == 2
    assert await metric(client, "vllm:kv_cache_usage_perc") > 0
    for resp in await asyncio.gather(*tasks):
        assert resp.status == 200
    assert await metric(client, "vllm:num_requests_waiting") == 0
    assert await metric(client, "vllm:num_requests_running") == 0
    assert await metric(client, "vllm:request_queue_time_seconds_sum") > 0.5


async def test_kv_cache_limits_running_requests(make_client: MakeClient) -> None:
    client = await make_client(kv_cache_tokens=120, decode_tokens_per_s=50)
    body = {"model": "sim-model", "prompt": "x" * 40, "max_tokens": 15}  # 25 tokens: 4 fit
    tasks = [asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(6)]
    assert await wait_metric(client, "vllm:num_requests_waiting", lambda v: v == 2) == 2
    assert await metric(client, "vllm:num_requests_running") == 4
    assert await metric(client, "vllm:kv_cache_usage_perc") == pytest.approx(100 / 120)
    for resp in await asyncio.gather(*tasks):
        assert resp.status == 200


async def test_stream_disconnect_frees_the_slot(make_client: MakeClient) -> None:
    client = await make_client(max_num_seqs=1, decode_tokens_per_s=20)
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 1000, "stream": True}  # 50 s
    resp = await client.post("/v1/completions", json=body)
    await resp.content.readline()  # the first token arrived: it is running
    assert await metric(client, "vllm:num_requests_running") == 1
    resp.close()  # drop the connection mid-stream
    assert await wait_metric(client, "vllm:num_requests_running", lambda v: v == 0) == 0
    assert await metric(client, "vllm:kv_cache_usage_perc") == 0
    assert await metric(client, "vllm:request_success_total", finished_reason="abort") == 1
    quick = {"model": "sim-model", "prompt": "hi", "max_tokens": 2}
    assert (await asyncio.wait_for(client.post("/v1/completions", json=quick), 2)).status == 200


async def test_non_streaming_and_queued_disconnects_free_their_place() -> None:
    # Served as ``llmsvc sim-engine`` serves it (aiohttp's test server would cancel
    # handlers itself).
    app = create_app(
        SimEngineSettings(max_num_seqs=1, decode_tokens_per_s=20), registry=CollectorRegistry()
    )
    port = free_port()
    sockets = bind_sockets("127.0.0.1", port)
    async with (
        serving(app, name="sim-engine", sockets=sockets, shutdown_timeout=5),
        aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session,
    ):
        await _disconnect_while_queued_and_running(session)


async def _disconnect_while_queued_and_running(session: aiohttp.ClientSession) -> None:
    client: Any = session  # metric() only needs .get()
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 1000}  # 50 s
    running = asyncio.create_task(session.post("/v1/completions", json=body))
    assert await wait_metric(client, "vllm:num_requests_running", lambda v: v == 1) == 1
    queued = asyncio.create_task(session.post("/v1/completions", json=body))
    assert await wait_metric(client, "vllm:num_requests_waiting", lambda v: v == 1) == 1
    queued.cancel()  # the client gives up while queued
    assert await wait_metric(client, "vllm:num_requests_waiting", lambda v: v == 0) == 0
    running.cancel()  # and while running, before any byte of the answer
    assert await wait_metric(client, "vllm:num_requests_running", lambda v: v == 0) == 0
    assert await metric(client, "vllm:kv_cache_usage_perc") == 0
    for task in (queued, running):
        with pytest.raises(asyncio.CancelledError):
            await task


async def token_gaps(client: Client, body: dict[str, Any], gaps: list[float]) -> None:
    """Stream ``body`` and append the seconds between consecutive token chunks to ``gaps``."""
    async with client.post("/v1/completions", json={**body, "stream": True}) as resp:
        assert resp.status == 200
        last = 0.0
        async for line in resp.content:
            if line.startswith(b"data: {"):
                now = time.perf_counter()
                if last:
                    gaps.append(now - last)
                last = now


BATCHED = {"decode_tokens_per_s": 100, "prefill_tokens_per_s": 4000, "max_batched_tokens": 512}
LONG_PROMPT = "z" * 16000  # 4000 tokens: 1 s of prefill, in chunks of 508 (128 ms each)


async def test_a_long_prefill_slows_the_others_decode(make_client: MakeClient) -> None:
    client = await make_client(**BATCHED)
    gaps: list[float] = []
    decoding = asyncio.create_task(
        token_gaps(client, {"model": "sim-model", "prompt": "hi", "max_tokens": 100}, gaps)
    )
    await wait_metric(client, "vllm:num_requests_running", lambda v: v == 1)
    await asyncio.sleep(0.1)
    await ttft(client, LONG_PROMPT)  # shares every step with the decoding stream
    during = len(gaps)
    await ttft(client, LONG_PROMPT)  # a prefix-cache hit: a short step, nothing slows
    await decoding
    assert max(gaps[:during]) > 0.1  # a decode step waited for a 508-token chunk
    assert sorted(gaps[during:])[len(gaps[during:]) // 2] < 0.05


async def test_a_long_prefill_delays_a_later_short_request(make_client: MakeClient) -> None:
    client = await make_client(**BATCHED, prefix_cache_tokens=0)
    long = asyncio.create_task(ttft(client, LONG_PROMPT))
    await wait_metric(client, "vllm:num_requests_running", lambda v: v == 1)
    short = await ttft(client, "x" * 40)  # waits for the step budget the long prefill holds
    assert short > 0.5
    assert await long < 2.0


async def test_independent_scheduler_keeps_each_sequence_on_its_own_clock(
    make_client: MakeClient,
) -> None:
    client = await make_client(**BATCHED, prefix_cache_tokens=0, scheduler="independent")
    long = asyncio.create_task(ttft(client, LONG_PROMPT))
    await wait_metric(client, "vllm:num_requests_running", lambda v: v == 1)
    short = await ttft(client, "x" * 40)
    assert short < 0.3
    assert await long > 0.9


async def token_stamps(client: Client, body: dict[str, Any]) -> list[float]:
    """Stream ``body``: the arrival time of every token chunk."""
    stamps: list[float] = []
    async with client.post("/v1/completions", json={**body, "stream": True}) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"finish_reason":null' in line:
                stamps.append(time.perf_counter())
    return stamps


async def test_step_noise_spreads_steps_and_every_sequence_of_a_step_shares_it(
    make_client: MakeClient,
) -> None:
    client = await make_client(decode_tokens_per_s=40, decode_slowdown=0, step_noise=0.5)
    body = {"model": "sim-model", "prompt": "hi", "max_tokens": 16}  # 25 ms steps, noised
    first, second = await asyncio.gather(token_stamps(client, body), token_stamps(client, body))
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert max(gaps) / min(gaps) > 2  # a factor of 1 +- timer noise would stay near 1
    # Both decode in the same steps: each token of one arrives with a token of the other.
    for stamp in first[2:]:
        assert min(abs(stamp - other) for other in second) < 0.01


async def test_requests_arriving_within_the_batch_wait_prefill_in_one_step(
    make_client: MakeClient,
) -> None:
    async def pair(**overrides: Any) -> tuple[float, float]:
        client = await make_client(prefill_tokens_per_s=1000, prefix_cache_tokens=0, **overrides)

        async def later() -> float:
            await asyncio.sleep(0.01)
            return await ttft(client, "b" * 1200)

        first, second = await asyncio.gather(ttft(client, "a" * 1200), later())  # 300 ms each
        return first, second + 0.01  # the second's first token, from the first's sending

    first, second = await pair(batch_wait_s=0.05)  # the idle engine waits 50 ms: one step
    assert abs(second - first) < 0.15  # of 600 tokens: both first tokens at its end
    assert 0.6 < first < 1.0
    first, second = await pair()  # no wait: the second waits for the first's whole step
    assert second - first > 0.2
