"""``llmsvc bench`` as a user runs it: a real process against real sim engines and a router."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

import metrics
from procs import HOST, ProcGroup, Spawn, free_port, llmsvc_args, wait_until

MODEL = "sim-model"
# A sim engine with known delays: 10 decode steps of 20 ms after a prefill of ~5 ms.
DECODE_TOKENS_PER_S = 50.0
MAX_TOKENS = 11
EXPECTED_LATENCY_S = (MAX_TOKENS - 1) / DECODE_TOKENS_PER_S


def start_engine(spawn: ProcGroup | Spawn, name: str, *args: str) -> str:
    port = free_port()
    proc = spawn(name, "sim-engine", "--port", str(port), "--engine-id", name, *args)
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health")
    return url


def bench(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        llmsvc_args("bench", "--url", url, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def bench_json(url: str, *args: str) -> dict[str, Any]:
    done = bench(url, "--model", MODEL, "--json", *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar with --json
    data: dict[str, Any] = json.loads(done.stdout)
    return data


@pytest.fixture(scope="module")
def timed_engine(module_spawn: ProcGroup) -> str:
    return start_engine(
        module_spawn,
        "timed",
        "--decode-tokens-per-s",
        str(DECODE_TOKENS_PER_S),
        "--decode-slowdown",
        "0",
    )


@pytest.fixture(scope="module")
def fast_engines(module_spawn: ProcGroup) -> list[str]:
    return [start_engine(module_spawn, f"fast{i}", "--time-scale", "0") for i in range(2)]


@pytest.fixture(scope="module")
def router(module_spawn: ProcGroup, fast_engines: list[str], tmp_path_factory: Any) -> str:
    services = tmp_path_factory.mktemp("router") / "services.json"
    records = [
        {"name": f"fast{i}", "url": url, "host": HOST, "port": int(url.rsplit(":", 1)[1]),
         "metadata": {"models": [MODEL]}}
        for i, url in enumerate(fast_engines)
    ]  # fmt: skip
    services.write_text(json.dumps(records))
    port = free_port()
    proc = module_spawn("router", "router", "--port", str(port), "--static-services", str(services))
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health")
    return url


def test_json_report_shape_and_known_latency(timed_engine: str) -> None:
    data = bench_json(timed_engine, "--requests", "5", "--max-tokens", str(MAX_TOKENS))

    assert set(data) >= {
        "run", "requests", "elapsed_s", "requests_per_s", "output_tokens",
        "output_tokens_per_s", "latency_s", "ttft_s", "ttft_measures", "errors",
        "interrupted", "client",
    }  # fmt: skip
    assert data["run"]["target"] == f"{timed_engine}/v1/chat/completions"
    assert data["requests"] == {"completed": 5, "ok": 5, "failed": 0}
    assert data["errors"] == {}
    assert data["interrupted"] is False
    assert data["output_tokens"] == 5 * MAX_TOKENS  # from usage
    latency = data["latency_s"]
    keys = ["min", "p50", "p90", "p95", "p99", "max"]
    assert [latency[k] for k in keys] == sorted(latency[k] for k in keys)
    assert latency["min"] >= EXPECTED_LATENCY_S and latency["max"] < EXPECTED_LATENCY_S + 0.1
    # Not streaming: TTFT is the latency, and the report says so.
    assert data["ttft_measures"] == "latency"
    assert data["ttft_s"] == latency
    assert data["requests_per_s"] == pytest.approx(5 / data["elapsed_s"], rel=0.01)


def test_streaming_ttft_is_the_first_content_chunk(timed_engine: str) -> None:
    data = bench_json(
        f"{timed_engine}/v1/",
        "--requests", "4", "--concurrency", "2", "--stream",
        "--max-tokens", str(MAX_TOKENS), "--endpoint", "completions",
    )  # fmt: skip

    assert data["run"]["target"] == f"{timed_engine}/v1/completions"
    assert data["requests"]["ok"] == 4
    assert data["ttft_measures"] == "first_content_chunk"
    assert data["output_tokens"] == 4 * MAX_TOKENS
    assert data["ttft_s"]["max"] < EXPECTED_LATENCY_S / 2  # first token after the prefill
    assert data["latency_s"]["min"] >= EXPECTED_LATENCY_S


def test_errors_are_counted_by_kind(spawn: Spawn, timed_engine: str) -> None:
    failing = start_engine(spawn, "failing", "--time-scale", "0", "--fail-rate", "1")
    data = bench_json(failing, "--requests", "6", "--concurrency", "3")
    assert data["requests"] == {"completed": 6, "ok": 0, "failed": 6}
    assert data["errors"] == {"http_500": 6}
    assert data["latency_s"] is None and data["requests_per_s"] == 0

    slow = bench_json(timed_engine, "--requests", "2", "--max-tokens", "40", "--timeout", "0.2")
    assert slow["errors"] == {"timeout": 2}

    unknown = bench(failing, "--model", "no-such-model", "--requests", "2", "--json")
    assert json.loads(unknown.stdout)["errors"] == {"http_404": 2}


def test_in_band_stream_error_through_a_router(spawn: Spawn, tmp_path: Path) -> None:
    slow = start_engine(spawn, "slow", "--decode-tokens-per-s", "2")
    services = tmp_path / "services.yaml"
    port = int(slow.rsplit(":", 1)[1])
    services.write_text(
        f"- {{name: slow, host: {HOST}, port: {port}, metadata: {{models: [{MODEL}]}}}}\n"
    )
    router_port = free_port()
    proc = spawn(
        "router", "router", "--port", str(router_port), "--static-services", str(services),
        "--stream-idle-timeout", "0.2",
    )  # fmt: skip
    router = f"http://{HOST}:{router_port}"
    proc.wait_http(f"{router}/health")

    data = bench_json(router, "--requests", "2", "--stream", "--max-tokens", "5")
    assert data["errors"] == {"stream_error": 2}


def test_through_a_router_streaming_and_not(router: str) -> None:
    plain = bench_json(router, "--requests", "30", "--concurrency", "6", "--max-tokens", "4")
    assert plain["requests"] == {"completed": 30, "ok": 30, "failed": 0}
    assert plain["output_tokens"] == 30 * 4

    streamed = bench_json(router, "--duration", "0.5", "--concurrency", "3", "--stream")
    assert streamed["requests"]["ok"] == streamed["requests"]["completed"] > 3
    assert streamed["run"]["requests"] is None and streamed["run"]["duration_s"] == 0.5
    assert streamed["elapsed_s"] >= 0.5


def test_text_report_for_people(router: str) -> None:
    done = bench(router, "--model", MODEL, "--requests", "3")
    assert done.returncode == 0, done.stderr
    assert "requests: 3 completed, 3 ok, 0 failed" in done.stdout
    assert "p99" in done.stdout and "TTFT" in done.stdout
    assert done.stderr == ""  # stderr is not a TTY: no progress bar


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", MODEL, "--concurrency", "0"], "--concurrency"),
        (["--model", MODEL, "--requests", "3", "--duration", "1"], "not both"),
        (["--model", MODEL, "--endpoint", "embeddings"], "--endpoint"),
        (["--model", MODEL, "--no-such-flag"], "unrecognized arguments"),
        ([], "--model is required"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], message: str) -> None:
    done = bench("http://127.0.0.1:9", *args)
    assert done.returncode == 2
    assert message in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_unreachable_url_exits_1_with_one_line() -> None:
    done = bench(f"http://{HOST}:{free_port()}", "--model", MODEL, "--json")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmsvc bench: error: cannot reach")


def test_ctrl_c_prints_the_partial_report(spawn: Spawn, timed_engine: str) -> None:
    served_before = _served(timed_engine)
    proc = spawn(
        "bench", "bench", "--url", timed_engine, "--model", MODEL, "--json",
        "--duration", "60", "--concurrency", "2",
    )  # fmt: skip
    wait_until(
        lambda: _served(timed_engine) > served_before, timeout=15, what="bench to send requests"
    )
    proc.signal(signal.SIGINT)
    assert proc.popen.wait(15) == 130
    data = json.loads(proc.log().strip().splitlines()[-1])
    assert data["interrupted"] is True
    assert data["requests"]["ok"] >= 1 and data["elapsed_s"] < 30


def _served(url: str) -> float:
    """Requests the sim engine has finished, from its vLLM counter."""
    return metrics.total(metrics.scrape(url, timeout=2), "vllm:request_success_total")
