"""The proxy benchmark harness (``make bench``) in a tiny smoke run, so that it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from benchmarks.harness.loadgen import BENCH_KEY, PATH, STREAM_BODY, parse_wrk
from benchmarks.harness.paced import count_new, run_paced

from procs import HOST, Spawn, free_port

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "harness"
BACKEND = HARNESS.parent / "common" / "backend.py"

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:8080/v1/chat/completions
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.70ms    2.19ms  22.80ms   90.08%
    Req/Sec     6.75k     1.71k    9.04k    56.00%
  Latency Distribution
     50%    2.10ms
     75%    2.90ms
     90%    4.00ms
     99%   12.50ms
  33570 requests in 5.00s, 14.76MB read
  Non-2xx or 3xx responses: 70
Requests/sec:   6709.34
"""


def test_wrk_output_parsed() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.requests == 33500
    assert result.errors == 70
    assert result.seconds == 5.0
    assert (result.p50_ms, result.p99_ms) == (2.1, 12.5)
    assert result.rps == 6700.0


def test_sse_events_split_across_reads_counted_once() -> None:
    """The paced client carries a read's last bytes into the next: a ``data:`` cut in two is
    counted once, in the read that completes it, and one wholly in the tail not again."""
    assert count_new(b"7\r\ndata: {}\n\n\r\n7\r\nda", 0, b"data:") == 1
    assert count_new(b"\r\ndata:ta: {}", 4, b"data:") == 1  # "\r\nda" carried, "ta:" read
    assert count_new(b"data: {}data:", 8, b"data:") == 1  # the first wholly in the tail


# Paced chunks 20 ms apart: a loaded 2-core machine (2 ms was tried) can stall the client for
# a few ms and have it read several at once, which says nothing about the pacing.
@pytest.mark.parametrize("interval", ["0.02", "0"])
def test_paced_client_sees_paced_chunks_alone_and_bursts_coalesced(
    spawn: Spawn, interval: str
) -> None:
    """The client's read count tells paced chunks (one per read) from a burst (a backend that
    writes all 30 at once: few reads), so the figure that vouches for the pacing can fail."""
    port = free_port()
    backend = spawn(
        "paced", sys.executable, str(BACKEND), "--port", str(port), "--chunks", "30",
        "--first-chunk-delay", "0", "--chunk-interval", interval, raw=True,
    )  # fmt: skip
    backend.wait_http(f"http://{HOST}:{port}/health")
    result = run_paced(
        HOST, port, path=PATH, body=STREAM_BODY, key=BENCH_KEY, concurrency=3, seconds=0.2
    )
    assert result.errors == 0 and result.streams >= 3
    assert result.chunks == 30 * result.streams
    if interval == "0":  # all 30 written at once
        assert result.chunks / result.reads > 5 and result.coalesced > 0
    else:
        assert result.chunks / result.reads < 1.5


def test_smoke_run_direct_and_llmsvc(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable, str(HARNESS), "--smoke", "--no-plots",
            "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    document = orjson.loads((tmp_path / "out" / "results.json").read_bytes())
    assert document["machine"]["nproc"] >= 1
    targets = {t["name"]: t for t in document["targets"]}
    assert set(targets) == {"direct", "llmsvc-1w"}
    direct, router = targets["direct"], targets["llmsvc-1w"]
    assert direct["status"] == router["status"] == "ok"
    assert direct["cpu_ms_per_request"] == 0.0  # no proxy process to account
    assert router["rps"] > 0 and router["errors"] == 0
    assert 0 < router["cpu_ms_per_request"] < 50
    assert router["streams"] == 5 and router["first_chunk_hold_p50_ms"] is not None
    assert "added_p50_ms_c1" in router
    # The paced streams (4 at a time of 20 chunks in --smoke): every chunk through, counted.
    for t in (direct, router):
        assert t["stream_errors"] == 0 and t["stream_streams"] >= 4
        assert t["stream_chunks"] == 20 * t["stream_streams"]
        assert 1.0 <= t["stream_chunks_per_read"] < 2.0  # one per read, mostly
    assert direct["cpu_us_per_chunk"] == 0.0  # no proxy process to account
    assert 0 < router["cpu_us_per_chunk"] < 5000
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| llmsvc-1w |" in table
    assert "CPU µs/chunk (streamed)" in table
