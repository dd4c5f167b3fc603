"""Numbers from samples, and the study's outputs: JSON, a Markdown table, plots."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .driver import Sample

CDF_POINTS = 101
Result = dict[str, Any]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); ``inf`` stands for a request that never answered."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def finite(value: float) -> float | None:
    """JSON has no infinity or NaN: None instead."""
    return value if math.isfinite(value) else None


def summarize(samples: Sequence[Sample], *, start: float, end: float, runs: int = 1) -> Result:
    """Statistics of the requests sent in ``[start, end)`` (seconds from their run's start).

    ``samples`` may pool ``runs`` runs of the same length: rates are per second of one.

    A request that failed or had no answer by the end of the drain counts as
    an infinite TTFT, so a strategy cannot look fast by dropping requests.
    """
    measured = [s for s in samples if start <= s.sent < end]
    ok = [s for s in measured if s.ok]
    ttft = [s.ttft if s.ok and s.ttft is not None else math.inf for s in measured]
    latency = [s.latency if s.ok and s.latency is not None else math.inf for s in measured]
    window = (end - start) * runs
    backends = Counter(s.backend for s in ok)
    share = [backends[name] / len(ok) for name in sorted(backends)] if ok else []
    return {
        "requests": len(measured),
        "ok": len(ok),
        "errors": sum(1 for s in measured if not s.ok and s.status != -1),
        "unfinished": sum(1 for s in measured if s.status == -1),
        "ttft_p50_s": finite(percentile(ttft, 0.50)),
        "ttft_p95_s": finite(percentile(ttft, 0.95)),
        "ttft_p99_s": finite(percentile(ttft, 0.99)),
        "ttft_mean_s": finite(sum(ttft) / len(ttft)) if ttft else None,
        "latency_p50_s": finite(percentile(latency, 0.50)),
        "latency_p95_s": finite(percentile(latency, 0.95)),
        "sent_req_s": len(measured) / window,
        "throughput_req_s": len(ok) / window,
        "throughput_tok_s": sum(s.tokens for s in ok) / window,
        "backend_share": dict(sorted(backends.items())),
        "max_backend_share": max(share) if share else None,
        "send_lateness_p99_s": percentile([s.lateness for s in measured], 0.99)
        if measured
        else None,
        "ttft_cdf_s": [finite(percentile(ttft, i / (CDF_POINTS - 1))) for i in range(CDF_POINTS)]
        if ttft
        else [],
    }


def targets(runs: Sequence[Result]) -> Result:
    """The issue's targets, checked against what was measured."""
    p95 = {(r["workload"], r["strategy"]): r.get("ttft_p95_s") for r in runs if "error" not in r}
    out: Result = {}
    for strategy in ("prefix_affinity", "least_load"):
        base = p95.get(("shared_prefix", "round_robin"))
        value = p95.get(("shared_prefix", strategy))
        if base and value:
            cut = 1 - value / base
            out[f"shared_prefix_p95_cut_{strategy}"] = {"cut": cut, "met": cut >= 0.30}
        base = p95.get(("uniform", "round_robin"))
        value = p95.get(("uniform", strategy))
        if base and value:
            worse = value / base - 1
            out[f"uniform_p95_worse_{strategy}"] = {"worse": worse, "met": worse <= 0.05}
    return out


def _ms(value: float | None) -> str:
    return "∞" if value is None else f"{value * 1000:.0f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown_table(runs: Sequence[Result]) -> str:
    lines = [
        "| workload | strategy | p50 TTFT ms | p95 TTFT ms | sent req/s | completed req/s "
        "| capacity req/s | prefix-cache hit rate | busiest engine | failed | CPU study / others |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['strategy']} | | | | | | | | {r['error']} | |")
            continue
        hit, share = r.get("prefix_cache_hit_rate"), r.get("max_backend_share")
        hit_text = "-" if hit is None else f"{hit:.0%}"
        share_text = "-" if share is None else f"{share:.0%}"
        cpu = f"{r.get('cpu_study', 0):.0%} / {r.get('cpu_others', 0):.0%}"
        lines.append(
            f"| {r['workload']} | {r['strategy']} "
            f"| {_ms(r['ttft_p50_s'])} | {_ms(r['ttft_p95_s'])} | {r['sent_req_s']:.1f} "
            f"| {r['throughput_req_s']:.1f} | {_rate(r['capacity_req_s'])} "
            f"| {hit_text} | {share_text} | {r['errors'] + r['unfinished']} | {cpu} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[Result], out_dir: Path) -> list[Path]:
    """Bar charts of TTFT and hit rate, and TTFT CDFs, per workload; the PNG files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in runs if "error" not in r]
    workloads = list(dict.fromkeys(r["workload"] for r in good))
    strategies = list(dict.fromkeys(r["strategy"] for r in good))
    if not good:
        return []
    paths = [out_dir / "ttft.png", out_dir / "hit_rate.png", out_dir / "ttft_cdf.png"]
    by_key = {(r["workload"], r["strategy"]): r for r in good}

    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        rows = [by_key.get((workload, s)) for s in strategies]
        x = range(len(strategies))
        p50 = [1000 * (r["ttft_p50_s"] or math.nan) if r else math.nan for r in rows]
        p95 = [1000 * (r["ttft_p95_s"] or math.nan) if r else math.nan for r in rows]
        ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], p95, width=0.4, label="p95")
        ax.set_xticks(list(x), strategies, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_title(workload)
        ax.set_ylabel("TTFT (ms, log)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        rows = [by_key.get((workload, s)) for s in strategies]
        hits = [100 * (r.get("prefix_cache_hit_rate") or 0) if r else math.nan for r in rows]
        ax.bar(range(len(strategies)), hits, color="tab:green")
        ax.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right")
        ax.set_ylim(0, 100)
        ax.set_title(workload)
        ax.set_ylabel("prefix-cache hit rate (% of prompt tokens)")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for strategy in strategies:
            r = by_key.get((workload, strategy))
            if not r or not r["ttft_cdf_s"]:
                continue
            cdf = [1000 * v if v is not None else math.nan for v in r["ttft_cdf_s"]]
            ax.plot(cdf, [i / (CDF_POINTS - 1) for i in range(CDF_POINTS)], label=strategy)
        ax.set_xscale("log")
        ax.set_title(workload)
        ax.set_xlabel("TTFT (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths
