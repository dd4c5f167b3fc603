"""Maintenance entries: the wire model the registry keeps and the router obeys.

An operator takes a model (or one backend of it) out of service with a message
and an optional end time. The registry holds the entries so that every router
replica sees the same ones (its blocking query ``GET /maintenance``); a router
answers new requests for a model in maintenance with 503 ``maintenance``, the
message, and ``Retry-After`` from ``until``. Requests already running finish.

Times are aware UTC datetimes on the wire (RFC 3339 with an offset): a naive
time would mean a different instant on every machine that reads it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_MESSAGE = 500
"""Characters: the longest maintenance message (it is repeated in every 503)."""

MAX_MODEL = 256
"""Characters: the longest model id an entry may name."""

Source = Literal["http", "kubernetes"]

_BACKEND_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}$"  # a registry record's name


def _aware_utc(value: datetime | None) -> datetime | None:
    """``value`` in UTC; a time without an offset is refused (it names no instant)."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("give a UTC offset, e.g. Z (2026-12-02T14:00:00Z)")
    return value.astimezone(UTC)


def _message(value: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError("must not be blank")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("must be one line without control characters")
    return text


class MaintenanceRequest(BaseModel):
    """The body of ``PUT /maintenance/{model}``."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(
        min_length=1,
        max_length=MAX_MESSAGE,
        description="What clients are told (the 503's error.message); one line.",
    )
    until: datetime | None = Field(
        default=None,
        description="RFC 3339 with an offset (e.g. 2026-12-02T14:00:00Z), in the future: "
        "the entry ends then (Retry-After counts down to it). None: until deleted.",
    )
    backend: str | None = Field(
        default=None,
        pattern=_BACKEND_PATTERN,
        description="One backend (its registry record name) instead of the whole model.",
    )

    @field_validator("until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _aware_utc(value)

    @field_validator("message")
    @classmethod
    def _text(cls, value: str) -> str:
        return _message(value)


class MaintenanceEntry(BaseModel):
    """One model (or one backend of it) out of service, as the registry keeps it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=MAX_MODEL, description="The model id.")
    backend: str | None = Field(
        default=None,
        pattern=_BACKEND_PATTERN,
        description="None: the whole model; else one backend (its registry record name).",
    )
    message: str = Field(min_length=1, max_length=MAX_MESSAGE)
    until: datetime | None = Field(
        default=None, description="Aware UTC; past it the entry no longer applies."
    )
    since: datetime = Field(description="When the entry was set (aware UTC).")
    source: Source = "http"

    @field_validator("until", "since")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _aware_utc(value)

    @property
    def key(self) -> tuple[str, str | None]:
        """What identifies the entry among a source's: (model, backend)."""
        return self.model, self.backend

    def active(self, now: float) -> bool:
        """True while the entry applies at Unix time ``now`` (before ``until``)."""
        return self.until is None or self.until.timestamp() > now

    def retry_after(self, now: float, default: float = 60.0) -> int:
        """Whole seconds to ``until`` (at least 1); ``default`` without an end time."""
        if self.until is None:
            return max(1, round(default))
        return max(1, int(-(-(self.until.timestamp() - now) // 1)))


class MaintenanceList(BaseModel):
    """The body of ``GET /maintenance``."""

    maintenance: list[MaintenanceEntry]
    total: int


class DeletedMaintenance(BaseModel):
    """The body of ``DELETE /maintenance/{model}``."""

    deleted: MaintenanceEntry


def utc_now(now: float) -> datetime:
    """Unix time ``now`` as an aware UTC datetime."""
    return datetime.fromtimestamp(now, UTC)
