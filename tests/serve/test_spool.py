"""The spool: frames read back up to a torn tail, requests acknowledged once spooled (before
the store commits them), segments deleted once loaded, and what a crash left loaded at the
next start without doubles."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from spanomaly.ingest.base import Chunk
from spanomaly.schema import TABLES
from spanomaly.serve.spool import Spool, read_segment
from spanomaly.serve.writer import QueueFull, Writer
from spanomaly.store.duckdb import DuckDBStore
from tests.serve.test_writer import Recording, chunks


def spans(first: int, count: int) -> pa.Table:
    table = chunks(first, count)[0].data
    assert isinstance(table, pa.Table)
    return table.select(TABLES["spans"].names).cast(TABLES["spans"])


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.spool"))


def test_frames_read_back_up_to_a_torn_or_garbled_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first, second = spans(1, 5), spans(100, 7)
    segment = spool.append({"spans": first})
    assert spool.append({"spans": second}) == segment
    spool.close()
    path = spool.path(segment)
    whole = path.read_bytes()
    assert [(t, d.num_rows) for t, d in read_segment(path)] == [("spans", 5), ("spans", 7)]
    assert list(read_segment(path))[1][1].equals(second)

    path.write_bytes(whole[:-3])  # the last append was cut short by a crash
    assert [d.num_rows for _, d in read_segment(path)] == [5]
    garbled = bytearray(whole)
    garbled[-10] ^= 0xFF  # or written only in part (CRC mismatch)
    path.write_bytes(bytes(garbled))
    assert [d.num_rows for _, d in read_segment(path)] == [5]


def test_a_segment_is_deleted_once_closed_and_loaded(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_rows=10)
    a = spool.append({"spans": spans(1, 6)})
    b = spool.append({"spans": spans(10, 6)})  # 12 rows: the segment is closed
    c = spool.append({"spans": spans(20, 3)})
    assert a == b != c and len(segments(tmp_path)) == 2
    spool.loaded(a, 6)
    assert spool.path(a).exists()  # half of it is loaded
    spool.loaded(b, 6)
    assert not spool.path(a).exists()
    spool.loaded(c, 3)
    assert spool.path(c).exists()  # still open: more may come
    spool.close()
    assert segments(tmp_path) == []


def test_requests_are_acknowledged_once_spooled_and_loaded_behind(tmp_path: Path) -> None:
    store = Recording()
    store.release.clear()  # the store does not commit for now (a checkpoint, say)
    writer = Writer(store, spool=Spool(tmp_path), load_delay_s=0.0)
    writer.start()
    try:
        acks = [writer.submit(chunks(1 + 10 * i, 10)) for i in range(5)]
        for ack in acks:
            assert ack.result(timeout=10) is None
        assert store.writes == [] and writer.pending_rows == 50
        assert len(segments(tmp_path)) == 1
        store.release.set()
        assert writer.call(lambda s: s.stats().spans).result(timeout=10) == 50
        assert writer.pending_rows == 0
    finally:
        writer.close()
    assert segments(tmp_path) == []  # all loaded: nothing left to replay


def test_what_a_crash_left_in_the_spool_is_loaded_once_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    crashed = Recording()
    crashed.release.clear()  # it never commits: the process "dies" with rows spooled
    before = Writer(crashed, spool=Spool(folder), load_delay_s=0.0)
    before.start()
    for i in range(3):
        before.submit(chunks(1 + 10 * i, 10)).result(timeout=10)
    assert len(segments(folder)) == 1

    store = DuckDBStore(tmp_path / "s.duckdb", span_key_with_start=True)
    store.write(chunks(1, 10)[0])  # the first request was committed before the crash
    after = Writer(store, spool=Spool(folder))
    after.start()
    try:
        assert after.stats.replayed == {"spans": 20}
        assert after.stats.duplicates == 0  # not re-sent spans
        assert after.call(lambda s: s.stats().spans).result(timeout=10) == 30
        assert segments(folder) == []
    finally:
        after.close()
        crashed.release.set()
        before.close()
    with DuckDBStore(tmp_path / "s.duckdb", read_only=True) as again:
        assert again.stats().spans == 30


def _logs(bodies: list[str], trace: str | None = "a" * 32) -> pa.Table:
    n = len(bodies)
    return pa.table(
        {"time_ns": list(range(n)), "service": ["s"] * n, "instance": ["s-1"] * n,
         "trace_id": [trace] * n, "span_id": [None] * n, "severity": ["INFO"] * n,
         "body": bodies, "template_id": [None] * n, "params": [None] * n},
    ).cast(TABLES["logs"])  # fmt: skip


def test_log_lines_a_crash_left_are_stored_once(tmp_path: Path) -> None:
    """Log records have no key: the lines committed before the crash are not stored again."""
    folder = tmp_path / "spool"
    lines = _logs(["one", "two", "three"])
    orphan = _logs(["no trace"], trace=None)
    Spool(folder).append({"logs": pa.concat_tables([lines, orphan])})
    store = DuckDBStore(tmp_path / "s.duckdb")
    store.write(Chunk("logs", lines.slice(0, 2)))  # committed before the crash
    store.write(Chunk("logs", orphan))
    after = Writer(store, spool=Spool(folder))
    after.start()
    try:
        assert after.stats.replayed == {"logs": 1}
        bodies = after.call(lambda s: s.sql("SELECT body FROM logs ORDER BY 1")).result(10)
        assert bodies.column("body").to_pylist() == ["no trace", "one", "three", "two"]
    finally:
        after.close()


def test_the_queue_bound_counts_spooled_rows_the_store_has_not_taken(tmp_path: Path) -> None:
    store = Recording()
    store.release.clear()
    writer = Writer(store, max_pending_rows=15, spool=Spool(tmp_path), load_delay_s=0.0)
    writer.start()
    try:
        writer.submit(chunks(1, 10)).result(timeout=10)  # acknowledged, not committed
        with pytest.raises(QueueFull):
            writer.submit(chunks(100, 10))
        store.release.set()
        assert writer.call(lambda s: s.stats().spans).result(timeout=10) == 10
        writer.submit(chunks(100, 10)).result(timeout=10)
    finally:
        writer.close()


def test_rows_the_store_refuses_stay_in_the_spool(tmp_path: Path) -> None:
    writer = Writer(Recording(), spool=Spool(tmp_path), load_delay_s=0.0)
    writer.start()
    try:
        writer.submit(chunks(1, 5, service="poison")).result(timeout=10)  # acknowledged
        writer.submit(chunks(10, 5)).result(timeout=10)
        assert writer.call(lambda s: s.stats().spans).result(timeout=10) == 5
    finally:
        writer.close()
    kept = segments(tmp_path)  # for the next start (or a person) to load
    assert len(kept) == 1
    assert [d["service"][0].as_py() for _, d in read_segment(kept[0])] == ["poison", "svc"]
