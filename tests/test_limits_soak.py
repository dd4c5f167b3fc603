"""The soak (``benchmarks/soak/soak.py``) in 20 seconds: no error, descriptors come back.

``make soak`` runs it for 10 minutes and asserts the memory bounds too
(docs/reliability.md, "Soak"); this short run keeps the harness itself working
and catches a leak of connections or a failing request under steady load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak" / "soak.py"


def test_a_short_soak_passes(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    cmd = [
        sys.executable, str(SOAK), "--seconds", "20", "--short", "--concurrency", "8",
        "--sample-interval", "1", "--chunk", "10", "--out", str(out), "--log-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["failures"] == []
    assert result["requests_ok"] > 0 and result["requests_failed"] == 0
    assert len(result["workers"]) == 2 and result["workers_after"] == result["workers"]
    assert len(result["samples"]) >= 10
    assert any(run["stream"] for run in result["load"])  # both kinds of request ran
    assert any(not run["stream"] for run in result["load"])
    for pid, before in result["fds_before"].items():
        assert result["fds_after"][pid] <= before + 8 + 8, (pid, before, result["fds_after"])
    assert "PASS" in done.stdout
