"""One request's life in the simulated engine: queue, prefill, decode, metrics.

:meth:`Engine.generate` is an async generator of output tokens: it waits for a
running slot (:mod:`.scheduler`), then its prompt's uncached tokens are
prefilled and its output decoded in one of two ways (``--scheduler``):

- ``batched`` (the default): :meth:`Engine.run_steps`, one background loop per
  engine, runs one step (a forward pass) at a time over every running
  sequence, as vLLM and llama.cpp do: each decoding sequence gets one token,
  prefilling ones get chunks of the rest of ``--max-batched-tokens``, and the
  step lasts :func:`~.model.step_seconds` of what it processed, so one
  request's prefill delays every other request's tokens.
- ``independent``: each sequence sleeps its own prefill time, then one decode
  step per token evaluated with the number of sequences running then.

With ``--time-scale 0`` every duration is 0 and both answer at once (the
independent path, without the loop's hop). Every duration is multiplied by
``--time-scale`` and a jitter factor, and every step's by a ``--step-noise``
factor (one per step, shared by its sequences, as a real forward pass is).
Cancelling the consumer (a client that went away) frees the slot and the KV
reservation at once, and takes the sequence out of the next step.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

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
    plan_step,
    prefill_seconds,
    step_noise_factor,
    step_seconds,
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
    last_token: float = 0.0
    prompt_tokens: int = 0
    produced: int = 0
    finished_reason: str = "abort"


@dataclass(eq=False, slots=True)
class _Sequence:
    """A running sequence as the step loop sees it."""

    prefill_left: int  # uncached prompt tokens not yet prefilled
    max_tokens: int
    blocks: list[int]  # the prompt's block hashes, cached once prefilled
    emitted: int = 0  # tokens produced so far
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def prefilled(self) -> bool:
        return self.emitted > 0

    @property
    def done(self) -> bool:
        return self.emitted >= self.max_tokens


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
            registry,
            self.scheduler,
            self.models,
            max_model_len=settings.kv_cache_tokens,
            block_size=settings.block_size,
            prefix_cache_tokens=settings.prefix_cache_tokens,
        )
        self._jitter_rng = random.Random(f"{settings.seed}:jitter")
        self._noise_rng = random.Random(f"{settings.seed}:step-noise")
        self._fault_rng = random.Random(f"{settings.seed}:faults")
        self._batch: list[_Sequence] = []  # running sequences, in arrival order
        self._batch_changed = asyncio.Event()

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

    async def _sleep(self, seconds: float, *, step: bool = False) -> None:
        """Sleep a simulated duration: scaled, jittered and, for a step, noised.

        ``step`` marks an engine step (a batched step, or a prefill or decode
        step of an independent sequence): it takes one ``--step-noise`` factor.
        """
        delay = seconds * self.settings.time_scale
        if delay > 0:
            delay *= jitter_factor(self._jitter_rng, self.settings.jitter)
            if step:
                delay *= step_noise_factor(self._noise_rng, self.settings.step_noise)
            await asyncio.sleep(delay)

    async def pause_for_prefill(self, tokens: int) -> None:
        """Sleep the prefill time of ``tokens`` (embeddings: prefill without decode)."""
        await self._sleep(prefill_seconds(tokens, self.settings.prefill_tokens_per_s))

    def _batched(self) -> bool:
        return self.settings.scheduler == "batched" and self.settings.time_scale > 0

    async def generate(self, job: Job) -> AsyncGenerator[str, None]:
        """Yield the job's output tokens at the simulated pace."""
        clock = time.perf_counter
        progress = _Progress(arrival=clock())
        metrics = self._metrics[job.model]
        ticket = Ticket(model=job.model, kv_tokens=job.prompt.tokens + job.max_tokens)
        try:
            async with self.scheduler.slot(ticket):
                progress.admitted = clock()
                cached = self._look_up_prefix(job, metrics)
                tokens = output_tokens(self.settings.seed, job.prompt.digest, job.max_tokens)
                paced = self._stepped if self._batched() else self._independent
                async with aclosing(paced(job, job.prompt.tokens - cached)) as indices:
                    async for index in indices:
                        now = clock()
                        if index == 0:
                            progress.first_token = now
                            metrics.prompt_tokens.inc(job.prompt.tokens)
                            progress.prompt_tokens = job.prompt.tokens
                        else:
                            metrics.inter_token.observe(now - progress.last_token)
                        progress.last_token = now
                        progress.produced += 1
                        yield tokens[index]
                progress.finished_reason = "length"
        finally:
            self._record(metrics, progress, clock())

    def _look_up_prefix(self, job: Job, metrics: ModelMetrics) -> int:
        """Cached prompt tokens of ``job`` (counted in the prefix-cache metrics)."""
        tokens = job.prompt.tokens
        hit_blocks = self.prefix_cache.match(job.prompt.blocks)
        cached = cached_tokens(
            hit_blocks, block_size=self.settings.block_size, prompt_tokens=tokens
        )
        metrics.prefix_queries.inc(tokens)
        metrics.prefix_hits.inc(cached)
        return cached

    async def _independent(self, job: Job, uncached: int) -> AsyncGenerator[int, None]:
        """Token indices on the sequence's own clock: its prefill, then its decode steps."""
        s = self.settings
        await self._sleep(prefill_seconds(uncached, s.prefill_tokens_per_s), step=True)
        self.prefix_cache.insert(job.prompt.blocks)
        for index in range(job.max_tokens):
            if index:
                await self._sleep(
                    decode_seconds(
                        tokens_per_s=s.decode_tokens_per_s,
                        slowdown=s.decode_slowdown,
                        running=self.scheduler.running,
                    ),
                    step=True,
                )
            yield index

    async def _stepped(self, job: Job, uncached: int) -> AsyncGenerator[int, None]:
        """Token indices as :meth:`run_steps` produces them for this sequence."""
        seq = _Sequence(prefill_left=uncached, max_tokens=job.max_tokens, blocks=job.prompt.blocks)
        self._batch.append(seq)
        self._batch_changed.set()
        try:
            index = 0
            while index < job.max_tokens:
                if index >= seq.emitted:
                    seq.wake.clear()
                    await seq.wake.wait()
                    continue
                yield index
                index += 1
        finally:
            if seq in self._batch:
                self._batch.remove(seq)

    async def run_steps(self) -> None:
        """The batched scheduler's loop: one step over every running sequence, forever."""
        s = self.settings
        while True:
            if not self._batch:
                self._batch_changed.clear()
                await self._batch_changed.wait()
                # Woken from idle: requests arriving within --batch-wait-s join the first step,
                # as llama.cpp's loop takes a few ms from a task's arrival to its batch.
                await self._sleep(s.batch_wait_s)
                continue
            decoding = [seq for seq in self._batch if seq.prefilled]
            prefilling = [seq for seq in self._batch if not seq.prefilled]
            plan = plan_step(
                decode_seqs=len(decoding),
                prefill_left=[seq.prefill_left for seq in prefilling],
                max_batched_tokens=s.max_batched_tokens,
            )
            await self._sleep(
                step_seconds(
                    plan,
                    prefill_tokens_per_s=s.prefill_tokens_per_s,
                    decode_tokens_per_s=s.decode_tokens_per_s,
                    slowdown=s.decode_slowdown,
                    prefill_overhead_s=s.prefill_overhead_s,
                ),
                step=True,  # one noise factor per step: every sequence in it waits the same
            )
            await asyncio.sleep(0)  # a zero-length step still lets the consumers run
            self._finish_step(decoding, prefilling, plan.chunks)

    def _finish_step(
        self, decoding: list[_Sequence], prefilling: list[_Sequence], chunks: tuple[int, ...]
    ) -> None:
        """Credit a finished step: a token per decoding sequence, chunks to the prefilling."""
        alive = set(self._batch)  # those cancelled during the step get nothing
        for seq in decoding:
            if seq in alive:
                seq.emitted += 1
        for seq, chunk in zip(prefilling, chunks, strict=True):
            if seq not in alive:
                continue
            seq.prefill_left -= chunk
            if seq.prefill_left == 0:
                self.prefix_cache.insert(seq.blocks)
                seq.emitted = 1  # the pass over a prompt's last chunk samples its first token
        for seq in (*decoding, *prefilling):
            if seq.emitted and seq in alive:
                seq.wake.set()
                if seq.done:
                    self._batch.remove(seq)

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
