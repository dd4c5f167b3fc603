"""The autoscaling benchmarks: ``make autoscale-agreement`` (the simulator against real
processes) and ``make autoscale-study`` (policies over the built-in traces).

Their pure parts (the trace, the verdict, the tables) are tested alone; each
benchmark also runs whole at a tiny size, the agreement on real processes (a
registry, a babysitter with standby, a router), so that neither can rot. The
figures are reported, never asserted as timings: only that both sides have
them and every request got an answer.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from benchmarks.autoscale.agreement import Settings, paired, ratios, verdict
from benchmarks.autoscale.report import agreement_markdown, replace_between
from benchmarks.autoscale.stack import Outcome, attach_router_times, prompt_text
from benchmarks.autoscale.trace import Bursts, generate, read_csv, write_csv

from llmsvc.simengine.model import count_tokens

ROOT = Path(__file__).resolve().parents[1]


def test_bursts_are_seeded_and_every_gap_is_an_idle_gap(tmp_path: Path) -> None:
    shape = Bursts(bursts=4, burst_s=5.0, rate=3.0, gap_s=7.0, lead_in_s=4.0, max_inner_gap_s=1.0)
    trace = generate(shape, seed=3)
    assert trace == generate(shape, seed=3) and trace != generate(shape, seed=4)
    arrivals = [r.arrival_s for r in trace]
    assert arrivals == sorted(arrivals) and arrivals[0] == shape.lead_in_s
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    long_gaps = [g for g in gaps if g > shape.max_inner_gap_s]
    assert len(long_gaps) == shape.bursts - 1  # one between each two bursts, none inside
    assert all(g >= shape.gap_s for g in long_gaps)
    assert all(16 <= r.prompt_tokens <= 64 and 4 <= r.output_tokens <= 16 for r in trace)
    path = tmp_path / "trace.csv"
    write_csv(path, trace)
    assert path.read_text().splitlines()[0] == "arrival_s,prompt_tokens,output_tokens"
    assert read_csv(path) == trace


@pytest.mark.parametrize("chars_per_token", [4.0, 6.227])
def test_a_prompt_is_as_many_tokens_as_the_trace_says(chars_per_token: float) -> None:
    for tokens in (1, 7, 16, 64, 333):
        text = prompt_text(5, tokens, chars_per_token)
        assert count_tokens(text, chars_per_token) == tokens
    assert prompt_text(1, 20, 4.0) != prompt_text(2, 20, 4.0)


def test_holds_and_queue_waits_are_read_from_the_router_access_lines() -> None:
    log = "\n".join(
        [
            '{"request_id": "agree-0", "hold_s": 1.25, "queue_wait_s": 0.0, "status": 200}',
            "2026-12-02T07:00:00 INFO llmsvc.router: started hold_s {not json}",
            '{"request_id": "agree-1", "hold_s": 0.0, "queue_wait_s": 0.5, "prompt_tokens": 12,'
            ' "completion_tokens": 4}',
        ]
    )
    outcomes = [Outcome(0, 1.0), Outcome(1, 2.0), Outcome(2, 3.0)]
    attach_router_times(outcomes, log)
    assert [o.hold_s for o in outcomes] == [1.25, 0.0, None]
    assert [o.queue_wait_s for o in outcomes] == [0.0, 0.5, None]
    assert [o.tokens for o in outcomes] == [None, (12, 4), None]


def _side(p50: float, p95: float, wakes: int) -> dict[str, Any]:
    return {
        "requests": 10, "answered": 10, "held": 2, "hold_mean_s": 0.5, "ttft_p50_s": p50,
        "ttft_p95_s": p95, "ttft_p99_s": p95, "wakes": wakes,
    }  # fmt: skip


def _result(sim: dict[str, Any], real: dict[str, Any]) -> dict[str, Any]:
    settings = Settings()
    real = real | {
        "errors": {}, "latest_send_s": 0.002, "load_average_1m": {"start": 0.5, "end": 0.7},
    }  # fmt: skip
    return {
        "date": "2026-12-02T07:00:00Z",
        "commit": "abc1234",
        "command": "python -m benchmarks.autoscale.agreement",
        "machine": {"nproc": 2, "cpu_model": "x", "kernel": "6", "python": "3.11"},
        "settings": dataclasses.asdict(settings) | {"trace_duration_s": 82.0},
        "real": real,
        "simulated": sim,
        "ratio_sim_over_real": ratios(sim, real),
        "targets_met": verdict(sim, real),
    }


def test_verdict_and_table_say_met_or_not() -> None:
    close = _result(_side(0.2, 1.1, 5), _side(0.25, 1.2, 5))
    assert close["targets_met"] == {"p95_within_15pct": True, "same_wakes": True}
    table = agreement_markdown(close)
    assert "| sim / real | 1.00 | | 1.00 | 1.00 | 0.80 | 0.92 | 1.00 |" in table
    assert "within 15 %: **met** (8% apart)" in table and "wake-ups: **met**" in table
    apart = _result(_side(0.2, 1.5, 4), _side(0.2, 1.2, 5))
    assert apart["targets_met"] == {"p95_within_15pct": False, "same_wakes": False}
    table = agreement_markdown(apart)
    assert "**not met** (25% apart)" in table and "(4 simulated, 5 real)" in table


def test_real_and_simulated_requests_are_paired_by_their_place_in_the_trace() -> None:
    sim = {"outcomes": [[0, 1.0, 1.0], [1, 0.2, 0.0], [2, 0.3, 0.0], [3, None, 0.0], [4, 0.5, 0]]}
    real = {
        "outcomes": [
            [0, 5.0, 1.25, 1.05, None, 0.0],  # held by the real router
            [1, 6.0, 0.3, 0.0, None, 0.0],
            [2, 6.5, 0.5, None, None, None],  # no access line: sent at once
            [3, 7.0, 0.4, 0.0, None, 0.0],  # the simulation did not answer it: left out
            [4, 7.5, 0.9, 0.0, None, 0.3],  # queued by the router for a slot
        ]
    }
    gaps = paired(sim, real)
    assert gaps["held"] == {"requests": 1, "median_s": 0.25, "p95_s": 0.25}
    assert gaps["queued"] == {"requests": 1, "median_s": 0.4, "p95_s": 0.4}
    assert gaps["direct"] is not None and gaps["direct"]["requests"] == 2
    assert gaps["direct"]["median_s"] == pytest.approx(0.15)


def test_tables_go_between_their_markers(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# x\n\n<!-- t -->\nSTALE\n<!-- /t -->\nkept\n")
    replace_between(doc, "| a |\n", "t")
    assert doc.read_text() == "# x\n\n<!-- t -->\n| a |\n<!-- /t -->\nkept\n"
    replace_between(doc, "| b |", "other")
    assert doc.read_text().endswith("kept\n\n<!-- other -->\n| b |\n<!-- /other -->\n")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m *args``; past ``timeout`` it gets SIGTERM first (the agreement then stops
    the processes it started), SIGKILL only 30 s later, and the test fails."""
    with subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"{args[0]} ran past {timeout:g} s:\n{out[-3000:]}{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_tiny_agreement_on_real_processes(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- autoscale-agreement -->\nSTALE\n<!-- /autoscale-agreement -->\n")
    out = tmp_path / "out"
    plots = importlib.util.find_spec("matplotlib") is not None  # the bench extra
    run = _run(
        "benchmarks.autoscale.agreement", "--tiny", "--out", str(out),
        "--work", str(tmp_path / "work"), "--doc", str(doc), *([] if plots else ["--no-plots"]),
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = orjson.loads((out / "agreement-tiny.json").read_bytes())
    real, sim = result["real"], result["simulated"]
    requests = len(read_csv(tmp_path / "work" / "trace.csv"))
    assert requests >= 4
    for side in (real, sim):
        assert side["requests"] == requests and side["answered"] == requests, side
        assert side["ttft_p50_s"] > 0 and side["ttft_p95_s"] >= side["ttft_p50_s"]
        assert side["wakes"] >= 1  # every burst starts from standby
    assert real["errors"] == {} and all(o[2] is not None for o in real["outcomes"])
    # The engine got the trace's requests: its token counts are the CSV's, every one.
    assert real["token_counts"] == {"logged": requests, "not_as_in_trace": 0}
    assert set(result["targets_met"]) == {"p95_within_15pct", "same_wakes"}
    assert (out / "agreement-tiny.png").is_file() == plots
    text = doc.read_text()
    assert "STALE" not in text and "| real processes |" in text and "| simulated" in text


def test_tiny_study(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- autoscale-study -->\n<!-- /autoscale-study -->\n")
    out = tmp_path / "out"
    run = _run(
        "benchmarks.autoscale.study", "--tiny", "--out", str(out), "--doc", str(doc), timeout=60
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = orjson.loads((out / "study-tiny.json").read_bytes())
    assert set(result["rows"]) == {"steady", "bursty", "diurnal", "spike-from-zero"}
    for trace, policies in result["rows"].items():
        assert set(policies) == {"fixed", "autoscale", "autoscale-zero"}
        fixed = policies["fixed"]
        assert fixed["cold_starts"] == 0 and fixed["gpu_seconds"] > 0
        for row in policies.values():
            assert row["requests"] == row["answered"] + row["rejected"], (trace, row)
        # Autoscaling never runs more engines than the fixed fleet has.
        assert policies["autoscale-zero"]["gpu_seconds"] <= fixed["gpu_seconds"]
    assert result["rows"]["spike-from-zero"]["autoscale-zero"]["cold_starts"] >= 1
    assert sorted(p.name for p in out.glob("study-*.png")) == [
        f"study-{t}.png" for t in ("bursty", "diurnal", "spike-from-zero", "steady")
    ]
    assert "| spike-from-zero | autoscale-zero |" in doc.read_text()
