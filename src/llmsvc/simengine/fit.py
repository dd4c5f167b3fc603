"""``llmsvc sim-engine fit``: measure a real OpenAI endpoint and write a timing profile.

The procedure (docs/simulated-engine.md, "Fitting a profile"):

1. TTFT of unique prompts of several lengths, one at a time, ``max_tokens`` 1:
   a straight line ``ttft = prefill_overhead_s + prompt_tokens / prefill_tokens_per_s``;
   ``chars_per_token`` is the prompts' characters over their ``usage`` tokens.
2. Inter-token latency alone: ``decode_tokens_per_s = 1 / median gap``.
3. The same with ``c`` streams at once for each ``--concurrency`` level:
   ``itl_c / itl_1 - 1 = decode_slowdown * (c - 1)``, least squares through 0.
   The spread of the gaps gives ``step_noise``, the sigma of a lognormal step
   factor with median 1: ``ln(p95 / p50) / 1.645`` of every gap over its
   level's median gap, all levels pooled (:func:`fit_step_noise`).
4. The longest prompt again with another tail: the TTFT ratio says whether the
   endpoint caches prefixes (below 0.5: the profile's prefix cache is on).
5. Two short prompts sent ``d`` ms apart to the idle endpoint, for each ``d``
   of :data:`JOIN_DELAYS_MS`: the second *joined* the first's step when their
   first tokens came together. ``batch_wait_s`` is the delay up to which they
   join (:func:`fit_batch_wait`): llama.cpp takes a few ms from a task's
   arrival to its batch, so requests sent together prefill together.

Slots and context come from llama.cpp's ``/props`` when it has one, else from
``--max-num-seqs``/``--kv-cache-tokens`` (0: leave the simulated default).
The pure arithmetic (:func:`fit_line`, :func:`fit_slowdown`,
:func:`build_settings`) is unit tested; :func:`measure` does the requests.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pydantic import Field, field_validator

from llmsvc.core.addresses import check_origin_url
from llmsvc.core.settings import BaseServiceSettings, CommaList, die, parse_settings
from llmsvc.simengine.model import Z95
from llmsvc.simengine.probe import ProbeError, Prober, Timing, make_prompt, median_gap
from llmsvc.simengine.profiles import write_profile

PROG = "llmsvc sim-engine fit"
DESCRIPTION = "Measure an OpenAI-compatible endpoint and write a simulated-engine timing profile."


class FitSettings(BaseServiceSettings):
    """What ``llmsvc sim-engine fit`` measures, and where the profile goes."""

    url: str = Field(description="Base URL of the endpoint (http://host:port, without /v1).")
    model: str = Field(description="Model id to send.")
    out: Path | None = Field(default=None, description="Profile file to write; default stdout.")
    prompt_tokens: CommaList = Field(
        default_factory=lambda: ["32", "256", "768", "1536"],
        description="Approximate prompt lengths (tokens of 4 characters) of the TTFT probes.",
    )
    concurrency: CommaList = Field(
        default_factory=lambda: ["1", "2"],
        description="Streams at once for the inter-token probes (include 1).",
    )
    decode_tokens: int = Field(default=48, ge=4, description="Output tokens of a decode probe.")
    samples: int = Field(default=3, ge=1, description="Repeats of every probe (medians).")
    max_num_seqs: int = Field(default=0, ge=0, description="Slots; 0: from /props, or default.")
    kv_cache_tokens: int = Field(default=0, ge=0, description="KV tokens; 0: from /props.")
    max_batched_tokens: int = Field(default=2048, ge=1, description="Step budget (llama.cpp -b).")
    timeout: float = Field(default=120.0, gt=0, description="Seconds one probe may take.")

    @field_validator("url")
    @classmethod
    def _origin(cls, value: str) -> str:
        return check_origin_url(value.rstrip("/"))


@dataclass(slots=True)
class Measurements:
    """What :func:`measure` saw."""

    ttft: list[tuple[int, float]] = field(default_factory=list)  # (prompt tokens, s)
    chars_per_token: float = 4.0
    itl: dict[int, float] = field(default_factory=dict)  # streams at once -> median gap
    gaps_alone: list[float] = field(default_factory=list)  # every inter-token gap of 1 stream
    gap_ratios: list[float] = field(default_factory=list)  # every gap / its level's median
    itl_spread: dict[int, float] = field(default_factory=dict)  # streams -> gaps' p95 / p50
    join_trials: list[tuple[float, bool]] = field(default_factory=list)  # (delay s, joined)
    join_ttfts: list[tuple[float, float]] = field(default_factory=list)  # their two TTFTs, s
    prefix_ratio: float = 1.0  # TTFT with a cached prefix / without
    slots: int = 0
    context_tokens: int = 0


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of ``y = intercept + slope * x``."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    if len(set(xs)) < 2:
        raise ValueError("a line needs at least two different x values")
    slope, intercept = statistics.linear_regression(xs, ys)
    return intercept, slope


def fit_slowdown(itl: dict[int, float]) -> float:
    """``s`` in ``itl_c = itl_1 * (1 + s * (c - 1))``, least squares through 0, at least 0."""
    alone = itl[1]
    pairs = [(c - 1, itl_c / alone - 1) for c, itl_c in itl.items() if c > 1]
    denominator = sum(x * x for x, _ in pairs)
    if not denominator:
        return 0.0
    return max(0.0, sum(x * y for x, y in pairs) / denominator)


MIN_NOISE_GAPS = 20
"""Fewer gaps alone than this say nothing of a 95th percentile: no noise is fitted."""


def gap_quantiles(gaps: Sequence[float]) -> tuple[float, float]:
    """``(p50, p95)`` of inter-token gaps (inclusive quantiles, as the calibration reports)."""
    return statistics.median(gaps), statistics.quantiles(gaps, n=20, method="inclusive")[18]


def fit_step_noise(gaps: Sequence[float]) -> float:
    """``sigma`` of a lognormal step factor (median 1) whose p95/p50 is the gaps' own.

    For ``exp(sigma * N(0, 1))``, ``ln(p95 / p50) = sigma * 1.645``: the fit
    matches the two percentiles the calibration compares, whatever the shape
    further out. 0 with fewer than ``MIN_NOISE_GAPS`` gaps.
    """
    if len(gaps) < MIN_NOISE_GAPS:
        return 0.0
    p50, p95 = gap_quantiles(gaps)
    if p50 <= 0:
        return 0.0
    return max(0.0, math.log(p95 / p50) / Z95)


JOIN_DELAYS_MS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
"""The delays between the two requests of the batch-wait probe."""


def joined(first: Timing, second: Timing) -> tuple[float, bool]:
    """``(delay, joined)`` of two requests: whether the second's first token came with the first's.

    Had the second missed the first's step, its first token would come a whole
    prefill step later (about the first's TTFT, for prompts of one size); a
    quarter of it leaves room for steps that noise made shorter or longer.
    """
    delay = second.start - first.start
    lag = (second.start + second.ttft) - (first.start + first.ttft)
    return delay, lag < 0.25 * first.ttft


def fit_batch_wait(trials: Sequence[tuple[float, bool]]) -> float:
    """The delay up to which a second request joins the first's step: a threshold fit.

    The threshold ``w`` (requests ``d < w`` apart join) that misclassifies the
    fewest trials, the smallest on a tie; it lies midway between the delays
    it separates, 0 when none joined, the longest delay when all did.
    """
    ordered = sorted(trials)
    if not ordered:
        return 0.0
    best, best_errors = -1, len(ordered) + 1
    for cut in range(-1, len(ordered)):  # the trials [0, cut] are predicted joined
        errors = sum(j != (i <= cut) for i, (_, j) in enumerate(ordered))
        if errors < best_errors:
            best, best_errors = cut, errors
    if best < 0:
        return 0.0
    if best == len(ordered) - 1:
        return ordered[best][0]
    return (ordered[best][0] + ordered[best + 1][0]) / 2


def build_settings(m: Measurements, *, max_batched_tokens: int) -> dict[str, Any]:
    """The profile's ``settings``: the simulated engine's timing fields from the fit."""
    intercept, slope = fit_line(m.ttft)
    if slope <= 0:
        raise ValueError("TTFT does not grow with the prompt: use longer --prompt-tokens")
    settings: dict[str, Any] = {
        "scheduler": "batched",
        "chars_per_token": round(m.chars_per_token, 3),
        "prefill_tokens_per_s": round(1 / slope, 1),
        "prefill_overhead_s": round(max(0.0, intercept), 4),
        "decode_tokens_per_s": round(1 / m.itl[1], 2),
        "decode_slowdown": round(fit_slowdown(m.itl), 4),
        "max_batched_tokens": max(max_batched_tokens, m.slots),
        "step_noise": round(fit_step_noise(m.gap_ratios or m.gaps_alone), 3),
        "batch_wait_s": round(fit_batch_wait(m.join_trials), 4),
    }
    if m.slots:
        settings["max_num_seqs"] = m.slots
    if m.context_tokens:
        settings["kv_cache_tokens"] = m.context_tokens
    cache = m.context_tokens or 32768
    settings["prefix_cache_tokens"] = cache if m.prefix_ratio < 0.5 else 0
    return settings


async def _props(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """llama.cpp's ``/props`` (slots, context), or ``{}`` where there is none."""
    try:
        async with session.get(url.rstrip("/") + "/props") as resp:
            if resp.status == 200:
                body = await resp.json(content_type=None)
                return body if isinstance(body, dict) else {}
    except (aiohttp.ClientError, ValueError):
        pass
    return {}


def _apply_props(m: Measurements, props: dict[str, Any], s: FitSettings) -> None:
    slots = int(props.get("total_slots") or 0)
    per_slot = int((props.get("default_generation_settings") or {}).get("n_ctx") or 0)
    m.slots = s.max_num_seqs or slots
    m.context_tokens = s.kv_cache_tokens or per_slot * max(slots, 1)


async def _ttft_probes(prober: Prober, s: FitSettings, rng: random.Random, m: Measurements) -> None:
    chars = tokens = 0
    for n, size in enumerate(int(t) for t in s.prompt_tokens):
        runs: list[Timing] = []
        for i in range(s.samples):
            runs.append(await prober.stream(make_prompt(rng, size * 4, nonce=f"p{n}x{i}"), 1))
        prompt_tokens = round(statistics.median(t.prompt_tokens for t in runs))
        m.ttft.append((prompt_tokens, statistics.median(t.ttft for t in runs)))
        chars += sum(t.prompt_chars for t in runs)
        tokens += sum(t.prompt_tokens for t in runs)
    if not tokens:
        raise ProbeError("the endpoint sent no usage in its streams (stream_options.include_usage)")
    m.chars_per_token = chars / tokens


async def _itl_probes(prober: Prober, s: FitSettings, rng: random.Random, m: Measurements) -> None:
    for c in sorted({1, *(int(c) for c in s.concurrency)}):
        runs: list[Timing] = []
        for i in range(s.samples):
            prompts = [make_prompt(rng, 64, nonce=f"d{c}x{i}y{j}") for j in range(c)]
            runs += await prober.together(prompts, s.decode_tokens)
        m.itl[c] = median_gap(runs)
        gaps = [gap for timing in runs for gap in timing.gaps]
        m.gap_ratios += [gap / m.itl[c] for gap in gaps]
        m.itl_spread[c] = _p95_over_p50(gaps)
        if c == 1:
            m.gaps_alone = gaps


async def _prefix_probe(
    prober: Prober, s: FitSettings, rng: random.Random, m: Measurements
) -> None:
    shared = make_prompt(rng, max(int(t) for t in s.prompt_tokens) * 4, nonce="shared")
    first = await prober.stream(shared + " first tail", 1)
    second = await prober.stream(shared + " second tail", 1)
    m.prefix_ratio = second.ttft / first.ttft


async def _join_probes(prober: Prober, rng: random.Random, m: Measurements) -> None:
    for n, delay_ms in enumerate(JOIN_DELAYS_MS):
        first, second = (make_prompt(rng, 256, nonce=f"j{n}{side}") for side in "ab")
        a, b = await asyncio.gather(
            prober.stream(first, 1), prober.after(delay_ms / 1000, second, 1)
        )
        m.join_trials.append(joined(a, b))
        m.join_ttfts.append((a.ttft, b.ttft))


async def measure(s: FitSettings) -> Measurements:
    """Every probe of the procedure, one after another."""
    m = Measurements()
    # Fresh words each run: the engine's prefix cache still holds an earlier fit's prompts,
    # and a rerun with the same ones would measure cache hits, not prefill.
    rng = random.Random()
    timeout = aiohttp.ClientTimeout(total=s.timeout)
    # A fresh connection per probe: llama.cpp's server closes a streamed one after [DONE].
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        _apply_props(m, await _props(session, s.url), s)
        prober = Prober(session, url=s.url, model=s.model)
        await prober.stream(make_prompt(rng, 64, nonce="warm"), 2)  # load, compile, connect
        await _ttft_probes(prober, s, rng, m)
        await _itl_probes(prober, s, rng, m)
        await _prefix_probe(prober, s, rng, m)
        await _join_probes(prober, rng, m)
    return m


def profile_document(s: FitSettings, m: Measurements) -> dict[str, Any]:
    intercept, _ = fit_line(m.ttft)
    return {
        "source": {
            "url": s.url,
            "model": s.model,
            "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "by": "llmsvc sim-engine fit",
        },
        "settings": build_settings(m, max_batched_tokens=s.max_batched_tokens),
        "fit": {
            "ttft_points": [[tokens, round(t, 4)] for tokens, t in m.ttft],
            "ttft_overhead_s": round(intercept, 4),
            "itl_s": {str(c): round(v, 5) for c, v in m.itl.items()},
            **_spread(m.gaps_alone),
            "itl_p95_over_p50": {str(c): round(v, 3) for c, v in m.itl_spread.items()},
            "itl_gaps_all": len(m.gap_ratios),
            "itl_p95_over_p50_all": round(_p95_over_p50(m.gap_ratios), 3),
            # delay, joined, the two TTFTs: a joined pair's TTFT is one step over both prompts
            "batch_wait_trials_ms": [
                [round(d * 1000, 1), j, round(a * 1000), round(b * 1000)]
                for (d, j), (a, b) in zip(m.join_trials, m.join_ttfts, strict=True)
            ],
            "prefix_ttft_ratio": round(m.prefix_ratio, 3),
        },
    }


def _p95_over_p50(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    p50, p95 = gap_quantiles(values)
    return p95 / p50 if p50 else 0.0


def _spread(gaps: Sequence[float]) -> dict[str, Any]:
    """The gaps alone that ``step_noise`` comes from: how many, p50, p95."""
    if len(gaps) < 2:
        return {"itl_alone_gaps": len(gaps)}
    p50, p95 = gap_quantiles(gaps)
    return {"itl_alone_gaps": len(gaps), "itl_alone_p50_s": round(p50, 5),
            "itl_alone_p95_s": round(p95, 5)}  # fmt: skip


def main(argv: Sequence[str]) -> int:
    s = parse_settings(FitSettings, argv, prog=PROG, description=DESCRIPTION)
    try:
        [int(v) for v in (*s.prompt_tokens, *s.concurrency)]
    except ValueError:
        die(PROG, "--prompt-tokens and --concurrency are comma lists of integers")
    try:
        document = profile_document(s, asyncio.run(measure(s)))
    except (ProbeError, ValueError) as exc:
        die(PROG, str(exc), status=1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        die(PROG, f"cannot measure {s.url}: {exc or type(exc).__name__}", status=1)
    if s.out is None:
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        write_profile(s.out, document)
        print(f"wrote {s.out}")
    return 0
