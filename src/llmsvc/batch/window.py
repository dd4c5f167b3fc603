"""``completion_window``: how long a batch may take, as text ("24h", "30m", "1h30m").

OpenAI accepts only "24h"; llmsvc accepts any sum of ``<n><unit>`` terms (units s, m, h,
d, each at most once, largest first), so that a short deadline can be tested and a long one
asked for. More than a year is refused: a deadline that far is a typo, not an SLA.
"""

from __future__ import annotations

import re

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_TERM = re.compile(r"(\d+)([dhms])")
MAX_WINDOW_SECONDS = 365 * 86400.0


def parse_window(text: str) -> float:
    """Seconds of a completion window; ValueError (one line) if it is not one."""
    raw = text.strip() if isinstance(text, str) else ""
    bad = f"completion_window {text!r} is not a duration such as '24h', '30m', '7d' or '1h30m'"
    if not raw:
        raise ValueError(bad)
    pos = 0
    seen: list[str] = []
    total = 0.0
    order = list(_UNITS)
    for match in _TERM.finditer(raw):
        if match.start() != pos:
            raise ValueError(bad)
        unit = match.group(2)
        if seen and order.index(unit) <= order.index(seen[-1]):
            raise ValueError(bad)
        seen.append(unit)
        total += int(match.group(1)) * _UNITS[unit]
        pos = match.end()
    if pos != len(raw) or not seen:
        raise ValueError(bad)
    if total <= 0:
        raise ValueError(f"completion_window {text!r} must be longer than 0 seconds")
    if total > MAX_WINDOW_SECONDS:
        raise ValueError(f"completion_window {text!r} is longer than 365d")
    return total
