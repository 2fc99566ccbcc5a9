"""User-given times as integer nanoseconds: the one parser of the CLI and the API.

Unix seconds are read as decimals ("1675036800.123456789" is exact to the nanosecond, no
float in between); ISO-8601 takes up to nine fractional digits, UTC unless it names a zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from spanomaly.errors import InputError

NS = 1_000_000_000
_FRACTION = re.compile(r"(\d{2}:\d{2}:\d{2})[.,](\d{1,9})")


def parse_time(text: str | None, option: str) -> int | None:
    """ISO-8601 (UTC unless it says otherwise) or unix seconds as ns since the epoch; None
    for None or an empty text; InputError naming the option when malformed."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        seconds = Decimal(text)
    except InvalidOperation:
        return _iso_ns(text, option)
    if not seconds.is_finite():
        raise InputError(f"{option}: {text!r} is not a time")
    return int((seconds * NS).to_integral_value())


def _iso_ns(text: str, option: str) -> int:
    """Nanoseconds of an ISO-8601 time, its fraction of a second kept to nine digits."""
    fraction = 0
    match = _FRACTION.search(text)
    if match:  # datetime reads six digits at most: the fraction is taken apart first
        digits = match.group(2)
        fraction = int(digits.ljust(9, "0"))
        text = text[: match.start(2) - 1] + text[match.end(2) :]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{option}: {text!r} is not ISO-8601 or unix seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    whole = when.replace(microsecond=0)
    return (int(whole.timestamp()) * NS) + fraction


def iso(ns: int | None) -> str | None:
    """ISO-8601 UTC text of a nanosecond time (None stays None)."""
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, UTC).isoformat()
