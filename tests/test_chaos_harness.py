"""The fault harness (``make chaos``) in its short form against llmsvc alone: behaviours 1 and 2
of docs/reliability.md, measured from the harness's own request log.

Two backends under steady load (non-streaming requests and streams of 1 s); backend b1 is
SIGKILLed and restarted (death), or SIGSTOPped and continued (black hole), 1.5 s later.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from procs import free_port

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos"
HEALTH_INTERVAL_S = 1.0  # the harness's --health-interval for llmsvc


def _run(tmp_path: Path, scenario: str) -> dict[str, Any]:
    ports = ",".join(str(free_port()) for _ in range(3))
    run = subprocess.run(
        [
            sys.executable, str(HARNESS), "--proxies", "llmsvc", "--scenarios", scenario,
            "--quick", "--ports", ports, "--out", str(tmp_path / "out"),
            "--work", str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    results = orjson.loads((tmp_path / "out" / "results.json").read_bytes())
    entry = results["proxies"]["llmsvc"]
    assert "unavailable" not in entry, entry
    result: dict[str, Any] = entry[scenario]
    assert "| llmsvc | " + scenario in (tmp_path / "out" / "results.md").read_text()
    return result


def _no_client_sees_a_failure(r: dict[str, Any]) -> None:
    assert r["requests"] > 100 and r["streams"] > 8, r
    assert r["failed"] == 0, r["errors_seen"]
    assert r["streams_failed"] == 0, r["errors_seen"]
    assert r["new_streams_failed"] == 0, r
    # Streams in flight on b1 when it died or froze: ended with an error event, none silently.
    assert r["streams_cut_silently"] == 0, r
    assert r["streams_cut_with_error"] >= 1, r


def test_backend_death_under_load(tmp_path: Path) -> None:
    r = _run(tmp_path, "death")
    _no_client_sees_a_failure(r)
    assert r["cut_streams_ended_after_s"] <= 1.0, r
    assert r["view_out_s"] is not None and r["view_out_s"] <= 2.0, r  # out of rotation
    # Back in rotation within one health interval of being ready (not after --fail-timeout).
    assert r["readmit_s"] is not None and r["readmit_s"] <= 3.0, r
    assert r["view_back_s"] is not None and r["view_back_s"] <= HEALTH_INTERVAL_S + 0.5, r


def test_black_holed_backend_under_load(tmp_path: Path) -> None:
    r = _run(tmp_path, "blackhole")
    _no_client_sees_a_failure(r)
    # A stalled stream ends after --stream-idle-timeout (1 s), with the error event.
    assert r["cut_streams_ended_after_s"] <= 1.0 + 0.5, r
    # Out within 2 health intervals (active check timeout 0.5 s); requests waiting on it were
    # retried after --first-byte-timeout, so none failed (above).
    assert r["view_out_s"] is not None and r["view_out_s"] <= 2 * HEALTH_INTERVAL_S, r
    assert r["eject_s"] is not None and r["eject_s"] <= 2 * HEALTH_INTERVAL_S, r
    assert r["readmit_s"] is not None and r["readmit_s"] <= 3.0, r
    # Memory and open connections stay bounded while requests pile up on the frozen backend.
    before, during = r["proxy_before"], r["proxy_during"]
    assert during["fds"] <= before["fds"] + 32, r
    assert during["rss_mib"] <= before["rss_mib"] + 32, r


def test_bad_arguments_one_line() -> None:
    run = subprocess.run(
        [sys.executable, str(HARNESS), "--proxies", "llmsvc,squid"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "unknown proxy 'squid'" in run.stderr.strip().splitlines()[-1]
