"""The real side of the agreement benchmark: a registry, babysitters with standby, a router.

Every babysitter runs ``--engine sim --idle-timeout T --standby sleep`` over a
simulated engine in real time (``--time-scale 1``) whose timing is a profile
file the simulation reads too; the router follows the registry, holds the
requests of a model whose engines are all in standby and wakes one
babysitter (issue 14's bare-metal scaling). :func:`replay` sends a trace's
requests open loop (each at its arrival time, whatever the answers do) through
the router, streamed, and measures TTFT at the client; wake-ups are read from
the babysitters' ``GET /status`` (``standby.wakes``).

Short intervals throughout (health checks, heartbeats, the registry's checks)
so that a state change reaches the router in a fraction of a second: the
simulation has no such delays, and what is left of them is part of what the
benchmark measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from benchmarks.autoscale.sim import HOLD_TIMEOUT_S, RouterModel
from benchmarks.autoscale.trace import Request
from benchmarks.common.ports import free_port
from benchmarks.common.processes import Child, StartFailed, spawn_llmsvc, wait_healthy
from prometheus_client.parser import text_string_to_metric_families

from llmsvc.bench.load import LoadSpec, one_request
from llmsvc.bench.schedule import Schedule, drive

HOST = "127.0.0.1"
MODEL = "agree-model"
TOKEN = "agreement-benchmark-registry-token"
START_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class StackConfig:
    """What the processes run with: how many babysitters, their standby, the engine's profile."""

    babysitters: int
    idle_timeout: float
    profile: Path
    """A sim-engine profile file (``--profile``): the timing both sides share."""
    chars_per_token: float
    router: RouterModel = field(default_factory=RouterModel)
    """The babysitters' health interval, the router's wake target and strategy (the
    settings the simulation shares)."""
    hold_timeout: float = HOLD_TIMEOUT_S
    heartbeat_interval: float = 0.5


@dataclass(slots=True)
class Outcome:
    """One replayed request: when it was due, what came back."""

    index: int
    arrival_s: float
    sent_s: float = 0.0
    """When it actually went, from the replay's start (the open loop's own lateness)."""
    ttft_s: float | None = None
    latency_s: float | None = None
    error: str | None = None
    hold_s: float | None = None
    """The router's access line's hold (seconds held for a ready backend), when logged."""
    queue_wait_s: float | None = None
    """Its ``queue_wait_s``: seconds in the router's queue for a free slot of the engine."""
    tokens: tuple[int, int] | None = None
    """Its ``(prompt_tokens, completion_tokens)``: what the engine counted."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.ttft_s is not None


@dataclass(slots=True)
class Stack:
    """The processes, started by ``async with`` and stopped after, with their URLs."""

    config: StackConfig
    log_dir: Path
    registry_url: str = ""
    router_url: str = ""
    sitter_apis: list[str] = field(default_factory=list)
    processes: list[Child] = field(default_factory=list)

    @property
    def router_log(self) -> Path:
        return self.log_dir / "router.log"

    async def __aenter__(self) -> Stack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                await self._start(http)
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self, http: aiohttp.ClientSession) -> None:
        c = self.config
        port = free_port()
        registry = await spawn_llmsvc(
            "registry",
            ["registry", "--port", str(port), "--token", TOKEN, "--health-interval", "0.5",
             "--health-timeout", "1", "--cleanup-interval", "0.5", "--log-level", "warning"],
            self.log_dir,
        )  # fmt: skip
        self.processes.append(registry)
        self.registry_url = f"http://{HOST}:{port}"
        await wait_healthy(http, registry, f"{self.registry_url}/health", timeout=START_TIMEOUT_S)
        for i in range(c.babysitters):
            port = free_port(pair=True)
            name = f"sitter-{i}"
            args = [
                "babysitter", "--engine", "sim", "--model", MODEL, "--name", name,
                "--port", str(port), "--registry", self.registry_url, "--registry-token", TOKEN,
                "--health-interval", f"{c.router.health_interval:g}",
                "--heartbeat-interval", str(c.heartbeat_interval),
                "--restart-backoff", "0.2", "--stop-timeout", "5",
                "--idle-timeout", f"{c.idle_timeout:g}", "--standby", "sleep",
                "--log-level", "warning",
                "--", "--profile", str(c.profile), "--engine-id", name, "--seed", str(i),
                "--time-scale", "1", "--log-level", "warning",
            ]  # fmt: skip
            self.processes.append(await spawn_llmsvc(name, args, self.log_dir))
            self.sitter_apis.append(f"http://{HOST}:{port + 1}")
        port = free_port()
        router = await spawn_llmsvc(
            "router",
            ["router", "--port", str(port), "--registry-url", self.registry_url,
             "--registry-token", TOKEN, "--registry-sync-interval", "2",
             "--health-interval", "0.5", "--health-timeout", "1",
             "--hold-timeout", f"{c.hold_timeout:g}", "--strategy", c.router.strategy,
             "--wake-target", f"{c.router.wake_target:g}", "--log-level", "info"],
            self.log_dir,
        )  # fmt: skip
        self.processes.append(router)
        self.router_url = f"http://{HOST}:{port}"
        await wait_healthy(http, router, f"{self.router_url}/health", timeout=START_TIMEOUT_S)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        for child in reversed(self.processes):  # router first, registry last
            await child.stop(10.0)

    def _check_alive(self) -> None:
        for child in self.processes:
            if child.process.returncode is not None:
                raise StartFailed(f"{child.name} exited:\n{child.log_tail()}")

    async def statuses(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """Every babysitter's ``GET /status``."""
        found = []
        for api in self.sitter_apis:
            async with http.get(f"{api}/status") as resp:
                resp.raise_for_status()
                found.append(orjson.loads(await resp.read()))
        return found

    async def wait_standby(self, timeout: float) -> None:
        """Until every babysitter is in ``standby`` (the trace starts from zero)."""
        deadline = time.monotonic() + timeout
        states: list[str] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                self._check_alive()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    states = [str(s.get("state")) for s in await self.statuses(http)]
                    if states and all(state == "standby" for state in states):
                        return
                await asyncio.sleep(0.1)
        raise StartFailed(f"babysitters not all in standby after {timeout:g}s: {states}")

    async def wakes(self) -> int:
        """Wake-ups so far, summed over the babysitters (``standby.wakes`` of ``/status``)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            return sum(
                int((s.get("standby") or {}).get("wakes", 0)) for s in await self.statuses(http)
            )

    async def wake_seconds(self) -> tuple[int, float]:
        """(wakes, seconds summed) of the babysitters' ``llmsvc_babysitter_wake_seconds``
        histograms: each wake from ``POST /wake`` to ready, as the babysitter measured it."""
        count, total = 0, 0.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for api in self.sitter_apis:
                async with http.get(f"{api}/metrics") as resp:
                    text = (await resp.read()).decode()
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name == "llmsvc_babysitter_wake_seconds_count":
                            count += int(sample.value)
                        elif sample.name == "llmsvc_babysitter_wake_seconds_sum":
                            total += sample.value
        return count, total


def prompt_text(index: int, tokens: int, chars_per_token: float) -> str:
    """A prompt the simulated engine counts as exactly ``tokens`` tokens (``ceil(chars /
    chars_per_token)``), its own for every request (no shared prefix to cache)."""
    chars = max(1, int(tokens * chars_per_token))
    word = f"r{index}x"
    return (word * (chars // len(word) + 1))[:chars]


async def replay(
    router_url: str, requests: list[Request], *, chars_per_token: float, timeout: float
) -> list[Outcome]:
    """Send ``requests`` open loop through the router, streamed; one :class:`Outcome` each."""
    spec = LoadSpec(
        url=router_url, model=MODEL, requests=1, stream=True, endpoint="completions",
        timeout=timeout,
    )  # fmt: skip
    outcomes = [Outcome(i, r.arrival_s) for i, r in enumerate(requests)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.monotonic()

        async def send(n: int) -> None:
            r, out = requests[n], outcomes[n]
            out.sent_s = time.monotonic() - began
            body = {
                "model": MODEL, "prompt": prompt_text(n, r.prompt_tokens, chars_per_token),
                "max_tokens": r.output_tokens, "stream": True,
                "stream_options": {"include_usage": True},
            }  # fmt: skip
            headers = {**spec.headers(), "X-Request-Id": f"agree-{n}"}
            sample = await one_request(session, spec, orjson.dumps(body), headers)
            out.ttft_s, out.latency_s, out.error = sample.ttft_s, sample.latency_s, sample.error

        await drive(Schedule(arrivals=[r.arrival_s for r in requests]), send)
    return outcomes


def attach_router_times(outcomes: list[Outcome], router_log: str) -> None:
    """Each outcome's ``hold_s``, ``queue_wait_s`` and token counts from the router's access
    line with its request id (None without one)."""
    lines: dict[str, dict[str, Any]] = {}
    for line in router_log.splitlines():
        start = line.find("{")
        if start < 0 or "hold_s" not in line:
            continue
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, ValueError):
            entry = orjson.loads(line[start:])
            if isinstance(entry, dict) and entry.get("hold_s") is not None:
                lines[str(entry.get("request_id"))] = entry
    for out in outcomes:
        entry = lines.get(f"agree-{out.index}")
        if entry is not None:
            out.hold_s = float(entry["hold_s"])
            wait = entry.get("queue_wait_s")
            out.queue_wait_s = None if wait is None else float(wait)
            prompt, completion = entry.get("prompt_tokens"), entry.get("completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int):
                out.tokens = (prompt, completion)
