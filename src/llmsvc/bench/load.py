"""The load generator as a library: :func:`run_load` drives an endpoint, returns :class:`Results`.

Pure asyncio with one ``aiohttp.ClientSession``: ``concurrency`` workers each
send one request after another until the request count or the duration is
used up, or until ``stop`` is set (then requests in flight are cancelled and
not counted, and the results say ``interrupted``) or ``drain`` is (then they
finish). The loop is :func:`llmsvc.bench.schedule.drive`, the one every
harness uses; this module is the request. Studies call it directly::

    results = await run_load(LoadSpec(url="http://127.0.0.1:8080", model="m", requests=100))
    print(results.summary()["latency_s"]["p99"])

Exceptions::

    Unreachable   the endpoint refused or did not answer a first connection (:func:`probe`)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson

from llmsvc.bench.schedule import Schedule, drive
from llmsvc.bench.stats import Results, Sample

# Four characters each: about one token for the simulated engine and for real tokenizers.
_WORDS = ("the ", "cat ", "sat ", "on ", "a ", "mat ", "and ", "dog ", "ran ", "far ", "sun ")
_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class Unreachable(Exception):
    """Nothing answered at the URL: connection refused, unknown host, or a timeout."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    """One run: where, what, how hard and for how long (``requests`` or ``duration``)."""

    url: str
    model: str
    concurrency: int = 1
    requests: int | None = None
    duration: float | None = None
    stream: bool = False
    prompt_tokens: int = 32
    max_tokens: int = 32
    endpoint: Literal["chat", "completions"] = "chat"
    api_key: str | None = None
    timeout: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.requests is None) == (self.duration is None):
            raise ValueError("a LoadSpec needs exactly one of requests and duration")

    @property
    def schedule(self) -> Schedule:
        return Schedule(
            concurrency=self.concurrency, requests=self.requests, duration=self.duration
        )

    @property
    def target(self) -> str:
        return api_base(self.url) + _PATHS[self.endpoint]

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def body(self, n: int) -> bytes:
        """The ``n``-th request's body: a prompt of its own, the same for the same seed."""
        rng = random.Random(self.seed * 1_000_003 + n)
        prompt = "".join(rng.choice(_WORDS) for _ in range(self.prompt_tokens)).rstrip()
        payload: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        if self.endpoint == "chat":
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
        if self.stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return orjson.dumps(payload)


def api_base(url: str) -> str:
    """``http://h:p``, ``http://h:p/`` and ``http://h:p/v1`` all give ``http://h:p``."""
    base = url.rstrip("/")
    return base.removesuffix("/v1")


async def probe(session: aiohttp.ClientSession, url: str, timeout: float) -> None:
    """GET ``/v1/models``; any HTTP answer will do, :class:`Unreachable` when none comes."""
    try:
        async with session.get(
            api_base(url) + "/v1/models", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            await resp.read()
    except TimeoutError:
        raise Unreachable(f"{url} did not answer within {timeout:g}s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise Unreachable(f"cannot reach {url}: {exc}") from None


async def run_load(
    spec: LoadSpec,
    *,
    session: aiohttp.ClientSession | None = None,
    on_sample: Callable[[Sample], None] | None = None,
    stop: asyncio.Event | None = None,
    drain: asyncio.Event | None = None,
) -> Results:
    """Drive the endpoint as ``spec`` says; ``on_sample`` sees each finished request.

    The loop is :func:`~llmsvc.bench.schedule.drive`'s: ``stop`` cancels the requests in
    flight (the results say ``interrupted``), ``drain`` lets them finish.
    """
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            connector = aiohttp.TCPConnector(limit=spec.concurrency)
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
        headers = spec.headers()
        client = session

        async def send(n: int) -> Sample:
            return await one_request(client, spec, spec.body(n), headers)

        driven = await drive(spec.schedule, send, on_result=on_sample, stop=stop, drain=drain)
    results = Results(stream=spec.stream, samples=driven.results)
    results.elapsed_s, results.interrupted = driven.elapsed_s, driven.interrupted
    return results


async def one_request(
    session: aiohttp.ClientSession, spec: LoadSpec, body: bytes, headers: dict[str, str]
) -> Sample:
    """Send one request and measure it; every failure becomes a :class:`Sample` with its kind."""
    started = time.monotonic()
    try:
        async with session.post(
            spec.target,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=spec.timeout),
        ) as resp:
            if resp.status >= 400:
                await resp.read()
                return _failed(started, f"http_{resp.status}")
            if spec.stream:
                return await _read_stream(resp, started)
            return _read_body(await resp.read(), started)
    except TimeoutError:
        return _failed(started, "timeout")
    except aiohttp.ClientPayloadError:
        return _failed(started, "stream_error" if spec.stream else "connection")
    except (aiohttp.ClientError, OSError):
        return _failed(started, "connection")
    except ValueError:  # an SSE line longer than the reader's limit
        return _failed(started, "bad_response")


def _failed(started: float, kind: str) -> Sample:
    return Sample(latency_s=time.monotonic() - started, ttft_s=None, output_tokens=0, error=kind)


def _read_body(raw: bytes, started: float) -> Sample:
    latency = time.monotonic() - started
    try:
        payload = orjson.loads(raw)
        choices = payload["choices"]
        usage = payload.get("usage") or {}
        tokens = int(usage.get("completion_tokens", 0))
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError):
        return Sample(latency_s=latency, ttft_s=None, output_tokens=0, error="bad_response")
    if not isinstance(choices, list) or not choices:
        return Sample(latency_s=latency, ttft_s=None, output_tokens=0, error="bad_response")
    return Sample(latency_s=latency, ttft_s=latency, output_tokens=tokens)


async def _read_stream(resp: aiohttp.ClientResponse, started: float) -> Sample:
    """Read SSE events: TTFT at the first content, tokens from usage or counted chunks."""
    ttft: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    async for line in resp.content:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            tokens = usage_tokens if usage_tokens is not None else chunks
            return Sample(latency_s=time.monotonic() - started, ttft_s=ttft, output_tokens=tokens)
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return _failed(started, "bad_response")
        if not isinstance(event, dict) or "error" in event:
            return _failed(started, "stream_error")
        if _has_content(event):
            chunks += 1
            if ttft is None:
                ttft = time.monotonic() - started
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            usage_tokens = usage["completion_tokens"]
    return _failed(started, "stream_error")  # ended without [DONE]


def _has_content(event: dict[str, Any]) -> bool:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    choice = choices[0]
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return isinstance(text, str) and text != ""
