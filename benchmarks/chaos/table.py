"""The fault harness's results as a markdown table (and its place in docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results["proxies"].items():
        if "unavailable" in entry:
            rows.append(f"| {name} | – | unavailable: {entry['unavailable']} |||||||\n")
            continue
        for scenario in ("death", "blackhole"):
            if scenario in entry:
                rows.append(_row(name, scenario, entry[scenario]))
    m = results["machine_at_start"]
    footer = (
        f"\nMachine: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, Python "
        f"{m['python']}; 1-minute load average {m['loadavg_1m']} at the start, "
        f"{results['loadavg_1m_at_end']} at the end; {m['utc']}. Command: `{results['command']}`.\n"
    )
    return HEADER + "".join(rows) + footer


def replace_table(doc: Path, table: str) -> None:
    text = doc.read_text()
    head, found, rest = text.partition(START)
    if not found:
        raise SystemExit(f"{doc}: no {START} marker")
    _, found, tail = rest.partition(END)
    if not found:
        raise SystemExit(f"{doc}: no {END} marker")
    doc.write_text(head + START + "\n" + table + END + tail)
