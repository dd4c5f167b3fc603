"""Who holds each name: leases, the rules for claiming a name, and their hashes at rest.

A registration answers a lease; the writes of that name (heartbeat, update,
delete) present it in ``X-Llmsvc-Lease``. So a client with the write token
alone cannot take over, refresh or remove a name another registration holds.
The rules for ``POST /services`` of a name (:meth:`LeaseBook.claim`):

============================================  ======  ==========================
the name                                      answer  lease
============================================  ======  ==========================
unknown                                       201     the one sent, if well formed; else new
known, the lease sent is its lease            200     the same
known, the admin token sent                   200     new (the old holder gets 409s)
known, silent past the TTL, or without lease  201     the one sent, if well formed; else new
known, anything else                          409     ``name_taken``
============================================  ======  ==========================

Adopting a well-formed lease that is sent for an unknown name lets a
babysitter keep its lease across a registry that forgot it (no state file).

Only the SHA-256 of a lease is kept, in memory and in the state file; a
presented lease is hashed and compared in constant time. The book says
nothing of records: a name's entry counts only while the store has a record
of that name from HTTP, which the caller checks (an entry left behind by a
removed record is replaced by the next registration of the name).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from llmsvc.core.secrets import new_token

LEASE_CHARS = re.compile(r"[A-Za-z0-9_-]{16,128}")
"""A well-formed lease: 16 to 128 URL-safe characters (``new_token()`` makes 43)."""

DIGEST = re.compile(r"[0-9a-f]{64}")
"""A lease at rest: the SHA-256 hex digest of the lease."""


def well_formed(lease: str | None) -> bool:
    """True for a lease a client may choose (one the registry would adopt)."""
    return lease is not None and LEASE_CHARS.fullmatch(lease) is not None


def digest(lease: str) -> str:
    """What is kept of a lease: its SHA-256, in hex."""
    return hashlib.sha256(lease.encode("utf-8", "surrogateescape")).hexdigest()


class Claim(enum.Enum):
    """How a registration got its name."""

    NEW = "new"
    """The name was unknown."""
    HOLDER = "holder"
    """The sender presented the name's lease."""
    OVERRIDE = "override"
    """The sender used the admin token; the old holder's lease is void."""
    TAKEOVER = "takeover"
    """The holder stopped heartbeating (past the TTL), or the record had no lease."""

    @property
    def status(self) -> int:
        """The HTTP status of the answer: 201 for a name newly held, 200 for the same."""
        return 200 if self in (Claim.HOLDER, Claim.OVERRIDE) else 201


@dataclass(frozen=True)
class Granted:
    """A claim that succeeded: how, and the lease the registration answers."""

    claim: Claim
    lease: str
    silent_for: float | None = None
    """With :attr:`Claim.TAKEOVER`: seconds since the old holder's last heartbeat
    (None when the record had no lease)."""


class LeaseBook:
    """The lease digest of each name."""

    def __init__(self, digests: Mapping[str, str] | None = None) -> None:
        self._digests = dict(digests or {})

    def holds(self, name: str, lease: str | None) -> bool:
        """True when ``lease`` is ``name``'s lease (constant time)."""
        known = self._digests.get(name)
        if known is None or lease is None:
            return False
        return hmac.compare_digest(digest(lease), known)

    def claim(
        self,
        name: str,
        presented: str | None,
        *,
        last_heartbeat: float | None,
        admin: bool,
        now: float,
        ttl: float,
    ) -> Granted | None:
        """Whether a registration of ``name`` may have it (the table above); None: 409.

        ``last_heartbeat``: of the name's HTTP record, None when there is none.
        Nothing changes here: :meth:`grant` the lease once the record is stored.
        """
        chosen = presented if presented is not None and well_formed(presented) else None
        if last_heartbeat is None:
            return Granted(Claim.NEW, chosen or new_token())
        if presented is not None and self.holds(name, presented):
            return Granted(Claim.HOLDER, presented)
        if admin:
            return Granted(Claim.OVERRIDE, chosen or new_token())
        if name not in self._digests:
            return Granted(Claim.TAKEOVER, chosen or new_token())
        silent = now - last_heartbeat
        if ttl > 0 and silent > ttl:
            return Granted(Claim.TAKEOVER, chosen or new_token(), silent_for=silent)
        return None

    def grant(self, name: str, lease: str) -> None:
        """Make ``lease`` the lease of ``name`` (any earlier one is void)."""
        self._digests[name] = digest(lease)

    def drop(self, name: str) -> None:
        """Forget the lease of ``name`` (its record is gone)."""
        self._digests.pop(name, None)

    def digests(self, names: Iterable[str]) -> dict[str, str]:
        """The digests of ``names`` that have a lease, for the state file."""
        return {n: self._digests[n] for n in names if n in self._digests}
