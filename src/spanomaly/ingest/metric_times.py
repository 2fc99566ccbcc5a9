"""Times of metric points and fault labels: unix seconds, ms, us or ns, or ISO-8601.

A number's unit is told by its size (a time after 1973 in seconds is below 1e11, in
milliseconds below 1e14, in microseconds below 1e17); ISO-8601 without an offset is UTC.
SQL readers use `spanomaly.ingest.logs._time_sql` (the same rule); this is its Python
twin, for the few values read in Python (fault labels, header checks, Prometheus answers).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

_SCALES = ((1e11, 1_000_000_000), (1e14, 1_000_000), (1e17, 1_000))


def parse_time_ns(value: object) -> int:
    """One time (number of s/ms/us/ns, or ISO-8601 text) as ns; ValueError where it is none."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    number: float | None
    if isinstance(value, int) and abs(value) >= 10**17:  # ns already: exact, not via float
        return value
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is None:
            when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return round(when.timestamp() * 1e6) * 1000
        if abs(number) >= 1e17:
            return int(text)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a time")
    for limit, factor in _SCALES:
        if abs(number) < limit:
            return round(number * factor)
    return int(number)


def looks_like_time(text: str) -> bool:
    """Whether a cell reads as a time: a number after 1973 in any unit, or ISO-8601."""
    try:
        ns = parse_time_ns(text)
    except (ValueError, OverflowError):
        return False
    return ns > 100_000_000 * 1_000_000_000
