"""Engines' prefix-cache capacity (``EngineLoad.cache_tokens``), read from each engine's own
report: vLLM's ``vllm:cache_config_info`` labels, SGLang's ``sglang:max_total_num_tokens``,
the simulated engine's copy of vLLM's gauge; llama.cpp's comes from ``/props`` (see
``test_router_loadscore_llamacpp.py``). The scored strategy sizes its per-backend prompt
index with it, so a misread here silently changes where prompts go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry, generate_latest

from llmsvc.router.loadscore import parse_cache_tokens, parse_load
from llmsvc.simengine.engine import Engine
from llmsvc.simengine.settings import SimEngineSettings
from procs import HOST, Spawn, start_router, start_sim_engine, wait_until

DATA = Path(__file__).parent / "data"
VLLM = (DATA / "vllm-cache-config-metrics.txt").read_bytes()
LLAMACPP = (DATA / "llamacpp-11434-metrics.txt").read_bytes()
SGLANG = b"""# HELP sglang:max_total_num_tokens Maximum total number of tokens in the KV cache pool.
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{model_name="m",engine_type="unified"} 471258.0
sglang:num_running_reqs{model_name="m",engine_type="unified"} 4.0
sglang:num_queue_reqs{model_name="m",engine_type="unified"} 1.0
sglang:token_usage{model_name="m",engine_type="unified"} 0.5
"""


def info(*engines: dict[str, str], **labels: str) -> bytes:
    """A ``/metrics`` text with one ``vllm:cache_config_info`` sample per label set, together
    as the exposition format keeps a family's samples."""
    lines = [b"vllm:num_requests_running 0.0"]
    for each in engines or (labels,):
        body = ",".join(f'{k}="{v}"' for k, v in each.items())
        lines.append(b"vllm:cache_config_info{" + body.encode() + b"} 1.0")
    return b"\n".join([*lines, b"vllm:num_requests_waiting 0.0\n"])


def test_vllm_capacity_is_block_size_times_gpu_blocks() -> None:
    assert parse_cache_tokens(VLLM) == 16 * 573  # not num_gpu_blocks_override, not cpu blocks
    load = parse_load(VLLM, at=1.0, in_flight=0)
    assert load is not None and load.cache_tokens == 16 * 573
    assert load.view(1.0)["cache_tokens"] == 16 * 573


def test_vllm_data_parallel_engines_add_up_and_unknown_blocks_are_unknown() -> None:
    two = info(
        {"block_size": "16", "num_gpu_blocks": "100", "engine": "0"},
        {"engine": "1", "num_gpu_blocks": "50", "block_size": "32"},
    )
    assert parse_cache_tokens(two) == 16 * 100 + 32 * 50
    assert parse_cache_tokens(info(block_size="16", num_gpu_blocks="None")) is None
    assert parse_cache_tokens(info(block_size="16")) is None
    # A comment naming the gauge is not a sample.
    assert (
        parse_cache_tokens(b'# vllm:cache_config_info{block_size="16",num_gpu_blocks="9"}\n')
        is None
    )


def test_vllm_without_prefix_caching_has_a_cache_of_nothing() -> None:
    off = info(block_size="16", enable_prefix_caching="False", num_gpu_blocks="573")
    assert parse_cache_tokens(off) == 0
    load = parse_load(off, at=1.0, in_flight=0, cache_tokens=999)
    assert load is not None and load.cache_tokens == 0  # the engine's own word wins


def test_sglang_capacity_is_its_max_total_num_tokens() -> None:
    assert parse_cache_tokens(SGLANG) == 471258
    load = parse_load(SGLANG, at=1.0, in_flight=0)
    assert load is not None and load.cache_tokens == 471258


def test_llamacpp_reports_none_in_metrics_and_takes_the_props_figure() -> None:
    assert parse_cache_tokens(LLAMACPP) is None
    assert parse_load(LLAMACPP, at=1.0, in_flight=0).cache_tokens is None  # type: ignore[union-attr]
    load = parse_load(LLAMACPP, at=1.0, in_flight=0, slots=2, cache_tokens=2048)
    assert load is not None and load.cache_tokens == 2048


def sim_metrics(**settings: object) -> bytes:
    registry = CollectorRegistry()
    Engine(SimEngineSettings(model_name=["m"], **settings), registry=registry)  # type: ignore[arg-type]
    return generate_latest(registry)


def test_the_simulated_engine_exports_its_prefix_cache_as_vllm_does() -> None:
    text = sim_metrics(prefix_cache_tokens=12300, block_size=16)
    assert b'vllm:cache_config_info{block_size="16",' in text
    assert parse_cache_tokens(text) == 12288  # whole blocks: 768 × 16
    assert parse_cache_tokens(sim_metrics(prefix_cache_tokens=4096, block_size=32)) == 4096
    assert parse_cache_tokens(sim_metrics(prefix_cache_tokens=0)) == 0


def test_a_router_reads_each_simulated_engine_s_capacity_over_http(
    spawn: Spawn, tmp_path: Path
) -> None:
    """Real processes: what ``GET /services`` says is each engine's own ``--prefix-cache-tokens``
    (in whole blocks of its ``--block-size``), and the scored strategy's index is that big."""
    flags = {
        "big": ("--prefix-cache-tokens", "4096"),
        "odd": ("--prefix-cache-tokens", "1000", "--block-size", "32"),  # 31 blocks of 32
        "none": ("--prefix-cache-tokens", "0"),
    }
    ports = {name: start_sim_engine(spawn, name, *extra)[1] for name, extra in flags.items()}
    records = [
        {"name": name, "host": HOST, "port": port, "metadata": {"models": ["m"]}}
        for name, port in ports.items()
    ]
    static = tmp_path / "services.json"
    static.write_bytes(orjson.dumps(records))
    _, router = start_router(
        spawn, None, "--static-services", str(static), "--strategy", "scored",
        "--load-scrape-interval", "0.2",
    )  # fmt: skip

    def views() -> dict[str, dict[str, Any]] | None:
        found = httpx.get(router + "/services", timeout=10).json()["services"]
        loaded = {view["name"]: view for view in found if view["load"] is not None}
        return loaded if len(loaded) == len(flags) else None

    scraped = wait_until(views, timeout=20, what="every engine scraped")
    capacity = {name: view["load"]["cache_tokens"] for name, view in scraped.items()}
    assert capacity == {"big": 4096, "odd": 992, "none": 0}
    index = {name: view["prefix_index"] for name, view in scraped.items()}
    assert {name: i["capacity_blocks"] * i["block_tokens"] for name, i in index.items()} == {
        "big": 4096,
        "odd": 992,  # the router's blocks are 16 tokens: 62 of them
        "none": 0,
    }
