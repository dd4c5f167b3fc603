"""The cold-start benchmark's report: p50 and max per mode, against the 0.5 s target."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

TARGET_S = 0.5  # the router's and registry's share of a cold start (hold overhead)
TABLE_START = "<!-- coldstart-table -->"
TABLE_END = "<!-- /coldstart-table -->"


def p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def summary(cycles: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """p50 and max of each measured time over a mode's cycles."""
    out: dict[str, float] = {}
    for key in ("cold_ttft_s", "engine_wake_s", "warm_ttft_s", "overhead_s"):
        values = [c[key] for c in cycles]
        out[f"{key}_p50"] = round(p50(values), 3)
        out[f"{key}_max"] = round(max(values), 3)
    return out


def met(stats: Mapping[str, float]) -> bool:
    """The target holds for every cycle: the largest overhead is within it."""
    return stats["overhead_s_max"] <= TARGET_S


def table(results: Mapping[str, Any]) -> str:
    """The markdown table of every mode (what the docs cite)."""
    lines = [
        "| `--standby` | cycles | client TTFT, cold (p50 / max) | engine wake (p50 / max) "
        f"| TTFT, warm (p50) | hold overhead (p50 / max) | target ≤ {TARGET_S} s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for mode, run in results["modes"].items():
        s = run["summary"]
        verdict = "**met**" if met(s) else "not met"
        lines.append(
            f"| `{mode}` | {len(run['cycles'])} "
            f"| {s['cold_ttft_s_p50']:.3f} / {s['cold_ttft_s_max']:.3f} s "
            f"| {s['engine_wake_s_p50']:.3f} / {s['engine_wake_s_max']:.3f} s "
            f"| {s['warm_ttft_s_p50']:.3f} s "
            f"| {s['overhead_s_p50']:.3f} / {s['overhead_s_max']:.3f} s | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def conditions(results: Mapping[str, Any]) -> str:
    """Where and how it ran: machine, commit, command, the engine's timing."""
    m = results["machine"]
    s = results["settings"]
    return (
        f"Machine: {m['nproc']} CPUs ({m['cpu_model'] or 'unknown CPU'}), "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, load average "
        f"{results['load_average']} at the start. Commit `{results['commit']}`. "
        f"Command: `{results['command']}`. Simulated engine `--wake-delay "
        f"{s['wake_delay']} --startup-delay {s['startup_delay']}`, babysitter "
        f"`--idle-timeout {s['idle_timeout']}`, {s['cycles']} cycles per mode, "
        f"{results['seconds']:.0f} s in all.\n"
    )


def markdown(results: Mapping[str, Any]) -> str:
    """docs/autoscaling/coldstart.md."""
    per_cycle = ["| `--standby` | cycle | cold TTFT | engine wake | warm TTFT | overhead |"]
    per_cycle.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for mode, run in results["modes"].items():
        for i, c in enumerate(run["cycles"], 1):
            per_cycle.append(
                f"| `{mode}` | {i} | {c['cold_ttft_s']:.3f} | {c['engine_wake_s']:.3f} "
                f"| {c['warm_ttft_s']:.3f} | {c['overhead_s']:.3f} |"
            )
    return (
        "# Cold starts, measured (`make coldstart-bench`)\n\n"
        "A request for a model whose only engine is in standby, through the router: the\n"
        "client's time to the first event (TTFT), what the engine's wake took by its\n"
        "babysitter's clock (`POST /wake` to ready; with `--standby stop` a whole start), the\n"
        "same request warm, and the **hold overhead**, cold TTFT minus the engine's wake minus\n"
        "the warm TTFT: what the router (noticing the hold, waking the babysitter, hearing that\n"
        "the engine is back) and the registry add. Written by `benchmarks/coldstart`; see\n"
        "[autoscaling.md](../autoscaling.md#cold-starts-measured).\n\n"
        f"{conditions(results)}\n"
        f"{table(results)}\n"
        "Every cycle (seconds):\n\n" + "\n".join(per_cycle) + "\n"
    )
