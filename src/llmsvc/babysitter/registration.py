"""All registry traffic of a babysitter: its own record and its engine's.

The :class:`Registrar` holds the records that *should* be registered. Its
heartbeat loop keeps the registry in line with them: a heartbeat answered 404
registers again; the engine's heartbeats carry its health, so an engine that
died stays listed as ``unhealthy`` (routers drop it at once) until it is ready
again; an unreachable registry is logged once per outage and every
record is registered again when it answers. Without ``--registry`` it does
nothing and reports nothing registered.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import ValidationError

from llmsvc.core.records import BABYSITTER, OPENAI_API, ServiceRegistration, Status
from llmsvc.core.registry_client import (
    RegistryClient,
    RegistryError,
    RegistryRejected,
    RegistryUnavailable,
)

log = logging.getLogger("llmsvc.babysitter.registration")


class Registrar:
    def __init__(self, *, client: RegistryClient | None, babysitter: ServiceRegistration) -> None:
        self._client = client
        self._babysitter = babysitter
        self._engine: ServiceRegistration | None = None
        self._engine_status: Status = "healthy"
        self._registered: set[str] = set()
        self._lock = asyncio.Lock()
        self._outage = False
        self._closed = False

    @property
    def url(self) -> str | None:
        return self._client.base_url if self._client else None

    def registered(self) -> dict[str, bool]:
        engine = self._engine is not None and self._engine.name in self._registered
        return {"engine": engine, "babysitter": self._babysitter.name in self._registered}

    async def publish_engine(self, registration: ServiceRegistration) -> None:
        """The engine is ready: register it now (and keep it registered)."""
        async with self._lock:
            if self._closed:
                return
            self._engine = registration
            self._engine_status = "healthy"
            self._registered.discard(registration.name)
            await self._sync()

    async def engine_down(self) -> None:
        """The engine died or hangs: keep its record, reported unhealthy, until it is back."""
        async with self._lock:
            self._engine_status = "unhealthy"
            await self._sync()

    async def withdraw_engine(self) -> None:
        """The engine must get no more traffic: deregister it now."""
        async with self._lock:
            engine, self._engine = self._engine, None
            if engine is not None:
                await self._deregister(engine.name)

    async def tick(self) -> None:
        """One heartbeat round: heartbeat what is registered, register what is not."""
        async with self._lock:
            await self._sync()

    async def close(self) -> None:
        """Deregister both records (shutdown)."""
        async with self._lock:
            self._closed = True
            for record in self._wanted():
                await self._deregister(record.name)
            self._engine = None

    def _wanted(self) -> list[ServiceRegistration]:
        return [self._babysitter] + ([self._engine] if self._engine else [])

    async def _sync(self) -> None:
        if self._client is None or self._closed:
            return
        try:
            for record in self._wanted():
                await self._refresh(self._client, record)
        except RegistryUnavailable as exc:
            self._registered.clear()  # register everything again when it is back
            if not self._outage:
                self._outage = True
                log.warning("registry unreachable; serving on and retrying: %s", exc)
            return
        if self._outage:
            self._outage = False
            log.info("registry reachable again at %s", self._client.base_url)

    async def _refresh(self, client: RegistryClient, record: ServiceRegistration) -> None:
        # The engine's heartbeat carries its health; a down engine is not registered anew
        # (a fresh registration starts healthy) but waits for publish_engine.
        down = record.type == OPENAI_API and self._engine_status == "unhealthy"
        status: Status | None = self._engine_status if record.type == OPENAI_API else None
        try:
            if record.name in self._registered:
                if await client.heartbeat(record.name, status):
                    return
                log.info("registry forgot %s; registering it again", record.name)
                self._registered.discard(record.name)
            if down:
                return
            await client.register(record)
        except RegistryRejected as exc:
            log.error("registry rejected %s: %s", record.name, exc)
            return
        self._registered.add(record.name)
        log.info("registered %s (%s) at %s", record.name, record.type, record.origin())

    async def _deregister(self, name: str) -> None:
        was = name in self._registered
        self._registered.discard(name)
        if self._client is None:
            return
        try:
            await self._client.deregister(name)
        except RegistryError as exc:
            log.warning("could not deregister %s: %s", name, exc)
            return
        if was:
            log.info("deregistered %s", name)


def name_problem(name: str) -> str | None:
    """Why ``name`` (and ``<name>-babysitter``) cannot be registered, or None."""
    try:
        ServiceRegistration(name=f"{name}-babysitter", host="localhost", port=1)
    except ValidationError:
        return (
            f"'{name}' is not a valid registry name: use letters, digits and . _ : @ - "
            "(at most 242 characters, starting with a letter or digit)"
        )
    return None


def engine_record(
    *, name: str, host: str, port: int, weight: int, metadata: dict[str, Any]
) -> ServiceRegistration:
    """The engine's record (``type: openai-api``)."""
    return ServiceRegistration(
        name=name, host=host, port=port, type=OPENAI_API, weight=weight, metadata=metadata
    )


def babysitter_record(
    *, engine_name: str, host: str, port: int, metadata: dict[str, Any]
) -> ServiceRegistration:
    """The babysitter's own record (``type: babysitter``, name ``<engine name>-babysitter``)."""
    return ServiceRegistration(
        name=f"{engine_name}-babysitter",
        host=host,
        port=port,
        type=BABYSITTER,
        # Checked on /status (200 while the babysitter runs): this record is the babysitter's
        # liveness; the engine's readiness is the engine record's health.
        metadata={"engine_service": engine_name, "health_path": "/status", **metadata},
    )
