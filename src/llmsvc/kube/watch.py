"""List + watch of one Kubernetes collection, kept in a dict: a :class:`Reflector`.

A reflector keeps ``objects`` equal to the objects of one collection (a resource
in one namespace, or in all of them) that match a label selector:

1. ``LIST`` the collection: the objects, and the ``resourceVersion`` of the list;
2. ``WATCH`` from that version (``?watch=true&resourceVersion=…&allowWatchBookmarks=true
   &timeoutSeconds=…``): events ``ADDED``/``MODIFIED``/``DELETED`` applied to the
   dict, ``BOOKMARK`` moving the version on;
3. when the stream ends (the server's timeout) or breaks, wait a short backoff
   and watch again from the last version seen — nothing is listed again;
4. on ``410 Gone`` (the HTTP status, or an ``ERROR`` event with code 410: the
   version is too old to resume from) list again and replace the dict whole.

The selector is sent to the server and also applied here (:class:`LabelSelector`),
since a server (or an emulator) may ignore it. Every change calls ``on_change``;
every restart of the loop calls ``on_restart`` with ``closed``, ``error`` or
``expired``. Failures are logged once per state change (down, then up again), the
retries back off exponentially, and nothing here ever gives up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from llmsvc.kube.client import KubeClient
from llmsvc.kube.errors import Gone, KubeError, KubeStatusError

T = TypeVar("T")
Key = tuple[str, str]
"""(namespace, name) of an object."""

RESTART_REASONS = ("closed", "error", "expired")
"""What ``on_restart`` is called with: the stream ended, failed, or its version expired."""


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
    """A LIST, and connecting a WATCH (the client's ``request_timeout``)."""
    backoff: float = 0.2
    """Pause before watching again after a stream ended; doubles per failure in a row."""
    max_backoff: float = 30.0


class LabelSelector:
    """An equality-based label selector (``a``, ``!a``, ``a=b``, ``a==b``, ``a!=b``, joined by
    commas), matched here as the API server matches it."""

    def __init__(self, text: str) -> None:
        if "(" in text:
            raise ValueError(f"set-based label selectors are not supported: {text!r}")
        self.text = text
        self._terms: list[tuple[str, str, str | None]] = []  # (op, key, value)
        for term in filter(None, (t.strip() for t in text.split(","))):
            for op in ("!=", "==", "="):
                if op in term:
                    key, value = (s.strip() for s in term.split(op, 1))
                    self._terms.append(("!=" if op == "!=" else "=", key, value))
                    break
            else:
                negated = term.startswith("!")
                self._terms.append(("!" if negated else "", term.lstrip("!").strip(), None))

    def matches(self, labels: Mapping[str, str]) -> bool:
        for op, key, value in self._terms:
            if (
                (op == "" and key not in labels)
                or (op == "!" and key in labels)
                or (op == "=" and labels.get(key) != value)
                or (op == "!=" and labels.get(key) == value)
            ):
                return False
        return True


def metadata(obj: Any) -> dict[str, Any]:
    """``obj["metadata"]``, or ``{}`` when it is missing or not an object."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def event_error(obj: Any, path: str) -> KubeStatusError:
    """The error a watch ``ERROR`` event carries (its object is a ``Status``)."""
    status = obj if isinstance(obj, dict) else {}
    code = status.get("code")
    kind = Gone if code == 410 else KubeStatusError
    return kind(
        code if isinstance(code, int) else 500,
        str(status.get("reason") or "error"),
        str(status.get("message") or ""),
        where=f"watch {path}",
    )


class Reflector(Generic[T]):
    """Keeps ``objects`` equal to one labelled collection: list, watch, resume, re-list."""

    def __init__(
        self,
        *,
        client: KubeClient,
        resource: Resource,
        namespace: str | None,
        label_selector: str,
        parse: Callable[[dict[str, Any]], T],
        on_change: Callable[[], None],
        on_restart: Callable[[str], None] = lambda reason: None,
        timing: WatchTiming,
        logger: logging.Logger | None = None,
    ) -> None:
        self.objects: dict[Key, T] = {}
        self.synced = False
        """True once the first LIST has filled ``objects``."""
        self.failing = False
        self._failures = 0  # failures in a row: the backoff's exponent
        self._client = client
        self._path = resource.path(namespace)
        self._where = f"{resource.plural} in " + (
            f"namespace {namespace}" if namespace else "all namespaces"
        )
        self._selector = LabelSelector(label_selector)
        self._parse = parse
        self._on_change = on_change
        self._on_restart = on_restart
        self._timing = timing
        self._log = logger or logging.getLogger("llmsvc.kube")

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
                self._log.info("%s: %s; listing again", self._where, exc)
                version, reason = None, "expired"
            except KubeError as exc:
                self._down(str(exc) or type(exc).__name__)
                reason = "error"
            except Exception as exc:  # a bug must not stop the watch: log it, go on
                self._log.exception("%s: watch failed", self._where)
                self._down(repr(exc))
                reason = "error"
            self._on_restart(reason)
            delay = min(self._timing.backoff * 2**self._failures, self._timing.max_backoff)
            await asyncio.sleep(delay)

    async def _relist(self) -> str:
        listing = await self._client.list(self._path, label_selector=self._selector.text)
        objects: dict[Key, T] = {}
        for item in listing.items:
            key = self._key(item)
            if key is not None and self._selected(item):
                parsed = self._parse_or_log(item)
                if parsed is not None:
                    objects[key] = parsed
        self.objects = objects
        self.synced = True
        self._up()
        self._on_change()
        return listing.resource_version

    async def _watch(self, version: str) -> str:
        """Apply one stream's events; the last version seen when it ends."""
        started = time.monotonic()
        seconds = int(self._timing.watch_timeout * random.uniform(1.0, 1.2))
        events = self._client.watch(
            self._path, version=version, timeout_seconds=seconds, label_selector=self._selector.text
        )
        async for event in events:
            self._up()
            kind, obj = event.get("type"), event.get("object")
            if kind == "ERROR":
                raise event_error(obj, self._path)
            version = str(metadata(obj).get("resourceVersion") or version)
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self._apply(kind, obj)
        self._log.debug("%s: watch ended after %.1fs", self._where, time.monotonic() - started)
        return version

    def _apply(self, kind: str, obj: Any) -> None:
        key = self._key(obj)
        if key is None:
            return
        if kind == "DELETED" or not self._selected(obj):
            changed = self.objects.pop(key, None) is not None
        else:
            parsed = self._parse_or_log(obj)
            changed = parsed is not None
            if parsed is not None:
                self.objects[key] = parsed
        if changed:
            self._on_change()

    def _selected(self, obj: Any) -> bool:
        labels = metadata(obj).get("labels")
        return self._selector.matches(labels if isinstance(labels, dict) else {})

    def _key(self, obj: Any) -> Key | None:
        meta = metadata(obj)
        name = meta.get("name")
        if not isinstance(name, str):
            return None
        return str(meta.get("namespace") or "default"), name

    def _parse_or_log(self, obj: dict[str, Any]) -> T | None:
        try:
            return self._parse(obj)
        except ValueError as exc:  # pydantic's ValidationError is one
            meta = metadata(obj)
            self._log.warning(
                "%s: ignoring %s/%s: %s",
                self._where,
                meta.get("namespace"),
                meta.get("name"),
                str(exc).splitlines()[0],
            )
            return None

    def _down(self, why: str) -> None:
        if not self.failing:
            self._log.warning(
                "%s: cannot list or watch: %s; retrying with backoff", self._where, why
            )
        self.failing = True
        self._failures += 1

    def _up(self) -> None:
        if self.failing:
            self._log.info("%s: watching again", self._where)
        self.failing = False
        self._failures = 0
