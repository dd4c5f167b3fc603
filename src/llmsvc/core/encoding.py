"""Request bodies sent with a ``Content-Encoding``: decoded here, in one place, with a bound.

Every service reads its bodies through :func:`llmsvc.core.jsonio.read_body`, which
reads the bytes as they came (``make_app`` turns aiohttp's own decompression off)
and decodes them with :func:`decode_body`. What it accepts:

- no ``Content-Encoding``, or ``identity``: the bytes as they are;
- ``gzip`` (or ``x-gzip``) and ``deflate`` (zlib, or the raw deflate some clients
  send): decoded, never to more than the app's body limit (a small "gzip bomb"
  gets 413 without the memory it would take);
- anything else (``br``, ``zstd``, a list of several codings, unknown names):
  415 ``unsupported_media_type``; a body that does not decode as its coding says:
  400 ``invalid_encoding``.

The router forwards the decoded body without ``Content-Encoding`` (engines such
as vLLM do not accept compressed request bodies, and the router parses the body
for ``model`` anyway).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from llmsvc.core.errors import BadRequest, PayloadTooLarge, UnsupportedMedia, echoed

SUPPORTED = ("gzip", "deflate", "identity")

_WBITS = {
    "gzip": zlib.MAX_WBITS | 16,
    "x-gzip": zlib.MAX_WBITS | 16,
    "deflate": zlib.MAX_WBITS,
}


def coding_of(values: Iterable[str]) -> str:
    """The one coding the ``Content-Encoding`` header values name ("identity" if none);
    415 for several or for one this module cannot decode."""
    codings = [c.strip().lower() for v in values for c in v.split(",") if c.strip()]
    if not codings:
        return "identity"
    if len(codings) == 1 and (codings[0] == "identity" or codings[0] in _WBITS):
        return codings[0]
    raise UnsupportedMedia(
        f"Unsupported Content-Encoding '{echoed(', '.join(codings), 64)}'; "
        f"supported: {', '.join(SUPPORTED)}",
        code="unsupported_media_type",
    )


def decode_body(raw: bytes, coding: str, *, limit: int) -> bytes:
    """``raw`` decoded from ``coding`` (see :func:`coding_of`), at most ``limit`` bytes
    (0: no limit); 413 beyond it, 400 when ``raw`` is not valid ``coding``."""
    if coding == "identity" or not raw:
        return raw
    try:
        body = _inflate(raw, _WBITS[coding], limit)
    except zlib.error:
        if coding != "deflate":
            raise _invalid(coding) from None
        try:  # raw deflate without the zlib header, as some clients send it
            body = _inflate(raw, -zlib.MAX_WBITS, limit)
        except zlib.error:
            raise _invalid(coding) from None
    return body


def _inflate(raw: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    body = inflater.decompress(raw, limit + 1 if limit else 0)
    if limit and len(body) > limit:
        raise PayloadTooLarge(
            f"Request body too large: decoded it exceeds the limit of {limit} bytes",
            code="body_too_large",
        )
    if not inflater.eof or inflater.unused_data:
        raise zlib.error("truncated, or data after the end of the stream")
    return body


def _invalid(coding: str) -> BadRequest:
    return BadRequest(
        f"Request body is not valid {coding} data (Content-Encoding: {coding})",
        code="invalid_encoding",
    )
