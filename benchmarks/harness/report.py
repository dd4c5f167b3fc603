"""Results on disk: ``results.json``, a Markdown table, and PNG plots (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

COLUMNS = (
    ("rps", "req/s (c16)"),
    ("cpu_ms_per_request", "CPU ms/req"),
    ("p50_ms_c1", "p50 ms (c1)"),
    ("added_p50_ms_c1", "added p50 ms"),
    ("added_p99_ms_c1", "added p99 ms"),
    ("added_ttft_p50_ms", "added TTFT ms (stream)"),
    ("first_chunk_hold_p50_ms", "1st chunk held ms (p50)"),
)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


CPU_COLUMNS = (
    ("cpu_us_per_chunk", "CPU µs/chunk (streamed)"),
    ("cpu_us_per_chunk_x_nginx", "× nginx"),
    ("stream_chunks_per_s", "chunks/s"),
    ("stream_chunks_per_read", "chunks per read"),
    ("stream_client_cpu_us_per_chunk", "client CPU µs/chunk"),
    ("cpu_ms_per_request", "CPU ms/req (not streamed)"),
    ("cpu_ms_per_request_x_vllm_router", "× vllm-router"),
)


def cpu_table(document: dict[str, Any]) -> list[str]:
    """Issue 16's CPU figures: per streamed chunk (paced streams) and per plain request, each
    with its ratio to the target it is held against, all from the same run."""
    ok = [r for r in document["targets"] if r.get("status") == "ok" and "stream_chunks" in r]
    if not ok:
        return []
    paced = document.get("paced", {})
    lines = [
        "",
        f"CPU per streamed chunk: {paced.get('concurrency', '?')} streams at a time of "
        f"{paced.get('chunks_per_stream', '?')} chunks, one every "
        f"{paced.get('chunk_interval_ms', '?')} ms, {paced.get('duration_s', '?')} s; the "
        "target's own CPU (utime + stime, /proc) over the chunks it forwarded. Targets "
        "(issue 16): streamed ≤ 2 × nginx, not streamed ≤ 2.2 × vllm-router.",
        "",
        "| target | " + " | ".join(label for _, label in CPU_COLUMNS) + " |",
        "| --- |" + " ---: |" * len(CPU_COLUMNS),
    ]
    for r in ok:
        cells = [_cell(r.get(key)) for key, _ in CPU_COLUMNS]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return lines


def markdown(document: dict[str, Any]) -> str:
    concurrency = document["concurrency"]
    header = [label.replace("c16", f"c{concurrency}") for _, label in COLUMNS]
    lines = [
        "| target | " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * len(COLUMNS),
    ]
    for r in document["targets"]:
        if r.get("status") == "ok":
            cells = [_cell(r.get(key)) for key, _ in COLUMNS]
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
        else:
            lines.append(f"| {r['name']} | unavailable: {r.get('reason', '?')} |")
    lines += cpu_table(document)
    sweep = document.get("backend_sweep") or []
    if sweep:
        lines += ["", "| backend records | req/s | CPU ms/req |", "| ---: | ---: | ---: |"]
        for row in sweep:
            cells = [_cell(row.get("rps")), _cell(row.get("cpu_ms_per_request"))]
            lines.append(f"| {row['backends']} | " + " | ".join(cells) + " |")
    ok = {r["name"]: r for r in document["targets"] if r.get("status") == "ok"}
    if "llmsvc-base" in ok and "llmsvc-1w" in ok and ok["llmsvc-base"]["cpu_ms_per_request"]:
        ratio = ok["llmsvc-1w"]["cpu_ms_per_request"] / ok["llmsvc-base"]["cpu_ms_per_request"]
        lines += [
            "",
            f"CPU per request, llmsvc-1w ÷ llmsvc-base (commit {document.get('base', '?')}): "
            f"{ratio:.3f} (issue 13's target: ≤ 1.05).",
        ]
    m, load = document["machine"], document["load_average_1m"]
    lines += [
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}; load generator {document['load_generator']}, "
        f"{document['duration_s']:g} s per measurement, median of {document['repeat']} rounds; "
        f"1-minute load average "
        f"{load['start']:.1f} at the start, {load['end']:.1f} at the end; {document['date']}.",
    ]
    return "\n".join(lines) + "\n"


def plots(document: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in document["targets"] if r.get("status") == "ok"]
    panels = [
        ("rps", f"requests/s at concurrency {document['concurrency']}"),
        ("cpu_ms_per_request", "proxy CPU ms per request"),
        ("added_p50_ms_c1", "added p50 latency, ms (concurrency 1)"),
        ("first_chunk_hold_p50_ms", "first stream chunk held, ms (p50)"),
        ("cpu_us_per_chunk", "proxy CPU µs per streamed chunk (paced)"),
        ("cpu_us_per_chunk_x_nginx", "CPU per streamed chunk ÷ nginx's"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        rows = [r for r in ok if isinstance(r.get(key), int | float)]
        if not rows:  # e.g. the latency panels of an --only-cpu run
            ax.set_axis_off()
            ax.set_title(title + ": not measured", fontsize=10)
            continue
        names = [r["name"] for r in rows]
        values = [r[key] for r in rows]
        bars = ax.bar(names, values, color="#4c72b0")
        ax.bar_label(bars, labels=[_cell(v) for v in values], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"Proxy benchmark ({document['machine']['nproc']} CPUs, {document['date']})")
    fig.tight_layout()
    fig.savefig(out / "proxies.png", dpi=100)
    plt.close(fig)

    sweep = [r for r in document.get("backend_sweep") or [] if "cpu_ms_per_request" in r]
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["backends"] for r in sweep], [r["cpu_ms_per_request"] for r in sweep], "o-")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("backend records")
        ax.set_ylabel("router CPU ms per request")
        ax.set_title("llmsvc router (1 process): CPU per request vs backends", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "backends.png", dpi=100)
        plt.close(fig)


def write_report(document: dict[str, Any], out: Path, *, plots_too: bool = True) -> None:
    (out / "results.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    (out / "results.md").write_text(markdown(document))
    if plots_too:
        plots(document, out)
