"""Ownership over HTTP: the lease checks of the registry's writes, and their 409s.

The rules are :mod:`.leases`'; this module applies them to a request: the
``X-Llmsvc-Lease`` it sends and whether it carries the admin token
(:func:`llmsvc.core.auth.access_of`).
"""

from __future__ import annotations

import logging

from aiohttp import web

from llmsvc.core.app import Query
from llmsvc.core.auth import Access, access_of
from llmsvc.core.errors import ApiError
from llmsvc.core.registry_client import LEASE_HEADER
from llmsvc.registry.leases import Claim, Granted
from llmsvc.registry.state import REGISTRY
from llmsvc.registry.store import HTTP

log = logging.getLogger("llmsvc.registry")

# How the route table documents leases (/openapi.json).
NOT_HOLDER = {
    409: "lease_mismatch: another registration holds the name (send its lease in "
    "X-Llmsvc-Lease, or use the admin token); managed_by_source: the service comes "
    "from Kubernetes (--source kubernetes) and is read-only over HTTP."
}
TAKEN = {
    409: "name_taken: another registration holds the name and heartbeats (send its "
    "lease in X-Llmsvc-Lease, use the admin token, or wait until its heartbeat "
    "expires); managed_by_source: the service comes from Kubernetes."
}
CLAIM = Query(
    LEASE_HEADER,
    "The lease this sender holds (or held) for the name: it keeps the name (200). For an "
    "unknown name a well-formed one (16-128 of A-Z a-z 0-9 _ -) becomes its lease.",
    location="header",
)
LEASE = Query(
    LEASE_HEADER,
    "The name's lease, from its registration's answer (or use the admin token).",
    location="header",
)


def require_holder(request: web.Request, name: str) -> None:
    """A write to a name's HTTP record needs its lease or the admin token (else 409).

    Unknown names and other sources' records pass: the store answers those (404, 409).
    """
    state = request.app[REGISTRY]
    if state.store.source_of(name) != HTTP or access_of(request) is Access.ADMIN:
        return
    if not state.leases.holds(name, request.headers.get(LEASE_HEADER)):
        raise ApiError(
            f"Service '{name}' is held by another registration: send its lease in "
            f"{LEASE_HEADER} (or use the admin token)",
            status=409,
            param="name",
            code="lease_mismatch",
        )


def claim_name(request: web.Request, name: str) -> Granted | None:
    """The lease a registration of ``name`` gets (:meth:`.LeaseBook.claim`); a 409 when
    another holds it. None for another source's record (the store refuses it)."""
    state = request.app[REGISTRY]
    store = state.store
    source = store.source_of(name)
    if source not in (None, HTTP):
        return None
    record = store.get(name)
    ttl = state.settings.heartbeat_ttl
    granted = state.leases.claim(
        name,
        request.headers.get(LEASE_HEADER),
        last_heartbeat=record.last_heartbeat if record is not None else None,
        admin=access_of(request) is Access.ADMIN,
        now=store.now(),
        ttl=ttl,
    )
    if granted is None:
        raise ApiError(
            f"Service '{name}' is held by another registration; send its lease in "
            f"{LEASE_HEADER}, use the admin token, or wait until its heartbeat expires "
            f"(--heartbeat-ttl {ttl:g}s)",
            status=409,
            param="name",
            code="name_taken",
        )
    return granted


def log_claim(name: str, granted: Granted) -> None:
    """Log a registration that took a name from its holder."""
    if granted.claim is Claim.OVERRIDE:
        log.warning("lease of %s overridden with the admin token", name)
    elif granted.claim is Claim.TAKEOVER and granted.silent_for is not None:
        log.info(
            "%s taken over: its holder stopped heartbeating %.0fs ago", name, granted.silent_for
        )
    elif granted.claim is Claim.TAKEOVER:
        log.info("%s taken over: its record had no lease (an older state file)", name)
