"""The autoscaling benchmarks' results as markdown, and their places in a document.

A document keeps each table between ``<!-- NAME -->`` and ``<!-- /NAME -->``;
:func:`replace_between` swaps what is there for a fresh table and keeps the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def replace_between(doc: Path, table: str, name: str) -> None:
    """Put ``table`` between ``<!-- name -->`` and ``<!-- /name -->`` of ``doc`` (appended
    at the end, markers and all, when the document has no such markers yet)."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = doc.read_text()
    head, found, rest = text.partition(start)
    if not found:
        doc.write_text(text.rstrip("\n") + f"\n\n{start}\n{table.rstrip()}\n{end}\n")
        return
    _, found_end, tail = rest.partition(end)
    if not found_end:
        raise ValueError(f"{doc}: {start} without {end}")
    doc.write_text(f"{head}{start}\n{table.rstrip()}\n{end}{tail}")


def _s(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _machine(result: dict[str, Any]) -> str:
    m = result["machine"]
    real_load = result["real"]["load_average_1m"]
    return (
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, Python "
        f"{m['python']}; 1-minute load average {real_load['start']:.2f} at the replay's start, "
        f"{real_load['end']:.2f} at its end (the machine is shared with other work); llmsvc "
        f"commit {result['commit']}, {result['date']}. Command: `{result['command']}`."
    )


def _router_line(router: dict[str, Any] | None) -> str:
    if not router:
        return ""
    return (
        f"; router `--strategy {router['strategy']} --wake-target {router['wake_target']:g}`"
        f" with the babysitter's slots (its engine's `max_num_seqs`), babysitters "
        f"`--health-interval {router['health_interval']:g}`, and the simulation told the "
        f"same (`strategy`, `wake_target`, `backend_concurrency`, `idle_check_interval`)"
    )


def _tokens_line(counts: dict[str, int] | None) -> str:
    if not counts:
        return ""
    return (
        f"; the engine's token counts (the router's access lines) differ from the trace's "
        f"for {counts['not_as_in_trace']} of {counts['logged']} requests"
    )


def _wake_line(measured: float | None, configured: float) -> str:
    if measured is None:
        return ""
    return (
        f"; the babysitters measured a wake (`POST /wake` to ready) at {measured:.3f} s on "
        f"average, for a `wake_delay` of {configured:g} s"
    )


def agreement_markdown(result: dict[str, Any]) -> str:
    """The side-by-side table, the targets met or not, the conditions."""
    sim, real, ratio = result["simulated"], result["real"], result["ratio_sim_over_real"]
    s = result["settings"]
    trace = s["trace"]
    rows = [
        "| | requests | answered | held | mean hold (s) | TTFT p50 (s) | TTFT p95 (s) | wake-ups |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, x in (("simulated (`llmsvc simulate`)", sim), ("real processes", real)):
        rows.append(
            f"| {label} | {x['requests']} | {x['answered']} | {x['held']} "
            f"| {_s(x['hold_mean_s'])} "
            f"| {_s(x['ttft_p50_s'])} | {_s(x['ttft_p95_s'])} | {x['wakes']} |"
        )
    rows.append(
        f"| sim / real | {_ratio(ratio['requests'])} | | {_ratio(ratio['held'])} "
        f"| {_ratio(ratio['hold_mean_s'])} "
        f"| {_ratio(ratio['ttft_p50_s'])} | {_ratio(ratio['ttft_p95_s'])} "
        f"| {_ratio(ratio['wakes'])} |"
    )
    met = result["targets_met"]
    p95 = ratio["ttft_p95_s"]
    p95_text = "–" if p95 is None else f"{abs(p95 - 1):.0%}"
    targets = (
        f"Targets: p95 TTFT within 15 %: **{'met' if met['p95_within_15pct'] else 'not met'}** "
        f"({p95_text} apart); the same number of wake-ups: "
        f"**{'met' if met['same_wakes'] else 'not met'}** "
        f"({sim['wakes']} simulated, {real['wakes']} real)."
    )
    gaps = result.get("real_minus_sim_ttft") or {}
    gap_text = "; ".join(
        f"{label}: {g['median_s'] * 1000:+.0f} ms median, {g['p95_s'] * 1000:+.0f} ms p95 "
        f"({g['requests']} requests)"
        for label, g in (
            ("sent at once", gaps.get("direct")),
            ("queued by the real router for a slot", gaps.get("queued")),
            ("held for a wake", gaps.get("held")),
        )
        if g
    )
    paired_line = f"Real minus simulated TTFT, request by request: {gap_text}." if gap_text else ""
    errors = real.get("errors") or {}
    failed = ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"
    conditions = (
        f"Trace: {trace['bursts']} bursts of {trace['burst_s']:g} s at {trace['rate']:g} "
        f"requests/s (Poisson, seed {s['seed']}), {trace['gap_s']:g} s of quiet between them "
        f"and {trace['lead_in_s']:g} s before the first ({s['trace_duration_s']:g} s in all); "
        f"prompts {trace['prompt_tokens'][0]}-{trace['prompt_tokens'][1]} tokens, answers "
        f"{trace['output_tokens'][0]}-{trace['output_tokens'][1]}, streamed. "
        f"{s['babysitters']} babysitter(s) `--idle-timeout {s['idle_timeout']:g} --standby "
        f"sleep`; engine timing `{s['base_profile']}` with `wake_delay` {s['wake_delay']:g} s, "
        f"the same profile file on both sides{_router_line(s.get('router'))}. Real side: "
        f"failed requests: {failed}; the "
        f"latest request went {real['latest_send_s'] * 1000:.0f} ms after its arrival time"
        f"{_tokens_line(real.get('token_counts'))}"
        f"{_wake_line(real.get('wake_seconds_mean'), s['wake_delay'])}."
    )
    return "\n".join([*rows, "", targets, paired_line, "", conditions, "", _machine(result), ""])


def study_markdown(doc: dict[str, Any]) -> str:
    """One row per trace and policy: the cost (GPU-seconds, and as a share of the fixed
    fleet's) beside what the requests saw."""
    s = doc["settings"]
    rows = [
        "| trace | policy | GPU-seconds | vs fixed | TTFT p50 (s) | TTFT p95 (s) | TTFT p99 (s) "
        "| requests | held | rejected | cold starts |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for trace, policies in doc["rows"].items():
        fixed = policies.get("fixed", {}).get("gpu_seconds")
        for policy, r in policies.items():
            share = f"{r['gpu_seconds'] / fixed:.0%}" if fixed else "–"
            rows.append(
                f"| {trace} | {policy} | {r['gpu_seconds']:,.0f} | {share} "
                f"| {_s(r['ttft_p50_s'])} | {_s(r['ttft_p95_s'])} | {_s(r['ttft_p99_s'])} "
                f"| {r['requests']:,} | {r['held']:,} | {r['rejected']:,} | {r['cold_starts']} |"
            )
    profile = s["profile"] or "the sim-engine's defaults"
    conditions = (
        f"Fleet: {s['workers']} engines fixed, or autoscaled between 1 (`autoscale`) or 0 "
        f"(`autoscale-zero`) and {s['workers']}, `targetRequests` {s['target_requests']:g}, "
        f"`scaleUpDelay` {s['scale_up_delay']:g} s, `scaleDownDelay` "
        f"{s['scale_down_delay']:g} s, a decision every {s['autoscale_interval']:g} s; a cold "
        f"start takes {s['startup_delay']:g} s; the router holds a request up to "
        f"{s['hold_timeout']:g} s for a ready engine (then rejects it); engine timing: "
        f"{profile}. Traces: {s['duration']:g} s at a mean {s['rate']:g} requests/s "
        f"(prompts about {s['prompt_tokens']} tokens, answers about {s['output_tokens']}), "
        f"seed {s['seed']}. Simulated time, deterministic: {doc['simulated_in_s']:g} s to "
        f"simulate all {len(doc['rows']) * 3} runs; llmsvc commit {doc['commit']}, "
        f"{doc['date']}. Command: `{doc['command']}`."
    )
    return "\n".join([*rows, "", conditions, ""])
