"""DuckDB store specifics: the write path's settings."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from spanomaly.ingest.base import Chunk
from spanomaly.store.duckdb import DuckDBStore, key_hashes

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
