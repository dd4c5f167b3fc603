"""``llmsvc validate``: check a running stack end to end, as the seeds' validate_integration did.

Each check prints one line (✓ or ✗ with the reason); the exit status is the
number of failed checks capped at 1. Nothing it does disturbs the stack: the
registration check uses a record of a type the router never routes to.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.markup import escape

PROBE_TYPE = "llmsvc-validate"


class CheckFailed(Exception):
    pass


@dataclass
class Validator:
    router_url: str
    registry_url: str | None
    api_key: str | None = None
    registry_token: str | None = None
    timeout: float = 60.0
    console: Console = field(default_factory=Console)
    failures: int = 0

    def check(self, title: str, fn: Callable[[], str | None]) -> None:
        try:
            detail = fn()
        except (CheckFailed, httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            self.failures += 1
            self.console.print(f"[red]✗[/] {escape(title)}: {escape(str(exc))}")
        else:
            extra = f" [dim]({escape(detail)})[/]" if detail else ""
            self.console.print(f"[green]✓[/] {escape(title)}{extra}")

    def _router(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.router_url, headers=headers, timeout=self.timeout)

    def run(self) -> int:
        if self.registry_url:
            self.check("registry healthy", lambda: _ok(httpx.get(f"{self.registry_url}/health")))
            self.check("registry lists engines", self._engines)
            self.check("registration round trip", self._registration)
        self.check("router healthy", lambda: _ok(httpx.get(f"{self.router_url}/health")))
        models: list[str] = []
        self.check("router lists models", lambda: self._models(models))
        for model in models:
            self.check(f"[{model}] chat completion", partial(self._chat, model))
            self.check(f"[{model}] streamed chat completion", partial(self._stream, model))
            self.check(f"[{model}] completion", partial(self._completion, model))
            self.check(f"[{model}] load spread", partial(self._spread, model))
        self.check("unknown model answers 503", self._unknown_model)
        self.check("missing model answers 400", self._missing_model)
        return 1 if self.failures else 0

    def _engines(self) -> str:
        resp = httpx.get(f"{self.registry_url}/services", params={"type": "openai-api"})
        services = _ok_json(resp)["services"]
        healthy = [s["name"] for s in services if s.get("status") == "healthy"]
        if not healthy:
            raise CheckFailed("no healthy openai-api service is registered")
        return f"{len(healthy)} healthy: {', '.join(healthy)}"

    def _registration(self) -> str:
        name = f"validate-probe-{uuid.uuid4().hex[:8]}"
        headers = {"Authorization": f"Bearer {self.registry_token}"} if self.registry_token else {}
        record = {"name": name, "host": "127.0.0.1", "port": 9, "type": PROBE_TYPE}
        with httpx.Client(base_url=str(self.registry_url), headers=headers, timeout=10) as c:
            _ok(c.post("/services", json=record), 201)
            _ok(c.get(f"/services/{name}"))
            _ok(c.delete(f"/services/{name}"))
            if c.get(f"/services/{name}").status_code != 404:
                raise CheckFailed("a deregistered record is still listed")
        return "register, read, deregister"

    def _models(self, out: list[str]) -> str:
        with self._router() as client:
            data = _ok_json(client.get("/v1/models"))["data"]
        out.extend(sorted({m["id"] for m in data}))
        if not out:
            raise CheckFailed("the router serves no model")
        return ", ".join(out)

    def _chat(self, model: str) -> str:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 8,
        }
        with self._router() as client:
            resp = client.post("/v1/chat/completions", json=body)
        data = _ok_json(resp)
        text = data["choices"][0]["message"]["content"]
        return f"{len(text)} chars via {resp.headers.get('x-llmsvc-backend', '?')}"

    def _stream(self, model: str) -> str:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Count"}],
            "max_tokens": 8,
            "stream": True,
        }
        chunks, done, started = 0, False, time.monotonic()
        first: float | None = None
        with (
            self._router() as client,
            client.stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            if resp.status_code != 200:
                raise CheckFailed(f"status {resp.status_code}: {resp.read()[:200]!r}")
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                first = first or time.monotonic() - started
                if line == "data: [DONE]":
                    done = True
                    break
                payload = orjson.loads(line[6:])
                if "error" in payload:
                    raise CheckFailed(f"error event in stream: {payload['error']}")
                chunks += 1
        if not done:
            raise CheckFailed(f"stream ended without [DONE] after {chunks} chunks")
        return f"{chunks} chunks, first after {first or 0:.3f}s"

    def _completion(self, model: str) -> str:
        with self._router() as client:
            data = _ok_json(
                client.post(
                    "/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 4}
                )
            )
        return f"{data['usage']['completion_tokens']} tokens"

    def _spread(self, model: str) -> str:
        """The seeds' pattern [non-stream, non-stream, stream, stream]: which backends served."""
        backends = []
        with self._router() as client:
            for stream in (False, False, True, True):
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 2,
                    "stream": stream,
                }
                with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    resp.read()
                    _ok(resp)
                    backends.append(resp.headers.get("x-llmsvc-backend", "?"))
        distinct = len(set(backends))
        if self.registry_url and distinct < 2 and self._backend_count(model) >= 2:
            raise CheckFailed(f"all requests went to {backends[0]} though several serve {model}")
        return " → ".join(backends)

    def _backend_count(self, model: str) -> int:
        resp = httpx.get(
            f"{self.registry_url}/services",
            params={"type": "openai-api", "model": model, "healthy": "true"},
        )
        return int(_ok_json(resp)["total"])

    def _unknown_model(self) -> str:
        model = f"no-such-model-{uuid.uuid4().hex[:6]}"
        with self._router() as client:
            resp = client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": ""}]},
            )
        expected = f"No healthy services available for model '{model}'"
        _error_shape(resp, 503, expected)
        return "OpenAI error shape"

    def _missing_model(self) -> str:
        with self._router() as client:
            resp = client.post("/v1/chat/completions", json={"messages": []})
        _error_shape(resp, 400)
        return "OpenAI error shape"


def _ok(resp: httpx.Response, status: int = 200) -> None:
    if resp.status_code != status:
        raise CheckFailed(
            f"{resp.request.method} {resp.request.url.path} answered "
            f"{resp.status_code}, expected {status}: {resp.text[:200]}"
        )


def _ok_json(resp: httpx.Response) -> Any:
    _ok(resp)
    return resp.json()


def _error_shape(resp: httpx.Response, status: int, message: str | None = None) -> None:
    _ok(resp, status)
    error = resp.json().get("error")
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= error.keys():
        raise CheckFailed(f"not the OpenAI error shape: {resp.text[:200]}")
    if message is not None and error["message"] != message:
        raise CheckFailed(f"message {error['message']!r}, expected {message!r}")
