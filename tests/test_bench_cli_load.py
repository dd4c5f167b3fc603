"""``llmsvc.bench.load.run_load`` as a library, against a real sim engine process."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from llmsvc.bench.load import LoadSpec, Unreachable, api_base, probe, run_load
from llmsvc.bench.stats import Sample, distribution, percentile
from procs import HOST, Spawn, free_port


def start_engine(spawn: Spawn, *args: str) -> str:
    port = free_port()
    proc = spawn("engine", "sim-engine", "--port", str(port), *args)
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health")
    return url


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    summary = distribution([0.4, 0.1, 0.3, 0.2])
    assert summary is not None
    assert (summary["min"], summary["p50"], summary["max"]) == (0.1, 0.25, 0.4)
    assert distribution([]) is None
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_spec_needs_requests_or_duration_and_builds_distinct_prompts() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LoadSpec(url="http://h", model="m")
    with pytest.raises(ValueError, match="exactly one"):
        LoadSpec(url="http://h", model="m", requests=1, duration=1.0)
    spec = LoadSpec(url="http://h:1/v1/", model="m", requests=2, seed=7)
    assert spec.target == "http://h:1/v1/chat/completions"
    assert spec.body(0) != spec.body(1)
    assert spec.body(1) == LoadSpec(url="http://h:1", model="m", requests=2, seed=7).body(1)
    assert api_base("http://h:1/v1") == api_base("http://h:1/") == "http://h:1"


async def test_run_load_reports_every_sample(spawn: Spawn) -> None:
    url = start_engine(spawn, "--time-scale", "0")
    seen: list[Sample] = []
    spec = LoadSpec(url=url, model="sim-model", requests=25, concurrency=5, max_tokens=3)
    results = await run_load(spec, on_sample=seen.append)
    assert len(seen) == len(results.samples) == 25
    assert all(s.ok and s.output_tokens == 3 for s in seen)
    assert results.summary()["requests"] == {"completed": 25, "ok": 25, "failed": 0}


async def test_stop_event_cuts_a_run_short(spawn: Spawn) -> None:
    url = start_engine(spawn, "--time-scale", "0.05")
    stop = asyncio.Event()
    spec = LoadSpec(url=url, model="sim-model", duration=60, concurrency=3, max_tokens=4)
    asyncio.get_running_loop().call_later(0.5, stop.set)
    results = await asyncio.wait_for(run_load(spec, stop=stop), timeout=10)
    assert results.interrupted
    assert 0.4 <= results.elapsed_s < 5  # the stop fires 0.5 s after scheduling, not after start
    assert results.samples and all(s.ok for s in results.samples)


async def test_probe_and_connection_errors() -> None:
    url = f"http://{HOST}:{free_port()}"

    async with aiohttp.ClientSession() as session:
        with pytest.raises(Unreachable, match="cannot reach"):
            await probe(session, url, 2.0)
    results = await run_load(LoadSpec(url=url, model="m", requests=3))
    assert results.errors() == {"connection": 3}
