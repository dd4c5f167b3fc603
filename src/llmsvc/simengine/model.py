"""The pure part of the timing model: tokens, prefix cache, KV budget, rates, text.

Nothing here touches the event loop or the clock, so every formula is unit
tested directly. ``docs/simulated-engine.md`` states the same formulas.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import orjson

Prompt = str | Sequence[int]
"""A prompt as text, or as token ids (each id is one token)."""

VOCABULARY = (
    "the", "model", "token", "cache", "engine", "request", "stream", "serve", "batch", "prefix",
    "latency", "queue", "decode", "prefill", "router", "replica", "weight", "tensor", "kernel",
    "memory", "block", "sequence", "context", "answer", "simple", "fast", "steady", "quiet",
    "bright", "river", "stone", "cloud", "signal", "window", "garden", "number", "letter",
    "morning", "evening", "mountain", "ocean", "forest", "city", "light", "sound", "time",
    "space", "world", "data", "value", "system", "network", "node", "graph", "path", "line",
    "point", "shape", "color", "paper", "music", "story", "simulated", "output",
)  # fmt: skip


def count_tokens(prompt: Prompt, chars_per_token: float) -> int:
    """Tokens in a prompt: ``ceil(chars / chars_per_token)`` for text, ``len`` for ids."""
    if isinstance(prompt, str):
        return math.ceil(len(prompt) / chars_per_token)
    return len(prompt)


def block_hashes(prompt: Prompt, *, block_size: int, chars_per_token: float) -> list[int]:
    """Chained hashes of the prompt's full blocks, as vLLM's automatic prefix caching.

    Block ``i`` covers tokens ``[i*block_size, (i+1)*block_size)``; its hash
    covers the block's content and the hash of the block before it, so two
    prompts share a block hash only when they share everything up to it.
    Hashes are per process (Python's ``hash``): the cache is in memory only.
    """
    hashes: list[int] = []
    parent = 0
    if isinstance(prompt, str):
        width = max(1, round(block_size * chars_per_token))
        for start in range(0, len(prompt) - width + 1, width):
            parent = hash((parent, prompt[start : start + width]))
            hashes.append(parent)
    else:
        for start in range(0, len(prompt) - block_size + 1, block_size):
            parent = hash((parent, tuple(prompt[start : start + block_size])))
            hashes.append(parent)
    return hashes


class PrefixCache:
    """An LRU set of block hashes with a capacity in blocks.

    :meth:`match` counts how many leading blocks of a prompt are cached (a
    chain stops at the first miss) and refreshes them; :meth:`insert` adds a
    prompt's blocks after its prefill, evicting the least recently used.
    """

    def __init__(self, *, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    def match(self, hashes: Sequence[int]) -> int:
        hits = 0
        for block in hashes:
            if block not in self._blocks:
                break
            self._blocks.move_to_end(block)
            hits += 1
        return hits

    def clear(self) -> None:
        """Forget every block (a sleeping engine drops its KV cache)."""
        self._blocks.clear()

    def insert(self, hashes: Sequence[int]) -> None:
        if self.capacity_blocks <= 0:
            return
        for block in hashes:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)


def cached_tokens(hit_blocks: int, *, block_size: int, prompt_tokens: int) -> int:
    """Prompt tokens served from the prefix cache; the last token is always computed."""
    return max(0, min(hit_blocks * block_size, prompt_tokens - 1))


class KvBudget:
    """The KV cache as a token budget: a running request reserves prompt + max output."""

    def __init__(self, *, capacity_tokens: int) -> None:
        self.capacity_tokens = capacity_tokens
        self.used_tokens = 0

    def fits(self, tokens: int) -> bool:
        return self.used_tokens + tokens <= self.capacity_tokens

    def reserve(self, tokens: int) -> None:
        self.used_tokens += tokens

    def release(self, tokens: int) -> None:
        self.used_tokens = max(0, self.used_tokens - tokens)

    @property
    def usage(self) -> float:
        """Fraction in use, 0..1 (``vllm:kv_cache_usage_perc``)."""
        return min(1.0, self.used_tokens / self.capacity_tokens)


def prefill_seconds(uncached_tokens: int, tokens_per_s: float) -> float:
    """Time to prefill: ``uncached_tokens / prefill_tokens_per_s``."""
    return uncached_tokens / tokens_per_s


def decode_seconds(*, tokens_per_s: float, slowdown: float, running: int) -> float:
    """Time of one decode step: ``(1 + slowdown * (running - 1)) / decode_tokens_per_s``."""
    return (1.0 + slowdown * max(0, running - 1)) / tokens_per_s


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What one forward pass of the batched scheduler processes.

    ``decode_seqs`` sequences decode one token each; ``chunks[i]`` prompt
    tokens of the ``i``-th prefilling sequence (in arrival order) are
    prefilled, possibly 0 when the step's budget ran out before it.
    """

    decode_seqs: int
    chunks: tuple[int, ...]

    @property
    def prefill_tokens(self) -> int:
        return sum(self.chunks)


def plan_step(
    *, decode_seqs: int, prefill_left: Sequence[int], max_batched_tokens: int
) -> StepPlan:
    """One step's tokens, as vLLM's chunked prefill: decodes first, then prefill chunks.

    The step processes at most ``max_batched_tokens`` tokens: one per decoding
    sequence, then the rest of the budget goes to the prefilling sequences in
    arrival order, each taking ``min(its uncached tokens left, budget left)``.
    """
    budget = max(0, max_batched_tokens - decode_seqs)
    chunks: list[int] = []
    for left in prefill_left:
        take = min(left, budget)
        chunks.append(take)
        budget -= take
    return StepPlan(decode_seqs=decode_seqs, chunks=tuple(chunks))


def step_seconds(
    plan: StepPlan,
    *,
    prefill_tokens_per_s: float,
    decode_tokens_per_s: float,
    slowdown: float,
    prefill_overhead_s: float = 0.0,
) -> float:
    """Duration of one step: its decode part plus its prefill part.

    ``decode_seconds(running=decode_seqs)`` (0 without decodes) plus, when the
    step prefills, ``prefill_overhead_s + prefill_tokens / prefill_tokens_per_s``,
    so a sequence alone prefills and decodes as in the independent model (with
    the overhead 0), and tokens of one request lengthen the step every other
    running request waits on.
    """
    decode = 0.0
    if plan.decode_seqs:
        decode = decode_seconds(
            tokens_per_s=decode_tokens_per_s, slowdown=slowdown, running=plan.decode_seqs
        )
    if not plan.prefill_tokens:
        return decode
    return decode + prefill_overhead_s + plan.prefill_tokens / prefill_tokens_per_s


def jitter_factor(rng: random.Random, jitter: float) -> float:
    """A duration multiplier uniform in ``[1 - jitter, 1 + jitter]``."""
    if jitter <= 0:
        return 1.0
    return 1.0 + jitter * rng.uniform(-1.0, 1.0)


def step_noise_factor(rng: random.Random, sigma: float) -> float:
    """A step's duration multiplier: lognormal with median 1, ``exp(sigma * N(0, 1))``.

    A real engine's steps spread (the OS, caches, other tenants): llama.cpp's
    inter-token gaps here have p95/p50 near 1.8, which a lognormal with
    ``sigma = ln(p95 / p50) / 1.645`` reproduces (``fit_step_noise``). The
    median is 1 so that the fitted rates (from median gaps) stay the medians.
    """
    if sigma <= 0:
        return 1.0
    return math.exp(sigma * rng.gauss(0.0, 1.0))


Z95 = 1.6448536269514722
"""The standard normal's 95th percentile: ``ln(p95 / p50) = sigma * Z95`` for a lognormal."""


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """What the engine needs of a prompt."""

    tokens: int
    blocks: list[int]
    digest: str


def describe_prompt(
    model: str, prompt: Prompt, *, block_size: int, chars_per_token: float
) -> PromptInfo:
    raw = prompt.encode() if isinstance(prompt, str) else orjson.dumps(list(prompt))
    digest = hashlib.blake2b(model.encode() + b"\0" + raw, digest_size=16).hexdigest()
    return PromptInfo(
        tokens=count_tokens(prompt, chars_per_token),
        blocks=block_hashes(prompt, block_size=block_size, chars_per_token=chars_per_token),
        digest=digest,
    )


def output_tokens(seed: int, digest: str, count: int) -> list[str]:
    """The generated tokens: words drawn by an RNG seeded from (seed, prompt digest).

    The same seed and prompt give the same text in every process, and a
    shorter output is a prefix of a longer one.
    """
    words = random.Random(f"{seed}:{digest}").choices(VOCABULARY, k=count)
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


@cache
def encoded_token(token: str) -> bytes:
    """A token as a JSON string, encoded once (streaming writes it per chunk)."""
    return orjson.dumps(token)
