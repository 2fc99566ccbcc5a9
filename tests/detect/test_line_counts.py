"""A span that stops writing the log lines every normal span of its kind wrote."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from spanomaly.detect.line_counts import MIN_SEEN, LineCounts

HANDLER = "api | orders | POST /orders |  | ok"
RARE = "api | orders | GET /rare |  | ok"
LINE = "log | orders | INFO | order <*> stored"


def _events(traces: list[list[tuple[str, str]]]) -> pa.Table:
    """Events of traces: per trace (span id, key) rows; a log key's span id is its span's."""
    rows = [
        {"trace_id": f"t{i}", "span_id": span, "key": key}
        for i, trace in enumerate(traces)
        for span, key in trace
    ]
    return pa.Table.from_pylist(rows)


def test_a_span_that_wrote_fewer_lines_than_ever_is_missing_lines(tmp_path: Path) -> None:
    normal = [[("a", HANDLER), ("a", LINE)]] * MIN_SEEN
    normal += [[("a", HANDLER), ("a", LINE), ("b", RARE), ("b", LINE)]] * 3
    LineCounts().update(_events(normal)).save(tmp_path)
    counts = LineCounts.load(tmp_path)  # through its file
    test = _events(
        [
            [("a", HANDLER), ("a", LINE)],  # as always
            [("a", HANDLER), ("x", "log | orders | INFO | other"), ("b", RARE)],  # a line lost
            [("a", HANDLER), ("b", RARE)],  # no lines at all: not collected, nothing to say
        ]
    )
    # the handler, seen often with its line, is missing it; the rare span is not judged
    assert counts.missing(test).tolist() == [False, False, True, False, False, False, False]


def test_normal_spans_without_their_line_make_it_optional() -> None:
    normal = [[("a", HANDLER), ("a", LINE)]] * MIN_SEEN
    counts = LineCounts().update(_events(normal))
    quiet = _events([[("a", HANDLER), ("x", "log | orders | INFO | other")]])
    assert counts.missing(quiet).tolist() == [True, False]
    counts.update(quiet)  # feedback or adapt: such a span is normal now
    assert not counts.missing(quiet).any()
