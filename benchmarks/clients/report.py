"""The benchmark clients' results as one markdown table (and its place in docs/performance.md).

One row per fleet, tool and target, with the tool's own figures
(:mod:`benchmarks.clients.parse`) and, through the router, what the router
counted for that run (``llmsvc_router_requests_total`` by status, the
difference over the run), so that a tool's errors and the router's statuses
can be read side by side. A run that could not happen is a row with its reason.
"""

from __future__ import annotations

from typing import Any

START = "<!-- bench-clients-table -->"
END = "<!-- /bench-clients-table -->"
HEADER = (
    "| engines | tool | target | completed | errors | cut at the end | TTFT p50 / p95 ms "
    "| ITL p50 / p95 ms | TPOT p50 ms | output tok/s | req/s | router counted |\n"
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
)
COLUMNS = HEADER.splitlines()[0].count("|") - 1


def _n(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def statuses(counts: dict[str, float] | None) -> str:
    """``200: 152, 499: 8`` (statuses in order, zero counts left out); "–" without counts."""
    if counts is None:
        return "–"
    shown = [f"{status}: {int(n)}" for status, n in sorted(counts.items()) if n]
    return ", ".join(shown) or "nothing"


def row(run: dict[str, Any]) -> str:
    head = f"| {run['fleet']} | {run['tool']} | {run['target']} "
    if "unavailable" in run:
        return head + f"| not run: {run['unavailable']} " + "|" * (COLUMNS - 3) + "\n"
    f = run["figures"]
    cut = "–" if f["incomplete"] is None else str(f["incomplete"])
    return head + (
        f"| {f['completed']} | {f['errors']} | {cut} "
        f"| {_n(f['ttft_p50_ms'])} / {_n(f['ttft_p95_ms'])} "
        f"| {_n(f['itl_p50_ms'])} / {_n(f['itl_p95_ms'])} | {_n(f['tpot_p50_ms'])} "
        f"| {_n(f['output_tokens_per_s'], 0)} | {_n(f['requests_per_s'], 2)} "
        f"| {statuses(run.get('router_statuses'))} |\n"
    )


def loads(results: dict[str, Any]) -> str:
    """What each fleet was driven with, one sentence."""
    parts = [
        f"{fleet}: {lo['streams']} concurrent streams for {lo['seconds']} s, prompt "
        f"{lo['prompt_tokens']} / output {lo['output_tokens']} tokens"
        for fleet, lo in results["loads"].items()
    ]
    return "Load: " + "; ".join(parts) + "."


def machine_line(results: dict[str, Any]) -> str:
    m = results["machine_at_start"]
    return (
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}, Python {m['python']}; 1-minute load average {m['loadavg_1m']} at the "
        f"start, {results['loadavg_1m_at_end']} at the end; {m['utc']}; llmsvc "
        f"{results['llmsvc_commit']}; {results['tool_versions']}. "
        f"Command: `{results['command']}`."
    )


def markdown(results: dict[str, Any]) -> str:
    rows = "".join(row(r) for r in results["runs"])
    return HEADER + rows + "\n" + loads(results) + "\n\n" + machine_line(results) + "\n"
