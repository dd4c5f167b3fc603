"""Open-loop traffic with priorities and tenants, and what each request saw.

A phase's traffic is a few :class:`Flow` s (a priority class, a tenant's key,
a rate); each is a seeded Poisson process, and their arrivals are merged into
one schedule for :func:`llmsvc.bench.schedule.drive` (``llmsvc bench``'s load
loop, open loop: a request goes out at its planned instant whatever the
answers do). Every request streams (so the time to the first token is
measured) with a prompt of its own (:meth:`llmsvc.bench.load.LoadSpec.body`)
and an ``X-Request-Id`` the router's access log repeats, so that its queue wait
can be matched to the request. A rejection keeps its status and the OpenAI
error's ``code`` (``queue_full``, ``queue_timeout``...).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import aiohttp
import orjson

from llmsvc.bench.load import LoadSpec
from llmsvc.bench.schedule import Schedule, drive

PRIORITY_HEADER = "X-Llmsvc-Priority"
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Flow:
    """Requests of one class from one tenant at ``rate`` per second (Poisson)."""

    priority: str
    rate: float
    tenant: str = "anonymous"
    key: str | None = None


@dataclass(slots=True)
class Outcome:
    """One request: ``sent`` in seconds from the phase's start, times in seconds."""

    flow: int
    request_id: str
    sent: float
    status: int = 0  # 0: no HTTP answer (connection error, timeout)
    code: str | None = None  # the OpenAI error's code (or the in-band stream error's)
    ttft: float | None = None
    latency: float | None = None
    queue_wait: float | None = None  # from the router's access log, when it logs one

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.code is None and self.latency is not None

    @property
    def rejection(self) -> str:
        """How it failed, ``"429 queue_full"``; ``""`` when it was served."""
        if self.ok:
            return ""
        if self.status == 0:
            return self.code or "no answer"
        return f"{self.status} {self.code or 'error'}"


def plan(flows: list[Flow], seconds: float, seed: int) -> list[tuple[float, int]]:
    """Merged Poisson arrivals ``(at, flow index)`` of ``flows`` over ``seconds``."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, int]] = []
    for index, flow in enumerate(flows):
        at = rng.expovariate(flow.rate) if flow.rate > 0 else seconds
        while at < seconds:
            arrivals.append((at, index))
            at += rng.expovariate(flow.rate)
    return sorted(arrivals)


def _error_code(raw: bytes) -> str | None:
    try:
        error = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return str(error.get("code")) if isinstance(error, dict) else None


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], out: Outcome
) -> None:
    started = time.monotonic()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            out.status = resp.status
            if resp.status != 200:
                out.code = _error_code(await resp.read()) or "error"
                return
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue  # SSE comments (a held stream's progress lines), blank lines
                data = line[5:].strip()
                if data == b"[DONE]":
                    out.latency = time.monotonic() - started
                    return
                event = orjson.loads(data)
                if isinstance(event, dict) and "error" in event:
                    out.code = str((event["error"] or {}).get("code") or "stream_error")
                    return
                if out.ttft is None and _has_content(event):
                    out.ttft = time.monotonic() - started
            out.code = "stream_cut"  # ended without [DONE]
    except TimeoutError:
        out.code = "timeout"
    except (aiohttp.ClientError, OSError, orjson.JSONDecodeError, ValueError):
        out.code = out.code or "connection"


def _has_content(event: object) -> bool:
    if not isinstance(event, dict):
        return False
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    delta = choices[0].get("delta")
    text = delta.get("content") if isinstance(delta, dict) else None
    return isinstance(text, str) and text != ""


async def run_traffic(
    url: str,
    model: str,
    flows: list[Flow],
    *,
    seconds: float,
    seed: int,
    prompt_tokens: int,
    max_tokens: int,
    label: str,
) -> list[Outcome]:
    """Send ``flows`` to the router at ``url`` for ``seconds``; every request's outcome."""
    arrivals = plan(flows, seconds, seed)
    spec = LoadSpec(
        url=url, model=model, duration=seconds, stream=True, prompt_tokens=prompt_tokens,
        max_tokens=max_tokens, seed=seed,
    )  # fmt: skip
    target = spec.target
    outcomes: list[Outcome] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(n: int) -> Outcome:
            at, index = arrivals[n]
            flow = flows[index]
            out = Outcome(flow=index, request_id=f"{label}-{n}", sent=at)
            outcomes.append(out)
            headers = {
                "Content-Type": "application/json",
                PRIORITY_HEADER: flow.priority,
                "X-Request-Id": out.request_id,
            }
            if flow.key:
                headers["Authorization"] = f"Bearer {flow.key}"
            await _one(session, target, spec.body(n), headers, out)
            return out

        await drive(Schedule(arrivals=[at for at, _ in arrivals]), send)
    return sorted(outcomes, key=lambda o: o.sent)


async def closed_loop(
    url: str, model: str, *, concurrency: int, seconds: float, prompt_tokens: int, max_tokens: int
) -> float:
    """The fleet's capacity in requests per second: ``concurrency`` (its slots) always in
    flight, divided by the mean latency of a request (Little's law). Counting finishes in a
    window would not do: with fixed timing the slots finish in step, in bursts."""
    spec = LoadSpec(
        url=url, model=model, concurrency=concurrency, duration=seconds, stream=True,
        prompt_tokens=prompt_tokens, max_tokens=max_tokens, seed=99,
    )  # fmt: skip
    latencies: list[float] = []
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    ) as session:
        headers = {"Content-Type": "application/json", PRIORITY_HEADER: "standard"}

        async def send(n: int) -> None:
            out = Outcome(flow=0, request_id=f"capacity-{n}", sent=0.0)
            await _one(session, spec.target, spec.body(n), headers, out)
            if out.ok and out.latency is not None and n >= concurrency:  # not the first round
                latencies.append(out.latency)

        await drive(spec.schedule, send)
    if not latencies:
        raise RuntimeError("capacity: no request after the first round was served")
    return concurrency * len(latencies) / sum(latencies)


def queue_waits(log_text: str) -> dict[str, float]:
    """``request_id -> queue_wait_s`` from the router's access-log lines (JSON), if any."""
    waits: dict[str, float] = {}
    for line in log_text.splitlines():
        start = line.find("{")
        if start < 0 or "queue_wait_s" not in line:
            continue
        try:
            entry = orjson.loads(line[start:])
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("message"), str):
            try:
                entry = orjson.loads(entry["message"])
            except orjson.JSONDecodeError:
                continue
        if isinstance(entry, dict) and isinstance(entry.get("queue_wait_s"), int | float):
            waits[str(entry.get("request_id"))] = float(entry["queue_wait_s"])
    return waits


def attach_waits(outcomes: list[Outcome], waits: dict[str, float]) -> None:
    for out in outcomes:
        out.queue_wait = waits.get(out.request_id)
