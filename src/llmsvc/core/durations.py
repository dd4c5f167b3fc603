"""nginx's time syntax (``30s``, ``500ms``, ``1m30s``, ``1h 30m``), as config files write it.

Files written for nginx or for the InfiniLM-SVC scripts give ``fail_timeout`` this way;
reading it here lets them load unchanged. A bare number is seconds, as in nginx.
"""

from __future__ import annotations

import re

# nginx's units, largest first; each may appear once, in this order (ngx_parse_time).
_UNITS: dict[str, float] = {
    "y": 365 * 86400.0,
    "M": 30 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
_ORDER = list(_UNITS)
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|[yMwdhms])?\s*")


def parse_duration(value: object) -> float:
    """Seconds of ``value``: a non-negative number, or a string such as ``"1m30s"``.

    :class:`ValueError` with a one-line message for anything else (a boolean, a
    negative number, an unknown unit, units out of order or repeated).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a duration such as 30s, 500ms or 1m30s")
    if not isinstance(value, str):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    text = value.strip()
    if not text:
        raise ValueError("an empty duration (write e.g. 30s)")
    total = 0.0
    last = -1
    pos = 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"{value!r} is not a duration such as 30s, 500ms or 1m30s")
        number, unit = match.group(1), match.group(2) or "s"
        if match.group(2) is None and match.end() != len(text):
            # "1q", "1 2": only the last number may go without a unit
            raise ValueError(f"{value!r} is not a duration such as 30s, 500ms or 1m30s")
        index = _ORDER.index(unit)
        if index <= last:
            raise ValueError(f"{value!r}: units must go from largest to smallest, each once")
        last = index
        total += float(number) * _UNITS[unit]
        pos = match.end()
    return total
