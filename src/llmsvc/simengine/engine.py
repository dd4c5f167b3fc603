"""One request's life in the simulated engine: queue, prefill, decode, metrics.

:meth:`Engine.generate` is an async generator of output tokens: it waits for a
running slot (:mod:`.scheduler`), sleeps the prefill time of the prompt's
uncached tokens, yields the first token, then sleeps one decode step per
further token, each step's length evaluated with the number of sequences
running at that moment. Every duration is multiplied by ``--time-scale`` and a
jitter factor. Cancelling the consumer (a client that went away) frees the
slot and the KV reservation at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from llmsvc.core.errors import ApiError, BadRequest, NotFound, echoed
from llmsvc.simengine.metrics import ModelMetrics, create_metrics
from llmsvc.simengine.model import (
    KvBudget,
    PrefixCache,
    Prompt,
    PromptInfo,
    cached_tokens,
    decode_seconds,
    describe_prompt,
    jitter_factor,
    output_tokens,
    prefill_seconds,
)
from llmsvc.simengine.scheduler import Scheduler, Ticket
from llmsvc.simengine.settings import SimEngineSettings


@dataclass(frozen=True, slots=True)
class Job:
    """A validated request, ready to run."""

    model: str
    prompt: PromptInfo
    max_tokens: int


@dataclass(slots=True)
class _Progress:
    """What happened to one request so far, for its metrics."""

    arrival: float
    admitted: float = 0.0
    first_token: float = 0.0
    prompt_tokens: int = 0
    produced: int = 0
    finished_reason: str = "abort"


class Engine:
    """The simulated engine shared by every request of one app."""

    def __init__(self, settings: SimEngineSettings, *, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.engine_id = settings.resolved_engine_id()
        self.models = tuple(dict.fromkeys(settings.model_name))
        self.kv = KvBudget(capacity_tokens=settings.kv_cache_tokens)
        self.scheduler = Scheduler(max_num_seqs=settings.max_num_seqs, kv=self.kv)
        self.prefix_cache = PrefixCache(
            capacity_blocks=settings.prefix_cache_tokens // settings.block_size
        )
        self._metrics = create_metrics(
            registry, self.scheduler, self.models, max_model_len=settings.kv_cache_tokens
        )
        self._jitter_rng = random.Random(f"{settings.seed}:jitter")
        self._fault_rng = random.Random(f"{settings.seed}:faults")

    # -- validation ------------------------------------------------------------

    def check_model(self, model: str) -> None:
        if model not in self.models:
            raise NotFound(
                f"The model '{echoed(model)}' does not exist.",
                param="model",
                code="model_not_found",
            )

    def prepare(self, model: str, prompt: Prompt, max_tokens: int | None, *, param: str) -> Job:
        """A runnable job, or 404 (unknown model) / 400 (longer than the KV cache)."""
        self.check_model(model)
        s = self.settings
        info = describe_prompt(
            model, prompt, block_size=s.block_size, chars_per_token=s.chars_per_token
        )
        output = max_tokens if max_tokens is not None else s.default_max_tokens
        total = info.tokens + output
        if total > s.kv_cache_tokens:
            raise BadRequest(
                f"This model's maximum context length is {s.kv_cache_tokens} tokens. However, "
                f"you requested {total} tokens ({info.tokens} in the {param}, {output} in the "
                "completion). Please reduce the length of the messages or completion.",
                param=param,
                code="context_length_exceeded",
            )
        return Job(model=model, prompt=info, max_tokens=output)

    def inject_fault(self) -> None:
        """Raise a 500 for a ``--fail-rate`` fraction of requests (seeded)."""
        rate = self.settings.fail_rate
        if rate > 0 and self._fault_rng.random() < rate:
            raise ApiError(
                "Simulated engine failure (--fail-rate)", status=500, code="simulated_failure"
            )

    # -- running ---------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        delay = seconds * self.settings.time_scale
        if delay > 0:
            await asyncio.sleep(delay * jitter_factor(self._jitter_rng, self.settings.jitter))

    async def pause_for_prefill(self, tokens: int) -> None:
        """Sleep the prefill time of ``tokens`` (embeddings: prefill without decode)."""
        await self._sleep(prefill_seconds(tokens, self.settings.prefill_tokens_per_s))

    async def generate(self, job: Job) -> AsyncGenerator[str, None]:
        """Yield the job's output tokens at the simulated pace."""
        clock = time.perf_counter
        progress = _Progress(arrival=clock())
        metrics = self._metrics[job.model]
        ticket = Ticket(model=job.model, kv_tokens=job.prompt.tokens + job.max_tokens)
        try:
            async with self.scheduler.slot(ticket):
                progress.admitted = clock()
                await self._prefill(job, metrics, progress)
                s = self.settings
                last = progress.first_token = clock()
                for i, token in enumerate(output_tokens(s.seed, job.prompt.digest, job.max_tokens)):
                    if i:
                        await self._sleep(
                            decode_seconds(
                                tokens_per_s=s.decode_tokens_per_s,
                                slowdown=s.decode_slowdown,
                                running=self.scheduler.running,
                            )
                        )
                        now = clock()
                        metrics.inter_token.observe(now - last)
                        last = now
                    progress.produced += 1
                    yield token
                progress.finished_reason = "length"
        finally:
            self._record(metrics, progress, clock())

    async def _prefill(self, job: Job, metrics: ModelMetrics, progress: _Progress) -> None:
        s = self.settings
        tokens = job.prompt.tokens
        hit_blocks = self.prefix_cache.match(job.prompt.blocks)
        cached = cached_tokens(hit_blocks, block_size=s.block_size, prompt_tokens=tokens)
        metrics.prefix_queries.inc(tokens)
        metrics.prefix_hits.inc(cached)
        await self._sleep(prefill_seconds(tokens - cached, s.prefill_tokens_per_s))
        self.prefix_cache.insert(job.prompt.blocks)
        metrics.prompt_tokens.inc(tokens)
        progress.prompt_tokens = tokens

    def _record(self, metrics: ModelMetrics, progress: _Progress, end: float) -> None:
        if progress.produced:
            metrics.generation_tokens.inc(progress.produced)
        if progress.admitted > 0:
            metrics.success[progress.finished_reason].inc()
        if progress.finished_reason == "abort":
            return
        metrics.queue_time.observe(progress.admitted - progress.arrival)
        metrics.ttft.observe(progress.first_token - progress.arrival)
        metrics.e2e.observe(end - progress.arrival)
        metrics.request_prompt_tokens.observe(progress.prompt_tokens)
        metrics.request_generation_tokens.observe(progress.produced)
