"""The tokens an answer used, read from its ``usage``: what a tenant's ``tpm`` is charged.

A JSON answer carries ``usage`` in its body (:func:`usage_of_body`). A stream
carries it in its last data event when the client asked for it
(``stream_options.include_usage``), or in every event (vLLM's continuous usage,
cumulative): :class:`StreamUsage` keeps only a bounded tail of the stream as it
passes and parses it once, when asked, so the cost per chunk is a copy of at
most :data:`TAIL_BYTES`. No ``usage`` (an engine that sends none, a stream cut
short) is ``None``: the caller keeps its admission estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

TAIL_BYTES = 16 * 1024
"""How much of a stream's end is kept: a usage event is a few hundred bytes, so even a
final content chunk of several KiB before it leaves the usage event whole."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer: the prompt's and the generated ones."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        """What a ``tpm`` limit counts: prompt and completion together."""
        return self.prompt_tokens + self.completion_tokens


def _count(value: Any) -> int | None:
    """A token count: a non-negative int (bools are not counts)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def usage_of(payload: Any) -> Usage | None:
    """The ``usage`` object of a parsed answer or chunk; None when absent or malformed.

    Embeddings have no ``completion_tokens`` (0 then); ``prompt_tokens`` is required.
    The Responses API names them ``input_tokens`` and ``output_tokens``, and its
    stream carries them in the ``response`` of its ``response.completed`` event.
    """
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if usage is None and isinstance(payload.get("response"), dict):
        usage = payload["response"].get("usage")  # a Responses stream's last event
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    else:
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens", 0)
    prompt = _count(prompt)
    if prompt is None:
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=_count(completion) or 0)


def usage_of_body(payload: bytes) -> Usage | None:
    """The ``usage`` of a JSON answer's body; None when it is not JSON or has none."""
    if b'"usage"' not in payload:
        return None
    try:
        return usage_of(orjson.loads(payload))
    except orjson.JSONDecodeError:
        return None


class StreamUsage:
    """The usage of an SSE stream, fed chunk by chunk as it passes to the client."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Keep the stream's last :data:`TAIL_BYTES` (no parsing here)."""
        if len(chunk) >= TAIL_BYTES:
            self._tail[:] = chunk[-TAIL_BYTES:]
            return
        self._tail += chunk
        excess = len(self._tail) - TAIL_BYTES
        if excess > 0:
            del self._tail[:excess]

    @property
    def usage(self) -> Usage | None:
        """The last data event's non-null ``usage`` within the tail, if any."""
        tail = bytes(self._tail)
        if b'"usage"' not in tail:
            return None
        # Events end with a blank line (either newline convention); the first may be cut.
        events = tail.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in reversed(events):
            if b'"usage"' not in event:
                continue
            data = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            try:
                found = usage_of(orjson.loads(data))
            except orjson.JSONDecodeError:
                continue
            if found is not None:
                return found
        return None
