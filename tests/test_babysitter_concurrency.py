"""``max_concurrency``: the engine's own limit on requests at once, advertised in its record.

Pure parsers per engine (:mod:`llmsvc.babysitter.concurrency`), llama.cpp's ``/props``
against a real socket, and real babysitters (sim engine, stand-in llama-server) with a
real registry.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from llmsvc.babysitter import concurrency
from llmsvc.babysitter.concurrency import (
    SIM_DEFAULT_MAX_NUM_SEQS,
    max_concurrency,
    slots_from_props,
    total_slots,
)
from llmsvc.babysitter.engines import build_engine
from llmsvc.babysitter.settings import BabysitterSettings
from llmsvc.simengine.settings import SimEngineSettings
from procs import Spawn, records, spawn_babysitter, standin_env, start_registry, wait_until

NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize(
    ("engine", "argv", "expected"),
    [
        ("vllm", ["serve", "m", "--max-num-seqs", "8"], 8),
        ("vllm", ["serve", "m", "--max-num-seqs=12"], 12),
        ("vllm", ["--max-num-seqs", "8", "--max-num-seqs", "4"], 4),  # the last wins
        ("vllm", ["serve", "m"], None),  # its default depends on version and GPU
        ("vllm", ["--max-num-seqs", "0"], None),
        ("vllm", ["--max-num-seqs", "many"], None),
        ("vllm", ["--max-num-seqs"], None),  # no value: the engine will refuse it
        ("sglang", ["--max-running-requests", "64"], 64),
        ("sglang", ["--max-running-requests=16"], 16),
        ("sglang", ["--max-num-seqs", "8"], None),  # not SGLang's flag
        ("llama.cpp", ["-np", "2"], 2),
        ("llama.cpp", ["--parallel", "6"], 6),
        ("llama.cpp", ["--parallel=3"], 3),
        ("llama.cpp", ["-np", "-1"], None),  # auto: /props tells
        ("llama.cpp", ["-m", "x.gguf"], None),
        ("sim", ["--max-num-seqs", "3"], 3),
        ("sim", [], SIM_DEFAULT_MAX_NUM_SEQS),
        ("sim", ["--profile", "llama.cpp-smollm2-cpu"], 2),  # the shipped profile's
        ("sim", ["--profile", "llama.cpp-smollm2-cpu", "--max-num-seqs", "5"], 5),
        ("sim", ["--profile", "no-such-profile"], None),
        ("infinilm", ["--max-batch", "8"], None),  # no flag known to say it
        ("infinilm-rust", ["service", "x.toml"], None),
        ("command", ["my-server", "--max-num-seqs", "8"], None),  # we do not know its flags
    ],
)
def test_parsers(engine: str, argv: list[str], expected: int | None) -> None:
    assert max_concurrency(engine, argv, NO_ENV) == expected


def test_environment_variables_count_below_flags() -> None:
    assert max_concurrency("llama.cpp", [], {"LLAMA_ARG_N_PARALLEL": "4"}) == 4
    assert max_concurrency("llama.cpp", ["-np", "2"], {"LLAMA_ARG_N_PARALLEL": "4"}) == 2
    assert max_concurrency("sim", [], {"LLMSVC_MAX_NUM_SEQS": "7"}) == 7
    assert max_concurrency("sim", ["--max-num-seqs", "3"], {"LLMSVC_MAX_NUM_SEQS": "7"}) == 3
    assert max_concurrency("sim", [], {"LLMSVC_PROFILE": "llama.cpp-smollm2-cpu"}) == 2


def test_sim_profile_file(tmp_path: Path) -> None:
    with_slots = tmp_path / "mine.json"
    with_slots.write_text(json.dumps({"settings": {"max_num_seqs": 9}}))
    without = tmp_path / "other.json"
    without.write_text(json.dumps({"settings": {"decode_tokens_per_s": 10.0}}))
    assert max_concurrency("sim", ["--profile", str(with_slots)], NO_ENV) == 9
    assert max_concurrency("sim", ["--profile", str(without)], NO_ENV) == SIM_DEFAULT_MAX_NUM_SEQS
    assert max_concurrency("sim", ["--profile", str(tmp_path / "gone.json")], NO_ENV) is None


def test_sim_default_is_the_engines() -> None:
    """The babysitter may not import the sim engine; this keeps its copy of the default true."""
    assert SimEngineSettings.model_fields["max_num_seqs"].default == SIM_DEFAULT_MAX_NUM_SEQS


def _settings(engine: str, **extra: Any) -> BabysitterSettings:
    return BabysitterSettings(engine=engine, model="/models/m.gguf", **extra)


def test_build_engine_reads_the_whole_command_line() -> None:
    spec = build_engine(_settings("sim"), ["--max-num-seqs", "4"], environ={})
    assert (spec.max_concurrency, spec.asks_props) == (4, False)
    spec = build_engine(_settings("llama.cpp"), [], environ={})
    assert (spec.max_concurrency, spec.asks_props) == (None, True)
    spec = build_engine(_settings("llama.cpp"), [], environ={"LLAMA_ARG_N_PARALLEL": "3"})
    assert (spec.max_concurrency, spec.asks_props) == (3, False)
    spec = build_engine(_settings("vllm"), [], environ={})
    assert (spec.max_concurrency, spec.asks_props) == (None, False)


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        ({"total_slots": 4, "default_generation_settings": {}}, 4),
        ({"total_slots": 0}, None),
        ({"total_slots": True}, None),
        ({"total_slots": "4"}, None),
        ({}, None),
        ([4], None),
    ],
)
def test_total_slots(props: Any, expected: int | None) -> None:
    assert total_slots(props) == expected


@pytest.fixture
async def props_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A llama.cpp-like ``/props`` on a real socket; the test sets what it answers."""
    answer: dict[str, Any] = {"status": 200, "body": b'{"total_slots": 3}'}

    async def props(_: web.Request) -> web.Response:
        return web.Response(status=answer["status"], body=answer["body"])

    app = web.Application()
    app.router.add_get("/props", props)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", answer
    await runner.cleanup()


async def test_slots_from_props(props_server: tuple[str, dict[str, Any]]) -> None:
    url, answer = props_server
    async with aiohttp.ClientSession() as session:
        assert await slots_from_props(session, url, timeout=5) == 3
        answer["body"] = b"not json"
        assert await slots_from_props(session, url, timeout=5) is None
        answer.update(status=404, body=b'{"total_slots": 3}')
        assert await slots_from_props(session, url, timeout=5) is None
        assert await slots_from_props(session, "http://127.0.0.1:9", timeout=5) is None


def _engine_metadata(registry: str, name: str) -> dict[str, Any] | None:
    record = records(registry).get(name)
    return record["metadata"] if record else None


@pytest.mark.parametrize(
    ("engine_args", "expected"),
    [(["--max-num-seqs", "3"], 3), ([], concurrency.SIM_DEFAULT_MAX_NUM_SEQS)],
    ids=["flag", "default"],
)
def test_sim_engine_record_advertises_slots(
    spawn: Spawn, engine_args: list[str], expected: int
) -> None:
    _, registry = start_registry(spawn)
    _, port, _ = spawn_babysitter(
        spawn, "--engine", "sim", "--model", "m", "--registry", registry,
        "--", "--time-scale", "0", *engine_args,
    )  # fmt: skip
    meta = wait_until(
        lambda: _engine_metadata(registry, f"m@127.0.0.1:{port}"), timeout=20, what="engine"
    )
    assert meta["max_concurrency"] == expected


def test_unknown_limit_is_absent(spawn: Spawn, tmp_path: Path) -> None:
    """A stand-in llama-server (the sim engine behind llama.cpp's flags) has no ``/props``:
    with no ``-np`` the babysitter cannot know, and says nothing (the router's
    ``--backend-concurrency`` applies); with ``-np 4`` it advertises 4."""
    _, registry = start_registry(spawn)
    env = standin_env(tmp_path / "argv.jsonl")
    _, bare, _ = spawn_babysitter(
        spawn, "--engine", "llama.cpp", "--model", "/m/a.gguf", "--registry", registry,
        env=env, name="bare",
    )  # fmt: skip
    _, flagged, _ = spawn_babysitter(
        spawn, "--engine", "llama.cpp", "--model", "/m/b.gguf", "--registry", registry,
        "--", "-np", "4", env=env, name="flagged",
    )  # fmt: skip
    meta = wait_until(lambda: _engine_metadata(registry, f"a@127.0.0.1:{bare}"), timeout=20)
    assert "max_concurrency" not in meta
    meta = wait_until(lambda: _engine_metadata(registry, f"b@127.0.0.1:{flagged}"), timeout=20)
    assert meta["max_concurrency"] == 4
