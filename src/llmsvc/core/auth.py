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

Some keys may grant more than others (the registry's admin token does all its
write token does, and may also override a name's lease): the middleware puts
the caller's :class:`Access` on every request it sees (:func:`access_of`), so
that a handler asks what the caller may do instead of reading headers itself.
"""

from __future__ import annotations

import enum
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


class Access(enum.IntEnum):
    """What a request's credentials grant; each level includes those below it."""

    NONE = 0
    """No accepted key (or none sent)."""
    KEY = 1
    """One of :attr:`BearerAuth.keys`."""
    ADMIN = 2
    """One of :attr:`BearerAuth.admin_keys`."""


ACCESS = web.RequestKey("access", Access)
"""Where :func:`bearer_middleware` leaves the caller's :class:`Access` (:func:`access_of`)."""


def access_of(request: web.Request) -> Access:
    """The caller's access; :attr:`Access.NONE` when no bearer check saw the request."""
    access: Access = request.get(ACCESS, Access.NONE)
    return access


@dataclass(frozen=True, kw_only=True)
class BearerAuth:
    """The keys a service accepts, and how its 401 reads."""

    keys: tuple[bytes, ...]
    """Each accepted key, as bytes; empty accepts nothing."""
    admin_keys: tuple[bytes, ...] = ()
    """Keys accepted wherever :attr:`keys` are that also grant :attr:`Access.ADMIN`."""
    open: bool = False
    """Protected requests pass without a key (the caller's :class:`Access` is still
    worked out: an admin key keeps its meaning where anyone may write)."""
    message: str = "Missing or invalid bearer token in the Authorization header"
    """The 401's ``error.message``."""
    code: str = "invalid_token"
    """The 401's ``error.code``."""

    def access(self, header: str | None) -> Access:
        """What the ``Authorization`` header value grants."""
        given = bearer_credentials(header)
        if given is None:
            return Access.NONE
        # Compare with every key: the time says nothing of which one matched, if any.
        key = admin = False
        for known in self.keys:
            key |= hmac.compare_digest(given, known)
        for known in self.admin_keys:
            admin |= hmac.compare_digest(given, known)
        return Access.ADMIN if admin else Access.KEY if key else Access.NONE

    def accepts(self, header: str | None) -> bool:
        """True when the ``Authorization`` header value carries one of the keys."""
        return self.access(header) >= Access.KEY

    def refusal(self) -> Unauthorized:
        """The 401 a refused request gets."""
        return Unauthorized(self.message, code=self.code, headers={"WWW-Authenticate": "Bearer"})


def bearer_middleware(auth: BearerAuth, *, protects: Callable[[web.Request], bool]) -> Middleware:
    """A middleware that answers :meth:`BearerAuth.refusal` to the requests ``protects``
    picks unless they carry an accepted key (or the auth is :attr:`~BearerAuth.open`);
    every request it lets through carries its :class:`Access` (:func:`access_of`)."""

    @web.middleware
    async def check_bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
        access = auth.access(request.headers.get("Authorization"))
        if access is Access.NONE and not auth.open and protects(request):
            raise auth.refusal()
        request[ACCESS] = access
        return await handler(request)

    return check_bearer
