"""The batch benchmark's numbers from its raw observations, and its tables as markdown.

Pure functions (tested in ``tests/test_bench_batch.py``): the ETA error when progress
crosses 25/50/75 %, the interactive TTFT percentiles, the batch's share of the spare
capacity, and the two tables that ``--doc`` puts between the markers of ``docs/batch.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmsvc.bench.stats import percentile

PROTECT_START, PROTECT_END = "<!-- batch-protect-table -->", "<!-- /batch-protect-table -->"
ETA_START, ETA_END = "<!-- batch-eta-table -->", "<!-- /batch-eta-table -->"
TTFT_RATIO_TARGET = 1.10
ETA_ERROR_TARGET = 0.15
MILESTONES = (0.25, 0.50, 0.75)


@dataclass(frozen=True, slots=True)
class Poll:
    """One ``GET /v1/batches/{id}``: when (unix s), lines ended, lines in all, the ETA said."""

    at: float
    done: int
    total: int
    eta: float | None

    @property
    def progress(self) -> float:
        return self.done / self.total if self.total else 0.0


def eta_errors(
    polls: list[Poll], created: float, finished: float
) -> dict[str, dict[str, float | None]]:
    """At each milestone, the first poll whose progress reached it: the ETA it reported and
    its relative error ``|eta - finish| / (finish - created)`` (None: no ETA was reported
    then, or no poll reached the milestone)."""
    span = finished - created
    out: dict[str, dict[str, float | None]] = {}
    for milestone in MILESTONES:
        poll = next((p for p in polls if p.progress >= milestone), None)
        eta = poll.eta if poll is not None else None
        error = abs(eta - finished) / span if eta is not None and span > 0 else None
        out[f"{milestone:.0%}"] = {
            "at": None if poll is None else round(poll.at - created, 2),
            "progress": None if poll is None else round(poll.progress, 4),
            "eta_s": None if eta is None else round(eta - created, 2),
            "relative_error": None if error is None else round(error, 4),
        }
    return out


def ttft_summary(ttfts: list[float], requests: int) -> dict[str, Any]:
    values = sorted(ttfts)
    return {
        "requests": requests,
        "served": len(values),
        "ttft_p50_s": round(percentile(values, 50), 4) if values else None,
        "ttft_p95_s": round(percentile(values, 95), 4) if values else None,
        "ttft_p99_s": round(percentile(values, 99), 4) if values else None,
    }


def lines_per_second(polls: list[Poll], start: float, end: float) -> float | None:
    """Lines ended per second between the last poll at or before ``start`` and the first at
    or after ``end`` (the polls' own times, so the rate is over what was observed)."""
    before = [p for p in polls if p.at <= start]
    after = [p for p in polls if p.at >= end]
    if not before or not after or after[0].at <= before[-1].at:
        return None
    first, last = before[-1], after[0]
    return (last.done - first.done) / (last.at - first.at)


def _s(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _waited(row: dict[str, Any]) -> str:
    """Requests that waited ≥ 1 ms in the router's queue, of those its access log timed."""
    logged = row.get("queue_waits_logged")
    if not logged:
        return "–"
    return f"{row['waited_for_a_slot']} ({row['waited_for_a_slot'] / logged:.1%})"


def _met(ok: bool | None, what: str) -> str:
    if ok is None:
        return f"not measured ({what})"
    return "**met**" if ok else "**missed**"


def run_line(doc: dict[str, Any]) -> str:
    """Where, when and how the run was made."""
    m, load = doc["machine"], doc["load_average_1m"]
    return (
        f"Machine: {m['nproc']} CPUs ({m['cpu_model'] or 'unknown model'}), Python {m['python']}; "
        f"1-minute load average {load['start']:.2f} at the start, {load['end']:.2f} at the end. "
        f"Commit {doc['llmsvc_commit']}, {doc['date']}, `{doc['command']}`.\n"
    )


def conditions(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    t = s["timing"]
    return (
        run_line(doc) + "\n"
        f"Fleet: {s['engines']} simulated engines × {t['slots']} slots (`llmsvc sim-engine "
        f"--scheduler independent --jitter 0`, prefill {t['prefill_tokens_per_s']:g} tokens/s, "
        f"decode {t['decode_tokens_per_s']:g} tokens/s), every request and every batch line "
        f"{t['prompt_tokens']} prompt tokens and {t['max_tokens']} output tokens: "
        f"{doc['service_s'] * 1000:.0f} ms on a slot, an idle TTFT of "
        f"{doc['idle_ttft_s'] * 1000:.0f} ms. Capacity {doc['capacity_rps']['measured']:.1f} "
        f"requests/s measured (closed loop, every slot busy; "
        f"{doc['capacity_rps']['computed']:.1f} computed). Router with slots "
        f"(`metadata.max_concurrency`) and its queue, `--batch-url` to `llmsvc batch`; "
        f"interactive load: streamed `standard` chat requests, Poisson at "
        f"{s['interactive_load']:.0%} of capacity.\n"
    )


def protect_table(doc: dict[str, Any]) -> str:
    alone, mixed = doc["phases"]["alone"], doc["phases"]["with_batch"]
    a, b = alone["interactive"], mixed["interactive"]
    ratio = doc["ttft_p95_ratio"]
    batch = mixed["batch"]
    spare = doc["spare_capacity_rps"]
    lines = [
        "| run | interactive requests | served | TTFT p50 (s) | TTFT p95 (s) | TTFT p99 (s) "
        "| waited for a slot | queue wait p95 (s) | batch lines/s | share of spare capacity |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| (a) interactive alone, {alone['seconds']:.0f} s | {a['requests']} | {a['served']} "
        f"| {_s(a['ttft_p50_s'])} | {_s(a['ttft_p95_s'])} | {_s(a['ttft_p99_s'])} "
        f"| {_waited(a)} | {_s(a.get('queue_wait_p95_s'))} | – | – |",
        f"| (b) interactive + a {batch['lines']:,}-line batch, {mixed['seconds']:.0f} s "
        f"| {b['requests']} | {b['served']} | {_s(b['ttft_p50_s'])} | {_s(b['ttft_p95_s'])} "
        f"| {_s(b['ttft_p99_s'])} | {_waited(b)} | {_s(b.get('queue_wait_p95_s'))} "
        f"| {_s(batch['lines_per_s'], 1)} | {_pct(doc['batch_share_of_spare'])} |",
    ]
    ok = None if ratio is None else ratio <= TTFT_RATIO_TARGET
    verdict = (
        f"\nInteractive TTFT p95 (b) ÷ (a): **{_s(ratio)}** (target ≤ {TTFT_RATIO_TARGET:.2f}: "
        f"{_met(ok, 'no TTFT')}"
        + ("" if ok or ratio is None else f", by {ratio / TTFT_RATIO_TARGET - 1:.0%}")
        + "). "
        f"The batch ran at {_s(batch['lines_per_s'], 1)} lines/s while the interactive load ran, "
        f"{_pct(doc['batch_share_of_spare'])} of the {spare:.1f} requests/s the fleet had left "
        f"(1 − {doc['settings']['interactive_load']:.0%} of capacity); batch ended "
        f"`{batch['status']}`, {batch['completed']:,} completed, {batch['failed']:,} failed, "
        f"in {_s(batch['duration_s'], 1)} s; the runner's window ended at "
        f"{_s(batch.get('concurrency'), 0)} lines.\n"
    )
    return "\n".join(lines) + "\n" + verdict


def eta_table(doc: dict[str, Any]) -> str:
    batch = doc["phases"]["with_batch"]["batch"]
    errors = batch["eta_errors"]
    lines = [
        "| progress | seen at (s after creation) | ETA reported (s after creation) "
        "| actual finish (s) | relative error |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in errors.items():
        lines.append(
            f"| {name} | {_s(row['at'], 1)} | {_s(row['eta_s'], 1)} "
            f"| {_s(batch['duration_s'], 1)} | {_pct(row['relative_error'])} |"
        )
    at50 = errors.get("50%", {}).get("relative_error")
    ok = None if at50 is None else at50 <= ETA_ERROR_TARGET
    verdict = (
        f"\nETA error at 50 %: **{_pct(at50)}** (target ≤ {ETA_ERROR_TARGET:.0%}: "
        f"{_met(ok, 'no ETA at 50 %')}"
        + ("" if ok or at50 is None else f", by {at50 - ETA_ERROR_TARGET:.1%} points")
        + "). Relative error = |ETA − finish| ÷ (finish − created), the ETA read from "
        "`GET /v1/batches/{id}` (`llmsvc.eta`) at the first poll (every "
        f"{doc['settings']['poll_s']:g} s) at or past each progress mark, finish = "
        "`completed_at`; the batch ran under the steady interactive load of run (b)."
    )
    report = batch.get("sla_report_eta_error")
    if isinstance(report, dict) and report:
        said = ", ".join(
            f"{_pct(v) if isinstance(v, int | float) else v} at {k.removeprefix('at_')} %"
            for k, v in report.items()
        )
        verdict += f" The batch service's own `/sla/report` `eta_error`: {said}."
    return "\n".join(lines) + "\n" + verdict + "\n"


def markdown(doc: dict[str, Any]) -> tuple[str, str]:
    """The protection table and the ETA table, each with the run's conditions."""
    eta_head = "The run of the next section's table (b).\n\n" + run_line(doc)
    return conditions(doc) + "\n" + protect_table(doc), eta_table(doc) + "\n" + eta_head
