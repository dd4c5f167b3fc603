"""Client traffic for end-to-end fault tests: chat requests through a router, every outcome.

:func:`load` sends chat requests (every fourth streamed) a few at a time, on ``llmsvc
bench``'s load loop (:func:`llmsvc.bench.schedule.drive`), and records how each ended:
``200``, :data:`CUT` for a stream that a dead engine cut with an in-band error event, or
the status and body (or the exception) of a failure.
"""

from __future__ import annotations

import httpx

from llmsvc.bench.schedule import Schedule, drive

MODEL = "sim-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}

CUT = "stream cut with an in-band error event"


def _cut_with_error_event(text: str) -> bool:
    """A stream in flight on a dead engine ends with `data: {"error": ...}` and no [DONE]."""
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return bool(events) and events[-1].startswith('{"error"') and "[DONE]" not in events


async def load(
    router: str,
    *,
    requests: int,
    concurrency: int,
    stream_every: int = 4,
    during: float = 0.0,
    results: list[int | str] | None = None,
) -> list[int | str]:
    """Send ``requests`` chat requests, ``concurrency`` at a time; every status (or error).

    Outcomes are appended to ``results`` (a new list if None) as they come, so that another
    thread can wait for the first of them; the list is returned.
    """
    results = [] if results is None else results
    async with httpx.AsyncClient(base_url=router, timeout=30) as client:

        async def send(n: int) -> int | str:
            return await _one(client, stream=bool(stream_every) and n % stream_every == 0)

        schedule = Schedule(concurrency=concurrency, requests=requests, pause=during)
        await drive(schedule, send, on_result=results.append)
    return results


async def _one(client: httpx.AsyncClient, *, stream: bool) -> int | str:
    try:
        async with client.stream(
            "POST", "/v1/chat/completions", json={**BODY, "stream": stream}
        ) as resp:
            text = (await resp.aread()).decode()
    except httpx.HTTPError as exc:
        return repr(exc)
    ok = resp.status_code == 200 and (not stream or "[DONE]" in text)
    if ok and '"error"' not in text:
        return 200
    if stream and resp.status_code == 200 and _cut_with_error_event(text):
        return CUT
    return f"{resp.status_code}: {text[:200]}"
