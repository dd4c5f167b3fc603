"""The overload benchmark (``make flow-bench``): its pure parts, and a seconds-long run of the
whole harness on real processes (engines, routers, the load) so that it cannot rot; and the
cost comparison's base-commit worktree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from benchmarks.flow.report import cost_line, cost_markdown
from benchmarks.flow.summary import by_priority, group
from benchmarks.flow.traffic import Flow, Outcome, plan, queue_waits
from benchmarks.harness.targets import BaseTree, Unavailable

ROOT = Path(__file__).resolve().parents[1]


def test_arrivals_are_seeded_poisson_per_flow() -> None:
    flows = [Flow("critical", 5.0), Flow("standard", 30.0)]
    first, again = plan(flows, 100.0, seed=7), plan(flows, 100.0, seed=7)
    assert first == again and first != plan(flows, 100.0, seed=8)
    assert [at for at, _ in first] == sorted(at for at, _ in first)
    assert all(0 <= at < 100.0 for at, _ in first)
    counts = [sum(1 for _, flow in first if flow == i) for i in range(2)]
    assert 350 <= counts[0] <= 650 and 2600 <= counts[1] <= 3400  # 500 and 3,000 expected
    assert plan([Flow("batch", 0.0)], 10.0, seed=1) == []


def test_rows_count_served_rejections_and_goodput_in_the_window() -> None:
    flows = [Flow("critical", 1.0), Flow("sheddable", 1.0)]
    outcomes = [
        Outcome(0, "a", sent=0.5, status=200, ttft=0.5, latency=1.0),  # ends at 1.5: the ramp
        Outcome(0, "b", sent=3.0, status=200, ttft=0.3, latency=1.0),  # ends at 4.0: inside
        Outcome(0, "c", sent=9.5, status=200, ttft=0.1, latency=1.0),  # ends after the phase
        Outcome(1, "d", sent=4.0, status=429, code="queue_full", latency=0.01),
        Outcome(1, "e", sent=5.0, status=503, code="queue_timeout", latency=1.0),
        Outcome(1, "f", sent=6.0, status=200, code="upstream_stream", ttft=0.2),  # cut stream
        Outcome(1, "g", sent=6.5, status=0, code="connection"),
    ]
    rows = group(flows, outcomes, 10.0, by_priority)
    crit, shed = rows["critical"], rows["sheddable"]
    assert (crit["requests"], crit["served"], crit["rejected"]) == (3, 3, {})
    assert crit["served_per_s"] == 1 / 8  # one finish inside [2, 10]
    assert crit["ttft_p50_s"] == 0.3 and crit["ttft_p95_s"] == pytest.approx(0.48)
    assert shed["served"] == 0 and shed["ttft_p50_s"] is None
    assert shed["rejected"] == {
        "200 upstream_stream": 1,
        "429 queue_full": 1,
        "503 queue_timeout": 1,
        "connection": 1,
    }


def test_queue_waits_read_from_access_log_lines() -> None:
    inner = orjson.dumps({"request_id": "on-2", "queue_wait_s": 0.5}).decode()
    log = "\n".join(
        [
            '2026-12-02T04:00:00.000 INFO llmsvc.router.access: {"request_id": "on-1", '
            '"queue_wait_s": 0.25, "status": 200}',
            orjson.dumps({"level": "info", "message": inner}).decode(),
            "2026-12-02T04:00:00.000 INFO llmsvc.router: started {not json} queue_wait_s",
            '{"request_id": "on-3", "queue_wait_s": null}',
        ]
    )
    assert queue_waits(log) == {"on-1": 0.25, "on-2": 0.5}


def _harness_doc(base_cpu: float, now_cpu: float) -> dict[str, Any]:
    row = {"status": "ok", "rps": 1000.0}
    return {
        "targets": [
            {**row, "name": "llmsvc-1w", "cpu_ms_per_request": now_cpu},
            {**row, "name": "llmsvc-base", "cpu_ms_per_request": base_cpu},
            {"name": "llmsvc-queued", "status": "unavailable", "reason": "exited with 2"},
        ],
        "base": "23d7c55",
        "llmsvc_commit": "abc1234",
        "machine": {"nproc": 2, "cpu_model": "x"},
        "load_average_1m": {"start": 1.0, "end": 2.0},
        "load_generator": "python",
        "concurrency": 16,
        "duration_s": 5.0,
        "repeat": 3,
        "date": "2026-12-02T05:00:00Z",
        "command": "python benchmarks/harness",
    }


def test_cost_table_gives_cpu_per_request_and_the_ratio_to_the_base() -> None:
    doc = _harness_doc(0.2, 0.204)
    table = cost_markdown(doc)
    assert "| previous commit (23d7c55), no slots | 1,000 | 200 | 1.000 |" in table
    assert "| this commit (abc1234), no slots | 1,000 | 204 | 1.020 |" in table
    assert "unavailable: exited with 2" in table
    line = cost_line(doc)
    assert line is not None and "a ratio of 1.020" in line and "204 µs" in line
    assert cost_line({**doc, "targets": doc["targets"][:1]}) is None


def test_base_tree_is_a_temporary_worktree_removed_after() -> None:
    tree = BaseTree("HEAD")
    tree.install()
    assert tree.path is not None
    path = tree.path
    try:
        assert (path / "src" / "llmsvc" / "router" / "proxy.py").is_file()
        command = tree.command(8080, [9000], path.parent)
        assert command[:2] == ["env", f"PYTHONPATH={path / 'src'}"]
    finally:
        tree.remove()
    assert not path.exists() and tree.path is None
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True
    )
    assert str(path) not in listed.stdout


def test_base_tree_of_an_unknown_commit_is_unavailable_in_one_line() -> None:
    with pytest.raises(Unavailable, match="git worktree add no-such-ref-13") as caught:
        BaseTree("no-such-ref-13").install()
    assert "\n" not in str(caught.value)


def test_quick_run_on_real_processes(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# x\n\n<!-- flow-overload-table -->\nSTALE-TABLE\n<!-- /flow-overload-table -->\nkept\n"
    )
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.flow", "--quick", "--no-plots", "--out", str(out),
            "--work", str(tmp_path / "work"), "--doc", str(doc),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = orjson.loads((out / "results-quick.json").read_bytes())
    assert set(result["phases"]) == {
        "idle", "overload-on", "overload-off", "fairness-on", "fairness-off"
    }  # fmt: skip
    assert result["capacity_rps"]["measured"] > 0
    for phase in result["phases"].values():
        assert phase["load_average_1m"]["start"] >= 0
        for row in phase["rows"].values():
            assert row["requests"] == row["served"] + sum(row["rejected"].values())
        assert len(phase["outcomes"]) == sum(r["requests"] for r in phase["rows"].values())
    on, off = result["phases"]["overload-on"], result["phases"]["overload-off"]
    assert on["flow_control"] and not off["flow_control"]
    assert set(on["rows"]) == {"critical", "standard", "sheddable"}
    assert [o[:2] for o in on["outcomes"]] == [o[:2] for o in off["outcomes"]]  # same arrivals
    # Without slots nothing is shed: the engines queue every request and answer it.
    assert all(row["rejected"] == {} for row in off["rows"].values()), off["rows"]
    assert all(row["served"] > 0 for row in off["rows"].values())
    assert set(result["phases"]["fairness-on"]["rows"]) == {"big", "small"}
    text = doc.read_text()
    assert "STALE-TABLE" not in text and text.endswith("<!-- /flow-overload-table -->\nkept\n")
    assert "| flow control on | critical |" in text and "| idle fleet" in text
    assert (out / "results-quick.md").read_text() in text
