"""Tenants' limits through the real router and the official ``openai`` client, real clocks:
``rpm`` gives exactly its number of answers and then a ``RateLimitError`` the client can
retry after ``Retry-After``; the ``x-ratelimit-*`` headers count down; ``tpm`` is charged
the answers' ``usage`` (streams included); ``models`` refuses other models with 403; and
``max_priority`` caps the class a key asks for."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import openai
import orjson
import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionMessageParam

import metrics
from llmsvc.core.wire import parse_routing
from llmsvc.router.ratelimit import estimate_tokens
from procs import HOST, ProcGroup, free_port, start_sim_engine

KEYS = """
- {name: rpm-three, key: k-rpm, rpm: 3}
- {name: tpm-hundred, key: k-tpm, tpm: 100}
- {name: only-m, key: k-only-m, models: [m]}
- {name: low, key: k-low, max_priority: sheddable}
- {name: open, key: k-open}
"""
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "count the tokens of this prompt"}
]
DURATION = re.compile(r"^(\d+h)?(\d+m)?\d+(\.\d+)?s$|^\d+ms$")


@dataclass(frozen=True)
class Stack:
    base: str

    def client(self, key: str, *, max_retries: int = 0) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=max_retries)


@pytest.fixture(scope="module")
def stack(module_spawn: ProcGroup, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """Two engines (models ``m`` and ``n``) behind one router with the keys above."""
    _, port_m = start_sim_engine(module_spawn, "e-m")
    _, port_n = start_sim_engine(module_spawn, "e-n", "--model-name", "n")
    folder = tmp_path_factory.mktemp("limits")
    static = folder / "services.json"
    static.write_bytes(
        orjson.dumps(
            [
                {"name": "e-m", "host": HOST, "port": port_m, "metadata": {"models": ["m"]}},
                {"name": "e-n", "host": HOST, "port": port_n, "metadata": {"models": ["n"]}},
            ]
        )
    )
    keys = Path(folder / "keys.yaml")
    keys.write_text(KEYS)
    port = free_port()
    router = module_spawn(
        "router", "router", "--port", str(port), "--static-services", str(static),
        "--api-keys-file", str(keys),
    )  # fmt: skip
    base = f"http://{HOST}:{port}"
    router.wait_http(f"{base}/health")
    return Stack(base=base)


@pytest.mark.slow
def test_rpm_exact_headers_and_retry_after(stack: Stack) -> None:
    client = stack.client("k-rpm")
    remaining, resets = [], []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=PROMPT, max_tokens=2
        )
        raw.parse()
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        resets.append(raw.headers["x-ratelimit-reset-requests"])
        assert "x-ratelimit-limit-tokens" not in raw.headers  # no tpm for this key
    assert remaining == ["2", "1", "0"]
    assert all(DURATION.match(r) for r in resets), resets
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="m", messages=PROMPT, max_tokens=2)
    refused = info.value
    assert refused.status_code == 429 and refused.code == "rate_limit_exceeded"
    retry_after = int(refused.response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert refused.response.headers["x-ratelimit-remaining-requests"] == "0"
    # The openai client honours Retry-After (up to 60 s): with retries it gets through.
    started = time.monotonic()
    chat = stack.client("k-rpm", max_retries=2).chat.completions.create(
        model="m", messages=PROMPT, max_tokens=2
    )
    assert chat.choices[0].message.content
    assert time.monotonic() - started >= retry_after - 1.5


def ask(client: openai.OpenAI, *, stream: bool) -> CompletionUsage | openai.RateLimitError:
    """One answer's usage (a stream's from its last event), or the 429 it got."""
    try:
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model="m", messages=PROMPT, max_tokens=30, stream=True,
                    stream_options={"include_usage": True},
                )
            )  # fmt: skip
            usage = chunks[-1].usage
        else:
            usage = client.chat.completions.create(model="m", messages=PROMPT, max_tokens=30).usage
    except openai.RateLimitError as exc:
        return exc
    assert usage is not None
    return usage


def test_tpm_charged_from_usage(stack: Stack) -> None:
    client = stack.client("k-tpm")
    estimate = estimate_tokens(parse_routing(orjson.dumps({"model": "m", "messages": PROMPT})))
    used = answered = 0
    for i in range(12):
        admissible = used == 0 or used + estimate <= 100
        outcome = ask(client, stream=i == 0)
        if isinstance(outcome, openai.RateLimitError):
            break
        assert admissible, f"admitted at {used} tokens used, estimate {estimate}"
        assert outcome.total_tokens > 30
        used += outcome.total_tokens
        answered += 1
    else:
        raise AssertionError("tpm never refused a request")
    assert not admissible, f"refused at {used} tokens used"
    assert outcome.code == "rate_limit_exceeded" and "tpm" in outcome.message
    assert outcome.response.headers["x-ratelimit-limit-tokens"] == "100"
    assert outcome.response.headers["x-ratelimit-remaining-tokens"] == str(max(0, 100 - used))
    assert 1 <= int(outcome.response.headers["Retry-After"]) <= 60
    # Each answer is charged its usage (over 30 tokens), not the estimate: few fit in 100.
    assert 2 <= answered <= 4, (answered, used)


def test_models_allowed(stack: Stack) -> None:
    limited = stack.client("k-only-m")
    assert limited.chat.completions.create(model="m", messages=PROMPT, max_tokens=2).choices
    with pytest.raises(openai.PermissionDeniedError) as info:
        limited.chat.completions.create(model="n", messages=PROMPT, max_tokens=2)
    assert info.value.status_code == 403 and info.value.code == "model_not_allowed"
    with pytest.raises(openai.NotFoundError):  # an unknown model is 404 for every key
        limited.chat.completions.create(model="zzz", messages=PROMPT, max_tokens=2)
    # Another key may use n, and no limit means no rate-limit headers.
    raw = stack.client("k-open").chat.completions.with_raw_response.create(
        model="n", messages=PROMPT, max_tokens=2
    )
    raw.parse()
    assert not [h for h in raw.headers if h.startswith("x-ratelimit-")]


def test_max_priority_caps_the_class(stack: Stack) -> None:
    client = stack.client("k-low")
    before = metrics.matching(
        metrics.scrape(stack.base), "llmsvc_router_tenant_requests_total", tenant="low"
    )
    assert not before
    for asked in ("critical", "standard", "batch"):
        client.chat.completions.create(
            model="m", messages=PROMPT, max_tokens=2,
            extra_headers={"X-Llmsvc-Priority": asked},
        )  # fmt: skip
    text = metrics.scrape(stack.base)
    series = "llmsvc_router_tenant_requests_total"
    assert metrics.value(text, series, tenant="low", priority="sheddable") == 2
    assert metrics.value(text, series, tenant="low", priority="batch") == 1
    assert not metrics.matching(text, series, tenant="low", priority="critical")
