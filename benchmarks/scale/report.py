"""The scale study's results as Markdown tables (what ``docs/scale.md`` shows).

python benchmarks/scale/report.py benchmarks/scale/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine(results: dict[str, Any]) -> str:
    m, p = results["machine"], results["parameters"]
    return (
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, "
        f"Linux {m['kernel']}, commit {m['commit']}, {m['date_utc']}; load average "
        f"{m['load_average_at_start'][0]} at the start, {m.get('load_average_at_end', ['-'])[0]} "
        f"at the end. Command: `{p['command']}`."
    )


def decision(results: dict[str, Any]) -> str:
    entries = results["decision"]
    sizes = sorted({e["backends"] for e in entries})
    strategies = list(dict.fromkeys(e["strategy"] for e in entries))
    by = {(e["strategy"], e["backends"]): e for e in entries}
    rows = []
    for strategy in strategies:
        row = [strategy]
        for n in sizes:
            e = by[(strategy, n)]
            row.append("skipped" if "skipped" in e else f"{e['decision_us']:.1f}")
        rows.append(row)
    filters = [f"{by[(strategies[0], n)].get('of_which_eligible_us', '-')}" for n in sizes]
    rows.append(["(of which `eligible`)", *filters])
    return _table(["µs per decision", *(f"{n} backends" for n in sizes)], rows)


def registry(results: dict[str, Any]) -> str:
    r = results["registry"]
    rows = [
        ["records", str(r["records"])],
        ["registration (16 concurrent POSTs), s", f"{r['registration_s']}"],
        ["RSS empty, MiB", f"{r['rss_empty_mib']}"],
        ["RSS with the records, MiB", f"{r['rss_records_mib']}"],
        ["RSS at the end, MiB", f"{r.get('rss_end_mib', '-')}"],
        ["`GET /services` (all records), p50 / max ms",
         f"{_ms(r['list_all_s']['p50'])} / {_ms(r['list_all_s']['max'])}"],
        ["`GET /services?type=openai-api`, p50 / max ms",
         f"{_ms(r['list_openai_api_s']['p50'])} / {_ms(r['list_openai_api_s']['max'])}"],
    ]  # fmt: skip
    return _table(["registry", ""], rows)


def routers(results: dict[str, Any]) -> str:
    n = results["parameters"]["backends"]
    rows = []
    for r in results["routers"]:
        if "skipped" in r:
            rows.append([r["strategy"], "skipped: " + r["skipped"], "", ""])
            continue
        rows.append([r["strategy"], f"{r['ready_s']}", f"{r['rss_mib']}",
                     f"{r['rss_after_load_mib']}"])  # fmt: skip
    one = results["baseline"]["router_one_backend"]
    rows.append(["round_robin, 1 static backend", "-", "-", f"{one['rss_mib']}"])
    return _table([f"router over {n} backends", "start to synced, s", "RSS synced, MiB",
                   "RSS after load, MiB"], rows)  # fmt: skip


def propagation(results: dict[str, Any]) -> str:
    rows = []
    for p in results.get("propagation", []):
        add, remove = p["add_s"], p["remove_s"]
        rows.append([
            f"{p['watchers']} × {p['watch']}" if p["watchers"] else "none",
            _ms(add.get("p50")), _ms(add.get("max")),
            _ms(remove.get("p50")), _ms(remove.get("max")),
            f"{add['missed'] + remove['missed']} of {2 * p['rounds']}",
            f"{p['registry_rss_after_mib']}",
        ])  # fmt: skip
    header = ["other watchers", "add p50 ms", "add max ms", "remove p50 ms", "remove max ms",
              "missed (> 60 s)", "registry RSS MiB"]  # fmt: skip
    return _table(header, rows)


def _load_row(label: str, load: dict[str, Any]) -> list[str]:
    lat = load["latency_s"] or {}
    errors = sum(load["errors"].values())
    return [label, f"{load['requests_per_s']:.0f}", _ms(lat.get("p50")), _ms(lat.get("p99")),
            str(errors)]  # fmt: skip


def proxy(results: dict[str, Any]) -> str:
    n = results["parameters"]["backends"]
    rows = [
        _load_row(f"router ({r['strategy']}), {n} backends", r["load"])
        for r in results["routers"]
        if "skipped" not in r
    ]
    base = results["baseline"]
    rows.append(_load_row("router (round_robin), 1 static backend", base["router_one_backend"]))
    rows.append(_load_row("the backend directly", base["direct"]))
    return _table(["path", "requests/s", "p50 ms", "p99 ms", "errors"], rows)


def health(results: dict[str, Any]) -> str:
    h = results.get("health_round")
    if not h:
        return "Health round: not run."
    return (
        f"Health round: a registry checking the same {h['records']} records every "
        f"{h['health_interval_s']:g} s (every one answers `/health` at once) counted "
        f"{h['healthy']} healthy and {h['unhealthy']} unhealthy after {h['checks']:.0f} checks."
    )


def render(results: dict[str, Any]) -> str:
    router = results.get("propagation_router", "-")
    return "\n\n".join([
        machine(results),
        "Decision time (in-process, `BackendPool.eligible` + `Strategy.pick`):\n\n"
        + decision(results),
        "Registry:\n\n" + registry(results),
        "Routers:\n\n" + routers(results),
        f"Propagation to the {router} router (time from the registry write until routing "
        "follows):\n\n" + propagation(results),
        "Proxy path (`run_load`, non-streaming, 1 output token):\n\n" + proxy(results),
        health(results),
    ])  # fmt: skip


def main(argv: list[str]) -> int:
    print(render(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
