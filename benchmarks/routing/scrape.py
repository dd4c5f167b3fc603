"""Counters read from the engines' Prometheus ``/metrics`` (vLLM's names)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """Sums over every engine of the study's counters."""

    prefix_hits: float = 0.0
    prefix_queries: float = 0.0
    finished: float = 0.0

    def __add__(self, other: EngineCounters) -> EngineCounters:
        return EngineCounters(
            prefix_hits=self.prefix_hits + other.prefix_hits,
            prefix_queries=self.prefix_queries + other.prefix_queries,
            finished=self.finished + other.finished,
        )

    def __sub__(self, other: EngineCounters) -> EngineCounters:
        return EngineCounters(
            prefix_hits=self.prefix_hits - other.prefix_hits,
            prefix_queries=self.prefix_queries - other.prefix_queries,
            finished=self.finished - other.finished,
        )

    @property
    def hit_rate(self) -> float | None:
        """Prompt tokens served from the prefix cache, as a fraction of prompt tokens."""
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else None


def parse_counters(text: str) -> EngineCounters:
    values = {"hits": 0.0, "queries": 0.0, "finished": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:prefix_cache_hits_total":
                values["hits"] += sample.value
            elif sample.name == "vllm:prefix_cache_queries_total":
                values["queries"] += sample.value
            elif sample.name == "vllm:request_success_total":
                values["finished"] += sample.value
    return EngineCounters(
        prefix_hits=values["hits"], prefix_queries=values["queries"], finished=values["finished"]
    )


async def scrape(urls: Iterable[str]) -> EngineCounters:
    """The counters summed over the engines at ``urls``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

        async def one(url: str) -> EngineCounters:
            async with http.get(f"{url}/metrics") as resp:
                resp.raise_for_status()
                return parse_counters(await resp.text())

        parts = await asyncio.gather(*(one(url) for url in urls))
    total = EngineCounters()
    for part in parts:
        total = total + part
    return total
