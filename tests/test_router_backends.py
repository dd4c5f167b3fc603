"""A backend registered anew or healthy again leaves its passive-failure window at once."""

from __future__ import annotations

from llmsvc.core.records import ServiceRecord
from llmsvc.router.backends import Backend, PassiveHealth


def record(**changes: object) -> ServiceRecord:
    base: dict[str, object] = {
        "name": "e",
        "host": "127.0.0.1",
        "port": 1,
        "registered_at": 1.0,
        "metadata": {"models": ["m"]},
    }
    return ServiceRecord.model_validate({**base, **changes})


def failed_backend() -> Backend:
    backend = Backend(
        record=record(), source="registry", passive=PassiveHealth(max_fails=1, fail_timeout=30)
    )
    assert backend.passive.record_failure(now=100)
    assert not backend.healthy(now=101)
    return backend


def test_reregistration_clears_passive_failures() -> None:
    backend = failed_backend()
    backend.refresh(record(registered_at=2.0), "registry")
    assert backend.healthy(now=101)


def test_unhealthy_to_healthy_clears_passive_failures() -> None:
    backend = failed_backend()
    backend.refresh(record(status="unhealthy"), "registry")
    assert not backend.healthy(now=101)
    backend.refresh(record(status="healthy"), "registry")
    assert backend.healthy(now=101)


def test_an_unchanged_record_keeps_the_backend_out() -> None:
    backend = failed_backend()
    backend.refresh(record(), "registry")
    assert not backend.healthy(now=101)
    assert backend.healthy(now=131)
