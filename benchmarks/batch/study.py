"""The batch benchmark's phases on one fleet, and the run's results document.

1. ``capacity``: a closed loop with as many requests in flight as the fleet has slots:
   the requests per second it finishes (the interactive rate is a share of this).
2. ``alone`` (a): streamed interactive requests (``standard``, Poisson) at
   ``interactive_load`` x capacity for ``alone_seconds``, through a router that has the
   batch service behind it but no batch running.
3. ``with_batch`` (b): a ``lines``-line batch uploaded and created through the router
   with the ``openai`` client; once its first line has ended, the same interactive load
   (the same seeded arrivals, longer) until the batch ends, while the batch is polled
   (``GET /v1/batches/{id}`` through the router, every ``poll_s``) for its progress and
   ETA, and the runner's window read from the batch service's ``/metrics``.

The interactive load runs as long as the batch does, so the batch sees a steady load
from its first line to its last: the ETA accuracy is measured on that same run.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from benchmarks.batch.report import Poll, eta_errors, lines_per_second, ttft_summary
from benchmarks.batch.stack import Stack
from benchmarks.flow.fleet import MODEL, EngineTiming, Fleet, RouterConfig
from benchmarks.flow.traffic import (
    PRIORITY_HEADER,
    Flow,
    Outcome,
    _one,
    attach_waits,
    closed_loop,
    plan,
    queue_waits,
)

from llmsvc.bench.load import LoadSpec
from llmsvc.bench.schedule import Schedule, drive
from llmsvc.bench.stats import percentile

ENDED = ("completed", "expired", "cancelled", "failed")
WAITED_S = 0.001  # a queue wait the access log rounds to 0.000 s is no wait
CANCEL_GRACE_S = 60.0  # how long a cancelled batch may take to end before the run gives up
CONCURRENCY = re.compile(r"^llmsvc_batch_concurrency (\S+)$", re.MULTILINE)


# 20 ms of prefill, 200 ms of decode: 220 ms on a slot, so 4 engines x 6 slots finish about
# 109 requests/s, and a 10,000-line batch on the 40 % left takes about four minutes.
TIMING = EngineTiming(
    slots=6, prefill_tokens_per_s=1000.0, decode_tokens_per_s=25.0, prompt_tokens=20, max_tokens=6
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run depends on (written into the results)."""

    engines: int = 4
    timing: EngineTiming = field(default_factory=lambda: TIMING)
    lines: int = 10_000
    interactive_load: float = 0.6
    alone_seconds: float = 60.0
    capacity_seconds: float = 8.0
    batch_timeout: float = 600.0
    completion_window: str = "1h"
    poll_s: float = 0.5
    queue_size: int = 1000
    queue_timeout: float = 60.0
    seed: int = 15

    @property
    def slots(self) -> int:
        return self.engines * self.timing.slots


QUICK = Settings(
    engines=2,
    timing=EngineTiming(slots=2, prefill_tokens_per_s=1000.0, decode_tokens_per_s=50.0,
                        prompt_tokens=10, max_tokens=3),
    lines=150,
    alone_seconds=2.0,
    capacity_seconds=1.5,
    batch_timeout=60.0,
)  # fmt: skip


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def batch_input(lines: int, timing: EngineTiming, seed: int) -> bytes:
    """The batch's JSONL: chat requests as long as the interactive ones (prompt, answer)."""
    spec = LoadSpec(
        url="http://unused", model=MODEL, requests=lines, prompt_tokens=timing.prompt_tokens,
        max_tokens=timing.max_tokens, seed=seed,
    )  # fmt: skip
    out = bytearray()
    for n in range(lines):
        line = {
            "custom_id": f"line-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": orjson.loads(spec.body(n)),
        }
        out += orjson.dumps(line) + b"\n"
    return bytes(out)


async def interactive(
    url: str, rate: float, seconds: float, seed: int, timing: EngineTiming, label: str,
    drain: asyncio.Event | None = None,
) -> list[Outcome]:  # fmt: skip
    """Streamed ``standard`` requests, Poisson at ``rate``, for ``seconds`` or until
    ``drain`` (those in flight finish): every request's outcome."""
    arrivals = plan([Flow("standard", rate)], seconds, seed)
    spec = LoadSpec(
        url=url, model=MODEL, duration=seconds, stream=True, prompt_tokens=timing.prompt_tokens,
        max_tokens=timing.max_tokens, seed=seed,
    )  # fmt: skip
    outcomes: list[Outcome] = []
    headers = {"Content-Type": "application/json", PRIORITY_HEADER: "standard"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def send(n: int) -> None:
            out = Outcome(flow=0, request_id=f"{label}-{n}", sent=arrivals[n][0])
            outcomes.append(out)
            mine = headers | {"X-Request-Id": out.request_id}
            await _one(session, spec.target, spec.body(n), mine, out)

        await drive(Schedule(arrivals=[at for at, _ in arrivals]), send, drain=drain)
    return sorted(outcomes, key=lambda o: o.sent)


def summary(outcomes: list[Outcome], router_log: Path) -> dict[str, Any]:
    """TTFT percentiles, failures, and how many requests waited for a slot in the router's
    queue (its access log's ``queue_wait_s``, read once the router has stopped): what
    tells a wait for a slot the batch held from a slower process."""
    attach_waits(outcomes, queue_waits(router_log.read_text(errors="replace")))
    waits = sorted(o.queue_wait for o in outcomes if o.queue_wait is not None)
    ttfts = [o.ttft for o in outcomes if o.ok and o.ttft is not None]
    failed: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            failed[o.rejection] = failed.get(o.rejection, 0) + 1
    return ttft_summary(ttfts, len(outcomes)) | {
        "failed": dict(sorted(failed.items())),
        "queue_waits_logged": len(waits),
        "waited_for_a_slot": sum(1 for w in waits if w >= WAITED_S),
        "queue_wait_p95_s": round(percentile(waits, 95), 4) if waits else None,
    }


class Study:
    def __init__(self, settings: Settings, work: Path, fleet: Fleet) -> None:
        self.s = settings
        self.work = work
        self.fleet = fleet

    def stack(self, name: str) -> Stack:
        return Stack(self.fleet, self.work / name, self.s.queue_size, self.s.queue_timeout)

    async def capacity(self) -> float:
        s = self.s
        print(f"== capacity: closed loop, {s.slots} in flight", flush=True)
        config = RouterConfig(flow=True, queue_size=s.queue_size, queue_timeout=s.queue_timeout)
        async with self.fleet.router(config, self.work / "capacity") as front:
            rps = await closed_loop(
                front.url, MODEL, concurrency=s.slots, seconds=s.capacity_seconds,
                prompt_tokens=s.timing.prompt_tokens, max_tokens=s.timing.max_tokens,
            )  # fmt: skip
        print(f"   {rps:.2f} requests/s (computed {s.timing.capacity_rps(s.engines):.2f})")
        return rps

    async def alone(self, rate: float) -> dict[str, Any]:
        s = self.s
        print(f"== (a) interactive alone: {rate:.2f}/s for {s.alone_seconds:g} s", flush=True)
        load = loadavg()
        async with self.stack("alone") as stack:
            assert stack.router is not None
            outcomes = await interactive(
                stack.router.url, rate, s.alone_seconds, s.seed, s.timing, "alone"
            )
        interactive_row = summary(outcomes, stack.log_dir / "router.log")
        result = {"seconds": s.alone_seconds, "interactive": interactive_row}
        print(f"   {result['interactive']}", flush=True)
        return result | {"load_average_1m": {"start": load, "end": loadavg()}}

    async def with_batch(self, rate: float) -> dict[str, Any]:
        s = self.s
        print(f"== (b) interactive {rate:.2f}/s + a {s.lines}-line batch", flush=True)
        load = loadavg()
        async with self.stack("with-batch") as stack:
            assert stack.router is not None
            assert stack.batch is not None
            batch_id = await asyncio.to_thread(self.submit, stack.router.url)
            polls: list[Poll] = []
            windows: list[tuple[float, float]] = []
            ended = asyncio.Event()
            started = asyncio.Event()
            poller = asyncio.create_task(self.poll(stack, batch_id, polls, windows, started, ended))
            try:
                await self.first_line(poller, started)
                began = time.time()
                outcomes = await interactive(
                    stack.router.url, rate, s.batch_timeout, s.seed, s.timing, "mixed", ended
                )
                stopped = time.time()
                final = await poller
            finally:
                poller.cancel()
            report = await self.sla_report(stack, batch_id)
        created = float(final["created_at"])
        finish_at = final.get("completed_at") or final.get("expired_at") or stopped
        counts = final["request_counts"]
        batch = {
            "id": batch_id,
            "lines": s.lines,
            "status": final["status"],
            "completed": counts["completed"],
            "failed": counts["failed"],
            "duration_s": round(float(finish_at) - created, 2),
            # Lines ended from the start of the interactive load to the batch's last poll.
            "lines_per_s": _round(lines_per_second(polls, began, polls[-1].at)),
            "eta_errors": eta_errors(polls, created, float(finish_at)),
            "sla_report_eta_error": report,
            "concurrency": windows[-1][1] if windows else None,
            "concurrency_samples": [[round(t - created, 1), c] for t, c in windows],
            "polls": [[round(p.at - created, 2), p.done, p.eta] for p in polls],
            "llmsvc": final.get("llmsvc"),
        }
        result = {
            "seconds": round(stopped - began, 1),
            "interactive": summary(outcomes, stack.log_dir / "router.log"),
            "batch": batch,
        }
        print(f"   {result['interactive']}", flush=True)
        print(
            f"   batch {batch['status']} in {batch['duration_s']} s, {batch['lines_per_s']} "
            f"lines/s during the load, ETA errors {batch['eta_errors']}",
            flush=True,
        )
        return result | {"load_average_1m": {"start": load, "end": loadavg()}}

    async def first_line(
        self, poller: asyncio.Task[dict[str, Any]], started: asyncio.Event
    ) -> None:
        """Wait until the batch's first line has ended (the poller failing is raised)."""
        waiter = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait(
                [waiter, poller], timeout=self.s.batch_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if poller.done():
            poller.result()  # raises what the poller met
        if not started.is_set():
            raise RuntimeError(f"no line of the batch ended within {self.s.batch_timeout:g} s")

    def submit(self, router_url: str) -> str:
        """Upload and create the batch through the router with the official client."""
        from openai import OpenAI

        client = OpenAI(base_url=f"{router_url}/v1", api_key="batch-bench", max_retries=0)
        data = batch_input(self.s.lines, self.s.timing, self.s.seed + 1)
        uploaded = client.files.create(file=("bench.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions",
            completion_window=self.s.completion_window,  # type: ignore[arg-type]
        )  # fmt: skip
        print(f"   {batch.id}: {batch.status}, {len(data):,} bytes uploaded", flush=True)
        return batch.id

    async def poll(
        self, stack: Stack, batch_id: str, polls: list[Poll], windows: list[tuple[float, float]],
        started: asyncio.Event, ended: asyncio.Event,
    ) -> dict[str, Any]:  # fmt: skip
        """Poll the batch until it ends (the last object); ``started`` once a line ended."""
        assert stack.router is not None
        assert stack.batch is not None
        deadline = time.monotonic() + self.s.batch_timeout
        last: dict[str, Any] = {}
        cancelled = False
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            n = 0
            while True:
                async with http.get(f"{stack.router.url}/v1/batches/{batch_id}") as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"GET batch: {resp.status} {body[:300]!r}")
                last = orjson.loads(body)
                counts = last["request_counts"]
                eta = (last.get("llmsvc") or {}).get("eta")
                done = counts["completed"] + counts["failed"]
                polls.append(Poll(time.time(), done, counts["total"] or self.s.lines, eta))
                if done > 0:
                    started.set()
                if n % 4 == 0:
                    window = await self.window(http, stack)
                    if window is not None:
                        windows.append((time.time(), window))
                n += 1
                if last["status"] in ENDED:
                    break
                if time.monotonic() > deadline + CANCEL_GRACE_S:
                    raise RuntimeError(f"the batch was still {last['status']} after its cancel")
                if time.monotonic() > deadline and not cancelled:
                    print(f"   not done in {self.s.batch_timeout:g} s: cancelled", flush=True)
                    async with http.post(f"{stack.router.url}/v1/batches/{batch_id}/cancel"):
                        cancelled = True
                await asyncio.sleep(self.s.poll_s)
        started.set()
        ended.set()
        return last

    @staticmethod
    async def window(http: aiohttp.ClientSession, stack: Stack) -> float | None:
        assert stack.batch is not None
        try:
            async with http.get(f"{stack.batch.url}/metrics", headers=stack.batch.headers) as r:
                found = CONCURRENCY.search((await r.read()).decode(errors="replace"))
        except (aiohttp.ClientError, TimeoutError):
            return None
        return float(found.group(1)) if found else None

    @staticmethod
    async def sla_report(stack: Stack, batch_id: str) -> Any:
        """``eta_error`` of this batch in the batch service's ``/sla/report`` (None if absent)."""
        assert stack.batch is not None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            try:
                async with http.get(
                    f"{stack.batch.url}/sla/report", headers=stack.batch.headers
                ) as resp:
                    if resp.status != 200:
                        return None
                    body = orjson.loads(await resp.read())
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
                return None
        for entry in body.get("batches", []) if isinstance(body, dict) else []:
            if isinstance(entry, dict) and entry.get("id", entry.get("batch_id")) == batch_id:
                return entry.get("eta_error")
        return None

    async def run(self) -> dict[str, Any]:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        capacity = await self.capacity()
        rate = self.s.interactive_load * capacity
        alone = await self.alone(rate)
        mixed = await self.with_batch(rate)
        a = alone["interactive"]["ttft_p95_s"]
        b = mixed["interactive"]["ttft_p95_s"]
        spare = (1 - self.s.interactive_load) * capacity
        share = mixed["batch"]["lines_per_s"]
        return {
            "date": started,
            "settings": asdict(self.s) | {"slots": self.s.slots},
            "capacity_rps": {
                "measured": round(capacity, 3),
                "computed": round(self.s.timing.capacity_rps(self.s.engines), 3),
            },
            "interactive_rps": round(rate, 3),
            "spare_capacity_rps": round(spare, 3),
            "idle_ttft_s": round(self.s.timing.ttft_s, 4),
            "service_s": round(self.s.timing.service_s, 4),
            "ttft_p95_ratio": round(b / a, 4) if a and b else None,
            "batch_share_of_spare": round(share / spare, 4) if share is not None else None,
            "phases": {"alone": alone, "with_batch": mixed},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def _study(settings: Settings, work: Path) -> dict[str, Any]:
    # SIGTERM (a test's or make's timeout) cancels the run, so that every process is stopped.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with Fleet(settings.engines, settings.timing, work / "engines") as fleet:
        return await Study(settings, work, fleet).run()


def run_study(settings: Settings, work: Path) -> dict[str, Any]:
    """Every phase on one fleet of engines (started and stopped here)."""
    (work / "engines").mkdir(parents=True, exist_ok=True)
    return asyncio.run(_study(settings, work))
