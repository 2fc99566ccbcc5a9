"""The collector's single writer: one thread owns the store and commits in batches.

Request handlers `submit` the chunks they decoded and wait on the returned future; the
writer takes every job waiting in its queue (up to ``batch_rows`` rows), concatenates them
per table and writes each table in one transaction. Many concurrent senders thus cost one
transaction per batch instead of one each, and never contend for the store.

Without a spool a job's future completes once its rows are committed. With a spool
(`spanomaly.serve.spool`, the default of a store file) a second thread appends every group
of waiting jobs to the spool, fsyncs and completes their futures there; the store thread
loads the spooled rows behind it and deletes each segment once it is committed, so requests
never wait for a commit or a checkpoint. `start` first loads what a crash left in the spool.

The queue is bounded by rows (spooled and not yet committed included): `submit` raises
`QueueFull` when the rows waiting would pass ``max_pending_rows`` (unless the queue is
empty, so one big request still gets through), and the server answers 503 with Retry-After.
`call` runs a function on the store in the writer thread once every job acknowledged before
it is committed (reads such as stats), so nothing else touches the connection.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.errors import SpanomalyError, StoreError
from spanomaly.ingest.base import Chunk
from spanomaly.schema import TABLES
from spanomaly.serve.spool import Spool, read_segment
from spanomaly.store.base import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MAX_PENDING_ROWS = 524_288
DEFAULT_BATCH_ROWS = 131_072
DEFAULT_LOAD_DELAY_S = 0.5  # spooled rows wait at most this long for more to load with


class QueueFull(SpanomalyError):
    """The writer's queue is full: the sender should retry later."""


@dataclass
class _Job:
    """Chunks of one request and the future its handler waits on."""

    chunks: list[Chunk]
    rows: int
    future: Future[None] = field(default_factory=Future)
    segment: int | None = None  # spooled (and acknowledged) in this segment


@dataclass
class _Call:
    """A function to run on the store in the writer thread."""

    fn: Callable[[Store], Any]
    future: Future[Any] = field(default_factory=Future)


_STOP = object()


@dataclass
class WriterStats:
    """What the writer has done so far."""

    rows: dict[str, int] = field(default_factory=lambda: {"spans": 0, "metrics": 0})
    duplicates: int = 0
    batches: int = 0
    requests: int = 0
    failed_requests: int = 0
    refused_requests: int = 0  # QueueFull
    replayed: dict[str, int] = field(default_factory=dict)  # rows loaded from the spool at start
    busy_s: float = 0.0  # time spent writing
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU time of the writer's threads


class Writer:
    """The one thread that writes to the store, batching many requests per transaction."""

    def __init__(
        self,
        store: Store,
        max_pending_rows: int = DEFAULT_MAX_PENDING_ROWS,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        on_commit: Callable[[str, pa.Table], None] | None = None,
        spool: Spool | None = None,
        load_delay_s: float = DEFAULT_LOAD_DELAY_S,
    ) -> None:
        self.store = store
        self.spool = spool
        self.load_delay_s = load_delay_s
        self.max_pending_rows = max_pending_rows
        self.batch_rows = batch_rows
        self.on_commit = on_commit
        self.stats = WriterStats()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._spooled: queue.SimpleQueue[Any] = queue.SimpleQueue()  # jobs to spool
        self._thread: threading.Thread | None = None
        self._spooler: threading.Thread | None = None
        self._closed = False

    @property
    def pending_rows(self) -> int:
        """Rows submitted and not yet committed."""
        return self._pending

    def full(self) -> bool:
        """Whether a new request would be refused now."""
        return self._pending >= self.max_pending_rows

    def start(self) -> None:
        """Load what an earlier run left in the spool, then start the writer thread(s)."""
        if self._thread is None:
            if self.spool is not None:
                self._replay(self.spool)
                self._spooler = threading.Thread(
                    target=self._run_spool, name="spanomaly-spool", daemon=True
                )
                self._spooler.start()
            self._thread = threading.Thread(target=self._run, name="spanomaly-writer", daemon=True)
            self._thread.start()

    def submit(self, chunks: list[Chunk]) -> Future[None]:
        """Queue chunks; the future completes once they are committed. QueueFull when the
        rows waiting would pass max_pending_rows (an empty queue takes any size)."""
        rows = sum(c.data.num_rows for c in chunks if isinstance(c.data, pa.Table))
        with self._lock:
            if self._closed:
                raise StoreError("the collector is shutting down")
            if self._pending and self._pending + rows > self.max_pending_rows:
                self.stats.refused_requests += 1
                raise QueueFull(f"{self._pending} rows wait to be written; retry later")
            self._pending += rows
        job = _Job(chunks, rows)
        (self._queue if self.spool is None else self._spooled).put(job)
        return job.future

    def call(self, fn: Callable[[Store], T]) -> Future[T]:
        """Run fn(store) in the writer thread between batches; its result as a future."""
        item = _Call(fn)
        if self._closed:
            item.future.set_exception(StoreError("the collector is shutting down"))
        else:
            self._queue.put(item)
        return item.future

    def close(self) -> None:
        """Write everything queued, stop the thread and close the store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._spooler is not None:  # it hands everything to the store thread first
            self._spooled.put(_STOP)
            self._spooler.join()
            self._spooler = None
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self.spool is not None:
            self.spool.close()
        self.store.close()

    # -- the spool ---------------------------------------------------------------------------

    def _replay(self, spool: Spool) -> None:
        """Commit the segments an earlier run left (duplicates skipped), then delete them."""
        duplicates = self.stats.duplicates  # rows committed before the crash: not re-sent ones
        for path in spool.leftovers():
            parts: dict[str, list[pa.Table]] = {}
            try:
                for table, data in read_segment(path):
                    parts.setdefault(table, []).append(data)
                for table, tables in parts.items():
                    if table == "logs":  # no key: leave out the lines committed already
                        tables = [_unstored_logs(self.store, t) for t in tables]
                    before = self.stats.rows.get(table, 0)
                    self._write(table, [_Job([Chunk(table, t) for t in tables], 0)])
                    inserted = self.stats.rows.get(table, 0) - before
                    self.stats.replayed[table] = self.stats.replayed.get(table, 0) + inserted
            except Exception as exc:  # kept for a later try (or a person)
                log.error("cannot load the spooled %s: %s", path, exc)
                continue
            spool.remove(path)
        self.stats.duplicates = duplicates
        if self.stats.replayed:
            log.info("loaded from the spool of an earlier run: %s", self.stats.replayed)

    def _run_spool(self) -> None:
        """Append every group of waiting jobs to the spool, acknowledge them and queue them
        for the store (before the acknowledgement: a later `call` sees them)."""
        assert self.spool is not None
        stop = False
        while not stop:
            jobs = [self._spooled.get()]
            while True:
                try:
                    jobs.append(self._spooled.get_nowait())
                except queue.Empty:
                    break
            stop = any(job is _STOP for job in jobs)
            jobs = [job for job in jobs if job is not _STOP]
            if not jobs:
                continue
            rows = sum(job.rows for job in jobs)
            try:
                tables = {t: self._concat(t, jobs) for t in _tables_of(jobs)}
                segment = self.spool.append(tables)
            except Exception as exc:
                log.error("cannot spool %d requests: %s", len(jobs), exc)
                with self._lock:
                    self._pending -= rows
                error = StoreError(f"cannot spool the request: {exc}")
                for job in jobs:
                    self.stats.failed_requests += 1
                    job.future.set_exception(error)
                continue
            self._queue.put(_Job([Chunk(t, d) for t, d in tables.items()], rows, segment=segment))
            self.stats.requests += len(jobs)
            self.stats.cpu_s["spool"] = time.thread_time()
            for job in jobs:
                job.future.set_result(None)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        # spooled rows wait a little for more (bigger transactions cost less per row)
        delay = self.load_delay_s if self.spool is not None else 0.0
        while not stop:
            item = self._queue.get()
            deadline = time.monotonic() + delay
            jobs: list[_Job] = []
            rows = 0
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Call):
                    self._flush(jobs)  # a call sees every job queued before it
                    jobs, rows = [], 0
                    self._run_call(item)
                else:
                    jobs.append(item)
                    rows += item.rows
                if stop or rows >= self.batch_rows:
                    break
                try:
                    wait = deadline - time.monotonic()
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
            self._flush(jobs)
            self.stats.cpu_s["store"] = time.thread_time()
        # anything submitted after the stop marker (a race at shutdown) is still written
        leftover = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job):
                leftover.append(item)
            elif isinstance(item, _Call):
                self._run_call(item)
        self._flush(leftover)

    def _run_call(self, item: _Call) -> None:
        if not item.future.set_running_or_notify_cancel():
            return
        try:
            item.future.set_result(item.fn(self.store))
        except BaseException as exc:
            item.future.set_exception(exc)

    def _flush(self, jobs: list[_Job]) -> None:
        """Write the jobs' chunks, one transaction per table, then complete their futures."""
        if not jobs:
            return
        failed: dict[int, BaseException] = {}
        for table in _tables_of(jobs):
            holders = [job for job in jobs if any(c.table == table for c in job.chunks)]
            try:
                self._write(table, holders)
            except Exception as exc:
                if len(holders) == 1:
                    failed[id(holders[0])] = exc
                    continue
                # find the request the store refuses; the others are written alone
                log.warning("batch write of %s failed (%s); writing request by request", table, exc)
                for job in holders:
                    try:
                        self._write(table, [job])
                    except Exception as one:
                        failed[id(job)] = one
        self.stats.batches += 1
        for job in jobs:
            with self._lock:
                self._pending -= job.rows
            error = failed.get(id(job))
            if job.segment is not None:  # acknowledged already
                if error is None:
                    self.spool.loaded(job.segment, job.rows)  # type: ignore[union-attr]
                else:  # the segment stays, to be loaded again at the next start
                    log.error("could not load spooled rows (segment kept): %s", error)
                continue
            self.stats.requests += 1
            if error is None:
                job.future.set_result(None)
            else:
                self.stats.failed_requests += 1
                log.error("could not store a request: %s", error)
                job.future.set_exception(error)

    @staticmethod
    def _concat(table: str, jobs: list[_Job]) -> pa.Table:
        """The jobs' rows of one table, in the table's schema."""
        schema = TABLES[table]
        parts = [
            c.data.select(schema.names).cast(schema)
            for job in jobs
            for c in job.chunks
            if c.table == table and isinstance(c.data, pa.Table)
        ]
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def _write(self, table: str, jobs: list[_Job]) -> None:
        data = self._concat(table, jobs)
        started = time.perf_counter()
        try:
            result = self.store.write(Chunk(table, data))  # type: ignore[arg-type]
        finally:
            self.stats.busy_s += time.perf_counter() - started
        took_ms = (time.perf_counter() - started) * 1e3
        log.log(
            logging.INFO if took_ms > 250 else logging.DEBUG,  # a long one is a checkpoint
            "committed %d %s rows (%d duplicates) of %d requests in %.0f ms",
            result.inserted,
            table,
            result.duplicates,
            len(jobs),
            took_ms,
        )
        self.stats.rows[table] = self.stats.rows.get(table, 0) + result.inserted
        self.stats.duplicates += result.duplicates
        if self.on_commit is not None:
            try:
                self.on_commit(table, data)
            except Exception:
                log.exception("on_commit callback failed")


def _tables_of(jobs: list[_Job]) -> list[str]:
    """The tables the jobs have rows for, sorted."""
    return sorted({c.table for job in jobs for c in job.chunks if isinstance(c.data, pa.Table)})


_LOG_IDENTITY = ("time_ns", "instance", "trace_id", "span_id", "severity", "body")


def _unstored_logs(store: Any, rows: pa.Table) -> pa.Table:
    """The spooled log lines the store does not hold yet: a line is the same line where its
    time (ns), instance, trace, span, severity and text are (log records have no key)."""
    if rows.num_rows == 0:
        return rows
    times = rows.column("time_ns")
    stored = store.sql(
        f"SELECT DISTINCT {', '.join(_LOG_IDENTITY)} FROM logs WHERE time_ns BETWEEN ? AND ?",
        [pc.min(times).as_py(), pc.max(times).as_py()],
    )
    if stored.num_rows == 0:
        return rows

    def keyed(t: pa.Table) -> pa.Table:  # nulls as a value of their own: join keys never match null
        for name in _LOG_IDENTITY:
            col = t.column(name)
            fill = -1 if pa.types.is_integer(col.type) else "\x00"
            t = t.append_column(f"_k_{name}", pc.fill_null(col, fill))
        return t

    keys = [f"_k_{name}" for name in _LOG_IDENTITY]
    left = keyed(rows)
    right = keyed(stored).select(keys)
    return left.join(right, keys, join_type="left anti").select(rows.column_names)
