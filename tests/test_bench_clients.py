"""The benchmark clients' parsing, configs and table (benchmarks/clients), no tool run.

The result documents are cut down from real guidellm 0.8.1 and inference-perf 0.7.0
output (``make bench-clients``), keeping the keys and nesting those versions write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from benchmarks.clients import parse, report, tools
from benchmarks.clients.__main__ import _failed, install, parse_args


def _dist(median: float, p95: float) -> dict[str, Any]:
    return {"median": median, "mean": median, "percentiles": {"p50": median, "p95": p95}}


def guidellm_report() -> dict[str, Any]:
    metrics = {
        "request_totals": {"successful": 72, "errored": 0, "incomplete": 8, "total": 80},
        "time_to_first_token_ms": {"successful": _dist(75.0, 114.6), "errored": _dist(0, 0)},
        "inter_token_latency_ms": {"successful": _dist(31.3, 32.9)},
        "time_per_output_token_ms": {"successful": _dist(32.8, 35.0)},
        "output_tokens_per_second": {"total": {"mean": 240.7}, "successful": {"mean": 230.0}},
        "requests_per_second": {"total": {"mean": 7.2}, "successful": {"mean": 7.2}},
    }
    return {"metadata": {}, "benchmarks": [{"type_": "generative_benchmark", "metrics": metrics}]}


def inference_perf_summary() -> dict[str, Any]:
    def seconds(median: float, p95: float) -> dict[str, float]:
        return {"mean": median, "median": median, "p95": p95, "p99": p95}

    return {
        "benchmark_time_seconds": 10.9,
        "successes": {
            "count": 80,
            "latency": {
                "time_to_first_token": seconds(0.1151, 0.1515),
                "inter_token_latency": seconds(0.0312, 0.0323),
                "time_per_output_token": seconds(0.0067, 0.0077),
            },
            "throughput": {"output_tokens_per_sec": 1054.8, "requests_per_sec": 7.31},
        },
        "failures": {"count": 0, "request_latency": None},
    }


def test_guidellm_figures_are_its_own() -> None:
    f = parse.guidellm(guidellm_report())
    assert (f.completed, f.errors, f.incomplete) == (72, 0, 8)
    assert (f.ttft_p50_ms, f.ttft_p95_ms) == (75.0, 114.6)
    assert (f.itl_p50_ms, f.itl_p95_ms, f.tpot_p50_ms) == (31.3, 32.9, 32.8)
    assert (f.output_tokens_per_s, f.requests_per_s) == (240.7, 7.2)  # over all requests


def test_inference_perf_figures_in_milliseconds() -> None:
    f = parse.inference_perf(inference_perf_summary())
    assert (f.completed, f.errors, f.incomplete) == (80, 0, None)
    assert f.ttft_p50_ms == pytest.approx(115.1)
    assert f.ttft_p95_ms == pytest.approx(151.5)
    assert f.itl_p50_ms == pytest.approx(31.2)
    assert f.tpot_p50_ms == pytest.approx(6.7)
    assert (f.output_tokens_per_s, f.requests_per_s) == (1054.8, 7.31)


def test_inference_perf_failures_are_errors() -> None:
    summary = inference_perf_summary()
    summary["failures"]["count"] = 3
    assert parse.inference_perf(summary).errors == 3


@pytest.mark.parametrize(
    ("tool", "doc", "missing"),
    [
        ("guidellm", {"benchmarks": []}, "benchmarks.0.metrics"),
        ("inference-perf", {"successes": {"count": 1}}, "latency"),
    ],
)
def test_a_result_without_its_figures_names_what_is_missing(
    tool: str, doc: dict[str, Any], missing: str
) -> None:
    with pytest.raises(parse.ResultError, match=f"no {missing}"):
        parse.PARSERS[tool](doc)


def results(runs: list[dict[str, Any]]) -> dict[str, Any]:
    machine = {
        "nproc": 2, "cpu_model": "Xeon", "memory_gib": 23.5, "kernel": "6.1",
        "python": "3.11.7", "loadavg_1m": 1.5, "utc": "2026-12-02T00:00:00Z",
    }  # fmt: skip
    return {
        "command": "python benchmarks/clients --fleets sim",
        "llmsvc_commit": "abc1234",
        "tool_versions": "guidellm==0.8.1, inference-perf==0.7.0",
        "machine_at_start": machine,
        "loadavg_1m_at_end": 2.5,
        "loads": {"sim": {"seconds": 20, "streams": 8, "prompt_tokens": 256, "output_tokens": 32}},
        "runs": runs,
    }


def test_table_rows_with_the_routers_counts_and_reasons() -> None:
    figures = parse.guidellm(guidellm_report()).__dict__
    runs: list[dict[str, Any]] = [
        {"fleet": "sim", "tool": "guidellm", "target": "router", "figures": figures,
         "router_statuses": {"499": 8.0, "200": 72.0, "503": 0.0}},
        {"fleet": "sim", "tool": "guidellm", "target": "direct", "figures": figures},
        {"fleet": "llama.cpp", "tool": "inference-perf", "target": "router",
         "unavailable": "no /cache/llama-server (make real-engine)"},
    ]  # fmt: skip
    table = report.markdown(results(runs))
    lines = table.splitlines()
    columns = lines[0].count("|")
    assert all(line.count("|") == columns for line in lines[:5]), table
    assert lines[2] == (
        "| sim | guidellm | router | 72 | 0 | 8 | 75.0 / 114.6 | 31.3 / 32.9 | 32.8 | 241 "
        "| 7.20 | 200: 72, 499: 8 |"
    )
    assert lines[3].endswith("| 7.20 | – |")
    assert "| llama.cpp | inference-perf | router | not run: no /cache/llama-server" in lines[4]
    assert "Load: sim: 8 concurrent streams for 20 s, prompt 256 / output 32 tokens." in table
    assert "load average 1.5 at the start, 2.5 at the end" in table
    assert "Command: `python benchmarks/clients --fleets sim`." in table


def test_inference_perf_config_drives_streams_for_the_duration(tmp_path: Path) -> None:
    load = tools.Load(seconds=20, streams=8, prompt_tokens=256, output_tokens=32)
    config: Any = tools.inference_perf_config("http://r:1", "m", load, tmp_path)
    assert config["api"] == {"type": "completion", "streaming": True}
    assert config["load"]["stages"] == [{"num_requests": 160, "concurrency_level": 8}]
    assert config["load"]["base_seed"] == 1  # not the time: reproducible prompts
    assert config["data"]["input_distribution"]["mean"] == 256
    assert config["server"]["base_url"] == "http://r:1"
    assert config["tokenizer"]["pretrained_model_name_or_path"] == str(tools.TOKENIZER_DIR)


def test_guidellm_command_streams_through_the_url(tmp_path: Path) -> None:
    load = tools.Load(seconds=5, streams=4, prompt_tokens=64, output_tokens=8)
    argv = tools.guidellm_command(Path("/v"), "http://r:1", "m", load, tmp_path)
    assert argv[:2] == ["/v/bin/guidellm", "run"]
    assert "kind=openai_http,target=http://r:1,model=m,stream=true" in argv
    assert "kind=concurrent,streams=4" in argv
    assert "kind=max_duration,seconds=5" in argv
    assert "kind=synthetic_text,prompt_tokens=64,output_tokens=8" in argv
    assert "kind=static,value=1" in argv  # its prompts' seed, not guidellm's default 42


@pytest.mark.parametrize("argv", [["--tools", "wrk"], ["--fleets", "vllm"]])
def test_unknown_tool_or_fleet_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert "unknown" in capsys.readouterr().err


def test_errors_through_the_router_or_a_failed_run_fail_the_benchmark() -> None:
    figures = parse.guidellm(guidellm_report()).__dict__
    errored = {**figures, "errors": 1}
    assert not _failed({"target": "router", "figures": figures})
    assert _failed({"target": "router", "figures": errored})
    assert not _failed({"target": "direct", "figures": errored})  # the engine's, not ours
    assert _failed({"target": "direct", "unavailable": "guidellm exit 1: …", "failed": True})
    assert not _failed({"target": "router", "unavailable": "no llama-server (make real-engine)"})


def test_no_python_312_is_a_one_line_reason_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no python3.12 / python3.13
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pyenv
    venvs = install(["inference-perf"])
    assert venvs == {"inference-perf": "unavailable: needs Python >= 3.12, none found"}
    row = report.row({"fleet": "sim", "tool": "inference-perf", "target": "router",
                      "unavailable": venvs["inference-perf"]})  # fmt: skip
    assert row.startswith("| sim | inference-perf | router | not run: unavailable: needs Python")
    assert row.count("|") == report.HEADER.splitlines()[0].count("|")
