"""Ingest wiring: files → decoders → store, one transaction per file."""

from __future__ import annotations

import ctypes
import functools
import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from spanomaly.errors import SpanomalyError
from spanomaly.ingest.base import Chunk, DecodeOptions, SqlSource
from spanomaly.ingest.files import expand
from spanomaly.ingest.formats import Work, check_family, plan
from spanomaly.store.base import Store, WriteResult

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


MAX_MESSAGES = 50

Progress = Callable[[int, int, str], None]


@dataclass
class IngestReport:
    """What one ingest call stored, skipped and refused."""

    spans: int = 0
    metrics: int = 0
    logs: int = 0
    faults: int = 0
    fault_traces: int = 0
    calls: int = 0  # call edges (caller, callee) of an edge list
    syscalls: int = 0  # system calls (LTTng kernel traces, strace output)
    duplicates: int = 0
    rejected: int = 0
    files: int = 0
    orphans: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, table: str, result: WriteResult) -> None:
        """Count one write."""
        setattr(self, table, getattr(self, table) + result.inserted)
        self.duplicates += result.duplicates
        self.rejected += result.rejected
        self.note(r.message() for r in result.rejects)

    def merge(self, other: IngestReport) -> None:
        """Add the counts and messages of another report (of one unit) to this one."""
        for name in (
            "spans",
            "metrics",
            "logs",
            "faults",
            "fault_traces",
            "calls",
            "syscalls",
            "duplicates",
            "rejected",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.note(other.errors)

    def note(self, messages: Iterable[str]) -> None:
        """Keep the first messages; the counts say how many there were."""
        for m in messages:
            if len(self.errors) >= MAX_MESSAGES:
                return
            self.errors.append(m)

    def to_json(self) -> dict[str, object]:
        """The JSON document of `spanomaly ingest --json`."""
        return {
            "spans": self.spans,
            "metrics": self.metrics,
            "logs": self.logs,
            "faults": self.faults,
            "fault_traces": self.fault_traces,
            "calls": self.calls,
            "syscalls": self.syscalls,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "orphans": self.orphans,
            "files": self.files,
            "errors": self.errors,
        }


def _prefetch(chunks: Iterator[Chunk], depth: int = 2) -> Iterator[Chunk]:
    """Decode the next chunks in a thread while the store writes this one.

    Decoders spend their time in numpy, Arrow and protobuf code and the store in DuckDB, all
    of which release the GIL, so on two cores decoding and storing overlap. At most `depth`
    chunks wait, which bounds memory.
    """
    box: queue.Queue[object] = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        box.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            box.put(exc)

    thread = threading.Thread(target=work, name="spanomaly-decode", daemon=True)
    thread.start()
    try:
        while (item := box.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


class _Touched:
    """Trace ids of the spans an import decoded: where its parents are checked.

    A store that had no spans before the import is checked whole (the same spans, no ids to
    gather); so is any import with spans the pipeline never sees as Arrow (CSV read by
    DuckDB itself).
    """

    def __init__(self, whole: bool) -> None:
        self.whole = whole
        self.parts: list[pa.Array] = []

    def note(self, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        """Pass chunks on, keeping the distinct trace ids of span chunks (decode thread)."""
        for chunk in chunks:
            if chunk.table == "spans" and not self.whole:
                if isinstance(chunk.data, SqlSource):
                    self.whole = True
                elif chunk.data is not None and chunk.data.num_rows:
                    import pyarrow.compute as pc

                    self.parts.append(pc.unique(chunk.data.column("trace_id")))
            yield chunk

    def trace_ids(self) -> pa.Array | None:
        """The distinct trace ids seen, or None: check the whole store."""
        if self.whole:
            return None
        import pyarrow as pa
        import pyarrow.compute as pc

        return pc.unique(pa.chunked_array(self.parts, pa.string()).combine_chunks())


# glibc malloc: blocks up to this size come from the heap (not one mmap each) and freed
# memory up to _TRIM_BYTES stays with the process. Decoders allocate and free arrays of a
# few MB per batch; with glibc's defaults many of them are fresh mappings, each page a
# fault: 1 M OTLP spans took 280,000 faults to decode, 140,000 with these (0.3-0.6 s less
# system time), for the same peak RSS. Arrow then allocates from the same heap too: its
# default pool (mimalloc) returns freed memory to the system and takes it back as fresh
# (huge) pages, whose zeroing was 14 % of an OTLP import's CPU; on the system pool the
# import takes 0.1-1.0 CPU s less and 150 MB less peak RSS (bench/RESULTS.md).
_MMAP_BYTES = 32 * 2**20
_TRIM_BYTES = 64 * 2**20


@functools.cache
def _keep_freed_memory() -> bool:
    """Tune glibc malloc for bulk imports (once per process); False where the C library is
    not glibc (nothing changed then)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        tuned = bool(
            libc.mallopt(m_mmap_threshold, _MMAP_BYTES)
            and libc.mallopt(m_trim_threshold, _TRIM_BYTES)
        )
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return tuned


@functools.cache
def _arrow_on_malloc() -> None:
    """Put Arrow on the tuned malloc (once per process, before the first Arrow decoder: a
    CSV import, which DuckDB reads, never loads Arrow)."""
    if _keep_freed_memory():
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())


def _run(unit: Work, store: Store, report: IngestReport, touched: _Touched | None = None) -> None:
    """Store one unit (a file, or a group of files DuckDB reads) in one transaction."""
    part = IngestReport()
    touched = touched or _Touched(whole=True)
    if not unit.format.grouped:
        _arrow_on_malloc()
    try:
        with store.transaction():
            for chunk in _prefetch(touched.note(unit.decode())):
                part.add(chunk.table, store.write(chunk))
    except SpanomalyError as exc:
        if len(unit.files) > 1:
            # one bad file (truncated archive, odd layout) must not sink its neighbours
            log.info("retrying %s file by file: %s", unit.label, exc)
            for one in unit.split():
                _run(one, store, report, touched)
            return
        report.rejected += 1
        report.note([str(exc) if str(unit.files[0]) in str(exc) else f"{unit.files[0]}: {exc}"])
        return
    report.merge(part)


def ingest(
    paths: Iterable[str | Path],
    store: Store,
    fmt: str = "auto",
    options: DecodeOptions | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Decode every file under paths and store it; bad records are counted, never stored."""
    check_family(fmt)
    options = options or DecodeOptions()
    _keep_freed_memory()
    files = expand(paths)
    report = IngestReport(files=len(files))
    units, refused = plan(files, fmt, options)
    report.rejected += len(refused)
    report.note(refused)
    sizes = [u.size for u in units]
    total = sum(sizes) or 1
    done = 0
    # parents are checked among the traces this import touched: a parent stored by an
    # earlier import counts, spans of traces the import never saw are not read again
    touched = _Touched(whole=store.is_empty("spans"))
    for unit, size in zip(units, sizes, strict=True):
        if progress:
            progress(done, total, unit.label)
        _run(unit, store, report, touched)
        done += size
    if progress:
        progress(total, total, "checking parents")
    orphans = store.orphans(touched.trace_ids())
    report.orphans = orphans.count
    report.note(
        f"trace {r['trace_id']} span {r['span_id']} ({r['service']}): parent {r['parent_id']} "
        "never arrived (kept)"
        for r in orphans.sample
    )
    return report


def pull_prometheus(
    url: str, queries: list[str], start_ns: int, end_ns: int, step_s: float, store: Store,
    options: DecodeOptions | None = None,
) -> IngestReport:  # fmt: skip
    """Store the answers of range queries to a running Prometheus (`prometheus+http://...`),
    all in one transaction: a query that fails stores nothing of the pull."""
    from spanomaly.ingest import prometheus

    report = IngestReport(files=0)
    part = IngestReport()
    with store.transaction():
        for chunk in prometheus.pull(
            url, queries, start_ns, end_ns, step_s, options or DecodeOptions()
        ):
            part.add(chunk.table, store.write(chunk))
    report.merge(part)
    return report


PARQUET_PREFIX = "parquet:"  # --db / --store parquet:DIR: the partitioned Parquet dataset


def open_store(path: str | Path, read_only: bool = False) -> Store:
    """The store at path: a DuckDB file, or `parquet:DIR[#WRITER]` for a Parquet dataset."""
    if str(path).startswith(PARQUET_PREFIX):
        from spanomaly.store.parquet import open_dataset

        return open_dataset(str(path)[len(PARQUET_PREFIX) :], read_only=read_only)
    from spanomaly.store.duckdb import DuckDBStore

    return DuckDBStore(path, read_only=read_only)
