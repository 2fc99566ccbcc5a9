"""Vectorised checks of decoded span tables: bad rows become Rejects, good rows go on."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from spanomaly.ingest.base import Reject

if TYPE_CHECKING:  # the SQL checks below serve CSV imports, which never load Arrow
    import pyarrow as pa

_ZERO32 = "0" * 32
_ZERO16 = "0" * 16
MAX_REJECT_MESSAGES = 20


def _not_hex(column: pa.ChunkedArray, length: int, hex_text: bool = False) -> pa.ChunkedArray:
    # a length test and one search for a non-hex character: far cheaper than a full match
    import pyarrow.compute as pc  # loaded by the Arrow decoders only, not by a CSV import

    wrong = pc.not_equal(pc.binary_length(column), length)
    if hex_text:  # hex by construction (ids decoded from bytes): the length is the test
        return wrong
    return pc.or_(wrong, pc.match_substring_regex(column, "[^0-9a-f]"))


def span_problems(table: pa.Table, hex_ids: bool = False) -> pa.Array:
    """Per row: null when the span is valid, else the first problem found, as text.

    hex_ids: the id columns hold hex text of raw id bytes, so only their lengths can be
    wrong (binary formats); otherwise they are searched for non-hex characters too.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    trace, span, parent = table["trace_id"], table["span_id"], table["parent_id"]
    checks: list[tuple[pa.Array, str]] = [
        (pc.fill_null(_not_hex(trace, 32, hex_ids), True), "trace_id must be 32 hex characters"),
        (pc.fill_null(pc.equal(trace, _ZERO32), False), "trace_id is all zeros"),
        (pc.fill_null(_not_hex(span, 16, hex_ids), True), "span_id must be 16 hex characters"),
        (pc.fill_null(pc.equal(span, _ZERO16), False), "span_id is all zeros"),
        (
            pc.fill_null(_not_hex(parent, 16, hex_ids), False),
            "parent_id must be 16 hex characters",
        ),
        (pc.is_null(table["start_ns"]), "start time is missing"),
        (pc.fill_null(pc.less(table["duration_ns"], 0), True), "duration is negative or missing"),
        (pc.is_null(table["service"]), "service is missing"),
        (pc.is_null(table["operation"]), "operation (span name) is missing"),
    ]
    problem = pa.nulls(table.num_rows, pa.string())
    for bad, text in reversed(checks):
        problem = pc.if_else(bad, pa.scalar(text), problem)
    return problem


def split_valid(
    table: pa.Table,
    source: str,
    label: Callable[[int], str] | None = None,
    hex_ids: bool = False,
) -> tuple[pa.Table, list[Reject]]:
    """The valid rows (in SPANS schema) and one Reject per invalid row (hex_ids: see
    span_problems)."""
    import pyarrow as pa

    from spanomaly.schema import SPANS

    table = table.select(SPANS.names)
    if table.num_rows == 0:
        return table.cast(SPANS), []
    import pyarrow.compute as pc

    problem = span_problems(table, hex_ids)
    bad = pc.is_valid(problem)
    if not pc.any(bad).as_py():
        return table.cast(SPANS), []
    idx = pc.indices_nonzero(bad).to_pylist()
    texts = pc.take(problem, pa.array(idx)).to_pylist()
    traces = pc.take(table["trace_id"], pa.array(idx)).to_pylist()
    spans = pc.take(table["span_id"], pa.array(idx)).to_pylist()
    rejects = [
        Reject(source, label(i) if label else f"span {i + 1} (trace_id={t!r}, span_id={s!r})", p)
        for i, p, t, s in zip(idx, texts, traces, spans, strict=True)
    ]
    return table.filter(pc.invert(bad)).cast(SPANS), rejects


def _hex_sql(column: str, length: int) -> str:
    # strlen and one regex search: the cheapest exact test DuckDB offers (ltrim with a
    # character set is four times slower)
    return f"(strlen({column}) <> {length} OR regexp_matches({column}, '[^0-9a-f]'))"


# The checks of span_problems in SQL over SPANS columns (for sources DuckDB reads).
SPAN_VALUE_REJECT_SQL = """CASE
    WHEN start_ns IS NULL THEN 'start time is missing or not a number'
    WHEN duration_ns IS NULL THEN 'duration is missing or not a number'
    WHEN duration_ns < 0 THEN 'duration is negative'
    WHEN service IS NULL THEN 'service is missing'
    WHEN operation IS NULL THEN 'operation is missing'
END"""


def span_values_ok_sql(service: str = "service") -> str:
    """The checks of SPAN_VALUE_REJECT_SQL as one boolean (true for a good row, else false or
    null), cheaper per row than the CASE's text; service: SQL that is null where the service
    will be."""
    return (
        f"(start_ns IS NOT NULL AND duration_ns >= 0 AND {service} IS NOT NULL "
        "AND operation IS NOT NULL)"
    )


SPAN_REJECT_SQL = f"""CASE
    WHEN trace_id IS NULL OR {_hex_sql("trace_id", 32)} THEN 'trace_id must be 32 hex characters'
    WHEN trace_id = '{_ZERO32}' THEN 'trace_id is all zeros'
    WHEN span_id IS NULL OR {_hex_sql("span_id", 16)} THEN 'span_id must be 16 hex characters'
    WHEN span_id = '{_ZERO16}' THEN 'span_id is all zeros'
    WHEN parent_id IS NOT NULL AND {_hex_sql("parent_id", 16)} THEN 'parent_id must be 16 hex characters'
    ELSE {SPAN_VALUE_REJECT_SQL}
END"""
