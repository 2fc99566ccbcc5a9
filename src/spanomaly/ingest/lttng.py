"""System calls of an LTTng kernel trace (CTF), read through babeltrace2's Python binding.

    spanomaly ingest ~/lttng-traces/SESSION/kernel    # a folder holding a CTF `metadata`

A trace is a folder whose `metadata` file opens with the CTF packet magic or `/* CTF`
(`files.expand` hands such a folder over whole). Its `syscall_entry_NAME` events become
`syscalls` rows named NAME, entering at the event's time (ns since the Unix epoch, from the
clock snapshot); the thread's next `syscall_exit_NAME` gives the duration and `ret`. An
entry never left in the trace (exit, exit_group, the trace's end) has neither; an exit
whose entry is before the trace (and each clone's exit in the new thread) is no row.

Syscall events carry no thread: they carry the CPU (`cpu_id` of their stream's packet
context), and the thread running there is the `next_tid` / `next_comm` of the CPU's last
`sched_switch` (as Trace Compass and lttng-analyses reconstruct it). Calls on a CPU before
its first switch belong to that switch's `prev_tid` / `prev_comm` (the thread it switched
away from); on a CPU that never switches they are stored with tid -1, and the log says
how many ("unattributed"). `pid` comes from `sched_process_fork` (child_tid -> child_pid)
and `lttng_statedump_process_state` (tid -> pid), where the trace has them; `process` is
the thread's command name, `cpu` the CPU, `source` the trace folder.

The binding (Debian `python3-bt2`, CPython 3.11) is imported as `bt2`, or from Debian's
`/usr/lib/python3/dist-packages` where the environment has none. Every event costs Python
work (the binding hands events over one by one), so the loop calls the binding's C layer
(`native_bt`) directly and appends to arrays; Arrow tables are built per chunk of rows.
"""

from __future__ import annotations

import logging
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa

from spanomaly.errors import FormatError, InputError
from spanomaly.ingest.base import Chunk, DecodeOptions
from spanomaly.ingest.files import is_ctf_trace

log = logging.getLogger(__name__)

DEBIAN_PACKAGES = "/usr/lib/python3/dist-packages"
CHUNK_ROWS = 100_000
_ENTRY, _EXIT = "syscall_entry_", "syscall_exit_"
_UNSEEN = -1000  # thread key of a call on CPU c before its first switch: _UNSEEN - c
# what each event class is to the reader
_OTHER, _CALL, _RETURN, _SWITCH, _FORK, _STATEDUMP = range(6)


def load_bt2(path: Path) -> ModuleType:
    """babeltrace2's binding, from this environment or Debian's; else a one-line error."""
    try:
        import bt2
    except ImportError:
        if DEBIAN_PACKAGES not in sys.path:
            sys.path.append(DEBIAN_PACKAGES)
        try:
            import bt2
        except ImportError as exc:
            raise InputError(
                f"{path}: reading an LTTng trace needs babeltrace2's Python binding: "
                f"install Debian python3-bt2 (apt-get install python3-bt2) ({exc})"
            ) from exc
    return bt2


def decode_trace(path: Path, options: DecodeOptions) -> Iterator[Chunk]:
    """Chunks of `syscalls` rows of one LTTng kernel trace folder."""
    if not path.is_dir() or not is_ctf_trace(path):
        raise FormatError(f"{path}: not an LTTng (CTF) trace folder (no CTF metadata file)")
    bt2 = load_bt2(path)
    from bt2 import native_bt  # the C layer under the binding

    reader = _Reader(str(path), native_bt)
    try:
        messages = bt2.TraceCollectionMessageIterator(str(path))
        event_type = bt2._EventMessageConst
        for msg in messages:
            if type(msg) is event_type and reader.event(msg._ptr):
                yield reader.flush(final=False)
    except bt2._Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FormatError(f"{path}: babeltrace2 cannot read the trace: {first}") from exc
    yield reader.flush(final=True)
    reader.report()


class _Columns:
    """Rows gathered event by event: entry time, syscall, thread key, CPU, duration (-1:
    none), return value and whether there is one, command (-1: unknown)."""

    __slots__ = ("comm", "cpu", "dur", "has_ret", "name", "ret", "thread", "time")

    def __init__(self) -> None:
        for slot in self.__slots__:
            setattr(self, slot, array("q"))

    def arrays(self) -> dict[str, np.ndarray]:
        """The columns as numpy arrays (copies)."""
        return {s: np.array(getattr(self, s), np.int64) for s in self.__slots__}

    def extend(self, columns: dict[str, np.ndarray]) -> None:
        """Append rows given as arrays."""
        for s in self.__slots__:
            getattr(self, s).extend(columns[s].tolist())


class _Reader:
    """The state of one pass over a trace: the thread on each CPU, calls in flight,
    processes of threads, and the rows not stored yet."""

    def __init__(self, source: str, nb: Any) -> None:
        self.source, self.nb = source, nb
        self._event = nb.message_event_borrow_event_const
        self._snapshot = nb.message_event_borrow_default_clock_snapshot_const
        self._ns = nb.clock_snapshot_get_ns_from_origin
        self._class = nb.event_borrow_class_const
        self._stream = nb.event_borrow_stream_const
        self._payload = nb.event_borrow_payload_field_const
        self._member = nb.field_structure_borrow_member_field_by_name_const
        self.kinds: dict[int, tuple[int, int]] = {}  # event class -> (what, syscall id)
        self.getters: dict[tuple[int, str], Any] = {}  # (event class, field) -> getter
        self.cpus: dict[int, int] = {}  # stream -> its CPU
        self.names: dict[str, int] = {}  # syscall -> id
        self.comms: dict[str, int] = {}  # command -> id
        self.running: dict[int, tuple[int, int]] = {}  # CPU -> (tid, command id) on it
        self.first: dict[int, tuple[int, int]] = {}  # CPU -> (tid, command) before its first switch
        self.open: dict[int, int] = {}  # thread key -> row of its call in flight
        self.pids: dict[int, int] = {}  # tid -> pid
        self.rows = _Columns()
        self.alone = self.unattributed = self.calls = 0

    def event(self, msg: Any) -> bool:
        """Take one event message; True when a chunk of rows is ready to store."""
        ev = self._event(msg)
        cls = self._class(ev)
        key = int(cls)
        kind = self.kinds.get(key)
        if kind is None:
            kind = self.kinds[key] = self._kind(cls)
        what = kind[0]
        if what == _OTHER:
            return False
        stream = int(self._stream(ev))
        cpu = self.cpus.get(stream)
        if cpu is None:
            cpu = self.cpus[stream] = self._cpu(ev)
        if what == _CALL:
            self._call(self._ns(self._snapshot(msg))[1], kind[1], cpu)
            return len(self.rows.time) >= CHUNK_ROWS
        if what == _RETURN:
            self._return(ev, key, kind[1], cpu, self._ns(self._snapshot(msg))[1])
        elif what == _SWITCH:
            self._switch(ev, key, cpu)
        else:  # a fork or a statedump line: which process a thread belongs to
            payload = self._payload(ev)
            tid, pid = ("child_tid", "child_pid") if what == _FORK else ("tid", "pid")
            self.pids[self._int(payload, key, tid)] = self._int(payload, key, pid)
        return False

    def _kind(self, cls: Any) -> tuple[int, int]:
        """What an event class is to the reader, and its syscall's id."""
        name = self.nb.event_class_get_name(cls) or ""
        name = name.removeprefix("compat_")  # 32-bit calls on a 64-bit kernel
        for prefix, what in ((_ENTRY, _CALL), (_EXIT, _RETURN)):
            if name.startswith(prefix):
                return what, self.names.setdefault(name[len(prefix) :], len(self.names))
        named = {"sched_switch": _SWITCH, "sched_process_fork": _FORK}
        named["lttng_statedump_process_state"] = _STATEDUMP
        return named.get(name, _OTHER), -1

    def _cpu(self, ev: Any) -> int:
        """The CPU of an event's stream (its packet context's cpu_id; -1 without one)."""
        context = self.nb.packet_borrow_context_field_const(self.nb.event_borrow_packet_const(ev))
        field = self._member(context, "cpu_id") if context is not None else None
        return -1 if field is None else int(self.nb.field_integer_unsigned_get_value(field))

    def _int(self, struct: Any, key: int, name: str) -> int:
        """An integer member of a structure field (signed or not, as its class says)."""
        field = self._member(struct, name)
        get = self.getters.get((key, name))
        if get is None:
            nb = self.nb
            kind = nb.field_get_class_type(field)
            signed = nb.field_class_type_is(kind, nb.FIELD_CLASS_TYPE_SIGNED_INTEGER)
            get = self.getters[(key, name)] = (
                nb.field_integer_signed_get_value if signed else nb.field_integer_unsigned_get_value
            )
        return int(get(field))

    def _comm(self, struct: Any, name: str) -> int:
        """The id of a command-name member."""
        text = self.nb.field_string_get_value(self._member(struct, name))
        return self.comms.setdefault(text, len(self.comms))

    def _call(self, t: int, name: int, cpu: int) -> None:
        run = self.running.get(cpu)
        thread, comm = run if run is not None else (_UNSEEN - cpu, -1)
        r = self.rows
        self.open[thread] = len(r.time)
        for column, value in zip(
            (r.time, r.name, r.thread, r.cpu, r.dur, r.ret, r.has_ret, r.comm),
            (t, name, thread, cpu, -1, 0, 0, comm),
            strict=True,
        ):
            column.append(value)

    def _return(self, ev: Any, key: int, name: int, cpu: int, t: int) -> None:
        run = self.running.get(cpu)
        thread = run[0] if run is not None else _UNSEEN - cpu
        r = self.rows
        row = self.open.get(thread)
        if row is None or r.name[row] != name:
            self.alone += 1  # entered before the trace began (or a clone's new thread)
            return
        del self.open[thread]
        r.dur[row] = t - r.time[row]
        r.ret[row] = self._int(self._payload(ev), key, "ret")
        r.has_ret[row] = 1

    def _switch(self, ev: Any, key: int, cpu: int) -> None:
        payload = self._payload(ev)
        if cpu not in self.running:  # calls so far on this CPU were the previous thread's
            prev = self._int(payload, key, "prev_tid")
            self.first[cpu] = (prev, self._comm(payload, "prev_comm"))
            row = self.open.pop(_UNSEEN - cpu, None)
            if row is not None:
                self.open[prev] = row
        self.running[cpu] = (self._int(payload, key, "next_tid"), self._comm(payload, "next_comm"))

    def flush(self, final: bool) -> Chunk:
        """The rows that are complete as a chunk (all of them if final); calls in flight
        and calls of a CPU whose thread is not known yet stay for the next chunk."""
        cols = self.rows.arrays()
        thread = cols["thread"]
        for cpu, (tid, comm) in self.first.items():  # threads of the calls before a switch
            before = thread == _UNSEEN - cpu
            thread[before], cols["comm"][before] = tid, comm
        wait = np.zeros(len(thread), bool)
        if not final:
            wait[list(self.open.values())] = True
            wait |= thread <= _UNSEEN
        elif (unseen := thread <= _UNSEEN).any():
            self.unattributed += int(unseen.sum())
            thread[unseen] = -1
        self.rows = _Columns()
        kept = {k: v[wait] for k, v in cols.items()}
        moved = np.cumsum(wait) - 1  # a waiting row's index among the kept ones
        self.open = {k: int(moved[i]) for k, i in self.open.items() if wait[i]}
        self.rows.extend(kept)
        done = {k: v[~wait] for k, v in cols.items()}
        self.calls += len(done["time"])
        return Chunk("syscalls", self._table(done), [], len(done["time"]))

    def _table(self, c: dict[str, np.ndarray]) -> pa.Table:
        """Rows as a `syscalls` table."""
        from spanomaly.schema import SYSCALLS

        n = len(c["time"])
        tids, inverse = np.unique(c["thread"], return_inverse=True)
        pid = np.array([self.pids.get(int(t), -1) for t in tids], np.int64)[inverse]
        columns = {
            "time_ns": c["time"],
            "duration_ns": pa.array(c["dur"], mask=c["dur"] < 0),
            "name": _decoded(c["name"], self.names),
            "ret": pa.array(c["ret"], mask=c["has_ret"] == 0),
            "pid": pa.array(pid, mask=pid < 0),
            "tid": c["thread"],
            "process": _decoded(c["comm"], self.comms),
            "cpu": pa.array(c["cpu"].astype(np.int32), mask=c["cpu"] < 0),
            "source": pa.repeat(pa.scalar(self.source), n),
        }
        return pa.table(
            {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in SYSCALLS}, schema=SYSCALLS
        )

    def report(self) -> None:
        """Log what the pass could not attribute or pair."""
        log.info(
            "%s: %d system calls, %d unattributed (no sched_switch on their CPU), %d exits "
            "without their entry", self.source, self.calls, self.unattributed, self.alone,
        )  # fmt: skip
        if self.unattributed:
            log.warning(
                "%s: %d system calls on CPUs without a sched_switch are stored with tid -1",
                self.source,
                self.unattributed,
            )


def _decoded(ids: np.ndarray, names: dict[str, int]) -> pa.Array:
    """Ids of interned strings (-1: null) as a string array."""
    dictionary = pa.array(list(names), pa.string())
    indices = pa.array(ids.astype(np.int32), mask=ids < 0)
    return pa.DictionaryArray.from_arrays(indices, dictionary).dictionary_decode()
