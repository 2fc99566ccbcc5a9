"""Times of metric points and plain labels: every unit, exact nanoseconds."""

from __future__ import annotations

from spanomaly.ingest.metric_times import parse_time_ns


def test_nanoseconds_stay_exact() -> None:
    ns = 1796656156371191832  # past float's 53 bits
    assert parse_time_ns(ns) == ns
    assert parse_time_ns(str(ns)) == ns
    assert parse_time_ns(1796656156) == 1796656156 * 10**9
    assert parse_time_ns(1796656156.5) == 1796656156500000000
