"""Each benchmark client's own result file, read into the same few figures.

Nothing is recomputed: every figure is one the tool itself reports (guidellm's
``benchmarks.json``, inference-perf's ``summary_lifecycle_metrics.json``), in
milliseconds and per second. A figure a tool does not report is None (shown as
"–"); a file that lacks what it must hold raises :class:`ResultError` naming
the missing key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ResultError(ValueError):
    """A tool's result file is not what this version of the tool writes."""


@dataclass(frozen=True)
class Figures:
    completed: int
    errors: int
    incomplete: int | None  # cut by the tool at the end of the run (guidellm); None: not reported
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    itl_p95_ms: float
    tpot_p50_ms: float
    output_tokens_per_s: float
    requests_per_s: float


def _at(doc: Any, *path: str | int) -> Any:
    for key in path:
        try:
            doc = doc[key]
        except (KeyError, IndexError, TypeError):
            raise ResultError(f"no {'.'.join(map(str, path))} in the result") from None
    return doc


def guidellm(report: dict[str, Any]) -> Figures:
    """guidellm's ``benchmarks.json`` (0.8): its one benchmark's successful requests'
    latencies and the throughputs over all requests (its console's tables)."""
    m = _at(report, "benchmarks", 0, "metrics")
    totals = _at(m, "request_totals")

    def ok(name: str, stat: str) -> float:
        dist = _at(m, name, "successful")
        return float(_at(dist, "median") if stat == "p50" else _at(dist, "percentiles", stat))

    return Figures(
        completed=int(_at(totals, "successful")),
        errors=int(_at(totals, "errored")),
        incomplete=int(_at(totals, "incomplete")),
        ttft_p50_ms=ok("time_to_first_token_ms", "p50"),
        ttft_p95_ms=ok("time_to_first_token_ms", "p95"),
        itl_p50_ms=ok("inter_token_latency_ms", "p50"),
        itl_p95_ms=ok("inter_token_latency_ms", "p95"),
        tpot_p50_ms=ok("time_per_output_token_ms", "p50"),
        output_tokens_per_s=float(_at(m, "output_tokens_per_second", "total", "mean")),
        requests_per_s=float(_at(m, "requests_per_second", "total", "mean")),
    )


def inference_perf(summary: dict[str, Any]) -> Figures:
    """inference-perf's ``summary_lifecycle_metrics.json`` (0.7): latencies in seconds of
    its successful requests, their throughput, and its failure count."""
    ok = _at(summary, "successes")
    latency = _at(ok, "latency")

    def ms(name: str, stat: str) -> float:
        return 1000.0 * float(_at(latency, name, stat))

    return Figures(
        completed=int(_at(ok, "count")),
        errors=int(_at(summary, "failures", "count")),
        incomplete=None,
        ttft_p50_ms=ms("time_to_first_token", "median"),
        ttft_p95_ms=ms("time_to_first_token", "p95"),
        itl_p50_ms=ms("inter_token_latency", "median"),
        itl_p95_ms=ms("inter_token_latency", "p95"),
        tpot_p50_ms=ms("time_per_output_token", "median"),
        output_tokens_per_s=float(_at(ok, "throughput", "output_tokens_per_sec")),
        requests_per_s=float(_at(ok, "throughput", "requests_per_sec")),
    )


PARSERS = {"guidellm": guidellm, "inference-perf": inference_perf}
