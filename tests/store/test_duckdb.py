"""DuckDB store specifics: the write path's settings."""

from __future__ import annotations

from pathlib import Path

from spanomaly.ingest.base import Chunk
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
