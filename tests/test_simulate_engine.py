"""The simulator's event-driven engine against a step-by-step replay of sim-engine's stepper.

``reference_stepper`` replays ``llmsvc sim-engine --scheduler batched`` one forward
pass at a time with the same pure functions (``plan_step``, ``step_seconds``) and
the scheduler's admission (FIFO, ``max_num_seqs``, KV budget), as
``Engine.run_steps``/``_finish_step`` do. Without step noise, and with prompts that
fit one step's budget or not, the analytic engine must give the same first-token and
end time to every request: the claim docs/autoscaling.md makes.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import pytest

from llmsvc.simengine.model import plan_step, step_seconds
from llmsvc.simulate import EngineTiming, SimConfig, Trace, simulate


@dataclass
class _Seq:
    index: int
    prefill_left: int
    max_tokens: int
    kv: int
    emitted: int = 0


def reference_stepper(
    timing: EngineTiming, requests: list[tuple[float, int, int]]
) -> dict[int, tuple[float, float]]:
    """(first token, end) per request index, one step at a time."""
    out: dict[int, tuple[float, float]] = {}
    first: dict[int, float] = {}
    arrivals = deque(enumerate(requests))
    waiting: deque[_Seq] = deque()
    batch: list[_Seq] = []
    kv_used, now = 0, 0.0

    def arrive_until(t: float) -> None:
        nonlocal kv_used
        while arrivals and arrivals[0][1][0] <= t:
            index, (_, prompt, output) = arrivals.popleft()
            waiting.append(_Seq(index, prompt, output, prompt + output))
        while (
            waiting
            and len(batch) < timing.max_num_seqs
            and kv_used + waiting[0].kv <= timing.kv_cache_tokens
        ):
            seq = waiting.popleft()
            kv_used += seq.kv
            batch.append(seq)

    while arrivals or waiting or batch:
        if not batch:
            now = max(now, arrivals[0][1][0])
            arrive_until(now)
            now += timing.batch_wait_s
            arrive_until(now)
            continue
        decoding = [s for s in batch if s.emitted > 0]
        prefilling = [s for s in batch if s.emitted == 0]
        plan = plan_step(
            decode_seqs=len(decoding),
            prefill_left=[s.prefill_left for s in prefilling],
            max_batched_tokens=timing.max_batched_tokens,
        )
        now += step_seconds(
            plan,
            prefill_tokens_per_s=timing.prefill_tokens_per_s,
            decode_tokens_per_s=timing.decode_tokens_per_s,
            slowdown=timing.decode_slowdown,
            prefill_overhead_s=timing.prefill_overhead_s,
        )
        for seq in decoding:
            seq.emitted += 1
        for seq, chunk in zip(prefilling, plan.chunks, strict=True):
            seq.prefill_left -= chunk
            if seq.prefill_left == 0:
                seq.emitted = 1
                first[seq.index] = now
        for seq in list(batch):
            if seq.emitted >= seq.max_tokens:
                batch.remove(seq)
                kv_used -= seq.kv
                out[seq.index] = (first[seq.index], now)
        arrive_until(now)
    return out


def _trace(requests: list[tuple[float, int, int]], duration: float) -> Trace:
    return Trace(
        "test",
        duration,
        tuple(r[0] for r in requests),
        tuple(r[1] for r in requests),
        tuple(r[2] for r in requests),
    )


def _requests(seed: int, count: int, rate: float, max_prompt: int) -> list[tuple[float, int, int]]:
    rng = random.Random(seed)
    now, out = 0.0, []
    for _ in range(count):
        now += rng.expovariate(rate)
        out.append((now, rng.randint(1, max_prompt), rng.randint(1, 40)))
    return out


@pytest.mark.parametrize(
    ("timing", "rate"),
    [
        (EngineTiming(max_num_seqs=4, kv_cache_tokens=100000, prefill_tokens_per_s=900.0,
                      decode_tokens_per_s=50.0, decode_slowdown=0.3), 6.0),
        (EngineTiming(max_num_seqs=8, kv_cache_tokens=1200, prefill_tokens_per_s=2000.0,
                      prefill_overhead_s=0.02, decode_tokens_per_s=30.0, decode_slowdown=0.1,
                      batch_wait_s=0.004), 10.0),
        (EngineTiming(max_num_seqs=2, kv_cache_tokens=2048, prefill_tokens_per_s=155.6,
                      decode_tokens_per_s=58.38, decode_slowdown=0.4037,
                      batch_wait_s=0.0015), 1.5),
    ],
    ids=["slots", "kv-bound-overhead-wait", "smollm2-like"],
)  # fmt: skip
def test_event_engine_matches_the_stepper(timing: EngineTiming, rate: float) -> None:
    requests = _requests(7, 300, rate, max_prompt=400)
    expected = reference_stepper(timing, requests)
    result = simulate(
        SimConfig(trace=_trace(requests, requests[-1][0]), policy="fixed", workers=1, timing=timing)
    )
    assert len(expected) == len(requests) == result.answered
    queued = 0
    for req in result.requests:
        first, end = expected[req.index]
        assert req.first_token == pytest.approx(first, abs=1e-6), req.index
        assert req.end == pytest.approx(end, abs=1e-6), req.index
        queued += req.started > req.arrival
    assert queued > 0  # the load made requests wait for a slot: admission was exercised


def test_long_prompts_are_chunked_over_steps_as_the_stepper_does() -> None:
    """Prompts over the step budget: several steps (chunked prefill), each an event."""
    timing = EngineTiming(
        max_num_seqs=4, max_batched_tokens=256, prefill_tokens_per_s=1000.0,
        decode_tokens_per_s=50.0, decode_slowdown=0.2, batch_wait_s=0.002,
    )  # fmt: skip
    requests = _requests(3, 200, 1.5, max_prompt=900)
    expected = reference_stepper(timing, requests)
    result = simulate(
        SimConfig(trace=_trace(requests, requests[-1][0]), policy="fixed", workers=1, timing=timing)
    )
    assert sum(1 for _, prompt, _ in requests if prompt > 256) > 50
    for req in result.requests:
        first, end = expected[req.index]
        assert req.first_token == pytest.approx(first, abs=1e-6), req.index
        assert req.end == pytest.approx(end, abs=1e-6), req.index


def test_one_slot_serializes_requests() -> None:
    timing = EngineTiming(max_num_seqs=1, prefill_tokens_per_s=100.0, decode_tokens_per_s=10.0)
    requests = [(0.0, 10, 5), (0.0, 10, 5), (0.0, 10, 5)]
    result = simulate(
        SimConfig(trace=_trace(requests, 1.0), policy="fixed", workers=1, timing=timing)
    )
    one = (
        10 / 100.0 + 4 / 10.0
    )  # prefill, then 4 more decode steps (the first token is the prefill's)
    ends = [req.end for req in result.requests]
    assert ends == pytest.approx([one, 2 * one, 3 * one])
    assert [req.started for req in result.requests] == pytest.approx([0.0, one, 2 * one])


def test_step_noise_changes_times_but_not_the_count() -> None:
    requests = _requests(5, 50, 2.0, max_prompt=200)
    quiet = simulate(SimConfig(trace=_trace(requests, 30.0), workers=1))
    noisy = simulate(
        SimConfig(trace=_trace(requests, 30.0), workers=1, timing=EngineTiming(step_noise=0.3))
    )
    assert noisy.answered == quiet.answered == len(requests)
    assert [r.first_token for r in noisy.requests] != [r.first_token for r in quiet.requests]
