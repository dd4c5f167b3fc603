"""The OpenAI-compatible handlers: models, chat and text completions, embeddings."""

from __future__ import annotations

import time
import uuid
from contextlib import aclosing
from typing import Any, Literal

from aiohttp import web

from llmsvc.core.errors import BadRequest
from llmsvc.core.jsonio import json_response, read_model
from llmsvc.core.wire import (
    SSE_DONE,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    StreamOptions,
)
from llmsvc.simengine.embeddings import embed, encode_base64, split_inputs
from llmsvc.simengine.engine import Engine, Job
from llmsvc.simengine.model import Prompt, count_tokens
from llmsvc.simengine.state import SIMENGINE
from llmsvc.simengine.streaming import ChunkTemplates, Kind

FINISH_REASON = "length"  # the simulated engine always generates max_tokens
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def render_messages(messages: list[ChatMessage]) -> str:
    """The chat as one prompt, like a chat template (earlier turns stay a prefix)."""
    parts: list[str] = []
    for message in messages:
        content = message.content
        if isinstance(content, list):
            text = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        else:
            text = content or ""
        parts.append(f"<|{message.role}|>\n{text}\n")
    parts.append("<|assistant|>\n")
    return "".join(parts)


def completion_prompt(prompt: str | list[str] | list[int] | list[list[int]]) -> Prompt:
    """One prompt from ``prompt``; batches of several prompts are refused."""
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        raise BadRequest("'prompt' must not be empty", param="prompt", code="invalid_value")
    if all(isinstance(p, int) for p in prompt):
        return [p for p in prompt if isinstance(p, int)]
    if len(prompt) == 1 and not isinstance(prompt[0], int):
        return prompt[0]
    raise BadRequest(
        "The simulated engine takes one prompt per request, not a batch of "
        f"{len(prompt)}; send them as separate requests",
        param="prompt",
        code="batch_not_supported",
    )


def _usage(job: Job, completion_tokens: int) -> dict[str, int]:
    prompt = job.prompt.tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


async def list_models(request: web.Request) -> web.Response:
    state = request.app[SIMENGINE]
    engine, created = state.engine, state.started
    data = [
        {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "llmsvc-sim",
            "root": model,
            "max_model_len": engine.settings.kv_cache_tokens,
        }
        for model in engine.models
    ]
    return json_response({"object": "list", "data": data})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = await read_model(request, ChatCompletionRequest)
    engine = request.app[SIMENGINE].engine
    max_tokens = req.max_completion_tokens or req.max_tokens
    job = engine.prepare(req.model, render_messages(req.messages), max_tokens, param="messages")
    return await _complete(request, job, "chat", stream=req.stream, options=req.stream_options)


async def completions(request: web.Request) -> web.StreamResponse:
    req = await read_model(request, CompletionRequest)
    engine = request.app[SIMENGINE].engine
    max_tokens = req.max_tokens if "max_tokens" in req.model_fields_set else None
    job = engine.prepare(req.model, completion_prompt(req.prompt), max_tokens, param="prompt")
    return await _complete(request, job, "text", stream=req.stream, options=req.stream_options)


async def _complete(
    request: web.Request, job: Job, kind: Kind, *, stream: bool, options: StreamOptions | None
) -> web.StreamResponse:
    engine = request.app[SIMENGINE].engine
    engine.inject_fault()
    prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
    request_id = prefix + uuid.uuid4().hex
    if stream:
        include_usage = options is not None and options.include_usage
        return await _stream(request, engine, job, kind, request_id, include_usage)
    return await _collect(engine, job, kind, request_id)


async def _collect(engine: Engine, job: Job, kind: Kind, request_id: str) -> web.Response:
    async with aclosing(engine.generate(job)) as tokens:
        text = "".join([token async for token in tokens])
    choice: dict[str, Any] = {"index": 0}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    choice["logprobs"] = None
    choice["finish_reason"] = FINISH_REASON
    obj: Literal["chat.completion", "text_completion"] = (
        "chat.completion" if kind == "chat" else "text_completion"
    )
    return json_response(
        {
            "id": request_id,
            "object": obj,
            "created": int(time.time()),
            "model": job.model,
            "system_fingerprint": engine.engine_id,
            "choices": [choice],
            "usage": _usage(job, job.max_tokens),
        }
    )


async def _stream(
    request: web.Request,
    engine: Engine,
    job: Job,
    kind: Kind,
    request_id: str,
    include_usage: bool,
) -> web.StreamResponse:
    chunks = ChunkTemplates.build(
        kind,
        request_id=request_id,
        created=int(time.time()),
        model=job.model,
        fingerprint=engine.engine_id,
    )
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    produced = 0
    try:
        async with aclosing(engine.generate(job)) as tokens:
            async for token in tokens:
                frame = chunks.token(token)
                if not produced and kind == "chat":
                    frame = chunks.role() + frame
                produced += 1
                await response.write(frame)
        tail = chunks.finish(FINISH_REASON)
        if include_usage:
            tail += chunks.usage(_usage(job, produced))
        await response.write(tail + SSE_DONE)
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away; generate() has freed the slot
    return response


async def embeddings(request: web.Request) -> web.Response:
    req = await read_model(request, EmbeddingRequest)
    engine = request.app[SIMENGINE].engine
    engine.check_model(req.model)
    engine.inject_fault()
    items = split_inputs(req.input)
    if not items:
        raise BadRequest("'input' must not be empty", param="input", code="invalid_value")
    dim = req.dimensions or engine.settings.embedding_dim
    tokens = sum(count_tokens(item, engine.settings.chars_per_token) for item in items)
    await engine.pause_for_prefill(tokens)
    data = []
    for index, item in enumerate(items):
        vector = embed(item, dim)
        value: list[float] | str = (
            encode_base64(vector) if req.encoding_format == "base64" else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": value})
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": req.model,
            "system_fingerprint": engine.engine_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
