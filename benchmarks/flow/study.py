"""The phases of the overload benchmark, each on a fresh fleet, and the run's results document.

1. ``capacity``: a closed loop with exactly as many requests in flight as the
   fleet has slots (flow control on, so none waits in an engine): the
   requests per second the fleet finishes. The rates below are fractions of
   this measured figure (the computed one is reported beside it).
2. ``idle``: ``critical`` and the small tenant's ``standard`` requests at
   ``--idle-load`` of capacity: the TTFT of a request that never waits.
3. ``overload-on`` / ``overload-off``: ``--overload`` x capacity for
   ``--seconds``, the issue's mix (critical 10 %, standard 60 %, sheddable 30 %),
   the same seeded arrivals both times; with slots and the router's queue, and
   without (engines queue blindly, the behaviour before issue 13).
4. ``fairness-on`` / ``fairness-off``: two tenants (a keys file), ``big``
   sending ``--fairness-ratio`` times ``small``'s rate, together
   ``--fairness-load`` x capacity, all ``standard``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.flow.fleet import MODEL, EngineTiming, Fleet, RouterConfig
from benchmarks.flow.summary import by_priority, by_tenant, group
from benchmarks.flow.traffic import (
    Flow,
    Outcome,
    attach_waits,
    closed_loop,
    queue_waits,
    run_traffic,
)

MIX = (("critical", 0.10), ("standard", 0.60), ("sheddable", 0.30))
# Plain keys (one a line): tenants key-<first 8 hex of sha256>, no limits; named here by role.
KEYS = {"big": "sk-flow-bench-big-tenant-0000000000", "small": "sk-flow-bench-small-tenant-000000"}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run depends on (written into the results)."""

    engines: int = 3
    timing: EngineTiming = field(default_factory=EngineTiming)
    seconds: float = 30.0
    overload: float = 1.5
    idle_load: float = 0.2
    idle_seconds: float = 20.0
    capacity_seconds: float = 8.0
    queue_size: int = 64
    queue_timeout: float = 10.0
    fairness_seconds: float = 30.0
    fairness_ratio: float = 20.0
    fairness_load: float = 1.2
    seed: int = 13

    @property
    def slots(self) -> int:
        return self.engines * self.timing.slots


QUICK = Settings(
    engines=2,
    timing=EngineTiming(slots=2, max_tokens=4),
    seconds=1.5,
    idle_seconds=1.5,
    capacity_seconds=1.5,
    queue_size=4,
    queue_timeout=1.0,
    fairness_seconds=1.5,
    fairness_ratio=4.0,
)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class Study:
    def __init__(self, settings: Settings, work: Path, fleet: Fleet) -> None:
        self.s = settings
        self.work = work
        self.fleet = fleet
        self.keys_file = work / "keys.txt"

    def router(self, flow: bool, tenants: bool = False) -> RouterConfig:
        keys = self.keys_file if tenants else None
        return RouterConfig(
            flow=flow, queue_size=self.s.queue_size, queue_timeout=self.s.queue_timeout,
            keys_file=keys,
        )  # fmt: skip

    async def phase(
        self, name: str, router: RouterConfig, flows: list[Flow], seconds: float
    ) -> dict[str, Any]:
        print(
            f"== {name}: {seconds:g} s, "
            + ", ".join(f"{f.priority}/{f.tenant} {f.rate:.2f}/s" for f in flows),
            flush=True,
        )
        load, began = loadavg(), time.monotonic()
        async with self.fleet.router(router, self.work / name) as front:
            outcomes = await run_traffic(
                front.url, MODEL, flows, seconds=seconds, seed=self.s.seed,
                prompt_tokens=self.s.timing.prompt_tokens, max_tokens=self.s.timing.max_tokens,
                label=name,
            )  # fmt: skip
            await asyncio.sleep(0.5)  # the access log's last lines
            attach_waits(outcomes, queue_waits(front.log.read_text(errors="replace")))
        key = by_tenant if router.keys_file else by_priority
        rows = group(flows, outcomes, seconds, key)
        result: dict[str, Any] = {
            "flow_control": router.flow,
            "seconds": seconds,
            "flows": [asdict(f) | {"key": None} for f in flows],
            "load_average_1m": {"start": load, "end": loadavg()},
            "rows": rows,
        }
        self.print_rows(rows)
        print(f"   ({time.monotonic() - began:.1f} s, router start and stop included)", flush=True)
        return result | {"outcomes": [_compact(o) for o in outcomes]}

    @staticmethod
    def print_rows(rows: dict[str, dict[str, Any]]) -> None:
        for name, row in rows.items():
            print(f"   {name}: " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    async def capacity(self) -> float:
        print(f"== capacity: closed loop, {self.s.slots} in flight", flush=True)
        async with self.fleet.router(self.router(True), self.work / "capacity") as front:
            rps = await closed_loop(
                front.url, MODEL, concurrency=self.s.slots, seconds=self.s.capacity_seconds,
                prompt_tokens=self.s.timing.prompt_tokens, max_tokens=self.s.timing.max_tokens,
            )  # fmt: skip
        print(
            f"   {rps:.2f} requests/s (computed {self.s.timing.capacity_rps(self.s.engines):.2f})"
        )
        return rps

    async def run(self) -> dict[str, Any]:
        self.keys_file.write_text("\n".join(KEYS.values()) + "\n")
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        capacity = await self.capacity()
        s = self.s
        small = s.fairness_load * capacity / (s.fairness_ratio + 1)
        phases: dict[str, Any] = {}
        idle = [
            Flow("critical", s.idle_load * capacity / 2, "small", KEYS["small"]),
            Flow("standard", s.idle_load * capacity / 2, "small", KEYS["small"]),
        ]
        phases["idle"] = await self.phase(
            "idle", self.router(True, tenants=True), idle, s.idle_seconds
        )
        mix = [Flow(label, share * s.overload * capacity) for label, share in MIX]
        phases["overload-on"] = await self.phase("overload-on", self.router(True), mix, s.seconds)
        phases["overload-off"] = await self.phase(
            "overload-off", self.router(False), mix, s.seconds
        )
        tenants = [
            Flow("standard", small * s.fairness_ratio, "big", KEYS["big"]),
            Flow("standard", small, "small", KEYS["small"]),
        ]
        for name, flow in (("fairness-on", True), ("fairness-off", False)):
            phases[name] = await self.phase(
                name, self.router(flow, tenants=True), tenants, s.fairness_seconds
            )
        return {
            "date": started,
            # One slot-turn: the mean time between two slots freeing on the busy fleet.
            "settings": asdict(s) | {"slots": s.slots, "slot_turn_s": round(1 / capacity, 4)},
            "capacity_rps": {
                "measured": round(capacity, 3),
                "computed": round(s.timing.capacity_rps(s.engines), 3),
            },
            "idle_ttft_s": round(s.timing.ttft_s, 4),
            "phases": phases,
        }


def _compact(o: Outcome) -> list[Any]:
    """One request in the results file: [flow, sent, status, code, ttft, latency, queue wait]."""

    def rnd(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return [
        o.flow,
        round(o.sent, 3),
        o.status,
        o.code,
        rnd(o.ttft),
        rnd(o.latency),
        rnd(o.queue_wait),
    ]


async def _study(settings: Settings, work: Path) -> dict[str, Any]:
    async with Fleet(settings.engines, settings.timing, work / "engines") as fleet:
        return await Study(settings, work, fleet).run()


def run_study(settings: Settings, work: Path) -> dict[str, Any]:
    """Every phase on one fleet of engines (started and stopped here)."""
    (work / "engines").mkdir(parents=True, exist_ok=True)
    return asyncio.run(_study(settings, work))
