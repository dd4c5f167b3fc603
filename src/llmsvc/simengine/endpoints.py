"""The engines' other model-addressed endpoints, simulated: enough for the router's tests.

vLLM, SGLang and llama.cpp serve more than chat, completions and embeddings: the
Responses API, rerank and score, tokenize and detokenize, audio transcriptions. The
router routes them all by their ``model`` (``core.wire.INFERENCE_PATHS``); these
handlers give it something real to route to. Each checks the model (404
``model_not_found``), honours ``--fail-rate`` and answers in the shape those engines
use. ``/v1/responses`` generates through the engine (timing, KV budget and metrics as
chat does); the others answer at once. Tokens are the simulator's token model
(``model.count_tokens``): ``ceil(chars / --chars-per-token)`` per text, each token id an
index into the output vocabulary, so ``/detokenize`` renders ids as its words.
"""

from __future__ import annotations

import math
import time
import uuid
import zlib
from contextlib import aclosing
from typing import Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from llmsvc.core.errors import BadRequest
from llmsvc.core.jsonio import json_response, read_model, validate_model
from llmsvc.core.wire import (
    DetokenizeRequest,
    RerankRequest,
    ResponsesRequest,
    ScoreRequest,
    TokenizeRequest,
    TranscriptionRequest,
)
from llmsvc.simengine.embeddings import embed
from llmsvc.simengine.engine import Engine, Job
from llmsvc.simengine.model import VOCABULARY, count_tokens
from llmsvc.simengine.openai import render_messages
from llmsvc.simengine.state import SIMENGINE

TRANSCRIPT = "This is a simulated transcription."
SCORE_DIM = 64  # the embedding size behind rerank and score


def _engine(request: web.Request, model: str) -> Engine:
    """The engine, once ``model`` is one it serves (else 404) and ``--fail-rate`` spared it."""
    engine = request.app[SIMENGINE].engine
    engine.check_model(model)
    engine.inject_fault()
    return engine


# -- /v1/responses ------------------------------------------------------------------------


def response_input(value: Any) -> str:
    """The Responses API's ``input`` as one prompt: a string, or messages' text in order."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise BadRequest(
            "'input' must be a string or a non-empty list of messages",
            param="input",
            code="invalid_value",
        )
    parts: list[str] = []
    for item in value:
        if not isinstance(item, dict):
            continue
        content = item.get("content")
        if isinstance(content, list):
            text = "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
        else:
            text = content if isinstance(content, str) else ""
        parts.append(f"<|{item.get('role', 'user')}|>\n{text}\n")
    return "".join(parts) + "<|assistant|>\n"


def _response_object(
    response_id: str, job: Job, text: str, produced: int, *, status: str
) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if status == "completed":
        output.append(
            {
                "type": "message",
                "id": "msg_" + response_id.removeprefix("resp_"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    prompt = job.prompt.tokens
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": job.model,
        "output": output,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": prompt,
            "output_tokens": produced,
            "total_tokens": prompt + produced,
        },
    }


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


async def responses(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``: one output message; with ``stream``, the Responses events
    (``response.created``, ``response.output_text.delta`` per token, ``response.completed``)."""
    req = await read_model(request, ResponsesRequest)
    engine = _engine(request, req.model)
    text = response_input(req.input)
    job = engine.prepare(req.model, text, req.max_output_tokens, param="input")
    response_id = "resp_" + uuid.uuid4().hex
    if req.stream:
        return await _stream_response(request, engine, job, response_id)
    async with aclosing(engine.generate(job)) as tokens:
        text = "".join([token async for token in tokens])
    return json_response(
        _response_object(response_id, job, text, job.max_tokens, status="completed")
    )


async def _stream_response(
    request: web.Request, engine: Engine, job: Job, response_id: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    item = "msg_" + response_id.removeprefix("resp_")
    started = _response_object(response_id, job, "", 0, status="in_progress")
    sequence = 0
    try:
        await response.write(
            _event("response.created", {"response": started, "sequence_number": 0})
        )
        text: list[str] = []
        async with aclosing(engine.generate(job)) as tokens:
            async for token in tokens:
                sequence += 1
                text.append(token)
                delta = {"item_id": item, "output_index": 0, "content_index": 0, "delta": token}
                await response.write(
                    _event("response.output_text.delta", {**delta, "sequence_number": sequence})
                )
        done = _response_object(response_id, job, "".join(text), len(text), status="completed")
        await response.write(
            _event("response.completed", {"response": done, "sequence_number": sequence + 1})
        )
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away; generate() has freed the slot
    return response


# -- rerank, score -------------------------------------------------------------------------


def similarity(a: str, b: str) -> float:
    """A score in [0, 1] from the two texts alone: their simulated embeddings' cosine."""
    cosine = math.fsum(x * y for x, y in zip(embed(a, SCORE_DIM), embed(b, SCORE_DIM), strict=True))
    return round((cosine + 1) / 2, 6)


def _tokens(engine: Engine, texts: list[str]) -> int:
    return sum(count_tokens(t, engine.settings.chars_per_token) for t in texts)


async def rerank(request: web.Request) -> web.Response:
    """``POST /v1/rerank`` (Jina/Cohere shape, as vLLM serves it): documents by score."""
    req = await read_model(request, RerankRequest)
    engine, model = _engine(request, req.model), req.model
    query, documents, top_n = req.query, req.documents, req.top_n
    scored = sorted(
        ((similarity(query, d), i, d) for i, d in enumerate(documents)), key=lambda r: -r[0]
    )
    results = [{"index": i, "document": {"text": d}, "relevance_score": s} for s, i, d in scored]
    if top_n is not None:
        results = results[:top_n]
    return json_response(
        {
            "id": "rerank-" + uuid.uuid4().hex,
            "model": model,
            "usage": {"total_tokens": _tokens(engine, [query, *documents])},
            "results": results,
        }
    )


async def score(request: web.Request) -> web.Response:
    """``POST /v1/score`` (vLLM): ``text_1`` against each ``text_2`` (or pairwise)."""
    req = await read_model(request, ScoreRequest)
    engine, model = _engine(request, req.model), req.model
    second = [req.text_2] if isinstance(req.text_2, str) else req.text_2
    first = [req.text_1] * len(second)
    data = [
        {"index": i, "object": "score", "score": similarity(a, b)}
        for i, (a, b) in enumerate(zip(first, second, strict=True))
    ]
    return json_response(
        {
            "id": "score-" + uuid.uuid4().hex,
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": {"prompt_tokens": _tokens(engine, first + second)},
        }
    )


# -- tokenize, detokenize ------------------------------------------------------------------


def token_ids(text: str, chars_per_token: float) -> list[int]:
    """The sim's tokens of ``text``: ``count_tokens`` pieces, each an id into VOCABULARY."""
    count = count_tokens(text, chars_per_token)
    step = len(text) / count if count else 0.0
    pieces = (text[round(i * step) : round((i + 1) * step)] for i in range(count))
    return [zlib.crc32(p.encode()) % len(VOCABULARY) for p in pieces]


async def tokenize(request: web.Request) -> web.Response:
    """``POST /tokenize`` (vLLM): ``prompt``, or ``messages`` rendered as chat does."""
    req = await read_model(request, TokenizeRequest)
    engine = _engine(request, req.model)
    text = render_messages(req.messages) if req.messages else req.prompt or ""
    tokens = token_ids(text, engine.settings.chars_per_token)
    return json_response(
        {"count": len(tokens), "max_model_len": engine.settings.kv_cache_tokens, "tokens": tokens}
    )


async def detokenize(request: web.Request) -> web.Response:
    """``POST /detokenize`` (vLLM): each id as its vocabulary word."""
    req = await read_model(request, DetokenizeRequest)
    _engine(request, req.model)
    words = len(VOCABULARY)
    return json_response({"prompt": " ".join(VOCABULARY[t % words] for t in req.tokens)})


# -- /v1/audio/transcriptions --------------------------------------------------------------


async def transcriptions(request: web.Request) -> web.Response:
    """``POST /v1/audio/transcriptions``: a multipart form with ``file`` and ``model``;
    the text is always :data:`TRANSCRIPT` (``response_format=text``: as plain text)."""
    if not request.content_type.startswith("multipart/"):
        raise BadRequest(
            "Expected a multipart/form-data body with 'file' and 'model'",
            code="invalid_content_type",
        )
    fields: dict[str, Any] = {}
    try:
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader) or part.name is None:
                raise BadRequest("Every form part needs a name", code="invalid_multipart")
            if part.name == "file":  # read in chunks, never held whole
                while await part.read_chunk():
                    pass
                fields["file"] = b""  # what validation needs to know: it was sent
            else:
                fields[part.name] = await part.text()
    except (HttpProcessingError, ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(
            f"Malformed multipart/form-data body: {exc}", code="invalid_multipart"
        ) from None
    model = fields.get("model")
    if isinstance(model, str) and model:
        _engine(request, model)  # 404 for a model it does not serve, before the other fields
    req = validate_model(TranscriptionRequest, fields)
    if req.response_format == "text":
        return web.Response(text=TRANSCRIPT)
    return json_response({"text": TRANSCRIPT, "usage": {"type": "duration", "seconds": 1}})
