"""Server-Sent Event chunks built from templates.

The bytes common to every chunk of one response (id, object, created, model,
system_fingerprint) are encoded once; a token chunk is then three
concatenations with the token's pre-encoded JSON string, with no per-token
JSON encoding of the envelope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from llmsvc.core.wire import sse_event
from llmsvc.simengine.model import encoded_token

Kind = Literal["chat", "text"]

_OBJECTS = {"chat": "chat.completion.chunk", "text": "text_completion"}
_TAIL = b',"logprobs":null,"finish_reason":null}]}\n\n'


@dataclass(frozen=True, slots=True)
class ChunkTemplates:
    """Every SSE frame of one streamed completion."""

    kind: Kind
    envelope: dict[str, Any]
    head: bytes

    @classmethod
    def build(
        cls, kind: Kind, *, request_id: str, created: int, model: str, fingerprint: str
    ) -> ChunkTemplates:
        envelope = {
            "id": request_id,
            "object": _OBJECTS[kind],
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint,
        }
        head = b"data: " + orjson.dumps(envelope)[:-1] + b',"choices":[{"index":0,'
        return cls(kind=kind, envelope=envelope, head=head)

    def role(self) -> bytes:
        """The first chat chunk, announcing the assistant's role."""
        return self.head + b'"delta":{"role":"assistant","content":""}' + _TAIL

    def token(self, token: str) -> bytes:
        if self.kind == "chat":
            return self.head + b'"delta":{"content":' + encoded_token(token) + b"}" + _TAIL
        return self.head + b'"text":' + encoded_token(token) + _TAIL

    def finish(self, reason: str) -> bytes:
        body = b'"delta":{}' if self.kind == "chat" else b'"text":""'
        return (
            self.head
            + body
            + b',"logprobs":null,"finish_reason":'
            + orjson.dumps(reason)
            + b"}]}\n\n"
        )

    def usage(self, usage: dict[str, int]) -> bytes:
        """The last chunk when ``stream_options.include_usage``: no choices, the usage."""
        return sse_event({**self.envelope, "choices": [], "usage": usage})
