"""System calls from `strace -f -ttt -T` output (also without -f, and `-o FILE` / `-ff`).

    spanomaly ingest orders@orders-1.strace        # service orders, instance orders-1
    spanomaly ingest run.strace --format strace    # instance run, no service

Every line is one of:

    [pid 12] 1675078792.123456 read(3, "..."..., 4096) = 12 <0.000021>    (stderr, -f)
    12 1675078792.123456 read(3, "..."..., 4096) = 12 <0.000021>          (-o FILE -f)
    1675078792.123456 openat(AT_FDCWD, "/x", O_RDONLY) = -1 ENOENT (No such file or directory) <0.000010>
    1675078792.123456 exit_group(0) = ?                                     (no return)
    1675078792.123456 read(3,  <unfinished ...>             then, of the same thread,
    1675078792.123499 <... read resumed>"abc", 4096) = 3 <0.000043>
    1675078792.123456 --- SIGCHLD {si_signo=SIGCHLD, ...} ---             (skipped)
    1675078792.123456 +++ exited with 0 +++                                (skipped)

and `strace: Process N attached` messages (skipped). Any other line is rejected alone, with
its line number. A call split over an unfinished and a resumed line is one row: its entry
time from the unfinished line, duration and return value from the resumed one; a resumed
line whose start is not in the file enters at its time minus its duration; an unfinished
call never resumed has no duration nor return value. `ret` is the return value; an error
(`-1 ENOENT`) is stored as -errno where the `errno` module knows the name (ERESTARTSYS
and other kernel-internal codes are not: their row has no return value).

Threads: the `[pid N]` / leading `N` of -f is the thread id (strace names threads, not
processes; `pid` stays null unless the file says more). Lines without it belong to the
traced process: with `-ff -o NAME` the file `NAME.N` says N; in stderr output of -f, lines
before the first child (and after the last one exits) carry no prefix and belong to the
first process, the first prefixed thread no fork/clone of the file returned; otherwise
the id is not in the output and `tid` is -1.

Files: a file named `SERVICE@INSTANCE.strace` (the testbed names its recordings so; also
`SERVICE@INSTANCE.strace.N` of -ff, and .gz/.zst) gives the rows' service and instance;
any other file gives instance = the file's stem and no service.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa

from spanomaly.ingest.base import Chunk, DecodeOptions, Reject
from spanomaly.ingest.files import content_view, plain_name

_BLOCK_BYTES = 8 * 2**20  # text parsed per regex pass (about 80,000 lines)
_TAIL = (
    rb"\)\s*=\s*(?P<ret>-?\d+|0x[0-9a-fA-F]+|\?)(?:<[^>\n]*>)?(?:\s+(?P<err>E[A-Z0-9_]+))?"
    rb"(?:\s+\([^\n]*\))?(?:\s+<(?:(?P<ds>\d+)\.(?P<df>\d+)|unavailable)>)?"
)
# one match per line (the newline included): every line is a call, a skipped line or bad
_LINE = re.compile(
    rb"^(?:(?:\[pid\s+(?P<bt>\d+)\]\s+|(?P<pt>\d+)\s+)?(?P<sec>\d+)\.(?P<frac>\d{1,9})\s+"
    rb"(?:(?:<\.\.\.\s+(?P<rname>\w+)\s+resumed>|(?P<name>\w+)\()[^\n]*?"
    rb"(?:(?P<unf><unfinished\s+\.\.\.>|strace:\s+Process\s+\d+\s+attached)|" + _TAIL + rb")"
    rb"|(?P<skip>---\s[^\n]*---|\+\+\+\s[^\n]*\+\+\+)))[ \t\r]*\n"
    rb"|^(?P<other>strace:\s[^\n]*|[ \t]*<unfinished\s+\.\.\.>[ \t\r]*|\[\s*Process\s[^\n]*|[ \t\r]*)\n"
    rb"|^(?P<bad>[^\n]*)\n",
    re.M,
)
_FORKS = re.compile(rb"(?:\bclone3?|\bv?fork)\b[^\n]*\)\s*=\s*(\d+)")
_GROUP_NAMES = sorted(_LINE.groupindex, key=_LINE.groupindex.__getitem__)
_THREAD_CLONE = re.compile(rb"^[^\n]*?\bclone3?\([^\n]*CLONE_THREAD", re.M)
_NAME = re.compile(r"^(?P<service>[^@/]+)@(?P<instance>[^/]+?)\.strace(?:\.(?P<tid>\d+))?$")
_PID_SUFFIX = re.compile(r"\.(\d+)$")


def file_labels(path: Path) -> tuple[str | None, str, int | None]:
    """(service, instance, thread of unprefixed lines) that a file's name says."""
    name = plain_name(path)
    found = _NAME.match(name)
    if found:
        tid = found.group("tid")
        return found.group("service"), found.group("instance"), int(tid) if tid else None
    suffix = _PID_SUFFIX.search(name)
    stem = name[: suffix.start()] if suffix else name
    stem = stem.removesuffix(".strace") if stem.endswith(".strace") else Path(stem).stem or stem
    return None, stem, int(suffix.group(1)) if suffix else None


def decode_file(path: Path, options: DecodeOptions) -> Iterator[Chunk]:
    """Chunks of `syscalls` rows of one strace output file (bad lines rejected one by one)."""
    service, instance, tid = file_labels(path)
    source = str(path)
    pids: dict[int, int] = {}  # thread -> process, from clone(CLONE_THREAD) calls
    clones = np.zeros(0, np.int64)  # lines of those calls
    with content_view(path) as view:
        text = view if isinstance(view, bytes) else view.obj  # an mmap: searchable as is
        leader = _leader(text) if tid is None else tid
        pending: _Rows | None = None
        line = 1
        for start, end in _blocks(text):
            block = bytes(text[start:end])
            block += b"" if block.endswith(b"\n") else b"\n"
            rows, rejects, records = _parse(block, line, leader, source)
            clones = np.concatenate([clones, _thread_clones(block, line)])
            line += block.count(b"\n")
            rows = rows if pending is None else pending.concat(rows)
            done, pending = rows.pair(final=False)
            _note_threads(done, clones, pids)
            yield Chunk("syscalls", done.table(service, instance, source, pids), rejects, records)
        if pending is not None:
            done, _ = pending.pair(final=True)
            yield Chunk("syscalls", done.table(service, instance, source, pids), [], 0)


def _thread_clones(block: bytes, first_line: int) -> np.ndarray:
    """Line numbers of the clone calls of a block that start a thread (CLONE_THREAD)."""
    lines, pos, no = [], 0, first_line
    for m in _THREAD_CLONE.finditer(block):
        no += block.count(b"\n", pos, m.start())
        pos = m.start()
        lines.append(no)
    return np.asarray(lines, np.int64)


def _note_threads(rows: _Rows, clones: np.ndarray, pids: dict[int, int]) -> None:
    """Record the process of each thread a clone(CLONE_THREAD) of rows started."""
    made = np.isin(rows.line, clones) & rows.has_ret & (rows.ret > 0)
    for caller, child in zip(rows.tid[made].tolist(), rows.ret[made].tolist(), strict=True):
        pids[child] = pids.get(caller, caller)


def _blocks(text: bytes | memoryview) -> Iterator[tuple[int, int]]:
    """(start, end) of pieces of about _BLOCK_BYTES, cut after a newline."""
    size, start = len(text), 0
    while start < size:
        end = min(start + _BLOCK_BYTES, size)
        if end < size:
            cut = text.find(b"\n", end)  # type: ignore[union-attr]
            end = size if cut < 0 else cut + 1
        yield start, end
        start = end


def _leader(text: bytes | memoryview) -> int:
    """The thread of unprefixed lines of stderr -f output (see the module docstring), or
    -1 where the output names none."""
    first = text.find(b"[pid ")  # type: ignore[union-attr]
    if first < 0:
        return -1
    window = bytes(text[first : first + 2**20])
    forked = {int(m) for m in _FORKS.findall(window)}
    for tid in re.findall(rb"^\[pid\s+(\d+)\]", window, re.M):
        if int(tid) not in forked:
            return int(tid)
    return -1


def _ints(values: tuple[bytes, ...] | np.ndarray) -> np.ndarray:
    """Decimal byte strings as int64 (empty: 0)."""
    arr = np.asarray(values, dtype="S")
    return np.where(arr == b"", b"0", arr).astype(np.int64)


def _ns(whole: tuple[bytes, ...], frac: tuple[bytes, ...]) -> np.ndarray:
    """Seconds and fraction digits (-ttt: 6, --timestamps=ns: 9) as integer nanoseconds."""
    digits = np.asarray(frac, dtype="S")
    scale = 10 ** (9 - np.strings.str_len(digits)).astype(np.int64)
    return _ints(whole) * 1_000_000_000 + _ints(digits) * scale


def _parse(
    block: bytes, first_line: int, leader: int, source: str
) -> tuple[_Rows, list[Reject], int]:
    """The calls of a block of whole lines, its rejected lines, and how many records it had."""
    found = _LINE.findall(block)
    if not found:
        return _Rows.empty(), [], 0
    cols = dict(zip(_GROUP_NAMES, zip(*found, strict=True), strict=True))
    bad = np.flatnonzero(np.asarray(cols["bad"], dtype="S") != b"")
    rejects = [
        Reject(source, f"line {first_line + int(i)}", "not a line of strace -ttt output")
        for i in bad
    ]
    name = np.asarray(cols["name"], dtype="S")
    rname = np.asarray(cols["rname"], dtype="S")
    calls = np.flatnonzero((name != b"") | (rname != b""))
    records = len(calls) + len(bad)
    pick = {k: [v[i] for i in calls] for k, v in cols.items() if k not in ("bad", "other")}
    tid = np.maximum(_ints(pick["bt"]), _ints(pick["pt"]))
    prefixed = (np.asarray(pick["bt"], dtype="S") != b"") | (np.asarray(pick["pt"], "S") != b"")
    resumed = np.asarray(pick["rname"], dtype="S") != b""
    kind = np.where(resumed, 2, np.where(np.asarray(pick["unf"], "S") != b"", 1, 0))
    dur = _ns(pick["ds"], pick["df"])
    ret, has_ret = _returns(pick["ret"], pick["err"])
    rows = _Rows(
        line=calls.astype(np.int64) + first_line,
        tid=np.where(prefixed, tid, leader),
        time=_ns(pick["sec"], pick["frac"]),
        name=np.where(resumed, rname[calls], name[calls]),
        kind=kind.astype(np.int8),
        dur=np.where(np.asarray(pick["ds"], "S") != b"", dur, -1),
        ret=ret,
        has_ret=has_ret,
    )
    return rows, rejects, records


def _returns(ret: tuple[bytes, ...], err: tuple[bytes, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Return values (hex too; -errno where the error name maps) and whether there is one."""
    raw = np.asarray(ret, dtype="S")
    hexed = np.strings.startswith(raw, b"0x")
    known = (raw != b"") & (raw != b"?")
    values = np.zeros(len(raw), dtype=np.int64)
    plain = known & ~hexed
    values[plain] = raw[plain].astype(np.int64)
    if hexed.any():  # addresses (mmap, brk): few lines, parsed one by one
        values[hexed] = np.array([int(x, 16) for x in raw[hexed]], np.uint64).view(np.int64)
    names, inverse = np.unique(np.asarray(err, dtype="S"), return_inverse=True)
    codes = np.array([getattr(errno, n.decode(), 0) if n else 0 for n in names], np.int64)
    code = codes[inverse]
    values = np.where(code > 0, -code, values)
    return values, known | (code > 0)


@dataclass
class _Rows:
    """Calls of some lines, in line order: thread, entry time, name, kind (0 a whole call,
    1 unfinished, 2 resumed), duration (-1: none), return value and whether there is one."""

    line: np.ndarray
    tid: np.ndarray
    time: np.ndarray
    name: np.ndarray
    kind: np.ndarray
    dur: np.ndarray
    ret: np.ndarray
    has_ret: np.ndarray

    @classmethod
    def empty(cls) -> _Rows:
        """No rows."""
        i8 = np.zeros(0, np.int64)
        return cls(i8, i8, i8, np.zeros(0, "S1"), np.zeros(0, np.int8), i8, i8, np.zeros(0, bool))

    def take(self, index: np.ndarray) -> _Rows:
        """The rows at index (positions or a mask)."""
        return _Rows(*(getattr(self, f.name)[index] for f in fields(self)))

    def concat(self, other: _Rows) -> _Rows:
        """These rows, then other's."""
        return _Rows(
            *(np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self))
        )

    def pair(self, final: bool) -> tuple[_Rows, _Rows | None]:
        """Join each resumed line with its thread's unfinished one: the finished calls, and
        the unfinished calls whose resumed line may be in the next block (none if final)."""
        split = np.flatnonzero(self.kind != 0)
        order = split[np.lexsort((self.line[split], self.tid[split]))]
        prev, cur = order[:-1], order[1:]
        same = self.tid[prev] == self.tid[cur]
        joined = same & (self.kind[prev] == 1) & (self.kind[cur] == 2)
        joined &= self.name[prev] == self.name[cur]
        u, r = prev[joined], cur[joined]
        self.dur[u], self.ret[u], self.has_ret[u] = self.dur[r], self.ret[r], self.has_ret[r]
        self.kind[u] = 0
        keep = np.ones(len(self.line), bool)
        keep[r] = False
        alone = (self.kind == 2) & keep  # resumed without its start: it began dur earlier
        self.time[alone] -= np.maximum(self.dur[alone], 0)
        self.kind[alone] = 0
        last = np.ones(len(order), bool)  # each thread's last split line of the block
        last[:-1] = ~same
        waiting = order[last & (self.kind[order] == 1)]
        if final or not len(waiting):
            return self.take(keep), None
        keep[waiting] = False
        return self.take(keep), self.take(np.sort(waiting))

    def table(
        self, service: str | None, instance: str | None, source: str, pids: dict[int, int]
    ) -> pa.Table:
        """The rows as a `syscalls` table (pid: the process a clone said, else the tid)."""
        from spanomaly.schema import SYSCALLS

        n = len(self.line)
        tids, inverse = np.unique(self.tid, return_inverse=True)
        pid = np.array([pids.get(int(t), int(t)) for t in tids], np.int64)[inverse]
        columns = {
            "time_ns": self.time,
            "duration_ns": pa.array(self.dur, mask=self.dur < 0),
            "name": pa.array(self.name, pa.binary()).cast(pa.string()),
            "ret": pa.array(self.ret, mask=~self.has_ret),
            "pid": pa.array(pid, mask=self.tid < 0),
            "tid": self.tid,
            "service": pa.repeat(pa.scalar(service, pa.string()), n),
            "instance": pa.repeat(pa.scalar(instance, pa.string()), n),
            "source": pa.repeat(pa.scalar(source, pa.string()), n),
        }
        return pa.table(
            {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in SYSCALLS}, schema=SYSCALLS
        )
