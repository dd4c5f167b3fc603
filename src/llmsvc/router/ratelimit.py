"""Per tenant limits: requests (``rpm``) and tokens (``tpm``) in a sliding 60 s window.

Each limited tenant has a log of its admitted requests in the last
:data:`WINDOW_S` seconds (their times, and the tokens charged to each). A request
is admitted while fewer than ``rpm`` requests are in the window, and while the
window's tokens plus the request's estimate stay within ``tpm`` (a window with
no tokens admits any one request, so a single prompt larger than ``tpm`` is
not refused for ever). So a tenant with ``rpm: 6`` gets exactly 6 answers in any
60 s, and the 7th a 429. Rejected requests are not counted.

Tokens are charged twice: the prompt's estimate when the request is admitted
(:func:`estimate_tokens`; the answer is not known yet), then the actual
prompt + completion tokens from the answer's ``usage`` (:meth:`Grant.settle`),
which replace the estimate. The limit therefore holds within one request: the
request that crosses ``tpm`` is admitted on its estimate, the next is refused.

Answers carry OpenAI's headers (:meth:`Grant.headers`); the reset values are
the time until the window is empty again (the limit back at its full value), in
OpenAI's duration form (``"1s"``, ``"6m0s"``, ``"59.5s"``, ``"12ms"``). A 429
also has ``Retry-After``: whole seconds until this request would be admitted.

A tenant's log lives only while it is not empty (dropped by a sweep once a
window), and tenants without limits cost nothing: :meth:`RateLimiter.admit`
returns a shared grant at once.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from llmsvc.core.errors import ApiError
from llmsvc.core.wire import RoutingInfo
from llmsvc.router.tenants import Tenant

WINDOW_S = 60.0
"""The window of ``rpm`` and ``tpm``: one minute."""
CHARS_PER_TOKEN = 4
"""The admission estimate's characters per token (OpenAI's rule of thumb for English)."""


def duration(seconds: float) -> str:
    """A duration as OpenAI's headers write it (Go's form): ``12ms``, ``59.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    millis = max(1, round(seconds * 1000))
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    text = f"{secs}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text


class RateLimited(ApiError):
    """Over the tenant's ``rpm`` or ``tpm``: 429 with ``Retry-After`` and the limit headers."""

    status = 429

    def __init__(self, message: str, *, retry_after: float, headers: dict[str, str]) -> None:
        retry = max(1, math.ceil(retry_after))
        super().__init__(
            f"{message}; try again in {retry}s",
            code="rate_limit_exceeded",
            headers={**headers, "Retry-After": str(retry)},
        )
        self.retry_after = retry


class _Charge:
    """One admitted request in the window: when, and the tokens it is charged."""

    __slots__ = ("at", "tokens")

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens


class _Log:
    """A limited tenant's admitted requests of the last :data:`WINDOW_S` seconds."""

    __slots__ = ("charges", "tokens")

    def __init__(self) -> None:
        self.charges: deque[_Charge] = deque()
        self.tokens = 0

    def expire(self, now: float) -> None:
        horizon = now - WINDOW_S
        charges = self.charges
        while charges and charges[0].at <= horizon:
            self.tokens -= charges.popleft().tokens

    def reset_in(self, now: float) -> float:
        """Seconds until the window is empty again."""
        return self.charges[-1].at + WINDOW_S - now if self.charges else 0.0

    def tokens_free_in(self, need: int, limit: int, now: float) -> float:
        """Seconds until ``need`` more tokens fit within ``limit`` (or the window is empty)."""
        left = self.tokens
        for charge in self.charges:
            left -= charge.tokens
            if left <= 0 or left + need <= limit:
                return charge.at + WINDOW_S - now
        return 0.0


def _headers(tenant: Tenant, entries: _Log | None, now: float) -> dict[str, str]:
    reset = duration(entries.reset_in(now)) if entries is not None else "0s"
    out: dict[str, str] = {}
    if tenant.rpm is not None:
        used = len(entries.charges) if entries is not None else 0
        out["x-ratelimit-limit-requests"] = str(tenant.rpm)
        out["x-ratelimit-remaining-requests"] = str(max(0, tenant.rpm - used))
        out["x-ratelimit-reset-requests"] = reset
    if tenant.tpm is not None:
        used = entries.tokens if entries is not None else 0
        out["x-ratelimit-limit-tokens"] = str(tenant.tpm)
        out["x-ratelimit-remaining-tokens"] = str(max(0, tenant.tpm - used))
        out["x-ratelimit-reset-tokens"] = reset
    return out


class Grant:
    """An admitted request's place in its tenant's window: its headers, its settlement."""

    __slots__ = ("_charge", "_limiter", "_settled", "_tenant")

    def __init__(self, limiter: RateLimiter | None, tenant: Tenant, charge: _Charge | None) -> None:
        self._limiter = limiter
        self._tenant = tenant
        self._charge = charge
        self._settled = False

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers as of now; ``{}`` for a tenant without limits."""
        if self._limiter is None:
            return {}
        return self._limiter.headers(self._tenant)

    def settle(self, actual_tokens: int | None) -> None:
        """Charge the answer's actual tokens instead of the estimate (once; None keeps it)."""
        if self._settled or self._limiter is None or self._charge is None:
            return
        self._settled = True
        if actual_tokens is not None:
            self._limiter.recharge(self._tenant, self._charge, max(0, actual_tokens))


UNLIMITED = Grant(None, Tenant(name="unlimited"), None)
"""The grant of every tenant without limits: no headers, nothing to settle."""


class RateLimiter:
    """The windows of every limited tenant of this router process."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[str, _Log] = {}
        self._next_sweep = clock() + WINDOW_S

    def admit(self, tenant: Tenant, estimate: int) -> Grant:
        """Count the request (and ``estimate`` tokens) or raise :class:`RateLimited`."""
        if tenant.rpm is None and tenant.tpm is None:
            return UNLIMITED
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        entries = self._logs.get(tenant.name)
        if entries is None:
            entries = self._logs[tenant.name] = _Log()
        else:
            entries.expire(now)
        estimate = max(0, estimate)
        if tenant.rpm is not None and len(entries.charges) >= tenant.rpm:
            raise RateLimited(
                f"Rate limit reached for requests per minute (rpm) of key '{tenant.name}': "
                f"limit {tenant.rpm}, used {len(entries.charges)}",
                retry_after=entries.charges[0].at + WINDOW_S - now,
                headers=_headers(tenant, entries, now),
            )
        tpm = tenant.tpm
        if tpm is not None and entries.tokens > 0 and entries.tokens + estimate > tpm:
            raise RateLimited(
                f"Rate limit reached for tokens per minute (tpm) of key '{tenant.name}': "
                f"limit {tpm}, used {entries.tokens}, requested about {estimate}",
                retry_after=entries.tokens_free_in(estimate, tpm, now),
                headers=_headers(tenant, entries, now),
            )
        charge = _Charge(now, estimate)
        entries.charges.append(charge)
        entries.tokens += estimate
        return Grant(self, tenant, charge)

    def headers(self, tenant: Tenant) -> dict[str, str]:
        """The tenant's ``x-ratelimit-*`` headers as of now."""
        now = self._clock()
        entries = self._logs.get(tenant.name)
        if entries is not None:
            entries.expire(now)
        return _headers(tenant, entries, now)

    def recharge(self, tenant: Tenant, charge: _Charge, tokens: int) -> None:
        """Replace ``charge``'s tokens by ``tokens``. A charge already out of the window
        (a request longer than the window) is charged anew, now: its tokens were used."""
        now = self._clock()
        entries = self._logs.get(tenant.name)
        if entries is not None:
            entries.expire(now)
        if entries is not None and entries.charges and entries.charges[0].at <= charge.at:
            entries.tokens += tokens - charge.tokens
            charge.tokens = tokens
            return
        if tokens == 0:
            return
        if entries is None:
            entries = self._logs[tenant.name] = _Log()
        late = _Charge(now, tokens)
        entries.charges.append(late)
        entries.tokens += tokens
        charge.tokens = 0

    def tenants(self) -> int:
        """Tenants with a window held (for tests: memory stays bounded)."""
        return len(self._logs)

    def _sweep(self, now: float) -> None:
        """Drop the windows that have emptied (tenants gone quiet, or removed by a reload)."""
        for name, entries in list(self._logs.items()):
            entries.expire(now)
            if not entries.charges:
                del self._logs[name]
        self._next_sweep = now + WINDOW_S


GRANT_KEY = web.RequestKey("llmsvc.ratelimit", Grant)
"""Where the proxy leaves an admitted request's :class:`Grant`."""


async def rate_headers_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """``app.on_response_prepare``: the grant's headers on every answer to its request
    (the router's own limits replace any an upstream sent)."""
    add_rate_headers(request, response)


def add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The grant's headers on ``response``, if its request has a grant (what
    :func:`rate_headers_on_prepare` does, callable from another prepare handler)."""
    grant = request.get(GRANT_KEY)
    if grant is not None:
        response.headers.update(grant.headers())


def estimate_tokens(info: RoutingInfo) -> int:
    """The prompt's tokens as guessed at admission: its characters / 4 (token ids counted
    one each), at least 1. Only the texts' lengths are read."""
    return max(1, _prompt_size(info.payload) // CHARS_PER_TOKEN)


def _prompt_size(payload: dict[str, Any]) -> int:
    """Characters of the prompt texts (chat messages, ``prompt``, ``input``); a token id
    counts :data:`CHARS_PER_TOKEN` characters."""
    size = 0
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                size += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        size += len(part["text"])
        return size
    return _texts_size(payload.get("prompt", payload.get("input")))


def _texts_size(prompt: Any) -> int:
    """A prompt, a batch of prompts, token ids or a batch of those (nothing deeper)."""
    if isinstance(prompt, str):
        return len(prompt)
    if not isinstance(prompt, list):
        return 0
    size = 0
    for part in prompt:
        if isinstance(part, str):
            size += len(part)
        elif isinstance(part, int):
            size += CHARS_PER_TOKEN
        elif isinstance(part, list):
            size += CHARS_PER_TOKEN * sum(1 for t in part if isinstance(t, int))
    return size
