"""DuckDB store specifics: the write path's settings, the fast path for SQL sources."""

from __future__ import annotations

from pathlib import Path

from spanomaly.ingest.base import Chunk, SqlSource
from spanomaly.schema import SPANS
from spanomaly.store.duckdb import DuckDBStore

from .test_contract import spans


def test_a_write_runs_single_threaded_and_restores_the_thread_setting(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "s.duckdb", config={"threads": 2})
    try:
        with store.transaction():
            result = store.write(Chunk("spans", spans(50)))
            again = store.write(Chunk("spans", spans(60)))
        assert (result.inserted, again.inserted, again.duplicates) == (50, 10, 50)
        threads = store.sql("SELECT current_setting('threads') AS t")["t"][0].as_py()
        assert int(threads) == 2
    finally:
        store.close()


def _source(fast_fails: bool = False) -> SqlSource:
    """Spans with keys 0..4, each twice, plus one row the checked path refuses (i = 9)."""
    cols = {n: f"NULL AS {n}" for n in SPANS.names}
    cols |= {
        "trace_id": "lpad((i % 5)::VARCHAR, 32, '1') AS trace_id",
        "span_id": "lpad((i % 5)::VARCHAR, 16, '1') AS span_id",
        "service": "'s' AS service",
        "operation": "'op' AS operation",
        "start_ns": "i AS start_ns",
        "duration_ns": "CASE WHEN i = 9 THEN -1 ELSE 1 END AS duration_ns",
        "status": "'unset' AS status",
    }
    rows = f"SELECT {', '.join(cols.values())} FROM range(10) t(i)"
    fast = rows.replace("-1 ELSE", "error('refused') ELSE") if fast_fails else rows + " WHERE i < 9"
    return SqlSource(
        f"SELECT *, 'f.csv' AS _source FROM ({rows})",
        "CASE WHEN duration_ns < 0 THEN 'duration is negative' END",
        fast=fast,
    )


def test_a_clean_fast_source_is_written_in_one_statement(checked_writes: list[int]) -> None:
    calls = checked_writes
    store = DuckDBStore()
    result = store.write(Chunk("spans", _source()))
    assert (result.inserted, result.duplicates, result.rejected, calls) == (5, 4, 0, [])
    again = store.write(Chunk("spans", _source()))  # the store holds them: all duplicates
    assert (again.inserted, again.duplicates, store.stats().spans) == (0, 9, 5)


def test_a_refused_fast_source_falls_back_to_the_checked_path(checked_writes: list[int]) -> None:
    calls = checked_writes
    store = DuckDBStore()
    result = store.write(Chunk("spans", _source(fast_fails=True)))
    assert (result.inserted, result.duplicates, result.rejected, calls) == (5, 4, 1, [1])
    assert "f.csv" in result.rejects[0].message()


def test_the_fast_path_never_rolls_back_earlier_writes_of_its_transaction(
    checked_writes: list[int],
) -> None:
    calls = checked_writes
    store = DuckDBStore()
    with store.transaction():
        store.write(Chunk("spans", spans(3)))
        result = store.write(Chunk("spans", _source(fast_fails=True)))
    assert (result.inserted, result.rejected, calls) == (5, 1, [1])
    assert store.stats().spans == 8
