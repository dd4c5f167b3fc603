"""Two real llama-servers behind real routers: SIGKILL under load, prefix-cache hits, bad flags.

Each test's fleet: a registry with a write token, two babysitters of ``--engine
llama.cpp`` (one thread each: the machine has 2 cores) and a router following the
registry (``round_robin`` for the SIGKILL, ``prefix_affinity`` for the cache hits).
The clients are the official ``openai`` package with ``max_retries=0``: a failure the
router does not absorb fails the test. Needs ``make real-engine``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import OpenAI

from metrics import matching, scrape, total, value
from procs import Spawn, start_registry, start_router, status, wait_state, wait_until
from realengine import MARKS, MODEL_NAME, SERVER_ARGS, spawn_llama_babysitter

pytestmark = list(MARKS)

TOKEN = "real-engine-fleet-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ONE_THREAD = (*SERVER_ARGS, "-t", "1")  # two servers on 2 cores
BACKEND_HEADER = "X-Llmsvc-Backend"
RETRIES = "llmsvc_router_retries_total"


@dataclass(frozen=True)
class Engine:
    name: str  # the registry record (the router's backend name)
    url: str
    api: str  # its babysitter's


@dataclass(frozen=True)
class Fleet:
    registry: str
    router: str
    engines: tuple[Engine, Engine]


def start_fleet(spawn: Spawn, binary: Path, gguf: Path, *, strategy: str) -> Fleet:
    """Two babysat llama-servers (one thread each) and a router with ``strategy``."""
    _, registry = start_registry(spawn, token=TOKEN)
    started = []
    for name in ("engine-a", "engine-b"):
        proc, port, api = spawn_llama_babysitter(
            spawn, binary, gguf, "--registry", registry, "--name", name,
            engine_args=ONE_THREAD, env={"LLMSVC_REGISTRY_TOKEN": TOKEN}, name=name,
        )  # fmt: skip
        started.append((proc, Engine(name, f"http://127.0.0.1:{port}", api)))
    for proc, engine in started:
        proc.wait_http(engine.api + "/health", timeout=60)
    _, router = start_router(spawn, registry, "--strategy", strategy, "--registry-token", TOKEN)
    _wait_both_eligible(router)
    return Fleet(registry, router, (started[0][1], started[1][1]))


def _client(router: str) -> OpenAI:
    return OpenAI(base_url=router + "/v1", api_key="unused", max_retries=0, timeout=60)


def _wait_both_eligible(router: str) -> None:
    def eligible() -> bool:
        views = httpx.get(router + "/services", timeout=5).json()["services"]
        return sum(1 for v in views if v["eligible"]) == 2

    wait_until(eligible, timeout=20, what="both engines eligible")


# --- SIGKILL of one engine under load ---------------------------------------------------------


class Load:
    """``clients`` threads sending short non-streaming chats through a router until stopped."""

    def __init__(self, router: str, *, clients: int) -> None:
        self._router = router
        self._stop = threading.Event()
        self.answered: Counter[str] = Counter()  # by backend
        self.failures: list[str] = []
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, i: int) -> None:
        client = _client(self._router)
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL_NAME,
                    messages=[{"role": "user", "content": f"Client {i}, question {n}: hi"}],
                    max_tokens=8,
                )
                raw.parse()
                self.answered[raw.headers[BACKEND_HEADER]] += 1
            except Exception as exc:  # every failure is the test's business
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def total(self) -> int:
        return sum(self.answered.values())


def test_sigkilled_engine_restarts_and_no_request_fails(
    real_engine_slot: None, spawn: Spawn, llama_server_bin: Path, smollm2_gguf: Path
) -> None:
    """Non-streaming requests in flight on the killed engine fail before any byte of their
    answer; the router retries them on the other engine, so every one succeeds. A stream
    already answered cannot be retried: it ends with the router's in-band error event."""
    fleet = start_fleet(spawn, llama_server_bin, smollm2_gguf, strategy="round_robin")
    # The labelled series appears with the model's first retry: none yet reads as 0 here
    # only; afterwards it must exist.
    retries_before = sum(s.value for s in matching(scrape(fleet.router), RETRIES))
    with Load(fleet.router, clients=4) as load:
        wait_until(lambda: len(load.answered) == 2, timeout=30, what="load on both engines")
        with _stream(fleet.router) as (backend, events):
            victim, other = sorted(fleet.engines, key=lambda e: e.name != backend)
            before = status(victim.api)
            next(events)  # its first chunk has reached the client
            killed_at = load.total()
            _kill(before["pid"])
            rest = list(events)
        after = wait_state(victim.api, "ready", timeout=30)
        wait_until(lambda: load.total() >= killed_at + 4, timeout=30, what="load goes on")
    assert load.failures == []
    assert load.answered[other.name] > 0
    retried = total(scrape(fleet.router), RETRIES) - retries_before
    assert retried >= 1  # the requests the kill cut were retried, not lost
    assert "[DONE]" not in rest, rest  # the stream: cut, and told so in band
    assert json.loads(rest[-1])["error"]["code"] == "upstream_stream", rest
    assert after["pid"] != before["pid"]
    assert after["restarts"] == before["restarts"] + 1
    last_exit = after["last_exit"]
    assert (last_exit["signal"], last_exit["code"]) == (signal.SIGKILL, None)
    assert last_exit["reason"] == "Signaled"
    assert last_exit["detail"] == "killed by SIGKILL"


@contextlib.contextmanager
def _stream(router: str) -> Iterator[tuple[str, Iterator[str]]]:
    """A long streamed chat through the router: (the backend serving it, its data events)."""
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 400,
        "ignore_eos": True,  # llama.cpp's: it cannot end before the kill
        "stream": True,
    }
    with httpx.stream("POST", router + "/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        events = (
            line.removeprefix("data: ") for line in resp.iter_lines() if line.startswith("data: ")
        )
        yield resp.headers[BACKEND_HEADER], events


def _processing(engine_url: str) -> float:
    return value(scrape(engine_url), "llamacpp:requests_processing")


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


# --- prefix_affinity gives real prefix-cache hits --------------------------------------------

SYSTEM = (
    "You are the support assistant of a company that sells garden tools. "
    "Answer in one short sentence. Be polite, never promise refunds, and always "
    "mention that the warranty lasts two years. Our shop opens at nine in the morning "
    "and closes at six in the evening, Monday to Saturday. Shipping takes three to five "
    "working days inside the country and two weeks abroad. We sell spades, rakes, hoes, "
    "shears, hoses, gloves and wheelbarrows, and we repair lawn mowers of every brand. "
)


def _cached(engine: Engine) -> float:
    return value(scrape(engine.url), "llamacpp:prompt_tokens_cached_total")


def test_prefix_affinity_gives_real_prefix_cache_hits(
    real_engine_slot: None, spawn: Spawn, llama_server_bin: Path, smollm2_gguf: Path
) -> None:
    fleet = start_fleet(spawn, llama_server_bin, smollm2_gguf, strategy="prefix_affinity")
    cached_before = {e.name: _cached(e) for e in fleet.engines}
    client = _client(fleet.router)
    backends, hits, prompt_tokens = [], [], []
    for question in ("Do you sell rakes?", "When do you open?", "How long is shipping?"):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL_NAME,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            max_tokens=4,
        )
        answer = raw.parse()
        backends.append(raw.headers[BACKEND_HEADER])
        assert answer.usage is not None
        prompt_tokens.append(answer.usage.prompt_tokens)
        details = answer.usage.prompt_tokens_details
        hits.append(details.cached_tokens if details and details.cached_tokens else 0)
    assert len(set(backends)) == 1, backends  # one engine got every repeat of the prefix
    chosen = backends[0]
    shared = min(prompt_tokens) // 2  # the system prompt is most of every prompt
    assert all(hit >= shared for hit in hits[1:]), (hits, prompt_tokens)
    cached_after = {e.name: _cached(e) for e in fleet.engines}
    rise = {name: cached_after[name] - cached_before[name] for name in cached_after}
    assert rise[chosen] >= sum(hits[1:]), rise  # the engine's own counter agrees
    assert all(r == 0 for name, r in rise.items() if name != chosen), rise


# --- a bad engine argument --------------------------------------------------------------------


def test_bad_engine_argument_is_bad_arguments_with_llama_cpps_message(
    real_engine_slot: None, spawn: Spawn, llama_server_bin: Path, smollm2_gguf: Path
) -> None:
    _, _, api = spawn_llama_babysitter(
        spawn, llama_server_bin, smollm2_gguf, engine_args=(*SERVER_ARGS, "--no-such-flag")
    )
    st = wait_state(api, "failed", timeout=30)
    assert st["last_exit"]["reason"] == "BadArguments"
    assert st["last_exit"]["detail"] == "error: invalid argument: --no-such-flag"  # llama.cpp's
    assert st["restarts"] == 0
    time.sleep(0.5)
    assert status(api)["state"] == "failed"  # a restart cannot help: none is tried
