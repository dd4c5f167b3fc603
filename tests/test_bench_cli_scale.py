"""A tiny run of the scale study (``make scale`` runs the full one), so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STUDY = Path(__file__).resolve().parent.parent / "benchmarks" / "scale" / "study.py"


def test_scale_study_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable, str(STUDY), "--backends", "10", "--records", "30", "--watchers", "3",
            "--rounds", "1", "--requests", "100", "--concurrency", "4", "--iterations", "200",
            "--strategies", "round_robin", "--health-round", "1", "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())

    assert results["machine"]["nproc"] >= 1
    decided = {(d["strategy"], d["backends"]) for d in results["decision"] if "decision_us" in d}
    assert {("round_robin", 10), ("least_connections", 10)} <= decided
    assert results["registry"]["records"] == 30
    assert results["registry"]["rss_records_mib"] > 0
    [router] = results["routers"]
    assert router["strategy"] == "round_robin" and router["rss_mib"] > 0
    assert router["load"]["requests"]["ok"] == 100
    setups = [(p["watchers"], p["watch"]) for p in results["propagation"]]
    assert setups == [(0, "none"), (3, "type=openai-api"), (3, "all records")]
    for setup in results["propagation"]:
        assert setup["add_s"]["missed"] == setup["remove_s"]["missed"] == 0
        assert setup["add_s"]["max"] < 10
    assert results["baseline"]["direct"]["requests"]["ok"] == 100
    assert results["health_round"]["records"] == 30
    assert results["propagation"][2]["answers"] >= 3
    # The Markdown summary on stdout names every section.
    for section in ("Decision time", "Registry", "Routers", "Propagation", "Proxy path",
                    "Health round"):  # fmt: skip
        assert section in done.stdout
