"""The one time parser: exact nanoseconds from unix seconds and ISO-8601 alike."""

from __future__ import annotations

import pytest

from spanomaly.errors import InputError
from spanomaly.timeparse import parse_time

T = 1675036800  # 2023-01-30T00:00:00Z


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1675036800", T * 10**9),
        ("1675036800.123456789", T * 10**9 + 123456789),
        ("1675036800.047", T * 10**9 + 47_000_000),  # a float would give ...047000064
        ("2023-01-30T00:00:00Z", T * 10**9),
        ("2023-01-30T00:00:00.123456789Z", T * 10**9 + 123456789),
        ("2023-01-30T00:00:00.5", T * 10**9 + 500_000_000),  # UTC when no zone is named
        ("2023-01-30T08:00:00.000000001+08:00", T * 10**9 + 1),
        ("2023-01-30 00:00:00,25", T * 10**9 + 250_000_000),
    ],
)
def test_times_are_exact_nanoseconds(text: str, ns: int) -> None:
    assert parse_time(text, "--from") == ns


def test_the_same_time_written_two_ways_is_the_same_nanosecond() -> None:
    assert parse_time("1675036800.000001", "x") == parse_time("2023-01-30T00:00:00.000001Z", "x")


@pytest.mark.parametrize("text", ["yesterday", "nan", "inf", "2023-13-01T00:00:00"])
def test_a_malformed_time_names_the_option(text: str) -> None:
    with pytest.raises(InputError, match="--to"):
        parse_time(text, "--to")


def test_nothing_given_is_none() -> None:
    assert parse_time(None, "--from") is None and parse_time("  ", "--from") is None
