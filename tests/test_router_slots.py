"""A backend's slots and saturation: the metadata, the default, the scrape's freshness."""

from __future__ import annotations

from typing import Any

import pytest

from llmsvc.core.records import ServiceRecord
from llmsvc.router.backends import Backend, PassiveHealth
from llmsvc.router.loadscore import EngineLoad
from llmsvc.router.slots import has_room, saturated, slots_of

NOW = 1000.0
MAX_AGE = 3.0


def backend(metadata: dict[str, Any] | None = None, *, in_flight: int = 0) -> Backend:
    record = ServiceRecord.model_validate(
        {
            "name": "b1",
            "type": "openai-api",
            "host": "127.0.0.1",
            "port": 1,
            "metadata": {"models": ["m"], **(metadata or {})},
        }
    )
    made = Backend(record=record, source="static", passive=PassiveHealth(3, 10))
    made.in_flight = in_flight
    return made


def loaded(waiting: float, kv: float, *, age: float = 0.5) -> Backend:
    made = backend()
    made.load = EngineLoad(waiting=waiting, running=1, kv_use=kv, at=NOW - age, in_flight=0)
    return made


def test_metadata_slots_win_over_the_default() -> None:
    assert slots_of(backend({"max_concurrency": 4}), 16) == 4
    assert slots_of(backend({"max_concurrency": 1}), None) == 1


def test_default_without_metadata() -> None:
    assert slots_of(backend(), 8) == 8
    assert slots_of(backend(), None) is None


@pytest.mark.parametrize("value", [True, False, 2.0, 2.5, "4", 0, -3, None, [4]])
def test_bad_metadata_values_are_ignored(value: object) -> None:
    assert slots_of(backend({"max_concurrency": value}), 5) == 5
    assert slots_of(backend({"max_concurrency": value}), None) is None


def test_has_room_counts_in_flight_against_slots() -> None:
    kw: dict[str, Any] = {"waiting": None, "kv": None, "now": NOW, "max_age": MAX_AGE}
    assert has_room(backend({"max_concurrency": 2}, in_flight=1), default=None, **kw)
    assert not has_room(backend({"max_concurrency": 2}, in_flight=2), default=None, **kw)
    assert not has_room(backend({"max_concurrency": 2}, in_flight=3), default=None, **kw)
    assert not has_room(backend(in_flight=4), default=4, **kw)
    assert has_room(backend(in_flight=10_000), default=None, **kw)


def test_saturated_by_waiting_or_kv() -> None:
    kw: dict[str, Any] = {"now": NOW, "max_age": MAX_AGE}
    assert saturated(loaded(waiting=3, kv=0.1), waiting=2, kv=None, **kw)
    assert not saturated(loaded(waiting=2, kv=0.1), waiting=2, kv=None, **kw)  # not above
    assert saturated(loaded(waiting=0, kv=0.95), waiting=None, kv=0.9, **kw)
    assert not saturated(loaded(waiting=0, kv=0.9), waiting=None, kv=0.9, **kw)
    assert saturated(loaded(waiting=0, kv=0.95), waiting=5, kv=0.9, **kw)
    assert saturated(loaded(waiting=9, kv=0.1), waiting=5, kv=0.9, **kw)
    assert not saturated(loaded(waiting=1, kv=0.5), waiting=5, kv=0.9, **kw)


def test_not_saturated_when_both_thresholds_are_off() -> None:
    assert not saturated(loaded(waiting=99, kv=1.0), waiting=None, kv=None, now=NOW, max_age=3)


def test_stale_or_missing_load_is_not_saturation() -> None:
    kw: dict[str, Any] = {"waiting": 0, "kv": 0.5, "now": NOW, "max_age": MAX_AGE}
    assert not saturated(loaded(waiting=9, kv=1.0, age=MAX_AGE + 0.1), **kw)
    assert saturated(loaded(waiting=9, kv=1.0, age=MAX_AGE - 0.1), **kw)
    assert not saturated(backend(), **kw)


def test_saturated_backend_has_no_room_despite_free_slots() -> None:
    full = loaded(waiting=4, kv=0.2)
    full.record.metadata["max_concurrency"] = 8
    kw: dict[str, Any] = {"default": None, "kv": None, "now": NOW, "max_age": MAX_AGE}
    assert not has_room(full, waiting=1, **kw)
    assert has_room(full, waiting=None, **kw)
