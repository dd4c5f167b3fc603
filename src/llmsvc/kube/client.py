"""One async Kubernetes API client over aiohttp: requests, lists and watch streams.

:class:`KubeClient` holds :class:`~llmsvc.kube.credentials.Credentials` and one
``aiohttp`` session (opened on first use, closed by :meth:`KubeClient.close`).
Every request asks the credentials for its ``Authorization`` header, so a
rotated token is used as soon as it is on disk. Failures raise the tree of
:mod:`llmsvc.kube.errors`: :class:`KubeError`, :class:`KubeStatusError`, :class:`Gone`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from llmsvc.kube.credentials import Credentials
from llmsvc.kube.errors import KubeError, KubeStatusError, status_error

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"

_CONNECTION_ERRORS = (TimeoutError, aiohttp.ClientError, OSError)


@dataclass(frozen=True)
class Listing:
    """A LIST's answer: the items and the collection's ``resourceVersion`` (to watch from)."""

    items: list[dict[str, Any]]
    resource_version: str


def ssl_context(credentials: Credentials) -> ssl.SSLContext | None:
    """The TLS settings for an ``https`` server (``None``: plain HTTP)."""
    if not credentials.server.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=credentials.ca_file)
    if credentials.cert_file:
        context.load_cert_chain(credentials.cert_file, credentials.key_file)
    if not credentials.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class KubeClient:
    """Async calls to one API server with one set of credentials."""

    def __init__(self, credentials: Credentials, *, request_timeout: float = 60.0) -> None:
        self.credentials = credentials
        self.request_timeout = request_timeout
        """Seconds for a whole request, and for connecting a watch."""
        self._ssl = ssl_context(credentials)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _send(
        self,
        method: str,
        path: str,
        *,
        timeout: aiohttp.ClientTimeout,
        data: bytes | None = None,
        content_type: str = JSON,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        if self._session is None:
            # Many watches stay open at once: no pool limit. Each request sets its timeout.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        headers = {"Accept": JSON}
        if data is not None:
            headers["Content-Type"] = content_type
        authorization = self.credentials.authorization()
        if authorization:
            headers["Authorization"] = authorization
        return self._session.request(
            method,
            self.credentials.server + path,
            data=data,
            params=params,
            headers=headers,
            timeout=timeout,
            ssl=self._ssl if self._ssl is not None else True,
            server_hostname=self.credentials.tls_server_name,
            proxy=self.credentials.proxy,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = JSON,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call; the decoded JSON answer (``None`` for an empty one)."""
        where = f"{method} {path}"
        data = None if body is None else orjson.dumps(body)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        try:
            async with self._send(
                method, path, timeout=timeout, data=data, content_type=content_type, params=params
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except _CONNECTION_ERRORS as exc:
            raise KubeError(f"{where}: {exc or type(exc).__name__}") from exc
        payload = _decode(raw, where, strict=status < 400)
        if status >= 400:
            raise status_error(status, payload, where=where)
        return payload

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``, or ``None`` when there is none."""
        try:
            found: dict[str, Any] = await self.request("GET", path)
        except KubeStatusError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def list(self, path: str, *, label_selector: str | None = None) -> Listing:
        """A collection (servers may ignore the selector: filter the items too)."""
        params = {"labelSelector": label_selector} if label_selector else None
        answer = await self.request("GET", path, params=params)
        if not isinstance(answer, dict):
            raise KubeError(f"GET {path}: expected a JSON object")
        items = answer.get("items")
        meta = answer.get("metadata")
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        return Listing(
            items=[i for i in items if isinstance(i, dict)] if isinstance(items, list) else [],
            resource_version=str(version or ""),
        )

    async def create(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self.request("POST", path, body=obj)
        return created

    async def patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch."""
        patched: dict[str, Any] = await self.request(
            "PATCH", path, body=patch, content_type=MERGE_PATCH
        )
        return patched

    async def delete(self, path: str) -> dict[str, Any] | None:
        """Delete (children in the background); ``None`` when it was not there."""
        try:
            gone: dict[str, Any] = await self.request(
                "DELETE", path, params={"propagationPolicy": "Background"}
            )
        except KubeStatusError as exc:
            if exc.status == 404:
                return None
            raise
        return gone

    async def watch(
        self,
        path: str,
        *,
        version: str,
        timeout_seconds: int,
        label_selector: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch stream from ``version``, until the server ends it.

        ``timeout_seconds`` is asked of the server, which then closes the stream; the
        client gives up ``request_timeout`` later. An ``ERROR`` event is yielded like
        any other (the caller decides: see :func:`llmsvc.kube.watch.event_error`).
        """
        params = {"watch": "true", "allowWatchBookmarks": "true"}
        params["timeoutSeconds"] = str(timeout_seconds)
        if version:
            params["resourceVersion"] = version
        if label_selector:
            params["labelSelector"] = label_selector
        timeout = aiohttp.ClientTimeout(
            total=timeout_seconds + self.request_timeout, sock_connect=self.request_timeout
        )
        where = f"GET {path}"
        try:
            async with self._send("GET", path, timeout=timeout, params=params) as resp:
                if resp.status != 200:
                    raw = await resp.read()
                    raise status_error(resp.status, _decode(raw, where, strict=False), where=where)
                buffer = b""
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            event = _decode(line, where, strict=True)
                            if not isinstance(event, dict):
                                raise KubeError(f"{where}: expected a JSON object")
                            yield event
        except _CONNECTION_ERRORS as exc:
            raise KubeError(f"{where}: {exc or type(exc).__name__}") from exc


def _decode(raw: bytes, where: str, *, strict: bool) -> Any:
    """JSON, ``None`` for nothing; not JSON is an error when ``strict``, else the text."""
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if strict:
            raise KubeError(f"{where}: not JSON: {exc}") from None
        return raw[:200].decode(errors="replace")
