"""A request's priority class: the ``X-Llmsvc-Priority`` header, capped by its API key.

Four classes, served in strict order when the router queues (``flowqueue``): a
waiting ``critical`` request always goes before a waiting ``standard`` one, and so on
down to ``batch``. The class also decides who is evicted when a model's queue is
full (the lowest class first). A client names its class per request; its key's
``max_priority`` caps it (:func:`capped`), so a tenant cannot jump the line by
sending a header.
"""

from __future__ import annotations

from enum import IntEnum

from llmsvc.core.errors import BadRequest

PRIORITY_HEADER = "X-Llmsvc-Priority"


class Priority(IntEnum):
    """A priority class; a lower value is served first."""

    CRITICAL = 0
    STANDARD = 1
    SHEDDABLE = 2
    BATCH = 3

    @property
    def label(self) -> str:
        """The class as the header, metrics and logs spell it: ``critical``, ``standard``, ..."""
        return self.name.lower()


_BY_LABEL = {p.label: p for p in Priority}
LABELS = tuple(p.label for p in Priority)
"""The four labels, highest class first."""


def parse_priority(value: str | None) -> Priority:
    """The class a header value names; ``standard`` when absent or empty.

    Case-insensitive, surrounding spaces ignored. Anything else is a 400
    ``invalid_priority``: a typo must not silently demote (or promote) a request.
    """
    if value is None:
        return Priority.STANDARD
    text = value.strip().lower()
    if not text:
        return Priority.STANDARD
    found = _BY_LABEL.get(text)
    if found is None:
        shown = value if len(value) <= 64 else value[:64] + "…"
        raise BadRequest(
            f"Invalid {PRIORITY_HEADER} header {shown!r}: use one of " + ", ".join(LABELS),
            param=PRIORITY_HEADER,
            code="invalid_priority",
        )
    return found


def capped(requested: Priority, allowed: Priority) -> Priority:
    """``requested``, lowered to ``allowed`` when it asks for more (a key's ``max_priority``)."""
    return max(requested, allowed)
