"""The single writer: many requests per transaction, each answered after its commit, a bad
request isolated from the good ones in its batch, a bounded queue, everything written on
close."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from spanomaly.errors import StoreError
from spanomaly.ingest.base import Chunk
from spanomaly.ingest.receiver import PROTOBUF, Signal, decode
from spanomaly.serve.writer import QueueFull, Writer
from spanomaly.store.base import WriteResult
from spanomaly.store.duckdb import DuckDBStore
from tests.serve.conftest import spans_request


def chunks(first: int, count: int, service: str = "svc") -> list[Chunk]:
    body = spans_request(first, count, service=service).SerializeToString()
    return decode(Signal.TRACES, PROTOBUF, body, "t").chunks


class Recording(DuckDBStore):
    """An in-memory store that records its writes, fails on a poisoned service, and can
    hold its writes until released."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.writes: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def write(self, chunk: Chunk) -> WriteResult:
        """Refuse chunks holding the 'poison' service; record the others."""
        self.entered.set()
        self.release.wait(10)
        assert isinstance(chunk.data, pa.Table)
        if "poison" in chunk.data["service"].to_pylist():
            raise StoreError("poisoned")
        result = super().write(chunk)
        self.writes.append(result.inserted)
        return result


def test_queued_requests_are_written_together_and_answered_after() -> None:
    store = Recording()
    store.release.clear()
    writer = Writer(store)
    writer.start()
    try:
        first = writer.submit(chunks(1, 10))
        assert store.entered.wait(10)  # the writer holds the first; the others queue
        futures = [writer.submit(chunks(100 * i, 10)) for i in range(1, 6)]
        assert not first.done() and writer.pending_rows == 60
        store.release.set()
        for f in [first, *futures]:
            f.result(timeout=10)
        assert writer.pending_rows == 0
        assert store.writes[0] == 10 and sum(store.writes) == 60
        assert len(store.writes) <= 2  # the five waiting ones went in one transaction
        assert writer.call(lambda s: s.stats().spans).result(timeout=10) == 60
    finally:
        writer.close()


def test_a_request_the_store_refuses_does_not_sink_its_batch() -> None:
    store = Recording()
    store.release.clear()
    writer = Writer(store)
    writer.start()
    try:
        blocker = writer.submit(chunks(1, 1))
        assert store.entered.wait(10)
        good = writer.submit(chunks(10, 5))
        bad = writer.submit(chunks(20, 5, service="poison"))
        also_good = writer.submit(chunks(30, 5))
        store.release.set()
        blocker.result(10)
        good.result(10)
        also_good.result(10)
        with pytest.raises(StoreError, match="poisoned"):
            bad.result(10)
        assert writer.call(lambda s: s.stats().spans).result(10) == 11
        assert writer.stats.failed_requests == 1
    finally:
        writer.close()


def test_queue_bound() -> None:
    store = Recording()
    store.release.clear()
    writer = Writer(store, max_pending_rows=15)
    writer.start()
    try:
        big = writer.submit(chunks(1, 40))  # an empty queue takes even a big request
        assert store.entered.wait(10)
        with pytest.raises(QueueFull):
            writer.submit(chunks(100, 1))
        assert writer.full()
        store.release.set()
        big.result(10)
        writer.submit(chunks(100, 10)).result(10)
    finally:
        writer.close()


def test_close_writes_everything_queued() -> None:
    store = Recording()
    store.release.clear()
    writer = Writer(store)
    writer.start()
    futures = [writer.submit(chunks(1 + 10 * i, 10)) for i in range(20)]
    closing = threading.Thread(target=writer.close)
    closing.start()
    store.release.set()
    closing.join(10)
    assert all(f.result(0) is None for f in futures)
    assert sum(store.writes) == 200
    with pytest.raises(StoreError, match="shutting down"):
        writer.submit(chunks(1000, 1))
