"""Timings of a real OpenAI endpoint, as ``llmsvc sim-engine fit`` needs them.

Each probe is one streamed ``/v1/completions`` request (``stream_options.
include_usage``) whose chunks are timed on arrival: the time to the first
token, the gaps between tokens, and the prompt's token count from ``usage``.
Only chunks with text count as tokens (not the closing one of empty text).
Prompts are random words after a unique nonce, so that no probe hits another
probe's prefix cache unless it means to.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

WORDS = (
    "alpha", "river", "stone", "cloud", "garden", "number", "letter", "morning", "ocean",
    "forest", "city", "light", "sound", "window", "paper", "music", "story", "signal",
)  # fmt: skip


class ProbeError(Exception):
    """The endpoint answered something a probe cannot use (one line)."""


@dataclass(frozen=True, slots=True)
class Timing:
    """One streamed request as the client saw it."""

    ttft: float  # seconds from sending to the first token chunk
    gaps: tuple[float, ...]  # seconds between consecutive token chunks
    prompt_tokens: int  # from usage (0 when the endpoint sent none)
    prompt_chars: int
    start: float = 0.0  # time.perf_counter() when the request was sent


def make_prompt(rng: random.Random, chars: int, *, nonce: str) -> str:
    """About ``chars`` characters of random words, starting with ``nonce``."""
    words = [nonce]
    length = len(nonce)
    while length < chars:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def _has_token(chunk: dict[str, Any]) -> bool:
    """Whether a chunk carries generated text: not the role, finish or usage chunk.

    vLLM, llama.cpp and the simulated engine all end a stream with a chunk of
    empty text and the ``finish_reason`` right after the last token; counted
    as a token it would add a gap of about 0 per request to the inter-token
    latencies.
    """
    for choice in chunk.get("choices") or ():
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


class Prober:
    """Streams completions to one endpoint and times them."""

    def __init__(self, session: aiohttp.ClientSession, *, url: str, model: str) -> None:
        self.session = session
        self.endpoint = url.rstrip("/") + "/v1/completions"
        self.model = model

    async def stream(self, prompt: str, max_tokens: int) -> Timing:
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
        }
        start = time.perf_counter()
        stamps: list[float] = []
        prompt_tokens = 0
        async with self.session.post(self.endpoint, json=body) as resp:
            if resp.status != 200:
                text = (await resp.text())[:200].replace("\n", " ")
                raise ProbeError(f"{self.endpoint} answered {resp.status}: {text}")
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                chunk = orjson.loads(line[6:])
                if _has_token(chunk):
                    stamps.append(time.perf_counter())
                usage = chunk.get("usage")
                if usage:
                    prompt_tokens = int(usage.get("prompt_tokens") or 0)
        if not stamps:
            raise ProbeError(f"{self.endpoint} streamed no token")
        gaps = tuple(b - a for a, b in itertools.pairwise(stamps))
        return Timing(stamps[0] - start, gaps, prompt_tokens, len(prompt), start)

    async def after(self, delay: float, prompt: str, max_tokens: int) -> Timing:
        """The prompt streamed ``delay`` seconds from now."""
        await asyncio.sleep(delay)
        return await self.stream(prompt, max_tokens)

    async def together(self, prompts: list[str], max_tokens: int) -> list[Timing]:
        """The prompts streamed at once."""
        return list(await asyncio.gather(*(self.stream(p, max_tokens) for p in prompts)))


def median_gap(timings: list[Timing]) -> float:
    gaps = [gap for timing in timings for gap in timing.gaps]
    if not gaps:
        raise ProbeError("no inter-token gaps: ask for more than one output token")
    return statistics.median(gaps)
