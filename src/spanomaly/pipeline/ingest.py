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

from spanomaly.errors import FormatError, InputError, SpanomalyError
from spanomaly.ingest import csv as csv_spans
from spanomaly.ingest import faults as fault_labels
from spanomaly.ingest import logs as log_lines
from spanomaly.ingest import metrics as csv_metrics
from spanomaly.ingest.base import Chunk, DecodeOptions, SqlSource
from spanomaly.ingest.files import FORMATS, expand, head, sniff
from spanomaly.store.base import Store, WriteResult

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


MAX_MESSAGES = 50
# CSV files are read by DuckDB in groups of about this many bytes: one query, one transaction
CSV_GROUP_BYTES = 256 * 1024 * 1024

Progress = Callable[[int, int, str], None]


@dataclass
class IngestReport:
    """What one ingest call stored, skipped and refused."""

    spans: int = 0
    metrics: int = 0
    logs: int = 0
    faults: int = 0
    fault_traces: int = 0
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
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "orphans": self.orphans,
            "files": self.files,
            "errors": self.errors,
        }


@dataclass
class _Unit:
    """A piece of ingest work: some files of one kind, decoded into chunks."""

    label: str
    files: list[Path]
    size: int
    decode: Callable[[], Iterator[Chunk]]
    csv_kind: str | None = None  # a failing multi-file CSV unit is retried file by file
    headers: dict[Path, list[str]] = field(default_factory=dict)  # CSV columns, per file


def _classify(path: Path, fmt: str, options: DecodeOptions, headers: dict[Path, list[str]]) -> str:
    """The decoder kind for one file: otlp-*, jaeger, zipkin, nezha-labels, csv-spans,
    csv-metrics, nezha-logs, csv-logs, jsonl-logs; a CSV file's columns go into headers."""
    data = head(path)  # read once for the kind and a CSV header
    kind = sniff(path, data)
    if kind == "jsonl-logs":
        return kind
    if kind == "csv":
        columns = headers[path] = csv_spans.header(path, data)
        if "body" in options.column_map:
            return "csv-logs"
        if fmt in ("csv",) or options.column_map:
            return "csv-spans"
        if log_lines.is_nezha_logs(columns):
            return "nezha-logs"
        if csv_metrics.is_nezha_metrics(columns):
            return "csv-metrics"
        if csv_spans.is_nezha_traces(columns) or fmt == "nezha":
            return "csv-spans"
        raise InputError(
            f"{path}: CSV of unknown layout (columns {', '.join(columns[:12])}); "
            "give --format csv --map field=column,... or --format nezha"
        )
    wanted = {
        "otlp": "otlp",
        "jaeger": "jaeger",
        "zipkin": "zipkin",
        "csv": "csv",
        "nezha": "nezha",
    }
    if (
        fmt != "auto"
        and not kind.startswith(wanted[fmt])
        and not (fmt == "nezha" and kind == "nezha-labels")
    ):
        raise FormatError(f"{path}: looks like {kind}, not {fmt}")
    return kind


def _decoder(kind: str, path: Path, options: DecodeOptions) -> Callable[[], Iterator[Chunk]]:
    if kind.startswith("otlp"):
        from spanomaly.ingest import otlp

        return lambda: otlp.decode_file(path, kind, options)
    if kind == "jaeger":
        from spanomaly.ingest import jaeger

        return lambda: jaeger.decode_file(path, options)
    if kind == "zipkin":
        from spanomaly.ingest import zipkin

        return lambda: zipkin.decode_file(path, options)
    if kind == "nezha-labels":
        return lambda: fault_labels.decode_nezha_labels(path, options.fault_duration_s)
    raise InputError(f"{path}: no decoder for {kind}")


def _plan(files: list[Path], fmt: str, options: DecodeOptions, report: IngestReport) -> list[_Unit]:
    units: list[_Unit] = []
    csv_files: dict[str, list[Path]] = {k: [] for k in _CSV_KINDS}
    headers: dict[Path, list[str]] = {}
    for path in files:
        try:
            kind = _classify(path, fmt, options, headers)
        except SpanomalyError as exc:
            report.rejected += 1
            report.note([str(exc)])
            continue
        if kind in csv_files:
            csv_files[kind].append(path)
        else:
            units.append(
                _Unit(path.name, [path], path.stat().st_size, _decoder(kind, path, options))
            )
    for kind, paths in csv_files.items():
        for group in _groups(paths):
            units.append(_csv_unit(kind, group, options, headers))
    return units


_CSV_KINDS = ("csv-spans", "csv-metrics", "nezha-logs", "csv-logs", "jsonl-logs")


def _csv_unit(
    kind: str, group: list[Path], options: DecodeOptions, known: dict[Path, list[str]]
) -> _Unit:
    """A unit of CSV (or JSON-lines log) files of one kind; known: their columns, by file."""
    headers = {f: known[f] for f in group if f in known}
    if kind == "csv-spans":
        decode: Callable[[], Iterator[Chunk]] = lambda: csv_spans.decode_files(  # noqa: E731
            group, options, headers=headers
        )
    elif kind == "jsonl-logs":
        decode = lambda: log_lines.decode_files(group, kind, options)  # noqa: E731
    elif kind.endswith("-logs"):
        decode = lambda: log_lines.decode_files(group, kind, options, headers)  # noqa: E731
    else:
        decode = lambda: csv_metrics.decode_files(group, headers)  # noqa: E731
    label = group[0].name if len(group) == 1 else f"{len(group)} files ({group[0].parent.name}/)"
    return _Unit(label, group, sum(f.stat().st_size for f in group), decode, kind, headers)


def _groups(paths: list[Path]) -> Iterator[list[Path]]:
    group: list[Path] = []
    size = 0
    for p in paths:
        group.append(p)
        size += p.stat().st_size
        if size >= CSV_GROUP_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


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


def _run(
    unit: _Unit,
    store: Store,
    report: IngestReport,
    options: DecodeOptions,
    touched: _Touched | None = None,
) -> None:
    """Store one unit (a file, or a group of CSV files) in one transaction."""
    part = IngestReport()
    touched = touched or _Touched(whole=True)
    if not unit.csv_kind:
        _arrow_on_malloc()
    try:
        with store.transaction():
            for chunk in _prefetch(touched.note(unit.decode())):
                part.add(chunk.table, store.write(chunk))
    except SpanomalyError as exc:
        if unit.csv_kind and len(unit.files) > 1:
            # one bad file (truncated archive, odd layout) must not sink its neighbours
            log.info("retrying %s file by file: %s", unit.label, exc)
            for f in unit.files:
                f_unit = _csv_unit(unit.csv_kind, [f], options, unit.headers)
                _run(f_unit, store, report, options, touched)
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
    if fmt != "auto" and fmt not in FORMATS:
        raise InputError(f"--format: {fmt!r} is not one of auto, {', '.join(FORMATS)}")
    options = options or DecodeOptions()
    _keep_freed_memory()
    files = expand(paths)
    report = IngestReport(files=len(files))
    units = _plan(files, fmt, options, report)
    total = sum(u.size for u in units) or 1
    done = 0
    # parents are checked among the traces this import touched: a parent stored by an
    # earlier import counts, spans of traces the import never saw are not read again
    touched = _Touched(whole=store.is_empty("spans"))
    for unit in units:
        if progress:
            progress(done, total, unit.label)
        _run(unit, store, report, options, touched)
        done += unit.size
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


PARQUET_PREFIX = "parquet:"  # --db / --store parquet:DIR: the partitioned Parquet dataset


def open_store(path: str | Path, read_only: bool = False) -> Store:
    """The store at path: a DuckDB file, or `parquet:DIR[#WRITER]` for a Parquet dataset."""
    if str(path).startswith(PARQUET_PREFIX):
        from spanomaly.store.parquet import open_dataset

        return open_dataset(str(path)[len(PARQUET_PREFIX) :], read_only=read_only)
    from spanomaly.store.duckdb import DuckDBStore

    return DuckDBStore(path, read_only=read_only)
