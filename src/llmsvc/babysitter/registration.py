"""All registry traffic of a babysitter: its own record and its engine's.

The :class:`Registrar` holds the records that *should* be registered. Its
heartbeat loop keeps the registry in line with them: a heartbeat answered 404
registers again; the engine's heartbeats carry its health, so an engine that
died stays listed as ``unhealthy`` (routers drop it at once) until it is ready
again; an unreachable registry is logged once per outage and every
record is registered again when it answers. Without ``--registry`` it does
nothing and reports nothing registered.

Every name is held with a lease (the registry's answer to a registration): the
registrar presents it on every heartbeat, re-registration and delete, and keeps
it in the :class:`~llmsvc.babysitter.leases.LeaseFile`, so that a babysitter
restarted on the same host and port, or a registry that forgot its records,
gives it back the same name at once. A name another registration holds (409
``name_taken``) or took over (a heartbeat's 409 ``lease_mismatch``: the admin
token overrode the lease, which is then forgotten) is a *conflict*: logged once
per episode, and registered again every heartbeat interval, which succeeds once
the other holder's heartbeat expires (the registry's ``--heartbeat-ttl``); it
never fights a holder that still heartbeats.

The babysitter's own record carries what changes with the engine's state
(``state``, ``startup_seconds``, ``starting_since``, ``model_name``: see
``docs/babysitter.md``): :meth:`Registrar.update_babysitter` registers it anew
(a registration under its lease replaces it) at once, not at the next heartbeat,
so that routers learn of a start (the hold's estimate) within one blocking query.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError

from llmsvc.babysitter.leases import LeaseFile
from llmsvc.core.records import BABYSITTER, OPENAI_API, ServiceRegistration, Status
from llmsvc.core.registry_client import (
    RegistryClient,
    RegistryConflict,
    RegistryError,
    RegistryRejected,
    RegistryUnavailable,
)

log = logging.getLogger("llmsvc.babysitter.registration")

RecordState = Literal["off", "unregistered", "registered", "conflict", "rejected", "unreachable"]
"""Where one record stands with the registry (``/status``'s ``registration``)."""


class Registrar:
    def __init__(
        self,
        *,
        client: RegistryClient | None,
        babysitter: ServiceRegistration,
        leases: LeaseFile | None = None,
    ) -> None:
        self._client = client
        self._babysitter = babysitter
        self._engine: ServiceRegistration | None = None
        self._engine_status: Status = "healthy"
        self._state: dict[str, RecordState] = {}  # by record name; absent: unregistered
        self._lease_file = leases if leases is not None else LeaseFile(None)
        self._leases = self._lease_file.load() if client is not None else {}
        self._lock = asyncio.Lock()
        self._outage = False
        self._closed = False
        self._version = 0  # of the babysitter's record: bumped by update_babysitter
        self._published = 0  # the version the registry holds (when registered)
        self._pusher: asyncio.Task[None] | None = None
        self._again = False

    @property
    def url(self) -> str | None:
        return self._client.base_url if self._client else None

    def registered(self) -> dict[str, bool]:
        states = self.registration()
        return {which: state == "registered" for which, state in states.items()}

    def registration(self) -> dict[str, RecordState]:
        """Each record's standing: ``{"engine": ..., "babysitter": ...}``."""
        engine = self._state_of(self._engine.name) if self._engine is not None else None
        return {
            "engine": engine or ("off" if self._client is None else "unregistered"),
            "babysitter": self._state_of(self._babysitter.name),
        }

    def _state_of(self, name: str) -> RecordState:
        return "off" if self._client is None else self._state.get(name, "unregistered")

    async def publish_engine(self, registration: ServiceRegistration) -> None:
        """The engine is ready: register it now (and keep it registered)."""
        async with self._lock:
            if self._closed:
                return
            self._engine = registration
            self._engine_status = "healthy"
            if self._state.get(registration.name) != "conflict":
                self._state.pop(registration.name, None)
            await self._sync()

    async def engine_down(self) -> None:
        """The engine died or hangs: keep its record, reported unhealthy, until it is back."""
        async with self._lock:
            self._engine_status = "unhealthy"
            await self._sync()

    async def engine_standby(self) -> None:
        """The engine goes to standby (idle): keep its record, reported ``standby`` (known,
        never routed to), until :meth:`engine_awake` or :meth:`publish_engine`."""
        async with self._lock:
            self._engine_status = "standby"
            await self._sync()

    async def engine_awake(self) -> None:
        """The engine is back from standby (or never left): reported healthy again."""
        async with self._lock:
            if self._engine_status == "standby":
                self._engine_status = "healthy"
                await self._sync()

    async def withdraw_engine(self) -> None:
        """The engine must get no more traffic: deregister it now."""
        async with self._lock:
            engine, self._engine = self._engine, None
            if engine is not None:
                await self._deregister(engine.name)

    @property
    def babysitter(self) -> ServiceRegistration:
        """The babysitter's own record as it should be registered."""
        return self._babysitter

    def update_babysitter(self, metadata: Mapping[str, Any]) -> None:
        """Merge ``metadata`` into the babysitter's record; when that changes it, register the
        record anew soon (a task of its own: the caller need not wait for the registry)."""
        merged = {**self._babysitter.metadata, **metadata}
        if merged == self._babysitter.metadata:
            return
        self._babysitter = self._babysitter.model_copy(update={"metadata": merged})
        self._version += 1
        if self._client is None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a unit test): the next heartbeat round publishes it
        if self._pusher is not None and not self._pusher.done():
            self._again = True  # the running push syncs once more
            return
        self._pusher = loop.create_task(self._push(), name="babysitter-record")

    async def _push(self) -> None:
        again = True
        while again:
            self._again = False
            async with self._lock:
                await self._sync()
            again = self._again

    async def tick(self) -> None:
        """One heartbeat round: heartbeat what is registered, register what is not."""
        async with self._lock:
            await self._sync()

    async def close(self) -> None:
        """Deregister both records (shutdown)."""
        async with self._lock:
            self._closed = True
            if self._pusher is not None:
                self._pusher.cancel()
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
            for record in self._wanted():  # register everything again when it is back
                self._state[record.name] = "unreachable"
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
        name, lease = record.name, self._leases.get(record.name)
        mine = record.type == BABYSITTER
        version = self._version
        stale = mine and self._published != version
        try:
            if self._state.get(name) == "registered" and not stale:
                if await client.heartbeat(name, status, lease=lease):
                    return
                log.info("registry forgot %s; registering it again", name)
                self._state[name] = "unregistered"
            if down:
                return
            answer = await client.register(record, lease=lease)
        except RegistryConflict as exc:
            self._conflict(name, exc)
            return
        except RegistryRejected as exc:
            log.error("registry rejected %s: %s", name, exc)
            self._state[name] = "rejected"
            return
        was = self._state.get(name)
        self._state[name] = "registered"
        self._keep_lease(name, answer.lease)
        if status == "standby":  # a registration starts healthy: say standby at once
            await client.heartbeat(name, status, lease=answer.lease)
        if mine:
            self._published = version
            if was == "registered":  # an update of a record already there: no news to log
                log.debug("updated %s: %s", name, record.metadata)
                return
        log.info("registered %s (%s) at %s", name, record.type, record.origin())
        if was == "conflict":
            log.info("%s is ours again", name)

    def _conflict(self, name: str, exc: RegistryConflict) -> None:
        """409: another registration holds ``name``; try again next round (one ERROR)."""
        if exc.code == "lease_mismatch":
            log.error("another registration took over %s (its lease was overridden): %s; "
                      "registering it again every heartbeat interval", name, exc)  # fmt: skip
            self._forget_lease(name)
        elif self._state.get(name) != "conflict":
            log.error("cannot register %s: %s; trying again every heartbeat interval until "
                      "the name is free", name, exc)  # fmt: skip
        self._state[name] = "conflict"

    def _keep_lease(self, name: str, lease: str) -> None:
        if self._leases.get(name) != lease:
            self._leases[name] = lease
            self._lease_file.save(self._leases)

    def _forget_lease(self, name: str) -> None:
        if self._leases.pop(name, None) is not None:
            self._lease_file.save(self._leases)

    async def _deregister(self, name: str) -> None:
        state = self._state.pop(name, None)
        if self._client is None or state == "conflict":
            return  # a name another registration holds is not ours to remove
        try:
            await self._client.deregister(name, lease=self._leases.get(name))
        except RegistryConflict as exc:
            log.warning("did not deregister %s: another registration holds it: %s", name, exc)
            return
        except RegistryError as exc:
            log.warning("could not deregister %s: %s", name, exc)
            return
        if state == "registered":
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
