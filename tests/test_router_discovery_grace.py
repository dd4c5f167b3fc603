"""Backends a returning registry no longer lists stay for the grace period."""

from __future__ import annotations

from llmsvc.core.records import ServiceRecord
from llmsvc.router.discovery import _Retained


def rec(name: str) -> ServiceRecord:
    return ServiceRecord(name=name, host="127.0.0.1", port=1, metadata={"models": ["m"]})


def test_missing_records_are_kept_until_the_grace_ends() -> None:
    retained = _Retained(grace=10)
    retained.start([rec("a"), rec("b")], now=100)
    assert [r.name for r in retained.merge([], now=101)] == ["a", "b"]
    assert [r.name for r in retained.merge([rec("b")], now=102)] == ["b", "a"]
    assert retained.remaining(105) == 5
    assert retained.merge([rec("b")], now=110) == [rec("b")]
    assert retained.remaining(111) is None


def test_no_grace_keeps_nothing() -> None:
    retained = _Retained(grace=0)
    retained.start([rec("a")], now=0)
    assert retained.merge([], now=0) == []
