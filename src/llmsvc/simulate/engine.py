"""One simulated engine, advanced event to event instead of step by step.

``llmsvc sim-engine``'s batched stepper runs one forward pass at a time; at 10
requests/s for a day that is tens of millions of steps, far too many for a Python
loop. Here an engine does O(1) work per request event (admission, the prefill step
that gives it its first token, its finish), with the decoding sequences advanced
*analytically* between events:

- Between two events the number of decoding sequences ``D`` is constant, so each of
  them gains one token per ``decode_seconds(running=D)`` (the sim-engine's function),
  all at the same pace. One counter (``tokens``: tokens each decoding sequence has
  gained since the engine started) replaces a per-sequence count, and a sequence
  finishes when the counter reaches its ``finish`` mark: a heap keyed on the marks.
- Prompts are prefilled in **steps that prefill**, one event each, as the stepper runs
  them: a step starts at the next decode-step boundary after a request is admitted
  (or ``batch_wait_s`` after an idle engine's first admission), and takes the
  decodes and chunks of every admitted prompt not yet prefilled as
  :func:`~llmsvc.simengine.model.plan_step` divides ``max_batched_tokens``; it lasts
  :func:`~llmsvc.simengine.model.step_seconds` of that plan times a
  :func:`~llmsvc.simengine.model.step_noise_factor`. Every decoding sequence gains one
  token in it, so a prefill slows every other request exactly as in the stepper; a
  prompt whose last chunk was in it has its first token and decodes from then on; a
  prompt left unfinished (chunked prefill) goes on in the next step, at once.
- Admission is the sim-engine scheduler's: FIFO, at most ``max_num_seqs`` running,
  each reserving prompt + output tokens of a :class:`~llmsvc.simengine.model.KvBudget`.

What this leaves out relative to the stepper is listed in docs/autoscaling.md ("How the
engines are simulated, and what is approximated").
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush
from itertools import count

from llmsvc.simengine.model import (
    KvBudget,
    StepPlan,
    decode_seconds,
    plan_step,
    step_noise_factor,
    step_seconds,
)
from llmsvc.simulate.timing import EngineTiming

Event = tuple[float, int, int, object, int]
"""(time, sequence number for ties, kind, subject, tag): the fleet's heap entries."""

ENGINE_EVENT = 0
"""Kind of an engine's own next event (step end, step start, a finish); its tag is the
engine's ``version`` when it was scheduled, so a rescheduled one is skipped."""

_EPS = 1e-9

# Request states and outcomes.
NEW, HELD, QUEUED, RUNNING, DONE, REJECTED, ROUTER_QUEUED = range(7)
OK = "ok"
HOLD_TIMEOUT = "hold_timeout"  # the router's 503 no_healthy_backend after --hold-timeout
QUEUE_TIMEOUT = "queue_timeout"  # the router's 503 queue_timeout (no slot in time)
QUEUE_FULL = "queue_full"  # the router's 429 queue_full
CONTEXT_LENGTH = "context_length"  # the engine's 400: longer than its KV cache


class Request:
    """One request of the trace and what happened to it (the per-request record)."""

    __slots__ = (
        "arrival",
        "end",
        "engine",
        "first_token",
        "held_s",
        "index",
        "outcome",
        "output_tokens",
        "prompt_tokens",
        "queued_s",
        "started",
        "state",
    )

    def __init__(self, index: int, arrival: float, prompt_tokens: int, output_tokens: int):
        self.index = index
        self.arrival = arrival
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.state = NEW
        self.engine = -1  # the engine that served it
        self.held_s = 0.0  # seconds held by the router for a ready engine
        self.queued_s = 0.0  # seconds in the router's queue for a slot (--backend-concurrency)
        self.started = -1.0  # admitted to a running slot
        self.first_token = -1.0
        self.end = -1.0
        self.outcome = ""

    @property
    def ttft(self) -> float | None:
        """Seconds from arrival at the router to the first token (None: not answered)."""
        return self.first_token - self.arrival if self.first_token >= 0 else None

    def as_dict(self) -> dict[str, object]:
        ttft = self.ttft
        return {
            "index": self.index,
            "arrival_s": round(self.arrival, 6),
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "outcome": self.outcome,
            "engine": self.engine,
            "held_s": round(self.held_s, 6),
            "queued_s": round(self.queued_s, 6),
            "ttft_s": None if ttft is None else round(ttft, 6),
            "end_s": round(self.end, 6),
        }


class SimEngine:
    """An engine's admission, prefill steps and decoding, on the fleet's event heap."""

    __slots__ = (
        "_batch_wait",
        "_decode_s",
        "_finished",
        "_heap",
        "_max_seqs",
        "_noise",
        "_rng",
        "_seq",
        "carry",
        "carry_left",
        "counter_time",
        "decoders",
        "in_flight",
        "index",
        "kv",
        "life",
        "on_since",
        "pending",
        "running",
        "served",
        "state",
        "step_at",
        "step_chunks",
        "step_end",
        "step_left",
        "stepping",
        "timing",
        "tokens",
        "version",
        "waiting",
    )

    def __init__(
        self,
        index: int,
        timing: EngineTiming,
        *,
        heap: list[Event],
        seq: count[int],
        seed: int,
        finished: Callable[[SimEngine, Request, float], None],
    ) -> None:
        self.index = index
        self.timing = timing
        self._heap = heap
        self._seq = seq
        self._finished = finished
        self._rng = random.Random(f"{seed}:engine:{index}:step-noise")
        self._noise = timing.step_noise
        self._max_seqs = timing.max_num_seqs
        self._batch_wait = timing.batch_wait_s
        self._decode_s = [
            decode_seconds(
                tokens_per_s=timing.decode_tokens_per_s,
                slowdown=timing.decode_slowdown,
                running=running,
            )
            for running in range(timing.max_num_seqs + 1)
        ]
        self.kv = KvBudget(capacity_tokens=timing.kv_cache_tokens)
        self.state = 0  # the fleet's lifecycle state (events.py)
        self.life = 0  # bumped at each start/stop: stale lifecycle events are skipped
        self.version = 0  # bumped at each reschedule: stale engine events are skipped
        self.on_since: float | None = None  # consuming a GPU since (None: stopped/standby)
        self.served = 0  # requests ever submitted (the idle check's "request counter")
        self.in_flight = 0  # submitted, not finished (running + waiting)
        self.running = 0  # admitted: pending + carry + stepping + decoders
        self.waiting: deque[Request] = deque()  # not admitted (FIFO)
        self.pending: list[Request] = []  # admitted, not yet in a step
        self.carry: list[Request] = []  # partly prefilled (a chunk done), for the next step
        self.carry_left: list[int] = []  # their prompt tokens still to prefill
        self.stepping: list[Request] | None = None  # prefilling in the step under way
        self.step_left: list[int] = []  # their prompt tokens left when it began
        self.step_chunks: tuple[int, ...] = ()  # what it prefills of each
        self.step_at = 0.0  # when the next step may begin
        self.step_end = 0.0
        self.decoders: list[tuple[float, int, Request]] = []  # (finish mark, index, request)
        self.tokens = 0.0  # tokens each decoding sequence gained since start
        self.counter_time = 0.0

    @property
    def kv_usage(self) -> float:
        return self.kv.usage

    # -- the heap ----------------------------------------------------------------

    def _schedule(self, now: float) -> None:
        """Push this engine's next event; an earlier one still in the heap goes stale."""
        self.version += 1
        if self.stepping is not None:
            at = self.step_end
        elif self.pending or self.carry:
            at = self.step_at
        elif self.decoders:
            at = now + (self.decoders[0][0] - self.tokens) * self._decode_s[len(self.decoders)]
        else:
            return
        heappush(self._heap, (at, next(self._seq), ENGINE_EVENT, self, self.version))

    # -- requests ----------------------------------------------------------------

    def submit(self, req: Request, now: float) -> None:
        """A request from the router: admitted at once when a slot and KV are free."""
        req.engine = self.index
        self.in_flight += 1
        self.served += 1
        if self.waiting or not self._fits(req):
            req.state = QUEUED
            self.waiting.append(req)
            return
        self._advance(now)
        if self._admit(req, now):
            self._schedule(now)

    def _fits(self, req: Request) -> bool:
        return self.running < self._max_seqs and self.kv.fits(req.prompt_tokens + req.output_tokens)

    def _admit(self, req: Request, now: float) -> bool:
        """Start ``req``; True when it made the next step's start time (reschedule)."""
        self.running += 1
        self.kv.reserve(req.prompt_tokens + req.output_tokens)
        req.state = RUNNING
        req.started = now
        first = not self.pending and not self.carry and self.stepping is None
        self.pending.append(req)
        if first:
            if self.running == 1:
                self.step_at = now + self._batch_wait  # an idle engine's wait, as the stepper's
            else:  # only decodes run: the end of the decode step under way
                frac = self.tokens - math.floor(self.tokens)
                wait = 0.0 if frac < 1e-6 or frac > 1 - 1e-6 else 1.0 - frac
                self.step_at = now + wait * self._decode_s[len(self.decoders)]
        return first

    def _admit_waiting(self, now: float) -> None:
        waiting = self.waiting
        while waiting and self._fits(waiting[0]):
            self._admit(waiting.popleft(), now)

    def _advance(self, now: float) -> None:
        """Credit the decoding sequences with the tokens of ``[counter_time, now]``."""
        if self.stepping is None and self.decoders and now > self.counter_time:
            tokens = self.tokens + (now - self.counter_time) / self._decode_s[len(self.decoders)]
            nearest = round(tokens)
            self.tokens = float(nearest) if abs(tokens - nearest) < 1e-6 else tokens
        self.counter_time = now

    def on_event(self, now: float) -> None:
        """This engine's scheduled event: a step ended, a step may start, a finish."""
        if self.stepping is not None:
            self._end_step(now)
        else:
            self._advance(now)
        decoders, mark = self.decoders, self.tokens + 1e-6
        while decoders and decoders[0][0] <= mark:
            self._finish(heappop(decoders)[2], now)
        if (self.pending or self.carry) and self.stepping is None and now >= self.step_at - _EPS:
            self._start_step(now)
        self._schedule(now)

    def _start_step(self, now: float) -> None:
        """One step that prefills: the decodes, then chunks of the prompts in arrival order
        (those partly prefilled first), as ``plan_step`` divides ``max_batched_tokens``."""
        batch = self.carry + self.pending
        left = self.carry_left + [req.prompt_tokens for req in self.pending]
        self.carry, self.carry_left, self.pending = [], [], []
        plan, duration = self._step(left)
        self.stepping, self.step_left, self.step_chunks = batch, left, plan.chunks
        self.step_end = now + duration

    def _step(self, prefill_left: list[int]) -> tuple[StepPlan, float]:
        """The sim-engine's plan and duration of one step over the decodes and these prompts."""
        timing = self.timing
        plan = plan_step(
            decode_seqs=len(self.decoders),
            prefill_left=prefill_left,
            max_batched_tokens=timing.max_batched_tokens,
        )
        duration = step_seconds(
            plan,
            prefill_tokens_per_s=timing.prefill_tokens_per_s,
            decode_tokens_per_s=timing.decode_tokens_per_s,
            slowdown=timing.decode_slowdown,
            prefill_overhead_s=timing.prefill_overhead_s,
        )
        if self._noise > 0:
            duration *= step_noise_factor(self._rng, self._noise)
        return plan, duration

    def _end_step(self, now: float) -> None:
        """The decoding sequences gained a token; a prompt whose last chunk was in the step
        has its first token and decodes from now on; the others carry to the next step."""
        stepping = self.stepping
        assert stepping is not None
        self.stepping = None
        if self.decoders:
            self.tokens += 1
        self.counter_time = now
        tokens, carry, carry_left = self.tokens, self.carry, self.carry_left
        for req, left, chunk in zip(stepping, self.step_left, self.step_chunks, strict=True):
            if left > chunk:
                carry.append(req)
                carry_left.append(left - chunk)
                continue
            req.first_token = now
            if req.output_tokens <= 1:
                self._finish(req, now)
            else:
                heappush(self.decoders, (tokens + req.output_tokens - 1, req.index, req))
        if carry or self.pending:
            self.step_at = now  # the stepper's loop goes on at once

    def _finish(self, req: Request, now: float) -> None:
        req.state = DONE
        req.outcome = OK
        req.end = now
        self.running -= 1
        self.in_flight -= 1
        self.kv.release(req.prompt_tokens + req.output_tokens)
        self._admit_waiting(now)
        self._finished(self, req, now)
