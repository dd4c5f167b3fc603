"""Re-admission after a fault: a passing active check ends a passive take-out (pure, no I/O)."""

from __future__ import annotations

from llmsvc.core.records import ServiceRecord
from llmsvc.router.backends import BackendPool


def _pool() -> BackendPool:
    pool = BackendPool(max_fails=3, fail_timeout=30)
    pool.set_static(
        [
            ServiceRecord(name=n, host="127.0.0.1", port=1, metadata={"models": ["m"]})
            for n in ("a", "b")
        ]
    )
    return pool


def _names(pool: BackendPool, now: float) -> list[str]:
    return [b.name for b in pool.eligible("m", now)]


def test_a_passing_check_brings_a_passively_failed_backend_back_on_probation() -> None:
    pool = _pool()
    a = pool.get("a")
    assert a is not None
    for t in (1.0, 1.1, 1.2):  # refused connections: out for --fail-timeout (30 s)
        a.passive.record_failure(t)
    pool.health_changed()
    assert _names(pool, 2.0) == ["b"]
    assert a.record_check(False, 2.0)  # dead: the active check fails too
    pool.health_changed()
    assert not a.record_check(False, 3.0)  # still dead: nothing changed
    assert a.record_check(True, 4.0)  # restarted and ready: back at once, not at 31 s
    pool.health_changed()
    assert _names(pool, 4.0) == ["a", "b"]
    # On probation: its next failure takes it out again at once.
    assert a.passive.record_failure(4.5)
    pool.health_changed()
    assert _names(pool, 5.0) == ["b"]


def test_a_passing_check_leaves_a_healthy_backend_as_it_is() -> None:
    pool = _pool()
    a = pool.get("a")
    assert a is not None
    a.passive.record_failure(1.0)  # one failure: below --max-fails, still eligible
    assert not a.record_check(True, 2.0)
    assert a.passive.recent_failures(2.0) == 1  # the window keeps counting
    assert a.checked_at == 2.0
