"""``llmsvc validate``: check a running stack end to end, as the seeds' validate_integration did.

Each check prints one line (✓ or ✗ with the reason); the exit status is the
number of failed checks capped at 1. Nothing it does disturbs the stack: the
registration check uses a record of a type the router never routes to.

"Authenticated by default" is checked too: with a registry write token, an
anonymous registry write and read must be refused (401); with a router admin
token, an anonymous ``GET /stats`` must be refused and the token must open it.
Without those tokens the stack is open by choice, and a "!" line says so.

An unknown model must be 404 ``model_not_found`` (not 503, which clients retry), and
the router's ``GET /demand`` (what an autoscaler reads) must list every model. A stack
with the batch service must answer ``GET /v1/batches`` through the router (the router's
``--batch-url`` and the shared token both right).
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

from llmsvc.core.registry_client import LEASE_HEADER

PROBE_TYPE = "llmsvc-validate"


class CheckFailed(Exception):
    pass


@dataclass
class Validator:
    router_url: str
    registry_url: str | None
    api_key: str | None = None
    registry_token: str | None = None
    router_admin_token: str | None = None
    timeout: float = 60.0
    batch: bool = False
    """The stack runs the batch service: check that the router reaches it."""
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

    def note(self, text: str) -> None:
        """A line that is not a failure: something the stack does by choice."""
        self.console.print(f"[yellow]![/] {escape(text)}")

    def _registry(self, *, authenticated: bool = True) -> httpx.Client:
        token = self.registry_token if authenticated else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=str(self.registry_url), headers=headers, timeout=10)

    def _router(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.router_url, headers=headers, timeout=self.timeout)

    def run(self) -> int:
        if self.registry_url:
            self.check("registry healthy", lambda: _ok(httpx.get(f"{self.registry_url}/health")))
            self.check("registry lists engines", self._engines)
            self.check("registration round trip", self._registration)
            self.check_registry_auth()
        self.check("router healthy", lambda: _ok(httpx.get(f"{self.router_url}/health")))
        self.check_router_auth()
        models: list[str] = []
        self.check("router lists models", lambda: self._models(models))
        for model in models:
            self.check(f"[{model}] chat completion", partial(self._chat, model))
            self.check(f"[{model}] streamed chat completion", partial(self._stream, model))
            self.check(f"[{model}] completion", partial(self._completion, model))
            self.check(f"[{model}] load spread", partial(self._spread, model))
        self.check("unknown model answers 404", self._unknown_model)
        self.check("missing model answers 400", self._missing_model)
        self.check("router /demand lists every model", partial(self._demand, models))
        if self.batch:
            self.check_batch()
        return 1 if self.failures else 0

    def check_batch(self) -> None:
        """The router forwards ``/v1/batches`` to the batch service, which takes its token."""
        self.check("router reaches the batch service (GET /v1/batches)", self._batches)

    def _batches(self) -> str:
        with self._router() as client:
            resp = client.get("/v1/batches", params={"limit": 1})
        body = _ok_json(resp)
        if not isinstance(body, dict) or body.get("object") != "list":
            raise CheckFailed(f"not a list object: {str(body)[:200]}")
        return "200, a list"

    def check_registry_auth(self) -> None:
        if not self.registry_token:
            self.note("no registry write token given: not checking that anonymous writes fail")
            return
        self.check("registry refuses an anonymous write", self._anonymous_write)
        self.check("registry refuses an anonymous read", self._anonymous_read)

    def _anonymous_read(self) -> str:
        with self._registry(authenticated=False) as anonymous:
            return _refused(anonymous.get("/services"))

    def _anonymous_write(self) -> str:
        name = f"validate-intruder-{uuid.uuid4().hex[:8]}"
        record = {"name": name, "host": "127.0.0.1", "port": 9, "type": PROBE_TYPE}
        with self._registry(authenticated=False) as anonymous:
            resp = anonymous.post("/services", json=record)
        if resp.status_code in (200, 201):  # it got in: take the probe out again
            with self._registry() as client:
                lease = resp.json().get("lease")
                client.delete(f"/services/{name}", headers={LEASE_HEADER: lease} if lease else {})
        return _refused(resp)

    def check_router_auth(self) -> None:
        if not self.router_admin_token:
            self.note("no router admin token given: not checking that /stats needs one")
            return
        self.check(
            "router refuses /stats without the admin token",
            lambda: _refused(httpx.get(f"{self.router_url}/stats", timeout=self.timeout)),
        )
        headers = {"Authorization": f"Bearer {self.router_admin_token}"}
        self.check(
            "router admin token opens /stats",
            lambda: _ok(httpx.get(f"{self.router_url}/stats", headers=headers)),
        )

    def _engines(self) -> str:
        with self._registry() as client:
            resp = client.get("/services", params={"type": "openai-api"})
        services = _ok_json(resp)["services"]
        healthy = [s["name"] for s in services if s.get("status") == "healthy"]
        standby = [s["name"] for s in services if s.get("status") == "standby"]
        if not healthy and not standby:
            raise CheckFailed("no healthy or standby openai-api service is registered")
        found = [f"{len(healthy)} healthy: {', '.join(healthy)}"] if healthy else []
        if standby:  # the router wakes one for the requests below
            found.append(f"{len(standby)} in standby: {', '.join(standby)}")
        return "; ".join(found)

    def _registration(self) -> str:
        name = f"validate-probe-{uuid.uuid4().hex[:8]}"
        record = {"name": name, "host": "127.0.0.1", "port": 9, "type": PROBE_TYPE}
        with self._registry() as c:
            created = c.post("/services", json=record)
            _ok(created, 201)
            lease = created.json().get("lease")
            _ok(c.get(f"/services/{name}"))
            _ok(c.delete(f"/services/{name}", headers={LEASE_HEADER: lease} if lease else {}))
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
        with self._registry() as client:
            resp = client.get(
                "/services", params={"type": "openai-api", "model": model, "healthy": "true"}
            )
        return int(_ok_json(resp)["total"])

    def _unknown_model(self) -> str:
        model = f"no-such-model-{uuid.uuid4().hex[:6]}"
        with self._router() as client:
            resp = client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": ""}]},
            )
        expected = f"The model `{model}` does not exist or you do not have access to it."
        _error_shape(resp, 404, expected)
        if (code := resp.json()["error"]["code"]) != "model_not_found":
            raise CheckFailed(f"code {code!r}, expected 'model_not_found'")
        return "OpenAI error shape, model_not_found"

    def _demand(self, models: list[str]) -> str:
        """Per model: in flight, queued (by class), held, their sum (with the admin token)."""
        token = self.router_admin_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = _ok_json(httpx.get(f"{self.router_url}/demand", headers=headers, timeout=10))
        listed = data["models"]
        missing = [m for m in models if m not in listed]
        if missing:
            raise CheckFailed(f"/demand does not list {', '.join(missing)}")
        keys = {"in_flight", "queued", "queued_by_priority", "held", "demand"}
        for model, entry in listed.items():
            if not isinstance(entry, dict) or not keys <= entry.keys():
                raise CheckFailed(f"/demand's {model!r} lacks one of {', '.join(sorted(keys))}")
        if not isinstance(data["total"], int):
            raise CheckFailed(f"/demand's total is not a number: {data['total']!r}")
        return f"total {data['total']}"

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


def _refused(resp: httpx.Response) -> str:
    """Check a 401 in the OpenAI shape with ``WWW-Authenticate: Bearer``."""
    _error_shape(resp, 401)
    if not resp.headers.get("www-authenticate", "").startswith("Bearer"):
        raise CheckFailed("a 401 without 'WWW-Authenticate: Bearer'")
    return "401"


def _error_shape(resp: httpx.Response, status: int, message: str | None = None) -> None:
    _ok(resp, status)
    error = resp.json().get("error")
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= error.keys():
        raise CheckFailed(f"not the OpenAI error shape: {resp.text[:200]}")
    if message is not None and error["message"] != message:
        raise CheckFailed(f"message {error['message']!r}, expected {message!r}")
