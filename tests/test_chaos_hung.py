"""The hung-engine case of the fault harness (``benchmarks/chaos/hung.py``): its numbers, its
target verdict and its table, from request logs made up here (no proxy or backend is started;
``make chaos`` runs the case itself)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchmarks.chaos.hung import (
    HungTiming,
    ejection_s,
    fixed_rate,
    meets_target,
    summarize_hung,
)
from benchmarks.chaos.scenarios import Request, Run
from benchmarks.chaos.table import (
    END,
    HUNG_END,
    HUNG_START,
    START,
    hung_markdown,
    replace_table,
)

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos"
FAULT = 100.0  # wall-clock second of the SIGSTOP in the made-up logs
TIMING = HungTiming()


def _ok(start: float, took: float = 0.01, stream: bool = False) -> Request:
    return Request(stream=stream, start=start, end=start + took, first=start + took,
                   status=200, backend="b0", outcome="ok")  # fmt: skip


def _timed_out(start: float) -> Request:
    end = start + TIMING.client_timeout
    return Request(stream=False, start=start, end=end, outcome="failed", error="TimeoutError: ")


def _run(requests: list[Request], view: list[tuple[float, bool]] | None = None) -> Run:
    return Run(event=FAULT, recovered=FAULT + 8.0, ready=FAULT + 8.1, requests=requests,
               view=view or [])  # fmt: skip


def test_fixed_rate_sends_evenly_up_to_the_horizon() -> None:
    times = fixed_rate(40.0, 2.0)
    assert len(times) == 81 and times[0] == 0.0 and times[-1] == pytest.approx(2.0)
    assert all(b - a == pytest.approx(0.025) for a, b in itertools.pairwise(times))


def test_a_hang_that_loses_requests_is_counted_from_the_log() -> None:
    before = [_ok(FAULT - 3 + i * 0.1) for i in range(30)]
    # During the fault: b1's share times out (the client gives up), or waits 3 s and is answered.
    lost = [_timed_out(FAULT + i * 0.5) for i in range(6)]
    waited = [_ok(FAULT + 5.0, took=3.0), _ok(FAULT + 7.4, took=0.6, stream=True)]
    fine = [_ok(FAULT + i * 0.5 + 0.25) for i in range(16)]
    after = [_ok(FAULT + 9 + i * 0.1) for i in range(20)]
    view = [(FAULT - 1, True), (FAULT + 0.5, True), (FAULT + 9.0, True)]
    r = summarize_hung(_run(before + lost + waited + fine + after, view), TIMING)
    assert r["requests"] == 74 and r["failed"] == 6 and r["failed_pct"] == 8.11
    assert r["streams"] == 1 and r["streams_failed"] == 0
    assert r["eject_s"] == 7.4  # the last request that met the fault was sent 7.4 s in
    assert r["has_view"] and r["view_out_s"] is None  # never out of rotation
    assert r["waited"] == 6 + 1  # the timed out ones and the 3 s wait (not the 0.6 s stream)
    assert r["p99_during_s"] == pytest.approx(5.0, abs=0.01)
    assert r["errors_seen"] == ["0 TimeoutError:"]
    assert ejection_s(r) is None and not meets_target(r)


def test_a_quick_ejection_with_nothing_lost_meets_the_target() -> None:
    during = [_ok(FAULT + i * 0.025) for i in range(320)]
    during[12] = _ok(FAULT + 0.3, took=1.2)  # sent to b1 before it was out: retried in 1.2 s
    view = [(FAULT + 0.1, True), (FAULT + 1.3, False), (FAULT + 8.5, True)]
    r = summarize_hung(_run(during, view), TIMING)
    assert r["failed"] == 0 and r["eject_s"] == 0.3 and r["view_out_s"] == 1.3
    assert ejection_s(r) == 1.3 and meets_target(r)


def _summary(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "requests": 1000, "failed": 0, "failed_pct": 0.0, "streams": 50, "streams_failed": 0,
        "fault_s": 8.0, "eject_s": 1.0, "has_view": False, "view_out_s": None,
        "p99_during_s": 0.02, "waited": 0, "errors_seen": [],
    }  # fmt: skip
    return base | changes


@pytest.mark.parametrize(
    ("changes", "met"),
    [
        ({}, True),
        ({"eject_s": None}, True),  # no client noticed the fault at all
        ({"failed": 5, "failed_pct": 0.5}, True),
        ({"failed": 6, "failed_pct": 0.6}, False),
        ({"eject_s": 2.1}, False),
        ({"has_view": True, "view_out_s": None}, False),  # the proxy never took it out
        ({"has_view": True, "view_out_s": 2.5}, False),  # it did, too late
        ({"has_view": True, "view_out_s": 1.5, "eject_s": 1.0}, True),
    ],
)
def test_the_target_is_computed_from_the_measurements(changes: dict[str, Any], met: bool) -> None:
    assert meets_target(_summary(**changes)) is met


def _results(commit: str, **proxies: dict[str, Any]) -> dict[str, Any]:
    machine = {"utc": "2026-12-01T00:00:00Z", "loadavg_1m": 1.5, "nproc": 2, "cpu_model": "cpu",
               "kernel": "6.1", "python": "3.11.7"}  # fmt: skip
    return {
        "command": "python benchmarks/chaos --scenarios hung",
        "llmsvc_commit": commit,
        "machine_at_start": machine,
        "loadavg_1m_at_end": 2.0,
        "proxies": {name: {"settings": "s", "hung": r} for name, r in proxies.items()},
    }


def test_the_table_puts_the_before_row_first_and_says_pass_or_fail() -> None:
    before = _results("abc1234", llmsvc=_summary(failed=66, failed_pct=10.4, eject_s=7.5),
                      nginx=_summary())  # fmt: skip
    now = _results("def5678", llmsvc=_summary(), nginx=_summary(eject_s=7.5))
    lines = hung_markdown(now, before).splitlines()
    rows = [ln for ln in lines if ln.startswith("| ") and "---" not in ln][1:]
    assert rows[0].startswith("| llmsvc (before issue 11's defaults, commit abc1234) | 1000 | 66 |")
    assert rows[0].endswith("| fail |")
    assert rows[1].startswith("| llmsvc (commit def5678) |") and rows[1].endswith("| **pass** |")
    assert rows[2].startswith("| nginx |") and rows[2].endswith("| fail |")
    assert len(rows) == 3  # the before run's other proxies are not shown
    assert any(ln.startswith("The before row: 2 CPUs") for ln in lines)


def test_the_hung_table_replaces_only_its_own_section(tmp_path: Path) -> None:
    doc = tmp_path / "reliability.md"
    text = f"intro\n{START}\nfaults table\n{END}\nprose\n{HUNG_START}\nold\n{HUNG_END}\nend\n"
    doc.write_text(text)
    replace_table(doc, "new hung table\n", HUNG_START, HUNG_END)
    assert doc.read_text() == text.replace("\nold\n", "\nnew hung table\n")
    other = tmp_path / "other.md"
    other.write_text(f"{START}\nfaults table\n{END}\n")
    with pytest.raises(SystemExit, match="no <!-- chaos-defaults-table --> marker"):
        replace_table(other, "t", HUNG_START, HUNG_END)


def test_a_before_run_of_the_same_commit_is_not_shown_twice() -> None:
    run = _results("abc1234", llmsvc=_summary(), nginx=_summary())
    rows = [ln for ln in hung_markdown(run, run).splitlines() if ln.startswith("| llmsvc")]
    assert rows == [rows[0]] and rows[0].startswith("| llmsvc (commit abc1234) |")
    assert "The before row" not in hung_markdown(run, run)


def test_a_proxy_the_case_does_not_run_leaves_its_table_alone(tmp_path: Path) -> None:
    """``--proxies litellm --scenarios hung`` runs nothing, so it writes nothing (an empty table
    would replace the measured one in --doc)."""
    doc = tmp_path / "reliability.md"
    doc.write_text(f"{HUNG_START}\nmeasured\n{HUNG_END}\n")
    run = subprocess.run(
        [sys.executable, str(HARNESS), "--proxies", "litellm", "--scenarios", "hung",
         "--out", str(tmp_path / "out"), "--doc", str(doc)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == "chaos: hung runs only llmsvc, nginx, haproxy: skipped"
    assert not (tmp_path / "out").exists() and "measured" in doc.read_text()
