from __future__ import annotations

import pytest

from llmsvc.core.errors import BadRequest
from llmsvc.core.records import ServiceRecord, ServiceRegistration
from llmsvc.core.wire import parse_routing, prompt_prefix, sse_event


def test_parse_routing_reads_model_stream_user_and_keeps_bytes() -> None:
    body = b'{"model": "m", "stream": true, "user": "u1", "messages": [], "x_custom": {"a": 1}}'
    info = parse_routing(body)
    assert (info.model, info.stream, info.user) == ("m", True, "u1")
    assert info.body is body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"messages": []}', "model"),
        (b'{"model": 3}', "model"),
        (b'{"model": ""}', "model"),
        (b'{"model": null}', "model"),
        (b'{"model": "m", "stream": "yes"}', "stream"),
        (b"{oops", None),
        (b"[]", None),
        (b"", None),
    ],
)
def test_parse_routing_rejects_bad_bodies(body: bytes, param: str | None) -> None:
    with pytest.raises(BadRequest) as info:
        parse_routing(body)
    assert info.value.param == param
    assert info.value.status == 400


def test_sse_event_frames() -> None:
    assert sse_event({"a": 1}) == b'data: {"a":1}\n\n'
    assert sse_event("[DONE]") == b"data: [DONE]\n\n"


def test_record_derives_url_and_models() -> None:
    rec = ServiceRecord(name="e1", host="10.0.0.2", port=8000, metadata={"models": ["m"]})
    assert rec.url == "http://10.0.0.2:8000"
    assert rec.models == ["m"]
    assert ServiceRecord(name="v6", host="::1", port=1).url == "http://[::1]:1"


@pytest.mark.parametrize(
    "data",
    [
        {"name": "", "host": "h", "port": 1},
        {"name": "a b", "host": "h", "port": 1},
        {"name": "a", "host": "h", "port": 0},
        {"name": "a", "host": "h", "port": 70000},
        {"name": "a", "host": "h", "port": 1, "weight": 0},
        {"name": "a", "host": "h", "port": 1, "url": "ftp://x"},
        {"name": "a", "host": "h", "port": 1, "metadata": {"models": "m"}},
        {"name": "a", "host": "h", "port": 1, "surprise": True},
    ],
)
def test_registration_rejects_bad_records(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="validation error"):
        ServiceRegistration.model_validate(data)


def test_prompt_prefix_of_chat_completions_and_embeddings() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ]
    }
    assert prompt_prefix(chat, 1000) == "system:You are terse.\nuser:Hi\n"
    assert prompt_prefix(chat, 10) == "system:You"
    assert prompt_prefix({"prompt": "abcdef"}, 3) == "abc"
    assert prompt_prefix({"prompt": ["first", "second"]}, 100) == "first"
    assert prompt_prefix({"input": [1, 2, 3]}, 100) == "1,2,3"
    assert prompt_prefix({"messages": "bogus"}, 10) == ""
