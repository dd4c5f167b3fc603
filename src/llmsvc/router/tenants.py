"""API keys as tenants: who is calling, which class it may ask for, its limits, its models.

A key names a :class:`Tenant`. ``--api-keys`` and a plain ``--api-keys-file``
(one key a line, ``#`` comments) give each key a tenant of its own, named
``key-<first 8 hex of its sha256>``, with no limits. A YAML keys file gives
records::

    - name: team-a            # required, unique: the tenant in metrics and logs
      key: sk-team-a-1        # or key_sha256: <64 hex> (no plaintext in the file)
      max_priority: standard  # the highest class its requests get (default critical)
      rpm: 600                # requests per minute (default: no limit)
      tpm: 200000             # tokens per minute (prompt + completion)
      models: [m1, m2]        # the models it may use (default: every model)

(or ``{keys: [...]}``). No keys at all: every caller is one tenant, :data:`ANONYMOUS`.

The :class:`KeyRing` keeps only sha256 digests: a lookup hashes the presented key
and finds it in a dict, so no plaintext key stays in memory and the lookup's time
says nothing about how close a wrong key came (it depends only on the digest).
:class:`KeysFile` re-reads the file when it changes; a request keeps the tenant it
was admitted with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from aiohttp import web
from aiohttp.typedefs import Middleware

from llmsvc.core.auth import access_of, bearer_credentials
from llmsvc.core.errors import ApiError, Handler, Unauthorized
from llmsvc.core.wire import INFERENCE_PATHS
from llmsvc.router.config import ConfigError
from llmsvc.router.keyrecords import digest, records_of
from llmsvc.router.priority import Priority, capped
from llmsvc.router.settings import RouterSettings

log = logging.getLogger("llmsvc.router.tenants")

TENANT_HEADER = "X-Llmsvc-Tenant"
"""Who a request bearing ``--batch-token`` runs as (the batch service's lines)."""

PROTECTED_PATHS = frozenset({*INFERENCE_PATHS, "/models"})
"""The routed paths (``/tokenize`` and ``/detokenize`` sit outside ``/v1``) and the model
list; with ``/v1/*`` and ``/models/{id}``, what needs an API key (:func:`protected`)."""
INVALID_KEY_MESSAGE = "Missing or invalid API key: send 'Authorization: Bearer <key>'"


@dataclass(frozen=True, slots=True)
class Tenant:
    """A caller: the name of its key, and what the key allows."""

    name: str
    max_priority: Priority = Priority.CRITICAL
    rpm: int | None = None
    tpm: int | None = None
    models: frozenset[str] | None = None
    """The models the tenant may use; None: every model."""

    def may_use(self, model: str) -> bool:
        """True when the key allows ``model``."""
        return self.models is None or model in self.models

    @property
    def limited(self) -> bool:
        """True when the tenant has an ``rpm`` or ``tpm`` (the limiter has work to do)."""
        return self.rpm is not None or self.tpm is not None


ANONYMOUS = Tenant(name="anonymous")
"""The one tenant of a router with no API keys."""

BATCH = Tenant(name="batch", max_priority=Priority.STANDARD)
"""The batch service's lines that name no known tenant (no header, or a router without keys)."""


class ModelNotAllowed(ApiError):
    """The caller's key may not use the model (its ``models`` list leaves it out)."""

    status = 403

    def __init__(self, model: str) -> None:
        super().__init__(
            f"This API key may not use the model '{model}'",
            param="model",
            code="model_not_allowed",
        )


def plain_tenant(key_digest: bytes) -> Tenant:
    """The tenant of a plain key: ``key-<first 8 hex of its sha256>``, no limits."""
    return Tenant(name=f"key-{key_digest.hex()[:8]}")


class KeyRing:
    """The accepted keys, by digest; immutable (a reload builds a new ring)."""

    __slots__ = ("_by_digest", "_by_name")

    def __init__(self, entries: Iterable[tuple[bytes, Tenant]] = ()) -> None:
        self._by_digest: dict[bytes, Tenant] = dict(entries)
        self._by_name = {t.name: t for t in self._by_digest.values()}

    def by_name(self, name: str) -> Tenant | None:
        """The tenant named ``name`` (the batch service's lines run as it); None if unknown."""
        return self._by_name.get(name)

    def lookup(self, key: str | bytes) -> Tenant | None:
        """The tenant of a presented key; None when the key is not accepted."""
        return self._by_digest.get(digest(key))

    def tenants(self) -> list[Tenant]:
        """Every tenant of the ring, each once, by name."""
        return sorted(set(self._by_digest.values()), key=lambda t: t.name)

    def __len__(self) -> int:
        return len(self._by_digest)


def parse_keys(text: str, *, source: str) -> list[tuple[bytes, Tenant]]:
    """The keys of a keys file's text: YAML records, or one plain key a line.

    YAML when the text parses as YAML to a list or a mapping; otherwise plain
    lines. Every problem is a :class:`ConfigError` of one line that starts with
    ``source`` and names the line.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        return _plain_keys(text, source=source, yaml_error=exc)
    if isinstance(node, yaml.SequenceNode | yaml.MappingNode):
        return [
            (key_digest, Tenant(**fields)) for key_digest, fields in records_of(node, source=source)
        ]
    return _plain_keys(text, source=source, yaml_error=None)


def _plain_keys(
    text: str, *, source: str, yaml_error: yaml.YAMLError | None
) -> list[tuple[bytes, Tenant]]:
    """One key a line, ``#`` starts a comment; a key is one word."""
    found: dict[bytes, Tenant] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.split("#", 1)[0].strip()
        if not key:
            continue
        if any(c.isspace() for c in key):
            # Not a key: most likely a YAML records file with a syntax error.
            mark = getattr(yaml_error, "problem_mark", None)
            if yaml_error is not None and mark is not None:
                problem = getattr(yaml_error, "problem", None) or "syntax error"
                raise ConfigError(f"{source} line {mark.line + 1}: not valid YAML: {problem}")
            raise ConfigError(
                f"{source} line {number}: a key is one word (no spaces); "
                "YAML records are a list of mappings"
            )
        key_digest = digest(key)
        found.setdefault(key_digest, plain_tenant(key_digest))
    return list(found.items())


def load_keyring(settings: RouterSettings) -> KeyRing:
    """The keys of ``--api-keys`` (plain) and ``--api-keys-file``; :class:`ConfigError`."""
    entries = [(digest(k), plain_tenant(digest(k))) for k in settings.api_keys if k]
    if settings.api_keys_file:
        entries += read_keys_file(settings.api_keys_file)
    # A key both on the command line and in the file: the file's record (its limits) wins.
    return KeyRing(entries)


def read_keys_file(path: str) -> list[tuple[bytes, Tenant]]:
    """The keys of the file at ``path``; a :class:`ConfigError` naming the flag and file."""
    source = f"--api-keys-file: {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--api-keys-file: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source} is not UTF-8 text") from None
    entries = parse_keys(text, source=source)
    if not entries:
        raise ConfigError(f"--api-keys-file: {path} holds no key")
    return entries


def _stamp(path: str) -> tuple[int, int, int] | None:
    """What says the file changed: mtime, size and inode of what the path points to
    (a Kubernetes Secret mount swaps a symlink to a new file); None when unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class KeysFile:
    """``--api-keys-file`` watched for changes; :attr:`ring` is the current ring.

    Every ``interval`` seconds the file is stat'ed; a change re-reads it. A good
    file replaces the ring at once (one assignment: a request sees the old ring or
    the new one, and keeps the tenant it was admitted with); a bad one keeps the
    old ring and logs one error line per bad version of the file.
    """

    def __init__(self, settings: RouterSettings, ring: KeyRing) -> None:
        if not settings.api_keys_file:
            raise ValueError("KeysFile needs --api-keys-file")
        self.settings = settings
        self.path = settings.api_keys_file
        self.interval = settings.api_keys_reload_interval
        self.ring = ring
        self._seen = _stamp(self.path)
        self._failed: tuple[int, int, int] | None = None

    def check(self) -> bool:
        """Re-read the file if it changed since the last look; True when the ring changed."""
        stamp = _stamp(self.path)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            ring = load_keyring(self.settings)
        except ConfigError as exc:
            if stamp is None or stamp != self._failed:
                log.error("%s; keeping the %d keys read before", exc, len(self.ring))
            self._failed = stamp
            return False
        self._failed = None
        self.ring = ring
        log.info("--api-keys-file: %s re-read: %d keys", self.path, len(ring))
        return True

    async def run(self) -> None:
        """Check every ``interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.check()


TENANT_KEY = web.RequestKey("llmsvc.tenant", Tenant)
"""Where :func:`tenant_middleware` leaves the caller's tenant (:func:`tenant_of`)."""


VIA_BATCH_TOKEN = web.RequestKey("llmsvc.via_batch_token", bool)
"""Set on a request that bore ``--batch-token``: the secret is never forwarded to an engine."""


def tenant_of(request: web.Request) -> Tenant:
    """The caller's tenant; :data:`ANONYMOUS` when no key was needed (or none matched
    on an open path)."""
    tenant: Tenant = request.get(TENANT_KEY, ANONYMOUS)
    return tenant


def protected(request: web.Request) -> bool:
    """The routed and models paths, and anything else under ``/v1/``, need an API key."""
    path = request.path
    return path.startswith(("/v1/", "/models/")) or path in PROTECTED_PATHS


def _refusal() -> Unauthorized:
    return Unauthorized(
        INVALID_KEY_MESSAGE, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


def tenant_middleware(
    ring: Callable[[], KeyRing],
    *,
    batch_token: bytes | None = None,
    admin_paths: Callable[[web.Request], bool] | None = None,
) -> Middleware:
    """401 on :func:`protected` paths unless the bearer key is in the current ring (read
    per request, so a reloaded file applies to the next request); sets the tenant.

    With an empty ring every request passes as :data:`ANONYMOUS`.

    ``batch_token``: a bearer equal to it (compared in constant time) runs as the tenant
    ``X-Llmsvc-Tenant`` names, capped at ``standard`` (:func:`batch_tenant`). Without it the
    header means nothing. ``admin_paths``: the paths where the admin token (``core.auth``'s
    access, set by the admin guard that runs first) also passes (the batch API's).
    """

    @web.middleware
    async def tenant(request: web.Request, handler: Handler) -> web.StreamResponse:
        current = ring()
        key = bearer_credentials(request.headers.get("Authorization"))
        if batch_token is not None and key is not None and hmac.compare_digest(key, batch_token):
            request[TENANT_KEY] = batch_tenant(current, request.headers.get(TENANT_HEADER))
            request[VIA_BATCH_TOKEN] = True
        elif len(current):
            found = current.lookup(key) if key is not None else None
            if found is not None:
                request[TENANT_KEY] = found
            elif protected(request) and not (
                admin_paths is not None and admin_paths(request) and access_of(request)
            ):
                raise _refusal()
        return await handler(request)

    return tenant


def batch_tenant(ring: KeyRing, name: str | None) -> Tenant:
    """Who a request bearing the batch token runs as: the ring's tenant named ``name`` (its
    limits and models), its class capped at ``standard`` so that batch work never outranks
    interactive traffic; :data:`BATCH` for no name or an empty ring; an unknown name is a 401.
    """
    name = (name or "").strip()
    if not name or not len(ring):
        return BATCH
    found = ring.by_name(name)
    if found is None:
        raise Unauthorized(
            f"Unknown tenant {name[:64]!r} in {TENANT_HEADER}", code="invalid_api_key"
        )
    return dataclasses.replace(found, max_priority=capped(found.max_priority, Priority.STANDARD))
