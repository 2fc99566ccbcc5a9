"""DuckDB store specifics: the write path's settings, the fast path for SQL sources."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from spanomaly.ingest.base import Chunk, SqlSource
from spanomaly.schema import SPANS
from spanomaly.store.duckdb import DuckDBStore
from spanomaly.store.key_hashes import key_hashes

from .test_contract import spans


def test_a_write_runs_single_threaded_and_restores_the_settings(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "s.duckdb", config={"threads": 2})
    try:
        with store.transaction():
            result = store.write(Chunk("spans", spans(50)))
            again = store.write(Chunk("spans", spans(60)))
        assert (result.inserted, again.inserted, again.duplicates) == (50, 10, 50)
        settings = store.sql(
            "SELECT current_setting('threads') AS t, "
            "current_setting('write_buffer_row_group_count') AS g"
        ).to_pylist()[0]
        assert (int(settings["t"]), int(settings["g"])) == (2, 5)  # DuckDB's default groups
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


def test_a_transaction_into_an_empty_table_dedups_by_key_hash(tmp_path: Path) -> None:
    # batches 2..n are not probed against the stored keys: a re-sent span (its key hash
    # seen before) is, and keys of another width switch the transaction back to probing
    store = DuckDBStore(tmp_path / "s.duckdb")
    try:
        with store.transaction():
            first = store.write(Chunk("spans", spans(50)))
            other = store.write(Chunk("spans", spans(20, trace="b" * 32)))
            again = store.write(Chunk("spans", pa.concat_tables([spans(60), spans(60)])))
            short = spans(30, trace="c" * 16)
            mixed = store.write(Chunk("spans", pa.concat_tables([short, spans(70)])))
            last = store.write(Chunk("spans", spans(80)))
        counts = [(r.inserted, r.duplicates) for r in (first, other, again, mixed, last)]
        assert counts == [(50, 0), (20, 0), (10, 110), (40, 60), (10, 70)]
        assert store.stats().spans == 130
        n = store.sql("SELECT count(DISTINCT (trace_id, span_id)) AS n FROM spans")["n"][0]
        assert n.as_py() == 130
    finally:
        store.close()


def test_key_hashes_need_one_width_per_key_column() -> None:
    table = spans(10)
    hashes = key_hashes(table, ("trace_id", "span_id"))
    assert hashes is not None and len(set(hashes.tolist())) == 10
    sliced = key_hashes(pa.concat_tables([spans(4), table.slice(4)]), ("trace_id", "span_id"))
    assert sliced is not None and sliced.tolist() == hashes.tolist()
    mixed = pa.concat_tables([spans(2, trace="c" * 16), table])
    assert key_hashes(mixed, ("trace_id", "span_id")) is None
    with_null = table.set_column(1, "span_id", pa.array([None] * 10, pa.string()))
    assert key_hashes(with_null, ("trace_id", "span_id")) is None


def _core_source(keys: range) -> SqlSource:
    """Spans that fill only the core columns, as a plain CSV does."""
    rows = (
        "SELECT lpad(i::VARCHAR, 32, 'a') AS trace_id, lpad(i::VARCHAR, 16, 'b') AS span_id, "
        "NULL::VARCHAR AS parent_id, 's' AS service, 's-1' AS instance, 'op' AS operation, "
        f"i AS start_ns, 1 AS duration_ns, 'unset' AS status FROM range({keys.start}, {keys.stop}) t(i)"
    )
    return SqlSource(f"SELECT *, 'f.csv' AS _source FROM ({rows})", "NULL", fast=rows)


def _count(store: DuckDBStore, table: str) -> int:
    return store.sql(f"SELECT count(*) AS n FROM {table}")["n"][0].as_py()


def test_spans_of_core_columns_only_go_to_their_own_table_behind_the_spans_view() -> None:
    store = DuckDBStore()
    store.write(Chunk("spans", _core_source(range(5))))
    assert (_count(store, "spans_core"), _count(store, "spans_all")) == (5, 0)
    # the view has the schema's columns and types, the columns left out are NULL
    schema = store.spans().schema
    assert [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in SPANS]
    assert store.sql("SELECT count(*) AS n FROM spans WHERE kind IS NULL")["n"][0].as_py() == 5
    # a span is stored once whichever table holds it, in either order of the two writes
    arrow = spans(8).set_column(0, "trace_id", pa.array([str(i).rjust(32, "a") for i in range(8)]))
    arrow = arrow.set_column(1, "span_id", pa.array([str(i).rjust(16, "b") for i in range(8)]))
    result = store.write(Chunk("spans", arrow))
    assert (result.inserted, result.duplicates) == (3, 5)
    again = store.write(Chunk("spans", _core_source(range(10))))
    assert (again.inserted, again.duplicates) == (2, 8)
    assert (_count(store, "spans_core"), _count(store, "spans_all"), store.stats().spans) == (
        7,
        3,
        10,
    )
    gone = [str(i).rjust(16, "b") for i in (4, 5)]  # one in each table
    assert store.delete("spans", "span_id IN (SELECT unnest(?))", [gone]) == 2
    assert store.stats().spans == 8


def test_a_store_whose_spans_is_a_table_keeps_its_spans(tmp_path: Path) -> None:
    import duckdb

    from spanomaly.schema import TABLES
    from spanomaly.store.duckdb import ddl

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))  # a store written before the two span tables
    for name in TABLES:
        con.execute(ddl(name))
    con.register("b", spans(4))
    con.execute("INSERT INTO spans SELECT * FROM b")
    con.close()
    with DuckDBStore(path, read_only=True) as old:  # read as it is
        assert old.stats().spans == 4
    with DuckDBStore(path) as store:
        assert (_count(store, "spans_all"), store.stats().spans) == (4, 4)
        assert store.write(Chunk("spans", spans(6))).inserted == 2
    with DuckDBStore(path, read_only=True) as store:
        assert store.stats().spans == 6


def test_derived_columns_are_computed_after_the_duplicates_are_gone(
    checked_writes: list[int],
) -> None:
    rows = (
        "SELECT lpad((i % 3)::VARCHAR, 32, 'a') AS trace_id, lpad((i % 3)::VARCHAR, 16, 'b') "
        "AS span_id, NULL::VARCHAR AS parent_id, 'pod-' || (i % 3) AS instance, 'op' AS operation, "
        "i AS start_ns, 1 AS duration_ns FROM range(6) t(i)"
    )
    derived = {"service": "upper(instance)", "status": "'unset'"}
    source = SqlSource(f"SELECT *, 'f.csv' AS _source FROM ({rows})", fast=rows, derived=derived)
    store = DuckDBStore()
    result = store.write(Chunk("spans", source))
    assert (result.inserted, result.duplicates, checked_writes) == (3, 3, [])
    got = store.sql("SELECT service, status FROM spans ORDER BY service").to_pylist()
    assert got == [{"service": f"POD-{i}", "status": "unset"} for i in range(3)]
