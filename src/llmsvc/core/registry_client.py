"""The registry's HTTP API as the router and the babysitter use it.

Writes carry the name's lease (:data:`LEASE_HEADER`) when the caller has one:
``register`` returns it (:class:`~llmsvc.core.records.RegisteredService`), and
heartbeats, updates and deletes of that name present it.

Exceptions::

    RegistryError               anything that went wrong talking to the registry
    ├── RegistryUnavailable     connect error, timeout or a 5xx: try again later
    └── RegistryRejected        a 4xx other than the 404 of a heartbeat: fix the request
        └── RegistryConflict    a 409: the name is held by another registration
                                (``code`` ``name_taken`` or ``lease_mismatch``)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from llmsvc.core.maintenance import DeletedMaintenance, MaintenanceEntry, MaintenanceRequest
from llmsvc.core.records import RegisteredService, ServiceRecord, ServiceRegistration, Status

INDEX_HEADER = "X-Llmsvc-Index"
LEASE_HEADER = "X-Llmsvc-Lease"


class RegistryError(Exception):
    pass


class RegistryUnavailable(RegistryError):
    pass


class RegistryRejected(RegistryError):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"registry answered {status}: {message}")
        self.status = status
        self.code = code  # the answer's error.code, when it had one


class RegistryConflict(RegistryRejected):
    """409: another registration holds the name (``name_taken``), or the lease sent is not
    the name's (``lease_mismatch``); ``managed_by_source`` for a Kubernetes record."""


def _error(payload: Any) -> tuple[str, str | None]:
    """``error.message`` and ``error.code`` of an OpenAI-shaped error body."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "", None
    code = error.get("code")
    return str(error.get("message") or ""), code if isinstance(code, str) else None


class RegistryClient:
    def __init__(
        self,
        *,
        base_url: str,
        session: aiohttp.ClientSession,
        token: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        allow_404: bool = False,
        lease: str | None = None,
        token: str | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = orjson.dumps(body) if body is not None else None
        headers = dict(self._headers)
        if token:  # this request's own credentials (the admin token), instead of the client's
            headers["Authorization"] = f"Bearer {token}"
        if lease:
            headers[LEASE_HEADER] = lease
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                data=data,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self._timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
                resp_headers = dict(resp.headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RegistryUnavailable(f"registry at {self.base_url} unreachable: {exc!r}") from None
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            raise RegistryUnavailable(
                f"registry at {self.base_url} answered {status} with a body that is not JSON"
            ) from None
        if status >= 500:
            raise RegistryUnavailable(f"registry answered {status}")
        if status == 404 and allow_404:
            return status, payload, resp_headers
        if status >= 400:
            message, code = _error(payload)
            kind = RegistryConflict if status == 409 else RegistryRejected
            raise kind(status, message, code)
        return status, payload, resp_headers

    async def register(
        self, registration: ServiceRegistration, lease: str | None = None
    ) -> RegisteredService:
        """Register (or replace) a record; the answer carries the name's lease.

        ``lease``: the one this sender holds (or held) for the name, so that it keeps
        the name; raises :class:`RegistryConflict` (``name_taken``) when another holds it.
        """
        _, payload, _ = await self._request(
            "POST", "/services", body=registration.model_dump(exclude_none=True), lease=lease
        )
        return RegisteredService.model_validate(payload)

    async def heartbeat(
        self, name: str, status: Status | None = None, lease: str | None = None
    ) -> bool:
        """Refresh ``name``; False when the registry does not know it (re-register).

        ``status`` reports the sender's own verdict on the service's health; a
        ``lease`` that is not the name's raises :class:`RegistryConflict`
        (``lease_mismatch``).
        """
        body = {"status": status} if status else None
        code, _, _ = await self._request(
            "POST", f"/services/{name}/heartbeat", body=body, allow_404=True, lease=lease
        )
        return code != 404

    async def deregister(self, name: str, lease: str | None = None) -> None:
        """Remove ``name``; an unknown name is no error."""
        await self._request("DELETE", f"/services/{name}", allow_404=True, lease=lease)

    async def services(
        self,
        *,
        healthy: bool | None = None,
        type_: str | None = None,
        model: str | None = None,
        index: int | None = None,
        wait: float | None = None,
    ) -> tuple[list[ServiceRecord], int]:
        """The records matching the filters and the registry's change index.

        With ``index`` and ``wait`` this is the blocking query: it returns as
        soon as the registry's index exceeds ``index``, or after ``wait`` seconds.
        """
        params: dict[str, str] = {}
        if healthy is not None:
            params["healthy"] = "true" if healthy else "false"
        if type_:
            params["type"] = type_
        if model:
            params["model"] = model
        timeout = None
        if index is not None and wait is not None:
            params["index"] = str(index)
            params["wait"] = f"{wait:g}s"
            timeout = wait + self._timeout
        _, payload, headers = await self._request(
            "GET", "/services", params=params, timeout=timeout
        )
        records = [ServiceRecord.model_validate(r) for r in (payload or {}).get("services", [])]
        return records, int(headers.get(INDEX_HEADER, "0"))

    async def maintenance(
        self, *, index: int | None = None, wait: float | None = None
    ) -> tuple[list[MaintenanceEntry], int]:
        """The maintenance entries in force and the registry's change index.

        With ``index`` and ``wait`` this is the blocking query (as :meth:`services`).
        """
        params: dict[str, str] = {}
        timeout = None
        if index is not None and wait is not None:
            params = {"index": str(index), "wait": f"{wait:g}s"}
            timeout = wait + self._timeout
        _, payload, headers = await self._request(
            "GET", "/maintenance", params=params, timeout=timeout
        )
        entries = (payload or {}).get("maintenance", [])
        return [MaintenanceEntry.model_validate(e) for e in entries], int(
            headers.get(INDEX_HEADER, "0")
        )

    async def put_maintenance(
        self, model: str, request: MaintenanceRequest, *, admin_token: str | None
    ) -> MaintenanceEntry:
        """Put ``model`` (or ``request.backend``) in maintenance; needs the admin token
        (None: the client's own token, for a registry without one)."""
        _, payload, _ = await self._request(
            "PUT",
            _maintenance_path(model),
            body=request.model_dump(mode="json", exclude_none=True),
            token=admin_token,
        )
        return MaintenanceEntry.model_validate(payload)

    async def delete_maintenance(
        self, model: str, backend: str | None = None, *, admin_token: str | None
    ) -> MaintenanceEntry | None:
        """End ``model``'s (or ``backend``'s) maintenance: the entry removed, None if none."""
        status, payload, _ = await self._request(
            "DELETE",
            _maintenance_path(model),
            params={"backend": backend} if backend is not None else None,
            allow_404=True,
            token=admin_token,
        )
        if status == 404:
            return None
        return DeletedMaintenance.model_validate(payload).deleted


def _maintenance_path(model: str) -> str:
    """``/maintenance/<model>``, the id encoded whole (a ``/`` in it as ``%2F``)."""
    return "/maintenance/" + quote(model, safe="")
