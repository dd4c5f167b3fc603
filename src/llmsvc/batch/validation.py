"""A batch input file checked whole at upload, so that a bad line is a 400 with its line
number and nothing is stored, instead of a batch that fails hours later.

The rules are OpenAI's: JSONL, one request object per line with a ``custom_id`` (a
string, unique in the file), ``method`` ``POST``, a ``url`` the batch API serves, and a
``body`` object naming its ``model``; every line the same ``url`` and the same model (a
batch runs one model). Blank lines are refused except at the end of the file, so that a
line's index is its line number minus one, in errors and in the store alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from llmsvc.batch.store import LineSpec

ENDPOINTS: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
"""The endpoints a batch may run (OpenAI's list, less /v1/responses)."""

CUSTOM_ID_MAX = 512


class InvalidInput(ValueError):
    """A batch input file (or a batch of it) that cannot run: one line, where, and why.

    ``code`` is OpenAI-style (``invalid_file``, ``invalid_json``, ``missing_custom_id``,
    ``duplicate_custom_id``, ``mismatched_endpoint``, ``mismatched_model``,
    ``too_many_lines``); ``line`` is 1-based, None for the whole file.
    """

    def __init__(
        self, message: str, *, line: int | None = None, param: str = "file", code: str = ""
    ) -> None:
        text = f"line {line}: {message}" if line is not None else message
        super().__init__(text)
        self.message = text
        self.line = line
        self.param = param
        self.code = code or "invalid_file"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"


def validate_input(content: bytes, *, max_lines: int) -> list[LineSpec]:
    """Every line of ``content`` as a :class:`LineSpec`, or :class:`InvalidInput`."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    rows = text.rstrip().splitlines() if text.strip() else []
    if not rows:
        raise InvalidInput("the file is empty; expected one JSON request per line")
    if len(rows) > max_lines:
        raise InvalidInput(
            f"the file has more than {max_lines} lines (the limit of one batch)",
            line=max_lines + 1,
            code="too_many_lines",
        )
    specs: list[LineSpec] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        spec = _line(row, index + 1)
        if spec.custom_id in seen:
            raise InvalidInput(
                f"custom_id {_short(spec.custom_id)} appears twice; each line needs its own",
                line=index + 1,
                code="duplicate_custom_id",
            )
        seen.add(spec.custom_id)
        if specs and spec.url != specs[0].url:
            raise InvalidInput(
                f"url {spec.url!r} differs from line 1's {specs[0].url!r}; "
                "all lines of a batch use one endpoint",
                line=index + 1,
                code="mismatched_endpoint",
            )
        first_model = specs[0].body["model"] if specs else None
        if first_model is not None and spec.body["model"] != first_model:
            raise InvalidInput(
                f"model {_short(spec.body['model'])} differs from line 1's "
                f"{_short(first_model)}; a batch runs one model",
                line=index + 1,
                code="mismatched_model",
            )
        specs.append(spec)
    return specs


def _line(row: str, number: int) -> LineSpec:
    if not row.strip():
        raise InvalidInput("empty line; expected a JSON request object", line=number)
    try:
        data = orjson.loads(row)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON ({exc})", line=number, code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidInput(
            f"expected a JSON object, got {type(data).__name__}", line=number, code="invalid_json"
        )
    custom_id = data.get("custom_id")
    if custom_id is None:
        raise InvalidInput("missing 'custom_id'", line=number, code="missing_custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > CUSTOM_ID_MAX:
        raise InvalidInput(
            f"'custom_id' must be a non-empty string of at most {CUSTOM_ID_MAX} characters",
            line=number,
        )
    method = data.get("method")
    if method != "POST":
        raise InvalidInput(f"'method' must be \"POST\", got {_short(method)}", line=number)
    url = data.get("url")
    if url not in ENDPOINTS:
        raise InvalidInput(
            f"'url' must be one of {', '.join(ENDPOINTS)}, got {_short(url)}", line=number
        )
    body = data.get("body")
    if not isinstance(body, dict):
        raise InvalidInput("'body' must be a JSON object (the request)", line=number)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("'body.model' must be a non-empty string", line=number)
    return LineSpec(index=number - 1, custom_id=custom_id, method="POST", url=url, body=body)


def check_for_batch(lines: Sequence[LineSpec], endpoint: str) -> str:
    """The one model of ``lines``, once each line's url is the batch's ``endpoint``."""
    for spec in lines:
        if spec.url != endpoint:
            raise InvalidInput(
                f"url {spec.url!r} differs from the batch's endpoint {endpoint!r}",
                line=spec.index + 1,
                param="endpoint",
                code="mismatched_endpoint",
            )
    if not lines:
        raise InvalidInput("the file has no lines")
    model: str = lines[0].body["model"]
    return model
