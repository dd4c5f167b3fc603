"""Bearer credentials: the one check behind the router's API keys and the registry's token.

Both are sent as ``Authorization: Bearer <key>``. The scheme is matched in any
case (RFC 7235 §2.1: ``bearer``, ``Bearer`` and ``BEARER`` name one scheme); the
key is compared with every accepted key in constant time
(:func:`hmac.compare_digest`), so how long an answer takes says nothing of how
much of a key was right, nor of which key matched.

A refused request gets a 401 in the OpenAI error shape with
``WWW-Authenticate: Bearer``; each service words its own message and code
(:class:`BearerAuth`). :func:`bearer_middleware` applies the check to the
requests a predicate picks; :func:`llmsvc.core.app.make_app` uses it for the
routes marked ``protected``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from llmsvc.core.errors import Handler, Unauthorized


def bearer_credentials(header: str | None) -> bytes | None:
    """The key of an ``Authorization: Bearer <key>`` header value.

    None when there is no header, another scheme, or no key after the scheme.
    """
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    # aiohttp decodes header bytes that are not UTF-8 as surrogates: give them back as sent.
    return key.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, kw_only=True)
class BearerAuth:
    """The keys a service accepts, and how its 401 reads."""

    keys: tuple[bytes, ...]
    """Each accepted key, as bytes; empty accepts nothing."""
    message: str = "Missing or invalid bearer token in the Authorization header"
    """The 401's ``error.message``."""
    code: str = "invalid_token"
    """The 401's ``error.code``."""

    def accepts(self, header: str | None) -> bool:
        """True when the ``Authorization`` header value carries one of the keys."""
        given = bearer_credentials(header)
        if given is None:
            return False
        found = False
        for key in self.keys:  # compare with every key: the time says nothing of which one
            found |= hmac.compare_digest(given, key)
        return found

    def refusal(self) -> Unauthorized:
        """The 401 a refused request gets."""
        return Unauthorized(self.message, code=self.code, headers={"WWW-Authenticate": "Bearer"})


def bearer_middleware(auth: BearerAuth, *, protects: Callable[[web.Request], bool]) -> Middleware:
    """A middleware that answers :meth:`BearerAuth.refusal` to the requests ``protects``
    picks unless they carry an accepted key; every other request passes untouched."""

    @web.middleware
    async def check_bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
        if protects(request) and not auth.accepts(request.headers.get("Authorization")):
            raise auth.refusal()
        return await handler(request)

    return check_bearer
