"""The per tenant limiter with an injected clock: the sliding window's edges, the headers
counting down, tokens settled from usage, Retry-After, bounded memory, the estimate."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from llmsvc.core.app import Route, make_app
from llmsvc.core.jsonio import json_response
from llmsvc.core.wire import parse_routing
from llmsvc.router.ratelimit import (
    GRANT_KEY,
    UNLIMITED,
    WINDOW_S,
    RateLimited,
    RateLimiter,
    duration,
    estimate_tokens,
    rate_headers_on_prepare,
)
from llmsvc.router.tenants import Tenant
from test_router_tenants import AiohttpClient


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_unlimited_tenant_costs_nothing(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    for _ in range(1000):
        grant = limiter.admit(Tenant(name="free"), 10**6)
        assert grant is UNLIMITED
    assert grant.headers() == {}
    grant.settle(5)
    assert limiter.tenants() == 0


def test_rpm_window_edges(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    tenant = Tenant(name="a", rpm=6)
    for _ in range(6):
        limiter.admit(tenant, 1)
        clock.now += 5  # requests at 0, 5, ..., 25 s
    with pytest.raises(RateLimited) as info:
        limiter.admit(tenant, 1)  # at 30 s: the 7th in the minute
    error = info.value
    assert (error.status, error.code, error.type) == (
        429,
        "rate_limit_exceeded",
        "rate_limit_error",
    )
    assert error.headers["Retry-After"] == "30"  # the first leaves the window at 60 s
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    clock.now = 1000.0 + WINDOW_S - 0.001  # just before the first one leaves
    with pytest.raises(RateLimited):
        limiter.admit(tenant, 1)
    clock.now = 1000.0 + WINDOW_S  # exactly 60 s later: one place
    limiter.admit(tenant, 1)
    with pytest.raises(RateLimited) as info:
        limiter.admit(tenant, 1)
    assert info.value.headers["Retry-After"] == "5"


def test_rejected_requests_are_not_counted(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    tenant = Tenant(name="a", rpm=1)
    limiter.admit(tenant, 1)
    for _ in range(50):
        clock.now += 1
        with pytest.raises(RateLimited):
            limiter.admit(tenant, 1)
    clock.now += 10  # 61 s after the one admitted request
    limiter.admit(tenant, 1)


def test_headers_count_down(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    tenant = Tenant(name="a", rpm=3, tpm=100)
    seen = []
    for _ in range(3):
        grant = limiter.admit(tenant, 10)
        seen.append(grant.headers())
        clock.now += 0.5
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["2", "1", "0"]
    assert [h["x-ratelimit-remaining-tokens"] for h in seen] == ["90", "80", "70"]
    assert {h["x-ratelimit-limit-requests"] for h in seen} == {"3"}
    assert {h["x-ratelimit-limit-tokens"] for h in seen} == {"100"}
    assert seen[0]["x-ratelimit-reset-requests"] == "1m0s"  # back to full 60 s later
    assert grant.headers()["x-ratelimit-reset-tokens"] == "59.5s"
    clock.now += WINDOW_S
    assert grant.headers()["x-ratelimit-remaining-requests"] == "3"
    assert grant.headers()["x-ratelimit-reset-requests"] == "0s"


def test_only_the_limits_a_tenant_has() -> None:
    limiter = RateLimiter()
    requests = limiter.admit(Tenant(name="r", rpm=5), 1).headers()
    assert set(requests) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    tokens = limiter.admit(Tenant(name="t", tpm=5), 1).headers()
    assert {k.rsplit("-", 1)[1] for k in tokens} == {"tokens"}


def test_tpm_estimate_then_settle(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    tenant = Tenant(name="a", tpm=100)
    first = limiter.admit(tenant, 10)
    first.settle(60)  # the answer's usage: 60 tokens, not 10
    first.settle(1)  # idempotent: the first settlement stands
    assert first.headers()["x-ratelimit-remaining-tokens"] == "40"
    second = limiter.admit(tenant, 10)  # 60 + 10 <= 100: admitted
    second.settle(None)  # no usage in the answer: the estimate stays
    assert second.headers()["x-ratelimit-remaining-tokens"] == "30"
    third = limiter.admit(tenant, 20)
    third.settle(50)  # crosses the limit: within one request's accuracy
    clock.now += 10
    with pytest.raises(RateLimited) as info:
        limiter.admit(tenant, 5)
    assert info.value.headers["x-ratelimit-remaining-tokens"] == "0"
    # Room for 5 more once the first (60) leaves the window, 50 s from now.
    assert info.value.headers["Retry-After"] == "50"
    clock.now += 50
    limiter.admit(tenant, 5)


def test_tpm_lone_large_request_admitted_on_an_empty_window(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    tenant = Tenant(name="a", tpm=100)
    limiter.admit(tenant, 500)  # larger than the limit, but nothing else in the window
    with pytest.raises(RateLimited) as info:
        limiter.admit(tenant, 1)
    assert info.value.headers["Retry-After"] == "60"


def test_settle_after_the_window_charges_now(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    tenant = Tenant(name="a", tpm=100)
    grant = limiter.admit(tenant, 10)
    clock.now += 90  # a long stream: its estimate left the window
    assert grant.headers()["x-ratelimit-remaining-tokens"] == "100"
    grant.settle(80)
    assert grant.headers()["x-ratelimit-remaining-tokens"] == "20"
    with pytest.raises(RateLimited):
        limiter.admit(tenant, 30)


def test_retry_after_is_whole_seconds_rounded_up(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    tenant = Tenant(name="a", rpm=1)
    limiter.admit(tenant, 1)
    clock.now += 59.7
    with pytest.raises(RateLimited) as info:
        limiter.admit(tenant, 1)
    assert info.value.headers["Retry-After"] == "1"
    assert "try again in 1s" in info.value.message and "'a'" in info.value.message


def test_memory_is_bounded(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    for i in range(100):
        limiter.admit(Tenant(name=f"t{i}", rpm=5), 1)
    assert limiter.tenants() == 100
    clock.now += WINDOW_S + 1  # every window empties; the next admission sweeps them
    limiter.admit(Tenant(name="t0", rpm=5), 1)
    assert limiter.tenants() == 1


def test_limits_changed_by_a_reload_apply_to_the_same_window(clock: Clock) -> None:
    limiter = RateLimiter(clock=clock)
    for _ in range(3):
        limiter.admit(Tenant(name="a", rpm=10), 1)
    with pytest.raises(RateLimited):
        limiter.admit(Tenant(name="a", rpm=3), 1)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.012, "12ms"),
        (0.0001, "1ms"),
        (1, "1s"),
        (59.5, "59.5s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (61.25, "1m1.25s"),
        (3723, "1h2m3s"),
    ],
)
def test_duration_as_openai_writes_it(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}, 100),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"text": "y" * 40}]}]},
            10,
        ),
        ({"model": "m", "prompt": "z" * 80}, 20),
        ({"model": "m", "prompt": ["a" * 40, "b" * 40]}, 20),
        ({"model": "m", "prompt": [1, 2, 3, 4, 5]}, 5),
        ({"model": "m", "prompt": [[1, 2], [3]]}, 3),
        ({"model": "m", "input": "w" * 8}, 2),
        ({"model": "m"}, 1),
        ({"model": "m", "messages": "nonsense"}, 1),
    ],
)
def test_estimate_tokens(body: dict[str, object], tokens: int) -> None:
    assert estimate_tokens(parse_routing(json.dumps(body).encode())) == tokens


async def test_headers_on_every_answer(aiohttp_client: AiohttpClient) -> None:
    limiter = RateLimiter()
    tenant = Tenant(name="a", rpm=2)

    async def handler(request: web.Request) -> web.StreamResponse:
        request[GRANT_KEY] = limiter.admit(tenant, 1)  # raises the 429 on the third
        return json_response({"ok": True})

    app = make_app(title="t", version="0", routes=[Route("GET", "/x", handler, "x")])
    app.on_response_prepare.append(rate_headers_on_prepare)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    remaining = []
    for _ in range(2):
        answer = await client.get("/x")
        assert answer.status == 200
        remaining.append(answer.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["1", "0"]
    refused = await client.get("/x")
    assert refused.status == 429
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert int(refused.headers["Retry-After"]) >= 59
    assert (await refused.json())["error"]["code"] == "rate_limit_exceeded"
