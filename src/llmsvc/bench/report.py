"""The run's report: one JSON object for machines, a table for people."""

from __future__ import annotations

import platform
from typing import Any

from rich.console import Console
from rich.table import Table

from llmsvc.bench.load import LoadSpec
from llmsvc.bench.stats import PERCENTILES, Results


def report(spec: LoadSpec, results: Results) -> dict[str, Any]:
    """What was asked (``run``), what was measured, and where the client ran."""
    run = {
        "url": spec.url,
        "target": spec.target,
        "model": spec.model,
        "endpoint": spec.endpoint,
        "stream": spec.stream,
        "concurrency": spec.concurrency,
        "requests": spec.requests,
        "duration_s": spec.duration,
        "prompt_tokens": spec.prompt_tokens,
        "max_tokens": spec.max_tokens,
        "timeout_s": spec.timeout,
        "seed": spec.seed,
    }
    client = {"python": platform.python_version(), "machine": platform.machine()}
    return {"run": run, **results.summary(), "client": client}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(console: Console, data: dict[str, Any]) -> None:
    """The report as a short summary and one table of latency and TTFT percentiles."""
    run, counts = data["run"], data["requests"]
    mode = "streaming" if run["stream"] else "non-streaming"
    console.print(
        f"[bold]{run['target']}[/]  model {run['model']}  {mode}  concurrency {run['concurrency']}"
    )
    if data["interrupted"]:
        console.print("[yellow]interrupted: partial results[/]")
    console.print(
        f"requests: {counts['completed']} completed, {counts['ok']} ok, {counts['failed']} failed"
        f" in {data['elapsed_s']:.2f} s"
    )
    console.print(
        f"throughput: {_rate(data['requests_per_s'])} requests/s, "
        f"{_rate(data['output_tokens_per_s'])} output tokens/s ({data['output_tokens']} tokens)"
    )
    table = Table(title="successful requests, milliseconds", title_justify="left")
    columns = ["min", "mean", *(f"p{q}" for q in PERCENTILES), "max"]
    table.add_column("")
    for column in columns:
        table.add_column(column, justify="right")
    ttft_label = "TTFT" if run["stream"] else "TTFT (= latency, not streaming)"
    for label, key in (("latency", "latency_s"), (ttft_label, "ttft_s")):
        values = data[key] or {}
        table.add_row(label, *(_ms(values.get(column)) for column in columns))
    console.print(table)
    errors = data["errors"]
    if errors:
        console.print("errors: " + ", ".join(f"{kind} {n}" for kind, n in errors.items()))
