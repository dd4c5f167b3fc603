"""Whether a backend takes one more request now: its slots, and its own saturation.

A backend's *slots* are the requests the router lets it have in flight at once:
the engine's own limit when its record says it (``metadata.max_concurrency``, set
by the babysitter from ``--max-num-seqs`` and the like, or by hand in a static
services file), else ``--backend-concurrency``, else unlimited. Past its slots a
request waits in the router's queue (``flowqueue``), where priorities and tenant
turns apply, instead of in the engine's queue, where they do not.

An engine can also say it is full before its slots are taken (long prompts fill
the KV cache, a slow request holds its batch): ``--saturation-waiting`` and
``--saturation-kv`` read its last scraped load (``least_load``'s scrape, only
while fresh) and treat the backend as full above them.
"""

from __future__ import annotations

from llmsvc.router.backends import Backend

SLOTS_KEY = "max_concurrency"
"""The record metadata field that names a backend's slots."""


def slots_of(backend: Backend, default: int | None) -> int | None:
    """The backend's slots: ``metadata.max_concurrency`` if an int >= 1, else ``default``.

    None means unlimited. A bool, a float, a string or a value below 1 is not a slot
    count and is ignored (a typo in a services file must not make a backend take
    nothing, or everything).
    """
    value = backend.record.metadata.get(SLOTS_KEY)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return default


def saturated(
    backend: Backend,
    *,
    waiting: float | None,
    kv: float | None,
    now: float,
    max_age: float,
) -> bool:
    """True when the backend's last fresh scrape shows more waiting requests than
    ``waiting`` or a KV-cache use above ``kv``.

    A scrape older than ``max_age`` seconds (``loadscore.max_load_age``) says nothing
    about now: without a fresh one the backend is not saturated, and its slots alone
    decide. Both thresholds None (the default): never saturated.
    """
    if waiting is None and kv is None:
        return False
    load = backend.load
    if load is None or now - load.at > max_age:
        return False
    if waiting is not None and load.waiting > waiting:
        return True
    return kv is not None and load.kv_use > kv


def has_room(
    backend: Backend,
    *,
    default: int | None,
    waiting: float | None,
    kv: float | None,
    now: float,
    max_age: float,
) -> bool:
    """True when the backend takes one more request: a free slot and not saturated."""
    slots = slots_of(backend, default)
    if slots is not None and backend.in_flight >= slots:
        return False
    return not saturated(backend, waiting=waiting, kv=kv, now=now, max_age=max_age)
