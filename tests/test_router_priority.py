"""Priority classes: the header's values, the default, the error, the cap by key."""

from __future__ import annotations

import pytest

from llmsvc.core.errors import BadRequest
from llmsvc.router.priority import PRIORITY_HEADER, Priority, capped, parse_priority


def test_labels_and_order() -> None:
    assert [p.label for p in Priority] == ["critical", "standard", "sheddable", "batch"]
    assert Priority.CRITICAL < Priority.STANDARD < Priority.SHEDDABLE < Priority.BATCH
    assert PRIORITY_HEADER == "X-Llmsvc-Priority"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_absent_or_empty_is_standard(value: str | None) -> None:
    assert parse_priority(value) is Priority.STANDARD


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("critical", Priority.CRITICAL),
        ("CRITICAL", Priority.CRITICAL),
        (" Standard ", Priority.STANDARD),
        ("sheddable", Priority.SHEDDABLE),
        ("\tbatch\t", Priority.BATCH),
    ],
)
def test_parses_each_class(value: str, expected: Priority) -> None:
    assert parse_priority(value) is expected


@pytest.mark.parametrize("value", ["urgent", "0", "high", "critical,batch", "crit ical"])
def test_unknown_value_is_400_invalid_priority(value: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_priority(value)
    err = caught.value
    assert err.status == 400
    assert err.code == "invalid_priority"
    assert err.param == PRIORITY_HEADER
    assert err.type == "invalid_request_error"
    for label in ("critical", "standard", "sheddable", "batch"):
        assert label in err.message


def test_long_value_is_not_echoed_whole() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_priority("x" * 5000)
    assert len(caught.value.message) < 300


@pytest.mark.parametrize(
    ("requested", "allowed", "expected"),
    [
        (Priority.CRITICAL, Priority.CRITICAL, Priority.CRITICAL),
        (Priority.CRITICAL, Priority.STANDARD, Priority.STANDARD),
        (Priority.CRITICAL, Priority.BATCH, Priority.BATCH),
        (Priority.BATCH, Priority.STANDARD, Priority.BATCH),
        (Priority.SHEDDABLE, Priority.CRITICAL, Priority.SHEDDABLE),
    ],
)
def test_capped_never_above_allowed(
    requested: Priority, allowed: Priority, expected: Priority
) -> None:
    assert capped(requested, allowed) is expected
