"""``llmsvc validate``: check a running stack end to end, as the seeds' validate_integration did.

Each check prints one line (✓ or ✗ with the reason); the exit status is the
number of failed checks capped at 1. Nothing it does disturbs the stack: the
registration check uses a record of a type the router never routes to.

"Authenticated by default" is checked too: with a registry write token, an
anonymous registry write and read must be refused (401); with a router admin
token, an anonymous ``GET /stats`` must be refused and the token must open it.
Without those tokens the stack is open by choice, and a "!" line says so.

The seeds' load-balancing pattern is checked as they checked it: four requests
[non-stream, non-stream, stream, stream] to a model two engines serve must go, under
round robin, 1st and 3rd to one engine and 2nd and 4th to the other (the router's
``X-Llmsvc-Backend`` answer header names the engine); under another strategy the
order is that strategy's business, so only the spread is checked and a line says so.
And the router must follow the registry: a stand-in engine (``llmsvc sim-engine`` on
a free port, a model of its own) that validate starts, registers, sees routed to,
deregisters, sees no longer routed to, and stops.

An unknown model must be 404 ``model_not_found`` (not 503, which clients retry), and
the router's ``GET /demand`` (what an autoscaler reads) must list every model. A stack
with the batch service must answer ``GET /v1/batches`` through the router (the router's
``--batch-url`` and the shared token both right).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import IO, Any

import httpx
import orjson
from rich.console import Console
from rich.markup import escape

from llmsvc.core.registry_client import LEASE_HEADER

PROBE_TYPE = "llmsvc-validate"
OPENAI_API = "openai-api"
ROUND_ROBIN = "round_robin"
ENGINE_START_TIMEOUT = 30.0
"""Seconds the stand-in engine may take to answer /health."""


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
    strategy: str | None = None
    """The router's strategy; the exact round-robin order is checked only under round_robin
    (None: not known, so only the spread)."""
    route_timeout: float = 30.0
    """Seconds the router may take to start or stop routing to the stand-in engine."""
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
        if self.registry_url:  # last: its model comes and goes from the router's list
            self.check(
                "stand-in engine: registered → routed → deregistered → no longer routed",
                self._engine_round_trip,
            )
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
        """The seeds' pattern [non-stream, non-stream, stream, stream]: which backends served.

        Under round robin with n engines the i-th request goes where the (i + n)-th does
        and the first n go to n different engines (two engines: 1st and 3rd to one, 2nd
        and 4th to the other); under another strategy only that several served.
        """
        backends = []
        with self._router() as client:
            for i, stream in enumerate((False, False, True, True)):
                body = {
                    "model": model,
                    # a prompt of its own each: a cache-aware strategy has no reason to stick
                    "messages": [{"role": "user", "content": f"validate {i} {uuid.uuid4().hex}"}],
                    "max_tokens": 2,
                    "stream": stream,
                }
                with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    resp.read()
                    _ok(resp)
                    backends.append(resp.headers.get("x-llmsvc-backend", "?"))
        shown = " → ".join(backends)
        if "?" in backends:
            raise CheckFailed(f"an answer without X-Llmsvc-Backend: {shown}")
        weights = self._weights(model) if self.registry_url else [1] * len(set(backends))
        count = len(weights)
        if count < 2:
            return f"{shown} (one engine serves it)"
        if self.strategy != ROUND_ROBIN or len(set(weights)) > 1:
            why = (
                f"the router runs {self.strategy or 'an unknown strategy'} (not round_robin)"
                if self.strategy != ROUND_ROBIN
                else f"its engines' weights differ ({', '.join(map(str, weights))})"
            )
            self.note(f"[{model}] {why}: checking only that requests spread, not their order")
            if len(set(backends)) < 2:
                raise CheckFailed(f"all requests went to {backends[0]} though {count} serve it")
            return shown
        cycle = min(count, len(backends))
        order_ok = len(set(backends[:cycle])) == cycle and all(
            backends[i] == backends[i - cycle] for i in range(cycle, len(backends))
        )
        if not order_ok:
            raise CheckFailed(
                f"round robin over {count} engines, but [non-stream, non-stream, stream, "
                f"stream] went {shown}"
            )
        return f"{shown} (round robin over {count})"

    def _engine_round_trip(self) -> str:
        """Start a stand-in engine, register it, see it routed to, deregister it, see it gone.

        It serves a model of its own, so no client's traffic reaches it, and it is stopped
        (and deregistered) whatever happens.
        """
        model = f"validate-probe-{uuid.uuid4().hex[:8]}"
        name = f"{model}@127.0.0.1"
        port = _free_port()
        output = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
        engine = subprocess.Popen(
            [sys.executable, "-m", "llmsvc", "sim-engine", "--host", "127.0.0.1",
             "--port", str(port), "--model-name", model],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        lease: str | None = None
        try:
            _wait_engine(engine, f"http://127.0.0.1:{port}/health", output)
            record = {
                "name": name,
                "host": "127.0.0.1",
                "port": port,
                "type": OPENAI_API,
                "metadata": {"models": [model]},
            }
            with self._registry() as registry:
                created = registry.post("/services", json=record)
                _ok(created, 201)
                lease = created.json().get("lease") or ""
                took = self._until_routed(model, name, routed=True)
                _ok(registry.delete(f"/services/{name}", headers={LEASE_HEADER: lease}))
                lease = None
                gone = self._until_routed(model, name, routed=False)
        finally:
            if lease is not None:
                with contextlib.suppress(httpx.HTTPError), self._registry() as registry:
                    registry.delete(f"/services/{name}", headers={LEASE_HEADER: lease})
            engine.terminate()
            try:
                engine.wait(10)
            except subprocess.TimeoutExpired:
                engine.kill()
                engine.wait()
            output.close()
        return f"{model} on :{port}: routed after {took:.1f}s, gone {gone:.1f}s after removal"

    def _until_routed(self, model: str, name: str, *, routed: bool) -> float:
        """Seconds until the router routes ``model`` to ``name`` (or answers 404 for it)."""
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        started = time.monotonic()
        deadline = started + self.route_timeout
        last = "no answer"
        with self._router() as client:
            while time.monotonic() < deadline:
                resp = client.post("/v1/chat/completions", json=body)
                backend = resp.headers.get("x-llmsvc-backend")
                if routed and resp.status_code == 200 and backend == name:
                    return time.monotonic() - started
                if not routed and resp.status_code == 404:
                    return time.monotonic() - started
                last = f"{resp.status_code} via {backend or '-'}: {resp.text[:120]}"
                time.sleep(0.2)
        state = "routed to" if routed else "no longer routed to"
        raise CheckFailed(f"not {state} after {self.route_timeout:.0f}s (last: {last})")

    def _weights(self, model: str) -> list[int]:
        """The weights of the healthy engines the registry lists for ``model``."""
        with self._registry() as client:
            resp = client.get(
                "/services", params={"type": OPENAI_API, "model": model, "healthy": "true"}
            )
        return [int(s.get("weight", 1)) for s in _ok_json(resp)["services"]]

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_engine(engine: subprocess.Popen[bytes], url: str, output: IO[bytes]) -> None:
    """Until the stand-in engine answers ``url``; :class:`CheckFailed` if it ends or is slow."""
    deadline = time.monotonic() + ENGINE_START_TIMEOUT
    while time.monotonic() < deadline:
        if engine.poll() is not None:
            output.seek(0)
            tail = output.read().decode(errors="replace").strip().splitlines()[-1:] or ["-"]
            raise CheckFailed(f"the stand-in engine exited ({engine.returncode}): {tail[0]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise CheckFailed(f"the stand-in engine did not answer {url} in {ENGINE_START_TIMEOUT:.0f}s")


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
