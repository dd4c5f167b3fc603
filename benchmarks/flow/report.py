"""The overload benchmark's results as markdown (tables, the targets' verdicts) and plots.

``docs/flow-control.md`` holds the tables between ``<!-- flow-overload-table -->``
and ``<!-- /flow-overload-table -->``, and the cost between
``<!-- flow-cost-table -->`` and ``<!-- /flow-cost-table -->``; ``--doc``
replaces just those regions (``benchmarks.chaos.table.replace_table``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

OVERLOAD_START, OVERLOAD_END = "<!-- flow-overload-table -->", "<!-- /flow-overload-table -->"
COST_START, COST_END = "<!-- flow-cost-table -->", "<!-- /flow-cost-table -->"
COST_LINE_START, COST_LINE_END = "<!-- flow-cost-line -->", "<!-- /flow-cost-line -->"
CLASSES = ("critical", "standard", "sheddable")
COLORS = {"critical": "#c44e52", "standard": "#4c72b0", "sheddable": "#bbbbbb"}


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _rejected(row: dict[str, Any]) -> str:
    return ", ".join(f"{n} × {why}" for why, n in row["rejected"].items()) or "0"


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def overload_table(doc: dict[str, Any]) -> str:
    phases = doc["phases"]
    idle = phases["idle"]["rows"]["small"]
    idle_p95 = _idle_critical_p95(doc)
    lines = [
        "| run | class | requests | served | served/s | rejected | TTFT p50 (s) "
        "| TTFT p95 (s) | p95 ÷ idle p95 |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
        f"| idle fleet ({doc['settings']['idle_load']:.0%} of capacity) | critical + standard "
        f"| {idle['requests']} | {idle['served']} | {idle['served_per_s']:.2f} | {_rejected(idle)} "
        f"| {_s(idle['ttft_p50_s'])} | {_s(idle['ttft_p95_s'])} | 1.00 |",
    ]
    for name, label in (("overload-on", "flow control on"), ("overload-off", "flow control off")):
        for cls, row in phases[name]["rows"].items():
            ratio = _ratio(row["ttft_p95_s"], idle_p95)
            lines.append(
                f"| {label} | {cls} | {row['requests']} | {row['served']} "
                f"| {row['served_per_s']:.2f} | {_rejected(row)} | {_s(row['ttft_p50_s'])} "
                f"| {_s(row['ttft_p95_s'])} | {'–' if ratio is None else f'{ratio:.2f}'} |"
            )
    return "\n".join(lines) + "\n"


def _idle_critical_p95(doc: dict[str, Any]) -> float | None:
    """The idle fleet's TTFT p95 over every idle request (critical and standard alike: an idle
    fleet makes no difference between them, and twice the samples make a steadier p95)."""
    value = doc["phases"]["idle"]["rows"]["small"]["ttft_p95_s"]
    return float(value) if value is not None else None


def fairness_table(doc: dict[str, Any]) -> str:
    phases = doc["phases"]
    lines = [
        "| run | tenant | requests | served | rejected | queue wait p50 / p95 (s) "
        "| TTFT p50 (s) | TTFT p95 (s) |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    runs = (
        ("idle", "idle fleet", ("small",)),
        ("fairness-on", "saturated, flow control on", ("big", "small")),
        ("fairness-off", "saturated, flow control off", ("big", "small")),
    )
    for name, label, tenants in runs:
        for tenant in tenants:
            row = phases[name]["rows"][tenant]
            wait = (
                f"{_s(row['queue_wait_p50_s'])} / {_s(row['queue_wait_p95_s'])}"
                if row["queue_waits_logged"]
                else "–"
            )
            lines.append(
                f"| {label} | {tenant} | {row['requests']} | {row['served']} | {_rejected(row)} "
                f"| {wait} | {_s(row['ttft_p50_s'])} | {_s(row['ttft_p95_s'])} |"
            )
    return "\n".join(lines) + "\n"


def verdicts(doc: dict[str, Any]) -> list[str]:
    """The issue's targets, each with the measured figure and met / not met (shown, not
    asserted: this machine's load moves them)."""
    phases, s = doc["phases"], doc["settings"]
    on, off = phases["overload-on"]["rows"], phases["overload-off"]["rows"]
    idle_p95 = _idle_critical_p95(doc)
    out = []
    crit = _ratio(on["critical"]["ttft_p95_s"], idle_p95)
    if crit is not None:
        out.append(
            f"`critical` p95 TTFT with flow control: {on['critical']['ttft_p95_s']:.2f} s, "
            f"{crit:.2f}× the idle fleet's {idle_p95:.2f} s (target ≤ 1.5×): "
            + ("**met**" if crit <= 1.5 else "not met")
        )
    capacity = doc["capacity_rps"]["measured"]
    served = sum(r["served_per_s"] for r in on.values())
    out.append(
        f"Served with flow control: {served:.2f}/s in all, {served / capacity:.0%} of the "
        f"measured capacity {capacity:.2f}/s; `standard` {on['standard']['served_per_s']:.2f}/s "
        f"of the {on['standard']['requests'] / phases['overload-on']['seconds']:.2f}/s offered, "
        f"{on['standard']['served']} of {on['standard']['requests']} served"
    )
    shed_only = not on["critical"]["rejected"] and not on["standard"]["rejected"]
    out.append(
        "Rejections with flow control: "
        + ", ".join(f"{cls} {_rejected(on[cls])}" for cls in CLASSES)
        + f" (queue bound {s['queue_size']} per model, timeout {s['queue_timeout']:g} s): "
        + ("**only sheddable**" if shed_only else "not only sheddable")
    )
    out.append(
        "Without flow control, TTFT p95: "
        + ", ".join(f"{cls} {_s(off[cls]['ttft_p95_s'])} s" for cls in CLASSES)
        + " (every class alike, the engines' FIFO queues)"
    )
    fair, idle = phases["fairness-on"]["rows"], phases["idle"]["rows"]
    turn = s["slot_turn_s"]
    if fair["small"]["queue_waits_logged"] and idle["small"]["queue_waits_logged"]:
        what, key = "queue wait (router's access log)", "queue_wait"
    else:
        what, key = "TTFT", "ttft"
    small = [fair["small"][f"{key}_p{q}_s"] for q in (50, 95)]
    base = [idle["small"][f"{key}_p{q}_s"] for q in (50, 95)]
    if None not in small and None not in base:
        extra = [a - b for a, b in zip(small, base, strict=True)]
        out.append(
            f"Fairness: the small tenant's {what} on the saturated fleet p50 {small[0]:.2f} s, "
            f"p95 {small[1]:.2f} s against {base[0]:.2f} / {base[1]:.2f} s idle: "
            f"{extra[0]:+.2f} / {extra[1]:+.2f} s; one slot-turn is {turn:.2f} s (target: "
            f"≤ +1 slot-turn): p50 "
            + ("**met**" if extra[0] <= turn else "not met")
            + ", p95 "
            + ("**met**" if extra[1] <= turn else "not met")
            + f"; the big tenant waited {_s(fair['big'][f'{key}_p50_s'])} / "
            f"{_s(fair['big'][f'{key}_p95_s'])} s"
        )
    return out


def machine_line(doc: dict[str, Any]) -> str:
    m, s, t = doc["machine"], doc["settings"], doc["settings"]["timing"]
    loads = [p["load_average_1m"]["start"] for p in doc["phases"].values()]
    return (
        f"Fleet: {s['engines']} simulated engines × {t['slots']} slots (`--max-num-seqs`), "
        f"{t['prompt_tokens']}-token prompts prefilled at {t['prefill_tokens_per_s']:g} tokens/s, "
        f"{t['max_tokens']} output tokens at {t['decode_tokens_per_s']:g}/s: a request holds a "
        f"slot {doc['service_s']:.2f} s; capacity {doc['capacity_rps']['computed']:.2f}/s "
        f"computed, {doc['capacity_rps']['measured']:.2f}/s measured (closed loop). Offered "
        f"{s['overload']:.0%} for {s['seconds']:g} s (Poisson, seed {s['seed']}), streaming. "
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, Python "
        f"{m['python']}; 1-minute load average {min(loads):.1f} to {max(loads):.1f} at the "
        f"phases' starts (shared with other work); llmsvc commit {doc.get('llmsvc_commit', '?')}, "
        f"{doc['date']}. Command: `{doc['command']}`."
    )


def markdown(doc: dict[str, Any]) -> str:
    parts = [
        overload_table(doc),
        "".join(f"- {line}\n" for line in verdicts(doc)),
        "Fairness: two tenants, `big` at "
        f"{doc['settings']['fairness_ratio']:g}× `small`'s rate, together "
        f"{doc['settings']['fairness_load']:.0%} of capacity, all `standard`:\n",
        fairness_table(doc),
        machine_line(doc) + "\n",
    ]
    return "\n".join(parts)


def cost_markdown(cost: dict[str, Any]) -> str:
    """The cost comparison (``benchmarks/harness`` results) as a table and the ratio."""
    rows = {r["name"]: r for r in cost["targets"]}
    labels = {
        "llmsvc-base": f"previous commit ({cost.get('base', '?')}), no slots",
        "llmsvc-1w": f"this commit ({cost.get('llmsvc_commit', '?')}), no slots",
        "llmsvc-slots": "this commit, slots never all taken (`--backend-concurrency 64`)",
        "llmsvc-queued": "this commit, requests queue (`--backend-concurrency 4`)",
    }
    lines = [
        "| router | req/s | CPU µs per request | ÷ previous commit |",
        "| --- | ---: | ---: | ---: |",
    ]
    base = rows.get("llmsvc-base", {}).get("cpu_ms_per_request")
    for name, label in labels.items():
        row = rows.get(name)
        if row is None:
            continue
        if row.get("status") != "ok":
            lines.append(f"| {label} | unavailable: {row.get('reason', '?')} |||")
            continue
        us = row["cpu_ms_per_request"] * 1000
        ratio = f"{row['cpu_ms_per_request'] / base:.3f}" if base else "–"
        lines.append(f"| {label} | {row['rps']:,.0f} | {us:,.0f} | {ratio} |")
    m, load = cost["machine"], cost["load_average_1m"]
    lines += [
        "",
        f"Load: {cost['load_generator']}, concurrency {cost['concurrency']}, non-streaming chat "
        f"completions to two fixed-answer backends, {cost['duration_s']:g} s per measurement, "
        f"median of {cost['repeat']} interleaved rounds; CPU from /proc (utime + stime) of the "
        f"router over the measured window. Machine: {m['nproc']} CPUs ({m['cpu_model']}), "
        f"1-minute load average {load['start']:.1f} at the start, {load['end']:.1f} at the end; "
        f"{cost['date']}. Command: `{cost['command']}`.",
    ]
    return "\n".join(lines) + "\n"


def cost_line(cost: dict[str, Any]) -> str | None:
    """One sentence for docs/performance.md: the ratio to the previous commit."""
    rows = {r["name"]: r for r in cost["targets"] if r.get("status") == "ok"}
    if "llmsvc-base" not in rows or "llmsvc-1w" not in rows:
        return None
    base, now = rows["llmsvc-base"]["cpu_ms_per_request"], rows["llmsvc-1w"]["cpu_ms_per_request"]
    return (
        f"Flow control's cost (issue 13): with no slots configured the router spends "
        f"{now * 1000:,.0f} µs of CPU per request against {base * 1000:,.0f} µs at the "
        f"previous commit {cost.get('base', '?')}, a ratio of {now / base:.3f} (target ≤ 1.05), "
        f"{cost['machine']['nproc']} CPUs, load average {cost['load_average_1m']['start']:.1f}, "
        f"{cost['date']}; `make flow-bench FLOW_ARGS=--cost`; details in "
        "[flow-control.md](flow-control.md#cost).\n"
    )


def plots(doc: dict[str, Any], out: Path) -> None:
    """``overload.png``: each request's TTFT by the time it was sent, on and off; and
    ``fairness.png``: the two tenants' TTFT p50/p95, idle, on and off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    phases = doc["phases"]
    idle_p95 = _idle_critical_p95(doc)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (name, title) in zip(
        axes,
        (("overload-on", "flow control on"), ("overload-off", "flow control off")),
        strict=True,
    ):
        flows = phases[name]["flows"]
        for cls in reversed(CLASSES):
            points = [
                (o[1], o[4]) for o in phases[name]["outcomes"]
                if flows[o[0]]["priority"] == cls and o[4] is not None and o[3] is None
            ]  # fmt: skip
            rejected = phases[name]["rows"][cls]["requests"] - phases[name]["rows"][cls]["served"]
            ax.scatter(
                [p[0] for p in points], [p[1] for p in points], s=6, color=COLORS[cls],
                label=f"{cls} ({rejected} rejected)",
            )  # fmt: skip
        if idle_p95:
            ax.axhline(idle_p95, color="black", linewidth=0.8, linestyle=":")
            ax.axhline(1.5 * idle_p95, color="#c44e52", linewidth=0.8, linestyle="--")
        ax.set_yscale("log")
        ax.set_xlabel("sent at (s)")
        ax.set_title(f"{doc['settings']['overload']:.0%} of capacity, {title}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("TTFT (s); dotted: idle p95, dashed: 1.5 × idle p95")
    fig.tight_layout()
    fig.savefig(out / "overload.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    bars = [
        ("idle\nsmall", phases["idle"]["rows"]["small"]),
        ("on\nsmall", phases["fairness-on"]["rows"]["small"]),
        ("on\nbig", phases["fairness-on"]["rows"]["big"]),
        ("off\nsmall", phases["fairness-off"]["rows"]["small"]),
        ("off\nbig", phases["fairness-off"]["rows"]["big"]),
    ]
    xs = range(len(bars))
    p50 = [row["ttft_p50_s"] or 0 for _, row in bars]
    p95 = [row["ttft_p95_s"] or 0 for _, row in bars]
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="TTFT p50", color="#4c72b0")
    ax.bar([x + 0.2 for x in xs], p95, width=0.4, label="TTFT p95", color="#dd8452")
    ax.set_xticks(list(xs), [label for label, _ in bars])
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.set_title(
        f"Two tenants, big at {doc['settings']['fairness_ratio']:g}× small's rate", fontsize=10
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fairness.png", dpi=100)
    plt.close(fig)
