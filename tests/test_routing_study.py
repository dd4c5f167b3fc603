"""The routing-quality study's smoke run (``python -m benchmarks.routing --smoke``).

Two engines, the shared-prefix workload, two strategies, a few seconds: the
whole pipeline (capacity, low-load check, open-loop runs, metrics scrape,
results) runs, so the study cannot rot between full runs (``make study``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_study_measures_every_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.routing", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = orjson.loads((tmp_path / "results.json").read_bytes())

    assert results["machine"]["nproc"] >= 1
    assert results["capacity"]["shared_prefix"]["req_s"] > 10
    check = results["low_load_check"]
    assert check["requests"] > 0
    assert check["ok"] == check["requests"]
    assert check["ratio_median"] >= 0.9  # TTFT is never below the model's prefill time

    runs = results["runs"]
    assert [(r["workload"], r["strategy"]) for r in runs] == [
        ("shared_prefix", "round_robin"),
        ("shared_prefix", "least_connections"),
    ]
    for run in runs:
        assert run["errors"] == 0, run
        assert run["unfinished"] == 0, run
        assert run["ok"] >= 20, run
        assert 0 < run["ttft_p50_s"] <= run["ttft_p95_s"] < 5, run
        assert sorted(run["backend_share"]) == ["engine-0", "engine-1"], run
        # Sessions share system prompts: the engines' own counters see hits.
        assert 0.05 < run["prefix_cache_hit_rate"] < 1, run
        assert run["capacity_req_s"] > 0, run
    table = (tmp_path / "results.md").read_text()
    assert table.count("| shared_prefix |") == 2
