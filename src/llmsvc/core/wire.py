"""OpenAI wire types.

The router parses only what it routes on (:class:`RoutingInfo`) and forwards
the original bytes untouched. The pydantic models describe the endpoints for
the simulated engine and the OpenAPI documents; unknown fields are kept
(``extra="allow"``) so nothing a client sends is lost.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from llmsvc.core.errors import BadRequest
from llmsvc.core.jsonio import loads_object

INFERENCE_PATHS = (
    "/v1/chat/completions", "/chat/completions",
    "/v1/completions", "/completions",
    "/v1/embeddings", "/embeddings",
    "/v1/responses",
    "/v1/rerank", "/rerank", "/v2/rerank",
    "/v1/score", "/score",
    "/tokenize", "/detokenize",
    "/v1/audio/transcriptions",
)  # fmt: skip
"""Every path the router forwards by the request's ``model`` (:func:`parse_routing`), as
sent: the model-addressed endpoints vLLM, SGLang and llama.cpp serve, one rule for all of
them (each where those engines serve it: the three of the contract also without ``/v1``).
A path not listed is 404 at the router, whatever its body names."""


@dataclass(frozen=True, slots=True)
class RoutingInfo:
    """What routing needs from a request body; ``body`` is forwarded verbatim."""

    model: str
    stream: bool
    user: str | None
    body: bytes
    payload: dict[str, Any]


def prompt_prefix(payload: dict[str, Any], limit: int) -> str:
    """The first ``limit`` characters of the prompt: what a prefix cache would share.

    Chat: each message's role and text in order (text parts of multi-part
    content included), and so the Responses API's ``input`` messages;
    completions, ``/tokenize``: ``prompt``; embeddings, responses: ``input`` text.
    """
    parts: list[str] = []
    size = 0
    for text in _prompt_texts(payload):
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "".join(parts)[:limit]


def _prompt_texts(payload: dict[str, Any]) -> Iterator[str]:
    messages = payload.get("messages")
    given = payload.get("input")
    if messages is None and isinstance(given, list) and given and isinstance(given[0], dict):
        messages = given  # the Responses API's input: messages, as chat's
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            yield f"{message.get('role', '')}:"
            content = message.get("content")
            if isinstance(content, str):
                yield content
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        yield part["text"]
            yield "\n"
        return
    prompt = payload.get("prompt", payload.get("input"))
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch: its first prompt
    if isinstance(prompt, str):
        yield prompt
    elif isinstance(prompt, list):  # token ids
        yield ",".join(str(t) for t in prompt)


def parse_routing(body: bytes) -> RoutingInfo:
    """Extract model, stream and user; 400 in the OpenAI shape when they are wrong.

    A JSON object, or a ``multipart/form-data`` body (``/v1/audio/transcriptions``: it
    starts with its boundary, which no JSON text does) whose ``model``, ``stream`` and
    ``user`` fields are read in place (:func:`form_fields`)."""
    if body.startswith(b"--"):
        payload: dict[str, Any] = form_fields(body)
        if isinstance(payload.get("stream"), str):
            payload["stream"] = _form_bool(payload["stream"])
    else:
        payload = loads_object(body)
    model = payload.get("model")
    if model is None:
        raise BadRequest("Missing required parameter: 'model'", param="model", code="missing_model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string", param="model", code="invalid_model")
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream", code="invalid_value")
    user = payload.get("user")
    return RoutingInfo(
        model=model,
        stream=stream,
        user=user if isinstance(user, str) else None,
        body=body,
        payload=payload,
    )


MULTIPART = "multipart/form-data"
ROUTING_FIELDS = frozenset({"model", "stream", "user"})
_DISPOSITION_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?;\s*name="([^"]*)"')


def form_fields(body: bytes) -> dict[str, Any]:
    """The :data:`ROUTING_FIELDS` of a multipart body, as text; 400 when it is not one.

    The parts are found with ``bytes.find`` on the body as read: a file part (an audio
    upload) is scanned once for the next boundary, never copied or decoded."""
    first = body.find(b"\r\n")
    boundary = body[:first]
    if first < 3 or len(boundary) > 72 or b" " in boundary.rstrip():
        raise BadRequest("Malformed multipart/form-data body", code="invalid_multipart")
    delimiter = b"\r\n" + boundary
    fields: dict[str, Any] = {}
    start = first + 2
    while True:
        head_end = body.find(b"\r\n\r\n", start)
        if head_end < 0:
            raise BadRequest("Malformed multipart/form-data body", code="invalid_multipart")
        end = body.find(delimiter, head_end + 4)
        if end < 0:
            raise BadRequest("Malformed multipart/form-data body", code="invalid_multipart")
        name = _DISPOSITION_NAME.search(body, start, head_end)
        if name is not None and name[1].decode("latin-1") in ROUTING_FIELDS:
            value = body[head_end + 4 : end]
            try:
                fields[name[1].decode("latin-1")] = value.decode()
            except UnicodeDecodeError:
                raise BadRequest(
                    f"Form field '{name[1].decode('latin-1')}' is not UTF-8",
                    code="invalid_multipart",
                ) from None
        after = end + len(delimiter)
        if body.startswith(b"--", after):  # the closing delimiter
            return fields
        start = after + 2  # past the CRLF that ends the delimiter line


def _form_bool(value: str) -> bool | str:
    """A form's ``stream``: ``true``/``false`` (any case), else left for the 400."""
    lowered = value.strip().lower()
    return {"true": True, "false": False, "": False}.get(lowered, value)


def sse_event(data: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event ``data:`` frame."""
    text = data if isinstance(data, str) else orjson.dumps(data).decode()
    return b"data: " + text.encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


TokenId = Annotated[int, Field(ge=0, lt=2**31)]
"""A token id: no vocabulary comes near 2**31 entries."""
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Prompts = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1)]
)
"""A prompt (or embedding input): text, a batch of texts, token ids, or a batch of those."""


def _null_is_false(value: Any) -> Any:
    return False if value is None else value


Stream = Annotated[bool, BeforeValidator(_null_is_false)]
"""``stream``: OpenAI reads ``null`` as false, and so do we (:func:`parse_routing` too)."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class ChatCompletionRequest(_Open):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: Stream = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, lt=2**31)
    max_completion_tokens: int | None = Field(default=None, ge=1, lt=2**31)
    n: int = Field(default=1, ge=1, le=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    user: str | None = None


class CompletionRequest(_Open):
    model: str = Field(min_length=1)
    prompt: Prompts
    stream: Stream = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=16, ge=1, lt=2**31)
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: Prompts
    dimensions: int | None = Field(default=None, ge=1, le=8192)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class ResponsesRequest(_Open):
    """``/v1/responses``: the fields the simulated engine reads (the router reads ``model``
    and ``stream``; an engine defines the rest)."""

    model: str = Field(min_length=1)
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1)]
    stream: Stream = False
    max_output_tokens: int | None = Field(default=None, ge=1, lt=2**31)
    user: str | None = None


class RerankRequest(_Open):
    """``/v1/rerank`` (vLLM's, in the Jina/Cohere shape)."""

    model: str = Field(min_length=1)
    query: str
    documents: Annotated[list[str], Field(min_length=1)]
    top_n: int | None = Field(default=None, ge=1)


class ScoreRequest(_Open):
    """``/v1/score`` (vLLM's): ``text_1`` scored against each of ``text_2``."""

    model: str = Field(min_length=1)
    text_1: str
    text_2: str | Annotated[list[str], Field(min_length=1)]


class TokenizeRequest(_Open):
    """``/tokenize`` (vLLM's): ``prompt``, or ``messages`` as chat renders them."""

    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


class DetokenizeRequest(_Open):
    """``/detokenize`` (vLLM's)."""

    model: str = Field(min_length=1)
    tokens: list[TokenId]


class TranscriptionRequest(BaseModel):
    """``/v1/audio/transcriptions``: a ``multipart/form-data`` form (``form_fields``), with
    the fields the simulated engine takes (it streams no transcript, and refuses others)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    file: Annotated[  # OpenAPI 3.1's way to say "a file" (3.0's was format: binary)
        bytes, WithJsonSchema({"type": "string", "contentMediaType": "application/octet-stream"})
    ]
    language: str = ""  # a form has no null
    prompt: str = ""
    response_format: Literal["json", "text"] = "json"
    temperature: float = Field(default=0, ge=0, le=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "llmsvc"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error any llmsvc component returns."""

    error: ErrorDetail
