"""vLLM's own metric names, so dashboards and routers that read vLLM read this too.

Names, types and labels follow vLLM V1 (``vllm/v1/metrics/loggers.py``):
labels ``model_name`` and ``engine`` (``"0"``), plus ``finished_reason`` on
``vllm:request_success_total``. Gauges are computed at scrape time from the
scheduler, so a request costs no gauge updates.

``vllm:cache_config_info`` is vLLM's info gauge of its cache config (value 1, the config
in its labels); here it carries the prefix cache's size, ``block_size`` × ``num_gpu_blocks``
= ``--prefix-cache-tokens`` (rounded down to whole blocks), which routers read as the
engine's prefix-cache capacity (vLLM's ``num_gpu_blocks`` are its whole KV cache, which
is also what its prefix cache can keep).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmsvc.simengine.scheduler import Scheduler

ENGINE = "0"
LABELS = ("model_name", "engine")
FINISHED_REASONS = ("stop", "length", "abort")

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


def one_two_five_buckets(maximum: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to ``maximum`` (vLLM's token-count buckets)."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > maximum:
                return tuple(buckets)
            buckets.append(float(value))
        exponent += 1


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """The children of every metric bound to one model's labels."""

    prompt_tokens: Counter
    generation_tokens: Counter
    prefix_queries: Counter
    prefix_hits: Counter
    success: dict[str, Counter]
    ttft: Histogram
    e2e: Histogram
    queue_time: Histogram
    inter_token: Histogram
    request_prompt_tokens: Histogram
    request_generation_tokens: Histogram


class _SchedulerGauges(Collector):
    """``num_requests_running``/``waiting`` and ``kv_cache_usage_perc``, read at scrape."""

    def __init__(
        self, scheduler: Scheduler, models: Sequence[str], *, block_size: int, cache_blocks: int
    ) -> None:
        self._scheduler = scheduler
        self._models = list(models)
        self._cache_config = {
            "block_size": str(block_size),
            "enable_prefix_caching": str(cache_blocks > 0),
            "engine": ENGINE,
            "num_gpu_blocks": str(cache_blocks),
        }

    def collect(self) -> Iterable[Metric]:
        s = self._scheduler
        running = GaugeMetricFamily(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels=LABELS,
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            labels=LABELS,
        )
        kv = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels=LABELS
        )
        for model in self._models:
            running.add_metric([model, ENGINE], s.running_by_model[model])
            waiting.add_metric([model, ENGINE], s.waiting_by_model[model])
            kv.add_metric([model, ENGINE], s.kv.usage)
        cache_config = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig.",
            labels=tuple(self._cache_config),
        )
        cache_config.add_metric(list(self._cache_config.values()), 1.0)
        return iter((running, waiting, kv, cache_config))

    def describe(self) -> Iterator[Metric]:
        return iter(())


# (ModelMetrics field, metric name without _total, help)
_COUNTERS = (
    ("prompt_tokens", "vllm:prompt_tokens", "Number of prefill tokens processed."),
    ("generation_tokens", "vllm:generation_tokens", "Number of generation tokens processed."),
    (
        "prefix_queries",
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in number of queried tokens.",
    ),
    ("prefix_hits", "vllm:prefix_cache_hits", "Prefix cache hits, in number of cached tokens."),
)
# (ModelMetrics field, metric name, help, buckets; None: token-count buckets)
_HISTOGRAMS: tuple[tuple[str, str, str, Sequence[float] | None], ...] = (
    (
        "ttft",
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        TTFT_BUCKETS,
    ),
    (
        "e2e",
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        REQUEST_LATENCY_BUCKETS,
    ),
    (
        "queue_time",
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        REQUEST_LATENCY_BUCKETS,
    ),
    (
        "inter_token",
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        ITL_BUCKETS,
    ),
    ("request_prompt_tokens", "vllm:request_prompt_tokens", "Number of prefill tokens.", None),
    (
        "request_generation_tokens",
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        None,
    ),
)


def create_metrics(
    registry: CollectorRegistry,
    scheduler: Scheduler,
    models: Sequence[str],
    *,
    max_model_len: int,
    block_size: int = 16,
    prefix_cache_tokens: int = 0,
) -> dict[str, ModelMetrics]:
    """Create every metric on ``registry``; return the per-model bound children.

    ``block_size`` and ``prefix_cache_tokens``: the prefix cache's, for
    ``vllm:cache_config_info`` (its capacity in whole blocks)."""
    gauges = _SchedulerGauges(
        scheduler, models, block_size=block_size, cache_blocks=prefix_cache_tokens // block_size
    )
    registry.register(gauges)
    token_buckets = one_two_five_buckets(max_model_len)
    families: dict[str, Counter | Histogram] = {
        field: Counter(name, doc, LABELS, registry=registry) for field, name, doc in _COUNTERS
    }
    for field, name, doc, buckets in _HISTOGRAMS:
        families[field] = Histogram(
            name, doc, LABELS, buckets=buckets or token_buckets, registry=registry
        )
    success = Counter(
        "vllm:request_success",
        "Count of successfully processed requests.",
        [*LABELS, "finished_reason"],
        registry=registry,
    )
    out: dict[str, ModelMetrics] = {}
    for model in models:
        bound = {field: family.labels(model, ENGINE) for field, family in families.items()}
        out[model] = ModelMetrics(
            success={r: success.labels(model, ENGINE, r) for r in FINISHED_REASONS},
            **bound,  # type: ignore[arg-type]
        )
    return out
