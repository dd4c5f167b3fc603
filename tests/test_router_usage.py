"""The tokens an answer used, from a JSON body or the tail of an SSE stream."""

from __future__ import annotations

import orjson
import pytest

from llmsvc.router.usage import TAIL_BYTES, StreamUsage, Usage, usage_of_body


def event(data: object) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def chunk(text: str, usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, object] = {"object": "chat.completion.chunk", "choices": [{"delta": text}]}
    if usage is not None:
        body["usage"] = usage
    return event(body)


USAGE = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}


def test_body_usage() -> None:
    body = orjson.dumps({"choices": [], "usage": USAGE})
    assert usage_of_body(body) == Usage(prompt_tokens=12, completion_tokens=30)
    assert Usage(12, 30).total == 42
    # Embeddings have no completion tokens.
    embedding = orjson.dumps({"data": [], "usage": {"prompt_tokens": 5, "total_tokens": 5}})
    assert usage_of_body(embedding) == Usage(prompt_tokens=5, completion_tokens=0)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"usage": null}',
        b'{"usage": {"prompt_tokens": "12"}}',
        b'{"usage": {"prompt_tokens": -1}}',
        b'{"usage": {"prompt_tokens": true}}',
        b'["usage"]',
        b'{"choices": []}',
    ],
)
def test_body_without_usable_usage(body: bytes) -> None:
    assert usage_of_body(body) is None


def test_stream_usage_is_the_last_non_null_one() -> None:
    stream = StreamUsage()
    stream.feed(chunk("a", {"prompt_tokens": 12, "completion_tokens": 1}))  # continuous usage
    stream.feed(chunk("b", {"prompt_tokens": 12, "completion_tokens": 2}))
    stream.feed(event({"choices": [], "usage": None}))
    stream.feed(b"data: [DONE]\n\n")
    assert stream.usage == Usage(prompt_tokens=12, completion_tokens=2)


def test_stream_usage_split_across_chunks_and_crlf() -> None:
    whole = chunk("hello") + event({"choices": [], "usage": USAGE}) + b"data: [DONE]\n\n"
    whole = whole.replace(b"\n", b"\r\n")
    stream = StreamUsage()
    for i in range(0, len(whole), 7):
        stream.feed(whole[i : i + 7])
    assert stream.usage == Usage(prompt_tokens=12, completion_tokens=30)


def test_stream_without_usage() -> None:
    stream = StreamUsage()
    assert stream.usage is None
    stream.feed(chunk("a") + b"data: [DONE]\n\n")
    assert stream.usage is None


def test_stream_tail_is_bounded_and_keeps_the_end() -> None:
    stream = StreamUsage()
    for _ in range(2000):  # ~150 KB of content
        stream.feed(chunk("x" * 40))
    stream.feed(chunk("last" * 3000))  # one chunk near the tail's size
    stream.feed(event({"choices": [], "usage": USAGE}) + b"data: [DONE]\n\n")
    assert len(stream._tail) <= TAIL_BYTES
    assert stream.usage == Usage(prompt_tokens=12, completion_tokens=30)
    # A chunk larger than the tail on its own: only its end is kept.
    stream.feed(b": " + b"y" * (2 * TAIL_BYTES) + b"\n\n")
    assert len(stream._tail) == TAIL_BYTES
    assert stream.usage is None  # the usage event fell out of the tail


def test_responses_api_usage_in_its_body_and_its_completed_event() -> None:
    """The Responses API names the counts input/output tokens; its stream ends with them in
    ``response.completed``'s response."""
    responses = {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}
    body = orjson.dumps({"object": "response", "output": [], "usage": responses})
    assert usage_of_body(body) == Usage(prompt_tokens=9, completion_tokens=4)
    stream = StreamUsage()
    delta = {"type": "response.output_text.delta", "delta": "hi"}
    stream.feed(b"event: response.output_text.delta\n" + event(delta))
    completed = {"type": "response.completed", "response": {"id": "r", "usage": responses}}
    stream.feed(b"event: response.completed\n" + event(completed))
    assert stream.usage == Usage(prompt_tokens=9, completion_tokens=4)
    assert usage_of_body(b'{"usage": {"input_tokens": "9"}}') is None
