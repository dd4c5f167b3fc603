"""completion_window parsing: the forms accepted, and one-line errors for the rest."""

from __future__ import annotations

import re

import pytest

from llmsvc.batch.ids import new_batch_id, new_file_id, new_request_id
from llmsvc.batch.window import parse_window


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("90s", 90.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 86400.0 + 7200.0 + 180.0 + 4.0),
        ("365d", 365 * 86400.0),
        (" 24h ", 86400.0),
        ("0h5m", 300.0),
    ],
)
def test_good_windows(text: str, seconds: float) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "24",
        "h",
        "24 h",
        "24H",
        "1.5h",
        "-1h",
        "0s",
        "0h0m",
        "366d",
        "30m1h",  # units out of order
        "1h1h",  # a unit twice
        "24hours",
        "1h 30m",
        "forever",
    ],
)
def test_bad_windows(text: str) -> None:
    with pytest.raises(ValueError, match="completion_window") as info:
        parse_window(text)
    message = str(info.value)
    assert "\n" not in message
    assert "completion_window" in message


def test_ids_have_openai_shapes_and_differ() -> None:
    assert re.fullmatch(r"file-[0-9a-f]{24}", new_file_id())
    assert re.fullmatch(r"batch_[0-9a-f]{24}", new_batch_id())
    assert re.fullmatch(r"batch_req_[0-9a-f]{24}", new_request_id())
    assert len({new_batch_id() for _ in range(100)}) == 100
