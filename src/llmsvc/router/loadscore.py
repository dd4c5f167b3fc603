"""An engine's load from its own Prometheus metrics, and ``least_load``'s score.

Three numbers per engine, whatever the engine (the first name found wins):

- waiting requests: ``vllm:num_requests_waiting`` (vLLM and the simulated
  engine), ``sglang:num_queue_reqs``, ``llamacpp:requests_deferred``;
- running requests: ``vllm:num_requests_running``, ``sglang:num_running_reqs``,
  ``llamacpp:requests_processing``;
- KV-cache use, 0..1: ``vllm:kv_cache_usage_perc`` (older vLLM:
  ``vllm:gpu_cache_usage_perc``), ``sglang:token_usage``,
  ``llamacpp:kv_cache_usage_ratio`` (older llama.cpp only). Current llama.cpp
  exports no KV-cache series at all; there each slot (``-np``) holds its own
  share of the context (``-c`` / ``-np`` tokens), so the share of busy slots,
  ``llamacpp:requests_processing`` / slots, is the cache it has committed; the
  slot count is not in ``/metrics`` either, and the scraper reads it from
  ``GET /props`` (``total_slots``): :func:`needs_slots`, ``parse_load(slots=)``.

Fourth, the engine's prefix-cache capacity in tokens (``EngineLoad.cache_tokens``, None
when it reports none; the ``scored`` strategy sizes its per-backend prompt index with it):

- vLLM's info gauge ``vllm:cache_config_info{block_size="16",num_gpu_blocks="573",...} 1``:
  ``block_size`` × ``num_gpu_blocks``, 0 with ``enable_prefix_caching="False"`` (the
  simulated engine exports the same gauge for its ``--prefix-cache-tokens``);
- SGLang's ``sglang:max_total_num_tokens``;
- llama.cpp exports neither: ``GET /props``, ``default_generation_settings.n_ctx`` (one
  slot's context) × ``total_slots``, read by the scraper with the slot count and passed
  in (``parse_load(cache_tokens=)``). With a unified KV buffer (``--kv-unified``,
  llama.cpp's default when ``-np`` is not given) each slot reports the whole context, so
  the product overestimates by the slot count (``/props`` does not say whether the
  buffer is unified). llama.cpp can also keep prompts in host memory (``--cache-ram``,
  8,192 MiB by default), which no figure here counts.

Series with several label sets (one per model, per data-parallel rank) are
summed for the counts; the KV-cache use is the largest of them. What an
engine does not export is named in ``EngineLoad.missing`` (the scraper warns
once per backend: an input read as 0 is never silent).

The exposition text is not parsed into metric families: at 1,000 backends
scraped every second that would dominate the router's CPU. Each wanted name is
found with ``bytes.find`` (C speed) and only its own lines are read.

**Score** (lower is better), for a backend of weight ``w``::

    requests = max(0, running + waiting + (in_flight - in_flight_at_scrape))
    score    = (requests + waiting) / w + KV_WEIGHT × kv_cache_use

``in_flight`` is the router's own count now, ``in_flight_at_scrape`` the same
count when the scrape answered: what the router sent since (or saw finish)
keeps decisions fresh between scrapes. A waiting request counts twice: it
says the engine is saturated and a new request would queue too. A full KV
cache weighs like ``KV_WEIGHT`` more requests: the engine will soon queue or
preempt. A backend without a fresh scrape (none yet, or older than its maximum
age) is scored on the router's in-flight count alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

KV_WEIGHT = 4.0
MAX_AGE_INTERVALS = 3  # a scrape older than this many scrape intervals no longer counts

WAITING = (b"vllm:num_requests_waiting", b"sglang:num_queue_reqs", b"llamacpp:requests_deferred")
RUNNING = (
    b"vllm:num_requests_running",
    b"sglang:num_running_reqs",
    b"llamacpp:requests_processing",
)
KV_USE = (
    b"vllm:kv_cache_usage_perc",
    b"vllm:gpu_cache_usage_perc",
    b"sglang:token_usage",
    b"llamacpp:kv_cache_usage_ratio",
)
LLAMACPP_BUSY = b"llamacpp:requests_processing"  # busy slots: with the slot count, the KV use
VLLM_CACHE_INFO = b"vllm:cache_config_info"  # labels block_size and num_gpu_blocks
SGLANG_CACHE_TOKENS = b"sglang:max_total_num_tokens"


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One scrape of an engine: its queue, its running requests, its KV-cache use."""

    waiting: float
    running: float
    kv_use: float
    at: float  # monotonic time of the scrape
    in_flight: int  # the router's in-flight count to the engine at that time
    missing: tuple[str, ...] = ()  # inputs the engine exports nothing for (read as 0)
    cache_tokens: int | None = None  # the engine's prefix-cache capacity in tokens, if reported

    def view(self, now: float) -> dict[str, Any]:
        return {
            "waiting": self.waiting,
            "running": self.running,
            "kv_cache_use": round(self.kv_use, 4),
            "age_s": round(now - self.at, 3),
            "missing": list(self.missing),
            "cache_tokens": self.cache_tokens,
        }


def _samples(text: bytes, name: bytes) -> list[float]:
    """Values of every sample of ``name`` (any labels) in an exposition ``text``."""
    values: list[float] = []
    size = len(name)
    start = 0
    while True:
        at = text.find(name, start)
        if at < 0:
            return values
        end = text.find(b"\n", at)
        end = len(text) if end < 0 else end
        start = end
        if at and text[at - 1] != 10:  # not at a line start: a comment or a longer name
            continue
        follow = text[at + size : at + size + 1]
        if follow not in (b"{", b" "):
            continue  # a longer name sharing the prefix (name_total, name_bucket, ...)
        line = text[at:end]
        rest = line[line.rfind(b"}") + 1 :] if follow == b"{" else line[size:]
        fields = rest.split()
        if fields:
            try:
                value = float(fields[0])
            except ValueError:
                continue
            if math.isfinite(value):
                values.append(value)


def _lines(text: bytes, name: bytes) -> list[bytes]:
    """The sample lines of ``name`` with labels (``name{...} value``) in ``text``.

    The exposition format keeps a family's samples together, so the lines after the
    first are read only while they are the same family's: no search of the rest."""
    key = name + b"{"
    at = text.find(key)
    while at > 0 and text[at - 1] != 10:  # not at a line start: a comment
        at = text.find(key, at + 1)
    lines: list[bytes] = []
    while at >= 0 and text.startswith(key, at):
        end = text.find(b"\n", at)
        end = len(text) if end < 0 else end
        lines.append(text[at:end])
        at = end + 1
    return lines


def _label(line: bytes, key: bytes) -> bytes | None:
    """The value of label ``key`` in a sample ``line`` (no escapes: numbers are wanted)."""
    for lead in (b"{", b","):
        at = line.find(lead + key + b'="')
        if at >= 0:
            begin = at + len(key) + 3
            end = line.find(b'"', begin)
            return line[begin:end] if end >= 0 else None
    return None


def _positive_int(value: bytes | None) -> int | None:
    if value is None or not value.isdigit():
        return None  # absent, or vLLM's "None" before its blocks are counted
    number = int(value)
    return number if number > 0 else None


def parse_cache_tokens(text: bytes) -> int | None:
    """The prefix-cache capacity in tokens an engine's ``/metrics`` reports, or None.

    vLLM: ``block_size`` × ``num_gpu_blocks`` of each ``vllm:cache_config_info`` line
    (one per data-parallel engine, summed), 0 with ``enable_prefix_caching="False"``;
    SGLang: ``sglang:max_total_num_tokens`` (summed over its label sets, as the counts
    are)."""
    total, reported = 0, False
    for line in _lines(text, VLLM_CACHE_INFO):
        if _label(line, b"enable_prefix_caching") == b"False":
            reported = True  # a cache of nothing: no prompt is ever reused there
            continue
        block = _positive_int(_label(line, b"block_size"))
        blocks = _positive_int(_label(line, b"num_gpu_blocks"))
        if block and blocks:
            total, reported = total + block * blocks, True
    if reported:
        return total
    tokens = int(sum(_samples(text, SGLANG_CACHE_TOKENS)))
    return tokens if tokens > 0 else None


def is_llamacpp(text: bytes) -> bool:
    """Whether this ``/metrics`` is llama.cpp's: its slots and context are in ``/props``."""
    return bool(_samples(text, LLAMACPP_BUSY))


def _first(text: bytes, names: tuple[bytes, ...]) -> list[float] | None:
    for name in names:
        values = _samples(text, name)
        if values:
            return values
    return None


def needs_slots(text: bytes) -> bool:
    """Whether this is a llama.cpp without a KV-cache series: its slot count makes one."""
    return _first(text, KV_USE) is None and bool(_samples(text, LLAMACPP_BUSY))


def parse_load(
    text: bytes,
    *,
    at: float,
    in_flight: int,
    slots: int | None = None,
    cache_tokens: int | None = None,
) -> EngineLoad | None:
    """The load in a ``/metrics`` answer; None when it has none of the known names.

    ``slots``: llama.cpp's slot count (``/props``), for an engine without a KV-cache
    series (:func:`needs_slots`): its KV use is then its busy slots' share.
    ``cache_tokens``: the capacity read elsewhere (llama.cpp's ``/props``), used when
    the text reports none (:func:`parse_cache_tokens`)."""
    waiting = _first(text, WAITING)
    running = _first(text, RUNNING)
    kv = _first(text, KV_USE)
    if kv is None and slots:
        busy = _samples(text, LLAMACPP_BUSY)
        kv = [sum(busy) / slots] if busy else None
    if waiting is None and running is None and kv is None:
        return None
    reported = parse_cache_tokens(text)
    found = {"waiting requests": waiting, "running requests": running, "KV-cache use": kv}
    return EngineLoad(
        waiting=sum(waiting or ()),
        running=sum(running or ()),
        kv_use=min(1.0, max(0.0, max(kv or (0.0,)))),
        at=at,
        in_flight=in_flight,
        missing=tuple(name for name, values in found.items() if values is None),
        cache_tokens=cache_tokens if reported is None else reported,
    )


def max_load_age(interval: float) -> float:
    """Seconds a scraped load counts for, with scrapes every ``interval`` seconds."""
    return MAX_AGE_INTERVALS * interval


def load_score(load: EngineLoad | None, *, in_flight: int, weight: int) -> float:
    """The score of the module docstring; ``load`` None when no fresh scrape exists."""
    if load is None:
        return in_flight / weight
    requests = max(0.0, load.running + load.waiting + (in_flight - load.in_flight))
    return (requests + load.waiting) / weight + KV_WEIGHT * load.kv_use
