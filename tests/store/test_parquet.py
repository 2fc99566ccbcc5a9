"""The Parquet store's own promises: partitions, late spans, atomic writes, the lock."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spanomaly.errors import FormatError, InputError, StoreError, StoreLockedError
from spanomaly.ingest.base import Chunk, SqlSource
from spanomaly.schema import SPANS
from spanomaly.store.parquet import ParquetStore
from tests.store.test_contract import HOUR, T0, spans


def _partitions_of(root: Path) -> dict[str, set[tuple[str, int]]]:
    """trace id -> the (hour, bucket) partitions holding its spans, read by DuckDB itself."""
    rows = duckdb.sql(
        f"SELECT DISTINCT trace_id, hour, bucket FROM read_parquet('{root}/spans/**/*.parquet', "
        "hive_partitioning = true, hive_types = {'hour': VARCHAR, 'bucket': INTEGER})"
    ).fetchall()
    out: dict[str, set[tuple[str, int]]] = {}
    for trace, hour, bucket in rows:
        out.setdefault(trace, set()).add((hour, bucket))
    return out


def test_a_trace_whose_spans_arrive_in_two_batches_stays_in_one_partition(
    tmp_path: Path,
) -> None:
    late = spans(4, start=T0 + HOUR - 2 * 10**9)  # 12:59:58 .. 13:00:01
    with ParquetStore(tmp_path / "ds") as store:
        store.write(Chunk("spans", late.slice(2)))  # the 13:00 spans come first
        assert store.write(Chunk("spans", late.slice(0, 3))).inserted == 2  # one is a twin
        assert store.stats().spans == 4
    parts = _partitions_of(tmp_path / "ds")
    bucket = int(hashlib.md5(("a" * 32).encode()).hexdigest()[:8], 16) % 16
    assert parts == {"a" * 32: {("2023-01-30T13", bucket)}}  # where the first batch put it


def test_the_export_keeps_every_trace_in_one_partition(tmp_path: Path) -> None:
    from spanomaly.store.duckdb import DuckDBStore

    tables = [
        spans(5, start=T0 + HOUR - i * 10**9, trace=f"{i:032x}", step=10**9) for i in range(40)
    ]
    with DuckDBStore() as db:
        db.write(Chunk("spans", pa.concat_tables(tables)))
        db.export_parquet(tmp_path / "out")
    parts = _partitions_of(tmp_path / "out")
    assert len(parts) == 40 and all(len(p) == 1 for p in parts.values())
    hours = {h for p in parts.values() for h, _ in p}
    assert hours == {"2023-01-30T12", "2023-01-30T13"}  # traces crossing 13:00 exist
    assert len({b for p in parts.values() for _, b in p}) > 4  # trace ids spread over buckets


def test_a_failing_write_leaves_the_files_as_they_were(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    with ParquetStore(root) as store:
        store.write(Chunk("spans", spans(3)))
        before = {p: p.read_bytes() for p in root.rglob("*.parquet")}
        cols = ", ".join(
            "'x' AS operation" if n == "operation" else f"NULL AS {n}" for n in SPANS.names
        )
        broken = SqlSource(f"SELECT {cols}, 'f' AS _source FROM range(3) WHERE error('bad row')")
        with pytest.raises(FormatError, match="bad row"):
            store.write(Chunk("spans", broken))
        with pytest.raises(RuntimeError), store.transaction():
            store.write(Chunk("spans", spans(2, trace="b" * 32)))
            raise RuntimeError("the input broke half way")
        assert not hasattr(store, "delete")  # its files are only added (or, for feedback, replaced)
        assert {p: p.read_bytes() for p in root.rglob("*.parquet")} == before
        assert not list(root.glob("_staging-*"))
        assert store.stats().traces == 1


def test_one_writer_at_a_time_and_readers_see_its_commits(tmp_path: Path) -> None:
    with ParquetStore(tmp_path / "ds", buckets=4) as writer:
        with pytest.raises(StoreLockedError, match="open for writing"):
            ParquetStore(tmp_path / "ds")
        reader = ParquetStore(tmp_path / "ds", read_only=True)
        assert reader.stats().spans == 0
        writer.write(Chunk("spans", spans(3)))
        assert reader.stats().spans == 3  # the views follow new files
        with pytest.raises(StoreError, match="read-only"):
            reader.write(Chunk("spans", spans(1, trace="c" * 32)))
        reader.close()
    with ParquetStore(tmp_path / "ds") as again:  # the bucket count is the dataset's
        assert again.buckets == 4
    with pytest.raises(StoreError, match="no Parquet store"):
        ParquetStore(tmp_path / "nothing", read_only=True)


def test_findings_feedback_rewrites_the_findings_files(tmp_path: Path) -> None:
    from spanomaly.schema import FINDINGS

    rows = {n: [None, None] for n in FINDINGS.names} | {
        "finding_id": ["f1", "f2"],
        "detector": ["ngram", "ngram"],
        "entity": ["trace", "trace"],
        "score": [2.0, 3.0],
    }
    with ParquetStore(tmp_path / "ds") as store:
        store.write(Chunk("findings", pa.table(rows, schema=FINDINGS)))  # type: ignore[arg-type]
        assert store.set_feedback(["f2", "nope"], "normal") == 1
        back = store.table("findings").sort_by("finding_id")
        assert back.column("feedback").to_pylist() == [None, "normal"]
    files = list((tmp_path / "ds" / "findings").glob("*.parquet"))
    assert len(files) == 1 and pq.read_table(files[0]).num_rows == 2


def test_ingest_writes_csv_files_into_the_dataset_and_refuses_bad_rows(tmp_path: Path) -> None:
    from spanomaly import pipeline
    from tests.ingest.test_csv import GOOD, NEZHA_HEADER

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "11_00_trace.csv").write_text(NEZHA_HEADER + "".join(GOOD))
    (tmp_path / "in" / "11_01_trace.csv").write_text(
        NEZHA_HEADER + GOOD[0] + "zz,not-a-span,root,pod,op,x,y,z\n"
    )
    store = pipeline.open_store(f"parquet:{tmp_path / 'ds'}")
    assert isinstance(store, ParquetStore)
    try:
        report = pipeline.ingest([tmp_path / "in"], store, "nezha")
        assert (report.spans, report.duplicates, report.rejected) == (3, 1, 1)
        assert store.stats().traces == 2
    finally:
        store.close()


def test_named_writers_share_a_dataset_when_their_traces_are_disjoint(tmp_path: Path) -> None:
    from spanomaly import pipeline

    first = pipeline.open_store(f"parquet:{tmp_path / 'ds'}#collector-0")
    second = pipeline.open_store(f"parquet:{tmp_path / 'ds'}#collector-1")
    try:
        with pytest.raises(StoreLockedError, match="writer collector-0"):
            ParquetStore(tmp_path / "ds", writer="collector-0")
        with first.transaction():  # both write at once: neither disturbs the other
            first.write(Chunk("spans", spans(3)))
            second.write(Chunk("spans", spans(2, trace="b" * 32)))
        assert first.stats().spans == second.stats().spans == 5
    finally:
        first.close()
        second.close()
    with pytest.raises(InputError, match="writer"):
        ParquetStore(tmp_path / "ds", writer="../x")
