"""The batch benchmark (``make batch-bench``): its pure parts (ETA error at the progress marks,
the batch's rate over the load, the tables and their verdicts), and a seconds-long run of the
whole harness on real processes (engines, router, ``llmsvc batch``, the ``openai`` client) so
that it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from benchmarks.batch.__main__ import parse_args
from benchmarks.batch.report import (
    Poll,
    eta_errors,
    eta_table,
    lines_per_second,
    markdown,
    protect_table,
    ttft_summary,
)
from benchmarks.batch.study import TIMING, batch_input

ROOT = Path(__file__).resolve().parents[1]


def test_eta_error_is_read_at_the_first_poll_past_each_mark() -> None:
    created, finished = 1000.0, 1100.0
    polls = [
        Poll(1010.0, 10, 100, None),  # no ETA yet
        Poll(1020.0, 24, 100, 1090.0),
        Poll(1030.0, 26, 100, 1120.0),  # first past 25 %: says 120 s, finished at 100 s
        Poll(1050.0, 50, 100, 1104.0),  # exactly 50 %
        Poll(1060.0, 60, 100, 1095.0),
        Poll(1080.0, 80, 100, 1100.0),
    ]
    errors = eta_errors(polls, created, finished)
    assert list(errors) == ["25%", "50%", "75%"]
    assert errors["25%"] == {"at": 30.0, "progress": 0.26, "eta_s": 120.0, "relative_error": 0.2}
    assert errors["50%"]["relative_error"] == pytest.approx(0.04)
    assert errors["75%"]["relative_error"] == 0.0 and errors["75%"]["at"] == 80.0


def test_eta_error_is_none_without_an_eta_or_a_poll_past_the_mark() -> None:
    polls = [Poll(1.0, 30, 100, None), Poll(2.0, 60, 100, None)]
    errors = eta_errors(polls, 0.0, 10.0)
    assert errors["25%"]["relative_error"] is None and errors["25%"]["at"] == 1.0
    assert errors["75%"] == {"at": None, "progress": None, "eta_s": None, "relative_error": None}


def test_lines_per_second_between_the_polls_around_the_window() -> None:
    polls = [Poll(0.0, 0, 90, None), Poll(2.0, 10, 90, None), Poll(6.0, 50, 90, None)]
    polls.append(Poll(9.0, 90, 90, None))
    assert lines_per_second(polls, 2.5, 5.0) == pytest.approx(40 / 4)  # polls at 2 and 6
    assert lines_per_second(polls, 0.0, 9.0) == pytest.approx(10.0)
    assert lines_per_second(polls, 1.0, 10.0) is None  # no poll at or after the end
    assert lines_per_second([], 0.0, 1.0) is None


def test_ttft_summary_percentiles() -> None:
    row = ttft_summary([0.1 * n for n in range(1, 101)], 102)
    assert (row["requests"], row["served"]) == (102, 100)
    assert row["ttft_p50_s"] == pytest.approx(5.05) and row["ttft_p95_s"] == pytest.approx(9.505)
    assert ttft_summary([], 3)["ttft_p95_s"] is None


def test_batch_lines_are_chat_requests_as_long_as_the_interactive_ones() -> None:
    lines = batch_input(3, TIMING, seed=2).splitlines()
    assert len(lines) == 3
    parsed = [orjson.loads(line) for line in lines]
    assert [p["custom_id"] for p in parsed] == ["line-0", "line-1", "line-2"]
    assert {p["url"] for p in parsed} == {"/v1/chat/completions"}
    body = parsed[0]["body"]
    assert body["max_tokens"] == TIMING.max_tokens and "stream" not in body
    assert len(body["messages"][0]["content"].split()) == TIMING.prompt_tokens
    assert parsed[0]["body"] != parsed[1]["body"]


def _doc(ratio: float, at50: float | None) -> dict[str, Any]:
    interactive = {
        "requests": 100, "served": 100, "ttft_p50_s": 0.02, "ttft_p99_s": 0.05,
        "queue_waits_logged": 100, "waited_for_a_slot": 7, "queue_wait_p95_s": 0.004,
    }  # fmt: skip
    errors = {
        "25%": {"at": 10.0, "progress": 0.25, "eta_s": 50.0, "relative_error": 0.3},
        "50%": {"at": 20.0, "progress": 0.5, "eta_s": 42.0, "relative_error": at50},
        "75%": {"at": 30.0, "progress": 0.75, "eta_s": 40.0, "relative_error": 0.0},
    }
    batch = {
        "lines": 10_000, "status": "completed", "completed": 10_000, "failed": 0,
        "duration_s": 40.0, "lines_per_s": 36.0, "eta_errors": errors, "concurrency": 12.0,
    }  # fmt: skip
    timing = {
        "slots": 6, "prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": 25.0,
        "prompt_tokens": 20, "max_tokens": 6,
    }  # fmt: skip
    return {
        "machine": {"nproc": 2, "cpu_model": "Test CPU", "python": "3.11.7"},
        "settings": {"engines": 4, "interactive_load": 0.6, "poll_s": 0.5, "timing": timing},
        "load_average_1m": {"start": 1.0, "end": 2.0},
        "llmsvc_commit": "abc1234",
        "date": "2026-12-02T13:00:00Z",
        "command": "python -m benchmarks.batch",
        "service_s": 0.22,
        "idle_ttft_s": 0.02,
        "capacity_rps": {"measured": 100.0, "computed": 109.1},
        "spare_capacity_rps": 40.0,
        "ttft_p95_ratio": ratio,
        "batch_share_of_spare": 0.9,
        "phases": {
            "alone": {"seconds": 60.0, "interactive": interactive | {"ttft_p95_s": 0.03}},
            "with_batch": {
                "seconds": 40.0,
                "interactive": interactive | {"ttft_p95_s": 0.03 * ratio},
                "batch": batch,
            },
        },
    }


def test_tables_say_whether_each_target_is_met_and_by_how_much_it_is_missed() -> None:
    met = protect_table(_doc(1.05, 0.1))
    assert "| (b) interactive + a 10,000-line batch, 40 s | 100 | 100 |" in met
    assert "| 0.050 | 7 (7.0%) | 0.004 | 36.0 | 90.0% |" in met
    assert "**1.050** (target ≤ 1.10: **met**)" in met and "90.0% of the 40.0" in met
    missed = protect_table(_doc(1.32, 0.1))
    assert "**missed**, by 20%" in missed
    assert "**10.0%** (target ≤ 15%: **met**)" in eta_table(_doc(1.0, 0.1))
    assert "**missed**, by 5.0% points" in eta_table(_doc(1.0, 0.2))
    assert "not measured (no ETA at 50 %)" in eta_table(_doc(1.0, None))
    with_report = _doc(1.0, 0.1)
    with_report["phases"]["with_batch"]["batch"]["sla_report_eta_error"] = {
        "at_25": 0.3,
        "at_50": 0.05,
        "at_75": None,
    }
    assert "`/sla/report` `eta_error`: 30.0% at 25 %, 5.0% at 50 %, None at 75 %." in eta_table(
        with_report
    )
    protect, eta = markdown(_doc(1.0, 0.1))
    for text in (protect, eta):
        assert "2 CPUs (Test CPU)" in text and "Commit abc1234" in text
    assert "4 simulated engines × 6 slots" in protect and "220 ms on a slot" in protect
    assert "the next section's table (b)" in eta


def test_bad_flags_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--interactive-load", "1.5"])
    with pytest.raises(SystemExit):
        parse_args(["--lines", "0"])
    assert parse_args(["--lines", "50"]).lines == 50


def test_quick_run_on_real_processes(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# x\n<!-- batch-eta-table -->\nSTALE-ETA\n<!-- /batch-eta-table -->\nkept\n"
        "<!-- batch-protect-table -->\nSTALE-PROTECT\n<!-- /batch-protect-table -->\nend\n"
    )
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.batch", "--quick", "--out", str(out),
            "--work", str(tmp_path / "work"), "--doc", str(doc),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = orjson.loads((out / "results-quick.json").read_bytes())
    assert result["capacity_rps"]["measured"] > 0
    alone, mixed = result["phases"]["alone"], result["phases"]["with_batch"]
    assert alone["interactive"]["served"] > 0 and mixed["interactive"]["served"] > 0
    batch = mixed["batch"]
    assert batch["status"] == "completed", batch
    assert batch["completed"] == batch["lines"] == 150 and batch["failed"] == 0
    assert batch["polls"][-1][1] == 150 and batch["lines_per_s"] > 0
    assert batch["duration_s"] > 0
    for row in (alone["interactive"], mixed["interactive"]):
        assert row["queue_waits_logged"] == row["requests"]  # every request's wait, from the log
    text = doc.read_text()
    assert "STALE" not in text and text.endswith("<!-- /batch-protect-table -->\nend\n")
    assert "| (a) interactive alone" in text and "| 50% |" in text and "kept\n" in text
    assert (out / "results-quick-protect.md").read_text() in text
