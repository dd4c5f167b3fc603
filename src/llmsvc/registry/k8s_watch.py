"""List + watch of one Kubernetes collection over plain HTTP (aiohttp), kept in a dict.

A :class:`Reflector` keeps ``objects`` equal to one collection (a resource in
one namespace, or in all of them):

1. ``LIST`` the collection: the objects, and the ``resourceVersion`` of the list;
2. ``WATCH`` from that version (``?watch=true&resourceVersion=…&allowWatchBookmarks=true
   &timeoutSeconds=…``): newline-delimited JSON events ``ADDED``/``MODIFIED``/``DELETED``
   applied to the dict, ``BOOKMARK`` moving the version on;
3. when the stream ends (the server's timeout) or breaks, wait a short backoff
   and watch again from the last version seen — nothing is listed again;
4. on ``410 Gone`` (the HTTP status, or an ``ERROR`` event with code 410: the
   version is too old to resume from) list again and replace the dict whole.

Every change calls ``on_change`` (the caller rebuilds its records from every
reflector's dict). Failures are logged once per state change (down, then up
again), the retries back off exponentially, and nothing here ever gives up.

Exceptions, each caught by the reflector's loop::

    WatchError          the API answered, but not with what we asked for
     +-- Gone           410: list again
    aiohttp.ClientError, OSError, TimeoutError: the connection failed
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
import orjson
from prometheus_client import Counter
from pydantic import ValidationError

from llmsvc.core.names import INFERENCE_SERVICE_LABEL
from llmsvc.registry.k8s_records import Key, is_ours

log = logging.getLogger("llmsvc.registry.kubernetes")

T = TypeVar("T")


@dataclass(frozen=True)
class Resource:
    """A collection's API path: ``{api}/namespaces/{ns}/{plural}`` or ``{api}/{plural}``."""

    plural: str
    api: str

    def path(self, namespace: str | None) -> str:
        if namespace is None:
            return f"{self.api}/{self.plural}"
        return f"{self.api}/namespaces/{namespace}/{self.plural}"


ENDPOINT_SLICES = Resource("endpointslices", "/apis/discovery.k8s.io/v1")
SERVICES = Resource("services", "/api/v1")


@dataclass(frozen=True)
class WatchTiming:
    """How long to wait for what, in seconds."""

    watch_timeout: float = 300.0
    """``timeoutSeconds`` asked of the server (jittered up to +20%); the stream then ends
    and is resumed, as client-go does, so that a silently dead connection cannot last."""
    request_timeout: float = 60.0
    """A LIST, and connecting a WATCH."""
    backoff: float = 0.2
    """Pause before watching again after a stream ended; doubles per failure in a row."""
    max_backoff: float = 30.0


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate (loaded once at startup)."""

    host: str
    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None
    proxy: str | None = None
    authorization: Callable[[], str | None] = lambda: None
    """The ``Authorization`` header's value; may refresh a rotated token (a file read)."""


class WatchError(Exception):
    """The API server answered with an error (status or ``ERROR`` event) or garbage."""


class Gone(WatchError):
    """410: the resource version is too old; list again."""


class KubeClient:
    """LIST and WATCH requests against one API server, over one ``aiohttp`` session."""

    def __init__(
        self, session: aiohttp.ClientSession, connection: Connection, timing: WatchTiming
    ) -> None:
        self._session = session
        self._conn = connection
        self._timing = timing

    def _request(self, path: str, params: dict[str, str], timeout: aiohttp.ClientTimeout) -> Any:
        headers = {"Accept": "application/json"}
        authorization = self._conn.authorization()
        if authorization:
            headers["Authorization"] = authorization
        return self._session.get(
            self._conn.host + path,
            params={"labelSelector": INFERENCE_SERVICE_LABEL, **params},
            headers=headers,
            timeout=timeout,
            ssl=self._conn.ssl if self._conn.ssl is not None else True,
            server_hostname=self._conn.server_hostname,
            proxy=self._conn.proxy,
        )

    async def list(self, path: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self._timing.request_timeout)
        async with self._request(path, {}, timeout) as resp:
            body = await resp.read()
            _raise_for_status(resp.status, body, path)
        data = _json_object(body, path)
        return data

    async def watch(self, path: str, version: str) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch stream, until the server ends it."""
        seconds = int(self._timing.watch_timeout * random.uniform(1.0, 1.2))
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(seconds)}
        if version:
            params["resourceVersion"] = version
        timeout = aiohttp.ClientTimeout(
            total=seconds + self._timing.request_timeout,
            sock_connect=self._timing.request_timeout,
        )
        async with self._request(path, params, timeout) as resp:
            if resp.status != 200:
                _raise_for_status(resp.status, await resp.read(), path)
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _json_object(line, path)


def _raise_for_status(status: int, body: bytes, path: str) -> None:
    if status < 300:
        return
    try:
        message = orjson.loads(body).get("message") or ""
    except (orjson.JSONDecodeError, AttributeError):
        message = body[:200].decode(errors="replace")
    text = f"GET {path}: HTTP {status}" + (f": {message}" if message else "")
    raise Gone(text) if status == 410 else WatchError(text)


def _json_object(raw: bytes, path: str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WatchError(f"GET {path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WatchError(f"GET {path}: expected a JSON object")
    return data


def _metadata(obj: Any) -> dict[str, Any]:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


class Reflector(Generic[T]):
    """Keeps ``objects`` equal to one labelled collection: list, watch, resume, re-list."""

    def __init__(
        self,
        *,
        client: KubeClient,
        resource: Resource,
        namespace: str | None,
        parse: Callable[[dict[str, Any]], T],
        on_change: Callable[[], None],
        restarts: Counter,
        timing: WatchTiming,
    ) -> None:
        self.objects: dict[Key, T] = {}
        self.synced = False
        """True once the first LIST has filled ``objects``."""
        self.failing = False
        self._failures = 0  # failures in a row: the backoff's exponent
        self._client = client
        self._resource = resource
        self._path = resource.path(namespace)
        self._where = f"{resource.plural} in " + (
            f"namespace {namespace}" if namespace else "all namespaces"
        )
        self._parse = parse
        self._on_change = on_change
        self._restarts = restarts
        self._timing = timing
        for reason in ("closed", "error", "expired"):  # every series from the start, at 0
            restarts.labels(resource=resource.plural, reason=reason)

    async def run(self) -> None:
        """List and watch forever."""
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._relist()
                version = await self._watch(version)
                reason = "closed"
            except Gone as exc:
                log.info("%s: %s; listing again", self._where, exc)
                version, reason = None, "expired"
            except (WatchError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._down(str(exc) or type(exc).__name__)
                reason = "error"
            except Exception as exc:  # a bug must not stop the source: log it, go on
                log.exception("%s: watch failed", self._where)
                self._down(repr(exc))
                reason = "error"
            self._restarts.labels(resource=self._resource.plural, reason=reason).inc()
            delay = min(self._timing.backoff * 2**self._failures, self._timing.max_backoff)
            await asyncio.sleep(delay)

    async def _relist(self) -> str:
        body = await self._client.list(self._path)
        items = body.get("items")
        objects: dict[Key, T] = {}
        for item in items if isinstance(items, list) else []:
            key = self._key(item)
            if key is not None and is_ours(_metadata(item).get("labels") or {}):
                parsed = self._parse_or_log(item)
                if parsed is not None:
                    objects[key] = parsed
        self.objects = objects
        self.synced = True
        self._up()
        self._on_change()
        return str(_metadata(body).get("resourceVersion") or "")

    async def _watch(self, version: str) -> str:
        """Apply one stream's events; the last version seen when it ends."""
        started = time.monotonic()
        async for event in self._client.watch(self._path, version):
            self._up()
            kind, obj = event.get("type"), event.get("object")
            if kind == "ERROR":
                _raise_event_error(obj, self._path)
            version = str(_metadata(obj).get("resourceVersion") or version)
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self._apply(kind, obj)
        log.debug("%s: watch ended after %.1fs", self._where, time.monotonic() - started)
        return version

    def _apply(self, kind: str, obj: Any) -> None:
        key = self._key(obj)
        if key is None:
            return
        if kind == "DELETED" or not is_ours(_metadata(obj).get("labels") or {}):
            changed = self.objects.pop(key, None) is not None
        else:
            parsed = self._parse_or_log(obj)
            changed = parsed is not None
            if parsed is not None:
                self.objects[key] = parsed
        if changed:
            self._on_change()

    def _key(self, obj: Any) -> Key | None:
        meta = _metadata(obj)
        name = meta.get("name")
        if not isinstance(name, str):
            return None
        return str(meta.get("namespace") or "default"), name

    def _parse_or_log(self, obj: dict[str, Any]) -> T | None:
        try:
            return self._parse(obj)
        except ValidationError as exc:
            meta = _metadata(obj)
            log.warning(
                "%s: ignoring %s/%s: %s",
                self._where,
                meta.get("namespace"),
                meta.get("name"),
                str(exc).splitlines()[0],
            )
            return None

    def _down(self, why: str) -> None:
        if not self.failing:
            log.warning("%s: cannot list or watch: %s; retrying with backoff", self._where, why)
        self.failing = True
        self._failures += 1

    def _up(self) -> None:
        if self.failing:
            log.info("%s: watching again", self._where)
        self.failing = False
        self._failures = 0


def _raise_event_error(obj: Any, path: str) -> None:
    status = obj if isinstance(obj, dict) else {}
    code = status.get("code")
    message = f"watch {path}: {status.get('reason') or 'error'}: {status.get('message') or ''}"
    raise Gone(message) if code == 410 else WatchError(message)
