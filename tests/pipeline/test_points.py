"""Which findings a root-cause ranking of a period sees."""

from __future__ import annotations

import pyarrow as pa

from spanomaly.pipeline.points import _between

S = 1_000_000_000


def test_a_window_mostly_before_the_period_is_not_its_evidence() -> None:
    findings = pa.table(
        {
            "time_ns": [100 * S, 100 * S, 130 * S, 200 * S],  # instance findings: window ends
            "entity": ["trace", "instance", "instance", "instance"],
        }
    )
    # the period starts at 90 s; windows of 60 s: [40, 100) lies mostly before it,
    # [70, 130) mostly after; a trace finding counts at its own time; 200 s is past the end
    kept = _between(findings, 90 * S, 150 * S, window_ns=60 * S)
    assert kept.column("time_ns").to_pylist() == [100 * S, 130 * S]
    assert kept.column("entity").to_pylist() == ["trace", "instance"]
    assert _between(findings, 90 * S, 150 * S).num_rows == 3  # no point model: by time only
