"""``make coldstart-bench`` works: one cycle per mode, short delays, real processes.

No timing is asserted (that is the benchmark's report): the run ends with a result for
each mode whose numbers hang together, a report that cites its conditions, and the
table put between the document's markers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest
from benchmarks.coldstart.__main__ import main
from benchmarks.coldstart.report import TABLE_END, TABLE_START


@pytest.mark.slow
def test_one_cycle_per_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{TABLE_START}\nthe-last-table\n{TABLE_END}\nafter\n")
    report = tmp_path / "coldstart.md"
    argv = [
        "--cycles", "1", "--idle-timeout", "0.5", "--wake-delay", "0.3",
        "--startup-delay", "0.3", "--out", str(tmp_path / "out"), "--work",
        str(tmp_path / "work"), "--report", str(report), "--doc", str(doc),
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["coldstart", *argv])
    assert main(argv) == 0
    results = orjson.loads((tmp_path / "out" / "results.json").read_bytes())
    assert list(results["modes"]) == ["sleep", "stop"]
    for run in results["modes"].values():
        (cycle,) = run["cycles"]
        assert cycle["cold_ttft_s"] > 0 and cycle["engine_wake_s"] > 0
        assert cycle["overhead_s"] == pytest.approx(
            cycle["cold_ttft_s"] - cycle["engine_wake_s"] - cycle["warm_ttft_s"], abs=1e-3
        )
        assert run["summary"]["overhead_s_max"] == pytest.approx(cycle["overhead_s"], abs=1e-3)
    text = report.read_text()
    assert "Machine:" in text and "Commit `" in text and "--cycles 1" in text
    assert "| `sleep` | 1 |" in text and "| `stop` | 1 |" in text
    updated = doc.read_text()
    assert "the-last-table" not in updated and "| `sleep` | 1 |" in updated
    assert updated.startswith("before\n") and updated.endswith(f"{TABLE_END}\nafter\n")


def test_bad_arguments_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--modes", "hibernate"])
    assert exited.value.code == 2
    assert "--modes: use some of sleep,stop" in capsys.readouterr().err
