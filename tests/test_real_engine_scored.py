"""``--strategy scored`` over two real llama-servers: it reads their metrics (and their
capacity from ``/props``) and sends the requests that share a system prompt to the server
that already holds it, so that llama.cpp's own counters show prefix-cache hits there.

Why the assertions are honest: llama.cpp caches prompts by itself (``cache_prompt`` is on
by default, and its slots keep their last prompt), so prefix-cache hits alone would
appear under any strategy that sends a server the same system prompt twice. What a
prefix-blind router cannot avoid is prefilling the shared prompt on *both* servers:
round robin (and least connections, which takes ties in turn on an idle pool) alternates,
so each server pays the full prompt once. The test asserts that exactly one server ever
prefilled it (``llamacpp:prompt_tokens_total``, which excludes cached tokens), that the
other requests were answered from that server's cache
(``llamacpp:prompt_tokens_cached_total`` and the answers' ``cached_tokens``), and that the
router's own count sent them there. Requests go one at a time, each once the router has
scraped both servers idle: the prefix is then the only thing that tells them apart.
Needs ``make real-engine``.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson

from metrics import matching, scrape, value
from procs import HOST, Spawn, free_port, start_router, wait_until
from realengine import MARKS, SERVER_ARGS

pytestmark = list(MARKS)

STRATEGY = "scored"
ONE_THREAD = (*SERVER_ARGS, "-t", "1")  # two servers on 2 cores
ENGINES = ("e0", "e1")
MODEL = "smol"
QUESTIONS = (
    "What is the capital of France?",
    "Name one colour of the rainbow.",
    "How many legs does a spider have?",
    "What do bees make?",
    "Which planet is closest to the Sun?",
    "What is two plus three?",
)
SYSTEM = "You are the help desk of the Example Lighthouse Museum. " + " ".join(
    f"Rule {i}: greet visitor group {i} by name, answer in one short sentence, and never "
    f"mention the closed tower room number {i}."
    for i in range(12)
)  # about 300 tokens: the shared prefix
PREFILLED = 0.8  # an engine prefilled the prefix: its uncached prompt tokens >= this x a prompt


def start_llama_server(spawn: Spawn, binary: Path, gguf: Path, name: str) -> int:
    port = free_port()
    args = [str(binary), "-m", str(gguf), "--host", HOST, "--port", str(port), *ONE_THREAD]
    server = spawn(name, *args, raw=True)
    server.wait_http(f"http://{HOST}:{port}/health", timeout=60)
    return port


def services(router: str) -> dict[str, dict[str, Any]]:
    views = httpx.get(router + "/services", timeout=10).json()["services"]
    return {view["name"]: view for view in views}


def idle_and_fresh(router: str, since: float) -> bool:
    """Both engines scraped after ``since`` (monotonic), with nothing running or waiting."""
    loads = [view["load"] for view in services(router).values()]
    return len(loads) == len(ENGINES) and all(
        load is not None
        and time.monotonic() - load["age_s"] > since
        and load["running"] == load["waiting"] == 0
        for load in loads
    )


def test_scored_sends_a_shared_prefix_to_the_llama_server_that_caches_it(
    real_engine_slot: None,
    spawn: Spawn,
    llama_server_bin: Path,
    smollm2_gguf: Path,
    tmp_path: Path,
) -> None:
    ports = {
        name: start_llama_server(spawn, llama_server_bin, smollm2_gguf, name) for name in ENGINES
    }
    records = [
        {"name": name, "host": HOST, "port": port, "metadata": {"models": [MODEL]}}
        for name, port in ports.items()
    ]
    static = tmp_path / "services.json"
    static.write_bytes(orjson.dumps(records))
    _, router = start_router(
        spawn, None, "--static-services", str(static), "--strategy", STRATEGY,
        "--load-scrape-interval", "0.2",
    )  # fmt: skip

    # (a) The router reads each server's own metrics, and its capacity from /props:
    # -c 2048 over -np 2 slots.
    wait_until(lambda: idle_and_fresh(router, 0.0), timeout=20, what="both engines scraped")
    for name, view in services(router).items():
        load = view["load"]
        assert load["missing"] == [], (name, load)  # waiting, running, KV use (busy slots)
        assert load["cache_tokens"] == 2048, (name, load)
        index = view["prefix_index"]  # the router's index of what it sent there is that big
        assert index["capacity_blocks"] * index["block_tokens"] == 2048, (name, index)

    usages: list[dict[str, Any]] = []
    with httpx.Client(base_url=router, timeout=120) as client:
        for question in QUESTIONS:
            since = time.monotonic()
            wait_until(partial(idle_and_fresh, router, since), timeout=20, what="an idle pool")
            body = {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": question},
                ],
                "max_tokens": 4,
            }
            answer = client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            usages.append(answer.json()["usage"])

    # (b) llama.cpp's own counters: the prefix was prefilled on one server only, and the
    # other requests were answered from its cache.
    prompt = usages[0]["prompt_tokens"]
    engines = {name: scrape(f"http://{HOST}:{port}", timeout=10) for name, port in ports.items()}
    uncached = {name: value(m, "llamacpp:prompt_tokens_total") for name, m in engines.items()}
    cached = {name: value(m, "llamacpp:prompt_tokens_cached_total") for name, m in engines.items()}
    prefilled = [name for name, tokens in uncached.items() if tokens >= PREFILLED * prompt]
    assert len(prefilled) == 1, (uncached, prompt)  # a prefix-blind router: both
    [owner] = prefilled
    hits = len(QUESTIONS) - 1
    assert cached[owner] >= hits * PREFILLED * prompt, (cached, prompt)
    from_cache = [u["prompt_tokens_details"]["cached_tokens"] for u in usages[1:]]
    assert all(tokens >= PREFILLED * prompt for tokens in from_cache), (from_cache, prompt)

    # ... and the router's own count sent them to that server.
    sent = scrape(router, timeout=10)
    per_engine = {
        name: sum(s.value for s in matching(sent, "llmsvc_router_requests_total", backend=name))
        for name in ENGINES
    }
    assert per_engine[owner] == len(QUESTIONS), per_engine
