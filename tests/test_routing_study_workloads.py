"""The study's workloads and statistics: arrivals, sessions, token counts, percentiles."""

from __future__ import annotations

import itertools
import math
import random
import sys
from pathlib import Path

import httpx
import orjson

from procs import HOST, Spawn, free_port

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.routing.config import WorkloadShape  # noqa: E402
from benchmarks.routing.driver import Sample  # noqa: E402
from benchmarks.routing.report import percentile, summarize  # noqa: E402
from benchmarks.routing.workloads import (  # noqa: E402
    SharedPrefix,
    arrival_times,
    make_workload,
)


def test_poisson_arrivals_have_the_asked_rate() -> None:
    times = arrival_times(200.0, 20.0, rng=random.Random(1))
    assert times == sorted(times)
    assert times[0] >= 0
    assert times[-1] < 20.0
    assert 3800 < len(times) < 4200  # 4000 expected, sd 63


def test_bursts_arrive_together_at_the_same_mean_rate() -> None:
    times = arrival_times(100.0, 30.0, rng=random.Random(2), burst=10, spread=0.05)
    assert 2500 < len(times) < 3500
    assert len(times) % 10 == 0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sum(1 for g in gaps if g < 0.05) > 0.8 * len(gaps)


def test_sessions_grow_turn_by_turn_and_end() -> None:
    shape = WorkloadShape(live_sessions=2, session_turns=(2, 2), system_prompts=2)
    workload = SharedPrefix(shape, random.Random(3))
    bodies: dict[str, list[dict[str, object]]] = {}
    for _ in range(8):
        request = workload.next()
        assert request.session is not None
        payload = orjson.loads(request.body)
        assert request.headers["X-Session-Id"] == payload["user"] == request.session.id
        earlier = bodies.get(request.session.id)
        if earlier is not None:  # the previous turn and its reply, then a new question
            assert payload["messages"][: len(earlier)] == earlier
            assert payload["messages"][-1]["role"] == "user"
        workload.done(request, "reply")
        bodies[request.session.id] = payload["messages"] + [
            {"role": "assistant", "content": "reply"}
        ]
        assert payload["messages"][0]["role"] == "system"
    lengths = sorted(len(messages) for messages in bodies.values())
    assert set(lengths) <= {3, 5}  # system + 1 or 2 turns: never a third
    assert lengths.count(5) >= 3  # sessions end after their turns and new ones open
    assert len({m[0]["content"] for m in bodies.values()}) <= 2  # few system prompts, shared


def test_token_counts_match_the_simulated_engine(spawn: Spawn) -> None:
    port = free_port()
    engine = spawn("engine", "sim-engine", "--port", str(port), "--time-scale", "0")
    engine.wait_http(f"http://{HOST}:{port}/health")
    for name in ("uniform", "shared_prefix", "bursts", "heterogeneous"):
        request = make_workload(name, WorkloadShape(), seed=4).next()
        payload = {**orjson.loads(request.body), "stream": False}
        resp = httpx.post(f"http://{HOST}:{port}/v1/chat/completions", json=payload, timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["prompt_tokens"] == request.prompt_tokens


def test_failed_and_unfinished_requests_count_as_infinite_ttft() -> None:
    samples = [Sample(sent=1.0, prompt_tokens=1, status=200, ttft=0.1, latency=0.2)] * 18
    samples += [Sample(sent=1.0, prompt_tokens=1, status=502)]
    samples += [Sample(sent=1.0, prompt_tokens=1, status=-1)]
    samples += [Sample(sent=0.1, prompt_tokens=1, status=200, ttft=9.0, latency=9.0)]  # warm-up
    summary = summarize(samples, start=0.5, end=2.5)
    assert summary["requests"] == 20
    assert summary["errors"] == 1
    assert summary["unfinished"] == 1
    assert summary["ttft_p50_s"] == 0.1
    assert summary["ttft_p95_s"] is None  # the 19th of 20 is a failure
    assert summary["throughput_req_s"] == 9.0
    assert percentile([3.0, 1.0, 2.0, math.inf], 0.5) == 2.0
