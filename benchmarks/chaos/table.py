"""The fault harness's results as markdown tables (and their places in docs/reliability.md):
the faults table (death, black hole) and the hung-engine table (default settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.chaos.hung import meets_target

START = "<!-- chaos-table -->"
END = "<!-- /chaos-table -->"
HEADER = (
    "| proxy | fault | failed requests | streams cut, with error event "
    "| streams cut, no error event | new streams failed | cut streams ended (s after fault) "
    "| eject (s) | re-admit (s after ready) |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
)


def _s(value: float | None, never: str = "–") -> str:
    return never if value is None else f"{value:.1f}"


def _row(name: str, scenario: str, r: dict[str, Any]) -> str:
    streams = r["streams"]
    readmit = _s(r["readmit_s"], f"not within {r['observed_after_ready_s']:.0f}")
    return (
        f"| {name} | {scenario} | {r['failed']} of {r['requests']} "
        f"| {r['streams_cut_with_error']} of {streams} | {r['streams_cut_silently']} "
        f"| {r['new_streams_failed'] + 0} | {_s(r['cut_streams_ended_after_s'])} "
        f"| {_s(r['eject_s'], 'unseen')} | {readmit} |\n"
    )


def machine_line(results: dict[str, Any]) -> str:
    m = results["machine_at_start"]
    return (
        f"\nMachine: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, Python "
        f"{m['python']}; 1-minute load average {m['loadavg_1m']} at the start, "
        f"{results['loadavg_1m_at_end']} at the end; {m['utc']}. Command: `{results['command']}`.\n"
    )


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results["proxies"].items():
        if "unavailable" in entry:
            rows.append(f"| {name} | – | unavailable: {entry['unavailable']} |||||||\n")
            continue
        for scenario in ("death", "blackhole"):
            if scenario in entry:
                rows.append(_row(name, scenario, entry[scenario]))
    return HEADER + "".join(rows) + machine_line(results)


def replace_table(doc: Path, table: str, start: str = START, end: str = END) -> None:
    """Put ``table`` between the markers ``start`` and ``end`` of ``doc``; the rest stays."""
    text = doc.read_text()
    head, found, rest = text.partition(start)
    if not found:
        raise SystemExit(f"{doc}: no {start} marker")
    _, found, tail = rest.partition(end)
    if not found:
        raise SystemExit(f"{doc}: no {end} marker")
    doc.write_text(head + start + "\n" + table + end + tail)


HUNG_START = "<!-- chaos-defaults-table -->"
HUNG_END = "<!-- /chaos-defaults-table -->"
HUNG_HEADER = (
    "| proxy | requests sent | failed | failed % | streams failed | eject (s, client log) "
    "| out of rotation (s, proxy's view) | p99 latency during the fault (s) | waited > 2 s "
    "| target: ≤ 0.5 % failed, ejection ≤ 2 s |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
)


def _hung_row(label: str, r: dict[str, Any]) -> str:
    view = "–" if not r["has_view"] else _s(r["view_out_s"], "never")
    verdict = "**pass**" if meets_target(r) else "fail"
    return (
        f"| {label} | {r['requests']} | {r['failed']} | {r['failed_pct']:.1f} "
        f"| {r['streams_failed']} of {r['streams']} | {_s(r['eject_s'], 'unseen')} | {view} "
        f"| {_s(r['p99_during_s'])} | {r['waited']} | {verdict} |\n"
    )


def _hung_rows(results: dict[str, Any], only: str | None = None, before: bool = False) -> list[str]:
    rows = []
    for name, entry in results["proxies"].items():
        if only and name != only:
            continue
        label = name
        if name == "llmsvc":
            label = f"llmsvc (commit {results.get('llmsvc_commit', '?')})"
            if before:
                label = f"llmsvc (before issue 11's defaults, commit {results['llmsvc_commit']})"
        if "unavailable" in entry:
            rows.append(f"| {label} | unavailable: {entry['unavailable']} |||||||||\n")
        elif "hung" in entry:
            rows.append(_hung_row(label, entry["hung"]))
    return rows


def hung_markdown(results: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """The hung-engine table: ``before`` (an earlier run's file) gives its llmsvc row first,
    unless it ran the same commit as ``results``."""
    if before and before.get("llmsvc_commit") == results.get("llmsvc_commit"):
        before = None
    rows = _hung_rows(before, only="llmsvc", before=True) if before else []
    rows += _hung_rows(results)
    lines = machine_line(results)
    if before:
        lines += "\nThe before row: " + machine_line(before).strip().removeprefix("Machine: ")
        lines += "\n"
    return HUNG_HEADER + "".join(rows) + lines
