"""Numbers from samples, and the study's outputs: JSON, a Markdown table, plots."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
        "router_share": {str(k): v for k, v in sorted(Counter(s.router for s in measured).items())},
        "max_backend_share": max(share) if share else None,
        "send_lateness_p99_s": percentile([s.lateness for s in measured], 0.99)
        if measured
        else None,
        "ttft_cdf_s": [finite(percentile(ttft, i / (CDF_POINTS - 1))) for i in range(CDF_POINTS)]
        if ttft
        else [],
    }


Bound = tuple[float | None, float | None]
"""A ratio's accepted range (low, high); None on a side: unbounded."""

BOOTSTRAP_ROUNDS = 400


@dataclass(frozen=True, slots=True)
class Comparison:
    """One target: ``candidate``'s figure over a baseline's, and the range it must fall in."""

    workload: str
    figure: str  # "ttft_p95" or "capacity"
    routers: int
    against: tuple[str, ...]  # baseline strategies (their best figure), or () for 1 router
    bound: Bound | None  # None: reported, no target

    @property
    def baseline(self) -> str:
        if not self.against:
            return "itself, 1 router"
        if len(self.against) == 1:
            return self.against[0]
        return f"min({', '.join(self.against)})"


def comparisons(routers: Sequence[int]) -> list[Comparison]:
    """The issue's targets at each router count, then each figure's multi-router band."""
    out: list[Comparison] = []
    for n in routers:
        out += [
            Comparison("shared_prefix", "ttft_p95", n, ("round_robin",), (None, 0.60)),
            Comparison("shared_prefix", "capacity", n, ("round_robin",), (1.30, None)),
            Comparison(
                "uniform", "ttft_p95", n, ("round_robin", "least_connections"), (None, 1.05)
            ),
            Comparison("bursts", "ttft_p95", n, ("round_robin",), (None, 0.70)),
            Comparison("heterogeneous", "ttft_p95", n, ("round_robin",), None),
            Comparison("heterogeneous", "ttft_p95", n, ("least_connections",), None),
        ]
    for n in routers:
        if n == 1:
            continue
        for workload in ("shared_prefix", "uniform", "bursts", "heterogeneous"):
            out.append(Comparison(workload, "ttft_p95", n, (), (0.90, 1.10)))
        out.append(Comparison("shared_prefix", "capacity", n, (), (0.90, 1.10)))
    return out


def within(value: float, bound: Bound) -> bool:
    low, high = bound
    return (low is None or value >= low) and (high is None or value <= high)


def _verdict(ratio: float, bound: Bound | None) -> bool:
    """What a ratio says: within the target; with no target, better than the baseline."""
    return ratio < 1 if bound is None else within(ratio, bound)


def _bound_text(bound: Bound | None) -> str:
    if bound is None:
        return "-"
    low, high = bound
    if low is not None and high is not None:
        return f"{low:.2f}–{high:.2f}"
    return f"≤ {high:.2f}" if high is not None else f"≥ {low:.2f}"


def _ratio(value: float | None, base: Sequence[float | None]) -> float | None:
    if value is None or any(b is None or b <= 0 for b in base) or not base:
        return None
    return value / min(b for b in base if b is not None)


def bootstrap_ratio(
    candidate: Sequence[Sequence[float]],
    baselines: Sequence[Sequence[Sequence[float]]],
    rng: random.Random,
    rounds: int = BOOTSTRAP_ROUNDS,
) -> tuple[float, float] | None:
    """A 95 % interval of the pooled p95 ratio ``candidate / min(baselines)``.

    Each side's requests are resampled within each of its rounds (a round's
    conditions are kept; its requests vary), then pooled as the study pools.
    """

    def resampled_p95(by_round: Sequence[Sequence[float]]) -> float:
        pooled = [v for values in by_round if values for v in rng.choices(values, k=len(values))]
        return percentile(pooled, 0.95)

    ratios: list[float] = []
    for _ in range(rounds):
        value = resampled_p95(candidate)
        base = min(resampled_p95(b) for b in baselines)
        ratios.append(value / base if base > 0 and math.isfinite(base) else math.inf)
    low, high = percentile(ratios, 0.025), percentile(ratios, 0.975)
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return low, high


def targets(
    runs: Sequence[Result],
    *,
    candidates: Sequence[str] = ("scored",),
    ttfts: Mapping[tuple[int, str, str], Sequence[Sequence[float]]] | None = None,
    seed: int = 1,
) -> list[Result]:
    """The issue's targets for each candidate, checked against what was measured.

    Each row: the pooled ratio (the figure over the baseline's, both pooled over
    their rounds), the ratio round by round, whether it is within the target
    (``met``), whether every round agrees with that verdict (``resolved``: a
    comparison that flips between rounds is noise at this many rounds), and,
    when the TTFTs are given, a bootstrap 95 % interval of the pooled ratio.
    Rows whose runs are missing are left out.
    """
    by_key = {
        (r.get("routers", 1), r["workload"], r["strategy"]): r for r in runs if "error" not in r
    }
    routers = sorted({key[0] for key in by_key})
    rng = random.Random(seed)
    rows: list[Result] = []
    for candidate in candidates:
        for c in comparisons(routers):
            if candidate in c.against:
                continue  # against itself
            base_keys = [(c.routers, c.workload, s) for s in c.against]
            base_keys = base_keys or [(1, c.workload, candidate)]
            key = (c.routers, c.workload, candidate)
            if key not in by_key or any(b not in by_key for b in base_keys):
                continue
            run, bases = by_key[key], [by_key[b] for b in base_keys]
            if c.figure == "capacity":
                if run.get("capacity_req_s") is None:
                    continue  # not measured on this workload
                pooled = _ratio(run["capacity_req_s"], [b.get("capacity_req_s") for b in bases])
                field = "capacity_by_repeat_req_s"
            else:
                pooled = _ratio(run.get("ttft_p95_s"), [b.get("ttft_p95_s") for b in bases])
                field = "ttft_p95_by_repeat_s"
            per_round: list[float | None] = []
            for i, value in enumerate(run.get(field) or []):
                base_values = [(b.get(field) or [])[i : i + 1] for b in bases]
                if all(base_values):
                    per_round.append(_ratio(value, [v[0] for v in base_values]))
            measured = [r for r in per_round if r is not None]
            met = None if c.bound is None else pooled is not None and within(pooled, c.bound)
            resolved = (
                pooled is not None
                and len(measured) >= 2
                and len(measured) == len(per_round)
                and all(_verdict(r, c.bound) == _verdict(pooled, c.bound) for r in measured)
            )
            interval = None
            if ttfts is not None and c.figure == "ttft_p95":
                sides = [ttfts.get(key)] + [ttfts.get(b) for b in base_keys]
                if all(sides):
                    interval = bootstrap_ratio(
                        sides[0] or [], [side or [] for side in sides[1:]], rng
                    )
            rows.append(
                {
                    "candidate": candidate,
                    "routers": c.routers,
                    "workload": c.workload,
                    "figure": c.figure,
                    "against": c.baseline,
                    "measured": pooled,
                    "by_round": per_round,
                    "threshold": _bound_text(c.bound),
                    "met": met,
                    "resolved": resolved,
                    "ci95": list(interval) if interval else None,
                }
            )
    return rows


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def targets_table(rows: Sequence[Result]) -> str:
    """The targets as Markdown: one line per comparison."""
    lines = [
        "| candidate | routers | workload | figure | against | measured (ratio) | by round "
        "| bootstrap 95 % | target | met | resolved |",
        "| --- | ---: | --- | --- | --- | ---: | --- | --- | ---: | --- | --- |",
    ]
    for row in rows:
        rounds = [r for r in row["by_round"] if r is not None]
        spread = f"{min(rounds):.2f}–{max(rounds):.2f}" if rounds else "-"
        ci = row.get("ci95")
        ci_text = f"{ci[0]:.2f}–{ci[1]:.2f}" if ci else "-"
        lines.append(
            f"| {row['candidate']} | {row['routers']} | {row['workload']} | {row['figure']} "
            f"| {row['against']} | {_x(row['measured'])} | {spread} ({len(rounds)}) "
            f"| {ci_text} | {row['threshold']} | {_yes(row['met'])} | {_yes(row['resolved'])} |"
        )
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "∞" if value is None else f"{value * 1000:.0f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown_table(runs: Sequence[Result]) -> str:
    lines = [
        "| workload | strategy | routers | p50 TTFT ms | p95 TTFT ms | p95 by round ms "
        "| sent req/s | completed req/s | capacity req/s | prefix-cache hit rate "
        "| busiest engine | failed | CPU study / others |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        routers = r.get("routers", 1)
        if "error" in r:
            cells = f"| {r['workload']} | {r['strategy']} | {routers} |"
            lines.append(f"{cells}{' |' * 8} {r['error']} | |")
            continue
        rounds = " / ".join(_ms(v) for v in r.get("ttft_p95_by_repeat_s") or [])
        hit, share = r.get("prefix_cache_hit_rate"), r.get("max_backend_share")
        hit_text = "-" if hit is None else f"{hit:.0%}"
        share_text = "-" if share is None else f"{share:.0%}"
        cpu = f"{r.get('cpu_study', 0):.0%} / {r.get('cpu_others', 0):.0%}"
        lines.append(
            f"| {r['workload']} | {r['strategy']} | {routers} "
            f"| {_ms(r['ttft_p50_s'])} | {_ms(r['ttft_p95_s'])} | {rounds} | {r['sent_req_s']:.1f} "
            f"| {r['throughput_req_s']:.1f} | {_rate(r['capacity_req_s'])} "
            f"| {hit_text} | {share_text} | {r['errors'] + r['unfinished']} | {cpu} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[Result], out_dir: Path) -> list[Path]:
    """Bar charts of TTFT and hit rate, and TTFT CDFs, per workload (at the fewest routers
    run); p95 TTFT at each router count where more were run; the PNG files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = [r for r in runs if "error" not in r]
    fewest = min((r.get("routers", 1) for r in every), default=1)
    good = [r for r in every if r.get("routers", 1) == fewest]
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
    if len({r.get("routers", 1) for r in every}) > 1:
        paths.append(plot_routers(every, out_dir / "routers.png"))
    return paths


def _round_spread(run: Result | None) -> tuple[float, float]:
    """The lowest and highest per-round p95 TTFT of a run, ms (NaN when unknown)."""
    rounds = [v for v in (run or {}).get("ttft_p95_by_repeat_s") or [] if v is not None]
    if not rounds:
        return math.nan, math.nan
    return 1000 * min(rounds), 1000 * max(rounds)


def plot_routers(runs: Sequence[Result], path: Path) -> Path:
    """p95 TTFT of each strategy run at several router counts, one bar per count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r.get("routers", 1) for r in runs})
    by_key = {(r.get("routers", 1), r["workload"], r["strategy"]): r for r in runs}
    multi = [r for r in runs if r.get("routers", 1) > counts[0]]
    workloads = list(dict.fromkeys(r["workload"] for r in multi))
    strategies = list(dict.fromkeys(r["strategy"] for r in multi))
    width = 0.8 / len(counts)
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for k, n in enumerate(counts):
            rows = [by_key.get((n, workload, s)) for s in strategies]
            p95 = [1000 * (r["ttft_p95_s"] or math.nan) if r else math.nan for r in rows]
            spread = [_round_spread(r) for r in rows]
            low = [max(0.0, v - lo) for v, (lo, _) in zip(p95, spread, strict=True)]
            high = [max(0.0, hi - v) for v, (_, hi) in zip(p95, spread, strict=True)]
            x = [i - 0.4 + width * (k + 0.5) for i in range(len(strategies))]
            label = f"{n} router{'s' if n > 1 else ''}"
            ax.bar(x, p95, width=width, yerr=[low, high], capsize=3, label=label)
        ax.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right")
        ax.set_title(workload)
        ax.set_ylabel("p95 TTFT (ms)")
        ax.margins(y=0.25)
        ax.legend(fontsize=8)
    fig.suptitle("p95 TTFT by router count: bars pooled over rounds, whiskers the rounds' min–max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
