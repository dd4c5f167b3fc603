"""The routing-quality study: its smoke run (``python -m benchmarks.routing --smoke``), and
the pure parts it is built from (router draws, engine profiles, the targets table).

The smoke run is two engines, the shared-prefix workload, two strategies at one router
and one of them at two, a few seconds: the whole pipeline (capacity, low-load check, open-loop
runs through one or two router processes, metrics scrape, targets, results) runs, so
the study cannot rot between full runs (``make study``).
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.routing.config import EngineProfile, StudyConfig, WorkloadShape  # noqa: E402
from benchmarks.routing.driver import Targets  # noqa: E402
from benchmarks.routing.report import bootstrap_ratio, targets, targets_table  # noqa: E402
from benchmarks.routing.stack import Stack  # noqa: E402
from benchmarks.routing.workloads import make_workload  # noqa: E402


def test_smoke_study_measures_every_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.routing", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "about" in proc.stdout.splitlines()[0]  # the estimate, printed first
    results = orjson.loads((tmp_path / "results.json").read_bytes())

    assert results["machine"]["nproc"] >= 1
    assert results["capacity"]["shared_prefix"]["req_s"] > 10
    check = results["low_load_check"]
    assert check["requests"] > 0
    assert check["ok"] == check["requests"]
    assert check["ratio_median"] >= 0.9  # TTFT is never below the model's prefill time

    runs = results["runs"]
    assert [(r["workload"], r["strategy"], r["routers"]) for r in runs] == [
        ("shared_prefix", "round_robin", 1),
        ("shared_prefix", "least_connections", 1),
        ("shared_prefix", "least_connections", 2),
    ]
    for run in runs:
        assert run["errors"] == 0, run
        assert run["unfinished"] == 0, run
        assert run["ok"] >= 20, run
        assert 0 < run["ttft_p50_s"] <= run["ttft_p95_s"] < 5, run
        assert run["ttft_p95_by_repeat_s"] == [run["ttft_p95_s"]], run  # one round
        assert sorted(run["backend_share"]) == ["engine-0", "engine-1"], run
        # Sessions share system prompts: the engines' own counters see hits.
        assert 0.05 < run["prefix_cache_hit_rate"] < 1, run
        assert run["capacity_req_s"] > 0, run  # shared_prefix: every strategy's capacity
        shares = run["router_share"]
        if run["routers"] == 1:
            assert shares == {"0": run["requests"]}, run
        else:  # requests drawn at random between the two router processes
            assert sorted(shares) == ["0", "1"], run
            assert min(shares.values()) > 0.25 * run["requests"], run

    rows = {(r["routers"], r["figure"], r["against"]): r for r in results["targets"]}
    assert set(rows) == {
        (1, "ttft_p95", "round_robin"),
        (1, "capacity", "round_robin"),
        (2, "ttft_p95", "itself, 1 router"),
        (2, "capacity", "itself, 1 router"),
    }
    for row in results["targets"]:
        assert row["candidate"] == "least_connections"
        assert row["measured"] > 0, row
        assert row["resolved"] is False, row  # one round resolves nothing
    table = (tmp_path / "results.md").read_text()
    assert sum(line.startswith("| shared_prefix |") for line in table.splitlines()) == 3
    assert table.count("| least_connections | 2 | shared_prefix |") == 2


def test_a_bad_router_count_is_one_line_and_exit_2() -> None:
    for value in ("0", "1,x"):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.routing", "--routers", value],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "--routers" in proc.stderr
        assert proc.stdout == ""


def test_request_n_goes_to_the_same_router_whatever_order_requests_ask() -> None:
    urls = ["http://a", "http://b"]
    forward, backward = Targets(urls, "seed"), Targets(urls, "seed")
    ahead = [forward(n) for n in range(200)]
    behind = [backward(n) for n in reversed(range(200))][::-1]
    assert ahead == behind
    assert 70 < ahead.count("http://a") < 130  # drawn at random, not alternated
    assert ahead != [urls[n % 2] for n in range(200)]
    assert [Targets(urls, "other")(n) for n in range(200)] != ahead
    assert {Targets(["http://only"], "seed")(n) for n in range(10)} == {"http://only"}


def test_heterogeneous_engines_are_one_twice_as_fast_and_the_rest_alike() -> None:
    cfg = StudyConfig(engines=4)
    fast, *slow = cfg.profiles("heterogeneous")
    assert len(slow) == 3 and all(p == cfg.engine for p in slow)
    assert fast.prefill_tokens_per_s == 2 * cfg.engine.prefill_tokens_per_s
    assert fast.decode_tokens_per_s == 2 * cfg.engine.decode_tokens_per_s
    assert fast.prefix_cache_tokens == cfg.engine.prefix_cache_tokens
    flags = fast.flags()
    assert flags[flags.index("--prefill-tokens-per-s") + 1] == "8000.0"
    assert cfg.profiles("uniform") == (cfg.engine,) * 4


def test_scraping_strategies_scrape_at_the_scaled_pace() -> None:
    profile = StudyConfig().engine
    for strategy in ("least_load", "scored"):
        assert profile.router_flags(strategy) == ["--load-scrape-interval", "0.2"]
    assert profile.router_flags("round_robin") == []


def test_more_routers_run_only_the_chosen_strategies() -> None:
    cfg = StudyConfig(
        strategies=("round_robin", "ip_hash", "scored", "scored+score-queue-weight=2"),
        strategies_multi=("round_robin", "scored"),
    )
    assert cfg.strategies_for(1) == cfg.strategies
    assert cfg.strategies_for(2) == ("round_robin", "scored")  # a variant only when named


def run(
    workload: str,
    strategy: str,
    p95: list[float],
    *,
    routers: int = 1,
    capacity: list[float | None] | None = None,
) -> dict[str, Any]:
    """A result as the study pools one: its pooled p95 is the rounds' mean here."""
    measured = [c for c in capacity or [] if c is not None]
    return {
        "workload": workload,
        "strategy": strategy,
        "routers": routers,
        "ttft_p95_s": sum(p95) / len(p95),
        "ttft_p95_by_repeat_s": p95,
        "capacity_req_s": sum(measured) / len(measured) if measured else None,
        "capacity_by_repeat_req_s": capacity or [None] * len(p95),
    }


def test_targets_give_ratio_rounds_verdict_and_resolution() -> None:
    runs = [
        run("shared_prefix", "round_robin", [1.0, 1.0, 1.0], capacity=[10.0, 10.0, 10.0]),
        run("shared_prefix", "scored", [0.5, 0.55, 0.5], capacity=[14.0, 12.0, 14.0]),
        run("uniform", "round_robin", [1.0, 1.2, 1.0]),
        run("uniform", "least_connections", [0.9, 1.3, 1.0]),
        run("uniform", "scored", [0.9, 1.2, 1.1]),
        run("bursts", "round_robin", [1.0, 1.0]),
        run("bursts", "scored", [0.8, 0.5]),
        run("heterogeneous", "round_robin", [1.0, 1.0, 1.0]),
        run("heterogeneous", "least_connections", [0.8, 0.8, 0.8]),
        run("heterogeneous", "scored", [0.7, 0.7, 0.7]),
        run("shared_prefix", "scored", [0.5, 0.6, 0.5], routers=2),
        run("shared_prefix", "round_robin", [1.0, 1.0, 1.0], routers=2),
    ]
    rows = {(r["routers"], r["workload"], r["figure"], r["against"]): r for r in targets(runs)}

    p95 = rows[(1, "shared_prefix", "ttft_p95", "round_robin")]
    assert math.isclose(p95["measured"], 1.55 / 3)
    assert p95["by_round"] == [0.5, 0.55, 0.5]
    assert (p95["threshold"], p95["met"], p95["resolved"]) == ("≤ 0.60", True, True)
    assert p95["ci95"] is None  # no TTFTs given: no bootstrap

    capacity = rows[(1, "shared_prefix", "capacity", "round_robin")]
    assert math.isclose(capacity["measured"], 1.3333333, rel_tol=1e-6)
    assert capacity["threshold"] == "≥ 1.30"
    assert capacity["met"] is True
    assert capacity["resolved"] is False  # round 2 (1.2) disagrees

    uniform = rows[(1, "uniform", "ttft_p95", "min(round_robin, least_connections)")]
    # Pooled: 3.2/3 over min(3.2/3, 3.2/3); by round against the better of the round.
    assert math.isclose(uniform["measured"], 1.0)
    assert [round(r, 3) for r in uniform["by_round"]] == [1.0, 1.0, 1.1]
    assert (uniform["met"], uniform["resolved"]) == (True, False)

    bursts = rows[(1, "bursts", "ttft_p95", "round_robin")]
    assert (bursts["met"], bursts["resolved"]) == (True, False)  # 0.8 in one round

    hetero = rows[(1, "heterogeneous", "ttft_p95", "least_connections")]
    assert hetero["threshold"] == "-" and hetero["met"] is None
    assert hetero["resolved"] is True  # every round better than the baseline

    band = rows[(2, "shared_prefix", "ttft_p95", "itself, 1 router")]
    assert math.isclose(band["measured"], 1.6 / 1.55)
    assert [round(r, 3) for r in band["by_round"]] == [1.0, 1.091, 1.0]
    assert (band["threshold"], band["met"], band["resolved"]) == ("0.90–1.10", True, True)
    assert rows[(2, "shared_prefix", "ttft_p95", "round_robin")]["met"] is True
    # No 2-router uniform runs, no 2-router capacity: those rows are left out, not failed.
    assert (2, "uniform", "ttft_p95", "itself, 1 router") not in rows
    assert (2, "shared_prefix", "capacity", "round_robin") not in rows

    lc = {(r["workload"], r["against"]) for r in targets(runs, candidates=["least_connections"])}
    assert ("heterogeneous", "round_robin") in lc
    assert ("heterogeneous", "least_connections") not in lc  # never against itself
    assert ("uniform", "min(round_robin, least_connections)") not in lc

    table = targets_table(targets(runs))
    assert "| scored | 1 | shared_prefix | ttft_p95 | round_robin | 0.52 | 0.50–0.55 (3) " in table
    assert table.count("\n") == 2 + len(rows)


def test_bootstrap_interval_brackets_the_pooled_ratio_and_narrows_with_data() -> None:
    rng = random.Random(5)
    base = [[rng.uniform(0.5, 1.5) for _ in range(300)] for _ in range(3)]
    fast = [[v * 0.5 for v in values] for values in base]
    interval = bootstrap_ratio(fast, [base], random.Random(1))
    assert interval is not None
    low, high = interval
    assert low <= 0.5 <= high and high - low < 0.2
    small = bootstrap_ratio([v[:20] for v in fast], [[v[:40] for v in base]], random.Random(1))
    assert small is not None and small[1] - small[0] > high - low
    failed = [[math.inf] * 300] * 3  # a strategy that answered nothing
    assert bootstrap_ratio(failed, [base], random.Random(1)) is None


def test_targets_bootstrap_uses_the_ttfts_when_given() -> None:
    runs = [
        run("bursts", "round_robin", [1.0, 1.0]),
        run("bursts", "scored", [0.5, 0.5]),
    ]
    rng = random.Random(2)
    slow = [[rng.uniform(0.1, 1.0) for _ in range(200)] for _ in range(2)]
    ttfts = {
        (1, "bursts", "round_robin"): slow,
        (1, "bursts", "scored"): [[v / 2 for v in values] for values in slow],
    }
    (row,) = targets(runs, ttfts=ttfts)
    low, high = row["ci95"]
    assert low <= 0.5 <= high


async def test_the_heterogeneous_stack_has_a_fast_engine_behind_each_router(tmp_path: Path) -> None:
    """Real processes: engine 0 prefills the same prompt in about half the time."""
    cfg = StudyConfig(engines=2, engine=EngineProfile(time_scale=1.0))
    request = make_workload("heterogeneous", WorkloadShape(uniform_prompt_tokens=(2000, 2000)), 1)
    body = orjson.loads(request.next().body) | {"max_tokens": 1}
    async with Stack(
        profiles=cfg.profiles("heterogeneous"), strategy="round_robin", log_dir=tmp_path, routers=2
    ) as stack:
        assert len(stack.router_urls) == 2 and len(set(stack.router_urls)) == 2
        ttft: dict[str, float] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for url in stack.engine_urls + stack.router_urls:
                start = time.monotonic()
                async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.content.readline()  # the first chunk: the prefill is done
                    ttft[url] = time.monotonic() - start
                    await resp.read()
    fast, slow = (ttft[url] for url in stack.engine_urls)
    assert slow > 0.4  # 2,000 tokens at 4,000 tokens/s
    assert fast < 0.75 * slow  # twice as fast, with generous room for a busy machine
