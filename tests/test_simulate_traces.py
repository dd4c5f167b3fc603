"""Workload traces: the built-in shapes, CSV files and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmsvc.simulate import BUILTIN_TRACES, TraceError, load_trace

HEADER = "arrival_s,prompt_tokens,output_tokens\n"


@pytest.mark.parametrize("name", BUILTIN_TRACES)
def test_builtin_traces_have_the_mean_rate_and_sorted_arrivals(name: str) -> None:
    trace = load_trace(name, duration=2000.0, rate=5.0, seed=1)
    assert len(trace) == pytest.approx(2000 * 5, rel=0.1)
    assert list(trace.arrivals) == sorted(trace.arrivals)
    assert trace.arrivals[0] >= 0 and trace.arrivals[-1] < 2000.0
    assert min(trace.prompt_tokens) >= 32 and max(trace.prompt_tokens) <= 96
    assert min(trace.output_tokens) >= 16 and max(trace.output_tokens) <= 48


def test_the_shapes_differ_where_they_say() -> None:
    def count(trace_name: str, start: float, end: float) -> int:
        trace = load_trace(trace_name, duration=1000.0, rate=10.0, seed=2)
        return sum(1 for t in trace.arrivals if start <= t < end)

    assert count("spike-from-zero", 0, 400) == 0 and count("spike-from-zero", 600, 1000) == 0
    assert count("spike-from-zero", 400, 600) == pytest.approx(10 * 1000, rel=0.1)
    assert count("diurnal", 400, 600) > 5 * count("diurnal", 0, 100)  # noon vs midnight
    # bursty: 60-s cycles, the first 20 % of each at 4.2x the rate, the rest at 0.2x
    assert count("bursty", 60, 72) / 12 > 10 * count("bursty", 72, 120) / 48


def test_a_seed_is_a_trace() -> None:
    one = load_trace("bursty", duration=100.0, rate=3.0, seed=4)
    assert one == load_trace("bursty", duration=100.0, rate=3.0, seed=4)
    assert one != load_trace("bursty", duration=100.0, rate=3.0, seed=5)


def test_a_csv_trace_round_trips(tmp_path: Path) -> None:
    trace = load_trace("steady", duration=20.0, rate=2.0, seed=1, prompt_tokens=10)
    path = tmp_path / "t.csv"
    trace.write_csv(path)
    again = load_trace(str(path), duration=1.0, rate=99.0, seed=0)
    assert again.arrivals == trace.arrivals
    assert again.prompt_tokens == trace.prompt_tokens
    assert again.output_tokens == trace.output_tokens
    assert again.duration == trace.arrivals[-1]  # the longer of --duration and its last arrival


def test_a_csv_may_order_columns_freely_and_is_sorted(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("output_tokens,arrival_s,prompt_tokens,note\n4,2.5,10,x\n\n3,0.5,20,y\n")
    trace = load_trace(str(path), duration=30.0, rate=1.0, seed=0)
    assert trace.arrivals == (0.5, 2.5)
    assert trace.prompt_tokens == (20, 10) and trace.output_tokens == (3, 4)
    assert trace.duration == 30.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("arrival,prompt_tokens,output_tokens\n1,2,3\n", "line 1: the header must name"),
        (f"{HEADER}1,2,3\nsoon,2,3\n", "line 3: arrival_s is not a number"),
        (f"{HEADER}1,2,3\n2,2\n", "line 3: 2 fields"),
        (f"{HEADER}-1,2,3\n", "line 2: arrival_s must be"),
        (f"{HEADER}1,2,0\n", "line 2: output_tokens must be at least 1"),
        (f"{HEADER}1,2.5,3\n", "line 2: prompt_tokens is not an integer"),
        ("", "line 1: the header must name"),
    ],
)
def test_bad_csv_lines_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        load_trace(str(path), duration=10.0, rate=1.0, seed=0)


def test_bad_trace_parameters() -> None:
    with pytest.raises(TraceError, match="unknown trace 'weekly'"):
        load_trace("weekly", duration=10.0, rate=1.0, seed=0)
    with pytest.raises(TraceError, match="rate must be a positive"):
        load_trace("steady", duration=10.0, rate=-1.0, seed=0)
    with pytest.raises(TraceError, match="duration"):
        load_trace("steady", duration=0.0, rate=1.0, seed=0)
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace("/nonexistent/x.csv", duration=10.0, rate=1.0, seed=0)
