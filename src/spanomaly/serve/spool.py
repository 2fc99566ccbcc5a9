"""The collector's spool: acknowledged rows on disk until the store has them.

The writer appends each group of decoded requests here (Arrow IPC, one frame per table,
then fsync) and acknowledges them; a loader thread then commits them into the store in big
batches, and a segment file is deleted once every row in it is committed. A request thus
waits for one append and fsync (milliseconds) instead of a database commit, and the store's
slow moments (DuckDB checkpoints) are absorbed by the spool instead of every request in
flight. This is the OpenTelemetry collector's persistent queue, in small.

At start the collector loads the segments a crash left behind (`replay`) before it answers
anything. Spans and metrics are written with their duplicate check, so a segment that was
partly committed before the crash is loaded again without doubles; log records have no key,
so the writer leaves out the spooled lines the store holds already (same time, instance,
trace, span, severity and text).

A segment is a sequence of frames: ``b"SPF1"``, the table name's length (1 byte), the name,
the payload's length (8 bytes) and CRC-32 (4 bytes), then the payload, an Arrow IPC stream of
the table. A frame cut short or garbled by a crash ends the segment (it was never
acknowledged: acknowledgement comes after the fsync).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_ROWS = 32_768
_MAGIC = b"SPF1"
_HEAD = struct.Struct("<QI")  # payload length, CRC-32
_SUFFIX = ".spool"


def spool_dir(db: str | Path) -> Path:
    """Where the collector of the store file db keeps its spool."""
    return Path(f"{db}.spool")


def _frame(table: str, data: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    payload = sink.getvalue()
    name = table.encode()
    head = _MAGIC + bytes([len(name)]) + name + _HEAD.pack(payload.size, zlib.crc32(payload))
    return head + payload.to_pybytes()


def read_segment(path: Path) -> Iterator[tuple[str, pa.Table]]:
    """The (table, rows) frames of a segment file, up to the first incomplete or bad one."""
    data = memoryview(path.read_bytes())
    at = 0
    while at + 5 <= len(data):
        if data[at : at + 4] != _MAGIC:
            log.warning("%s: unreadable data at byte %d; the rest is ignored", path, at)
            return
        size = data[at + 4]
        name_end = at + 5 + size
        body = name_end + _HEAD.size
        if body > len(data):
            break
        length, crc = _HEAD.unpack(data[name_end:body])
        payload = data[body : body + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        table = bytes(data[at + 5 : name_end]).decode()
        yield table, pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
        at = body + length
    if at < len(data):
        log.info("%s: a frame cut short at byte %d (never acknowledged)", path, at)


class Spool:
    """Segment files in one folder; `append` is called by one thread, `loaded` by another."""

    def __init__(self, directory: Path, segment_rows: int = DEFAULT_SEGMENT_ROWS) -> None:
        self.directory = directory
        self.segment_rows = segment_rows
        directory.mkdir(parents=True, exist_ok=True)
        self._left = sorted(directory.glob(f"*{_SUFFIX}"))  # from an earlier run
        last = int(self._left[-1].stem) if self._left else 0
        self._next = last + 1
        self._fd: int | None = None
        self._segment = 0
        self._rows = 0  # rows appended to the open segment
        self._unloaded: dict[int, int] = {}  # segment -> rows appended and not yet loaded
        self._lock = threading.Lock()

    def leftovers(self) -> list[Path]:
        """Segment files an earlier run left behind, oldest first."""
        return list(self._left)

    def size_bytes(self) -> int:
        """Bytes of the segment files now in the folder (rows not yet committed)."""
        total = 0
        for path in self.directory.glob(f"*{_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):  # loaded and deleted meanwhile
                total += path.stat().st_size
        return total

    def path(self, segment: int) -> Path:
        """The file of a segment."""
        return self.directory / f"{segment:012d}{_SUFFIX}"

    def append(self, tables: dict[str, pa.Table]) -> int:
        """Write the tables to the open segment and fsync; the segment's number."""
        if self._fd is None:
            self._open()
        rows = sum(t.num_rows for t in tables.values())
        os.write(self._fd, b"".join(_frame(name, t) for name, t in tables.items()))  # type: ignore[arg-type]
        os.fsync(self._fd)  # type: ignore[arg-type]
        segment = self._segment
        with self._lock:
            self._unloaded[segment] = self._unloaded.get(segment, 0) + rows
        self._rows += rows
        if self._rows >= self.segment_rows:
            self._close_segment()
        return segment

    def loaded(self, segment: int, rows: int) -> None:
        """Rows of a segment are committed to the store; delete it once all of them are and
        it is closed."""
        with self._lock:
            left = self._unloaded[segment] - rows
            self._unloaded[segment] = left
            if left or segment == self._segment:
                return
            del self._unloaded[segment]
        self.path(segment).unlink(missing_ok=True)

    def close(self) -> None:
        """Close the open segment (deleted if everything in it is loaded)."""
        if self._fd is not None:
            self._close_segment()

    def remove(self, path: Path) -> None:
        """Delete a leftover segment once it is loaded."""
        path.unlink(missing_ok=True)
        if path in self._left:
            self._left.remove(path)

    def _open(self) -> None:
        with self._lock:
            self._segment = self._next
        self._next += 1
        self._fd = os.open(self.path(self._segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name is durable too
        finally:
            os.close(dir_fd)
        self._rows = 0

    def _close_segment(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        with self._lock:
            segment, self._segment = self._segment, 0
            done = self._unloaded.get(segment, 0) == 0
            if done:
                self._unloaded.pop(segment, None)
        if done:
            self.path(segment).unlink(missing_ok=True)
