"""The real llama-server's slots become the router's: ``-np 2`` behind a babysitter is
``max_concurrency: 2`` in its record, and a router in front sends it at most two requests
at once (the rest wait in the router's queue, not in llama.cpp's), all answered.

Without ``-np`` the babysitter reads the server's own count (``GET /props``,
``total_slots``). Needs ``make real-engine``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from metrics import scrape, value
from procs import Spawn, records, start_registry, start_router, wait_until
from realengine import MARKS, SERVER_ARGS, spawn_llama_babysitter

pytestmark = list(MARKS)

ONE_THREAD = (*SERVER_ARGS, "-t", "1")  # two servers on 2 cores
NO_NP = ("-c", "2048", "--metrics", "-t", "1")  # the server's own slot count


def _record(registry: str, name: str) -> dict[str, Any] | None:
    return records(registry).get(name)


def test_np_2_means_two_requests_at_once_through_the_router(
    real_engine_slot: None, spawn: Spawn, llama_server_bin: Path, smollm2_gguf: Path
) -> None:
    _, registry = start_registry(spawn)
    sitters = {}
    for name, args in (("two", ONE_THREAD), ("auto", NO_NP)):
        proc, port, _ = spawn_llama_babysitter(
            spawn, llama_server_bin, smollm2_gguf, "--registry", registry, "--name", name,
            "--model-name", f"smol-{name}", engine_args=args, name=name,
        )  # fmt: skip
        sitters[name] = (proc, f"http://127.0.0.1:{port}")
    two = wait_until(lambda: _record(registry, "two"), timeout=90, what="the -np 2 engine")
    assert two["metadata"]["max_concurrency"] == 2
    auto = wait_until(lambda: _record(registry, "auto"), timeout=90, what="the other engine")
    props = httpx.get(sitters["auto"][1] + "/props", timeout=10).json()
    assert auto["metadata"]["max_concurrency"] == props["total_slots"] >= 1

    _, router = start_router(spawn, registry)
    engine = sitters["two"][1]
    client = OpenAI(base_url=router + "/v1", api_key="unused", max_retries=0, timeout=120)
    wait_until(
        lambda: any(m.id == "smol-two" for m in client.models.list().data), timeout=20,
        what="the router serves smol-two",
    )  # fmt: skip
    texts: list[str] = []
    errors: list[Exception] = []

    def ask(i: int) -> None:
        try:
            stream = client.chat.completions.create(
                model="smol-two",
                messages=[{"role": "user", "content": f"Count from {i} to {i + 20}."}],
                max_tokens=24,
                stream=True,
            )
            texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    clients = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    peaks = {"processing": 0.0, "deferred": 0.0}
    for c in clients:
        c.start()
    while any(c.is_alive() for c in clients):  # llama-server's own view, all along
        scraped = scrape(engine, timeout=10)
        for key in peaks:
            peaks[key] = max(peaks[key], value(scraped, f"llamacpp:requests_{key}"))
    for c in clients:
        c.join()
    assert not errors, errors
    assert len(texts) == 4 and all(texts)
    # Both slots were used, and no request ever waited inside llama-server: the router held
    # the other two until a slot was free.
    assert peaks == {"processing": 2.0, "deferred": 0.0}
