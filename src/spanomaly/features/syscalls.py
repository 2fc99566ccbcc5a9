"""System-call windows: sliding windows over a `syscalls` table, one feature vector each.

    spec = WindowSpec.parse("200", "100", by="thread")     # 200 calls, a new one every 100
    spec = WindowSpec.parse("2s", "1s", by="instance")     # 2 s of an instance, every 1 s
    win = call_windows(table, spec)                        # keys + row ranges, no features yet
    feats = SyscallFeatures().fit(win)                     # vocabulary of the training calls
    X = feats.transform(win)                               # (windows, features)

A window holds the calls of one thread (`by="thread"`: run, service, instance, tid) or of
one instance (`by="instance"`: run, service, instance; its threads interleaved in time):
`length` calls every `stride` calls (only whole windows: a thread with fewer calls gives
none), or the calls entering in [start, start + length) with starts on the multiples of
`stride` ns since the epoch (so the windows of all threads and instances line up), only
windows the recording covers whole (from the first to the last call of the thread's
instance in the run: a window cut by the start or end of tracing holds a fraction of its
calls, unlike any other), empty windows and those under `min_calls` left out.

Each window carries run, service, instance, thread (tid; null per instance), start_ns and
end_ns (calls: the first call's entry to the latest exit; time: the window's bounds). The
run is the folder of the call's `source` (a recording folder per run:
``RUN/syscalls/SERVICE@INSTANCE.strace`` gives ``RUN/syscalls``), or the source itself where
it names no folder; a call without source is in run ``""``. Service is the call's service,
else its process; instance its instance, else its pid, else its service.

Features (names in `SyscallFeatures.names`):

    f.<call>      share of the window's calls that are <call> (the vocabulary: the
                  `max_vocab` commonest calls of the training windows); f.<other>: the rest
    g.<k>         share of the window's bigrams (a call and the previous call of the same
                  thread, both in the window) in hash bucket k of `width` (a stable hash of
                  the two names, so unseen calls hash too)
    d.mean, d.p50, d.p95, d.max
                  of ln(1 + duration in µs) over the calls with an exit (0 where none has);
                  quantiles interpolated linearly, as numpy's default
    e.error_share share of the calls with a return value that returned < 0 (-errno)
    r.log_calls   ln(1 + calls in the window)
    r.log_rate    ln(1 + calls per second over the window's start to end)
    t.gap_mean, t.gap_p50, t.gap_p95, t.gap_max
                  of ln(1 + µs) from a call's exit to the same thread's next call (both
                  in the window): the thread's running time in user space plus its wait
                  for a CPU, what CPU faults (contention, throttling, busy code) change
    t.busy_share  share of those threads' time spent inside calls
    c.<family>.share, c.<family>.d_mean, c.<family>.d_p95
                  per family of calls (wait: epoll/futex/poll/select/sleeps/accept; io:
                  read/write/recv/send/pread/fsync...; other): its share of the calls and
                  the mean and p95 of ln(1 + duration in µs)
    k.<call>.d_mean
                  mean ln(1 + duration in µs) of each of the `timed_calls` (8) commonest
                  training calls (0 where the window has none)
    v.<dir>.bytes_mean, v.<dir>.bytes_p95, v.<dir>.zero_share, v.<dir>.rate
                  what the calls that move data returned, per direction (in: read, recv,
                  pread...; out: write, send, pwrite...): mean and p95 of ln(1 + bytes)
                  over the successful calls, the share that returned 0 (end of file: a
                  closed connection), ln(1 + bytes per second); a response that shrinks
                  (an error page, an empty result) or connections that close show here
    v.eagain_share, v.fail_share
                  of the calls with a return value: the share that returned -EAGAIN
                  (a non-blocking call with nothing to do yet) and the share of the other
                  errors (resets, broken pipes, missing files)

Everything is numpy over columns (sort, bincount, reduceat); the only loops run over the
distinct sources and call names.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.errors import InputError

NS = 1_000_000_000
BY = ("thread", "instance")
OTHER = "<other>"
DURATION_FEATURES = ("d.mean", "d.p50", "d.p95", "d.max")
TAIL_FEATURES = ("e.error_share", "r.log_calls", "r.log_rate")
GAP_FEATURES = ("t.gap_mean", "t.gap_p50", "t.gap_p95", "t.gap_max", "t.busy_share")
# Families of Linux system calls: those that block waiting for an event or a lock, and those
# that move data (files, pipes, sockets); everything else is "other".
WAIT_CALLS = frozenset({
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "futex", "futex_waitv", "poll", "ppoll",
    "select", "pselect6", "nanosleep", "clock_nanosleep", "wait4", "waitid", "pause",
    "sched_yield", "rt_sigtimedwait", "accept", "accept4",
})  # fmt: skip
IO_CALLS = frozenset({
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg",
    "sendmmsg", "sendfile", "splice", "io_uring_enter", "fsync", "fdatasync",
})  # fmt: skip
IN_CALLS = frozenset({
    "read", "readv", "pread64", "preadv", "preadv2", "recvfrom", "recvmsg", "recvmmsg",
})  # fmt: skip
OUT_CALLS = frozenset({
    "write", "writev", "pwrite64", "pwritev", "pwritev2", "sendto", "sendmsg", "sendmmsg",
    "sendfile",
})  # fmt: skip
EAGAIN = 11  # Linux's errno of "try again" (EWOULDBLOCK too), the same on every arch it runs
CALL_CLASSES = ("wait", "io", "other")
CLASS_FEATURES = tuple(f"c.{k}.{s}" for k in CALL_CLASSES for s in ("share", "d_mean", "d_p95"))
RETURN_FEATURES = (
    *(f"v.{d}.{s}" for d in ("in", "out") for s in ("bytes_mean", "bytes_p95", "zero_share", "rate")),
    "v.eagain_share", "v.fail_share",
)  # fmt: skip
KEY_NAMES = ("run", "service", "instance", "thread", "start_ns", "end_ns")
_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": NS, "m": 60 * NS, "h": 3600 * NS}
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class WindowSpec:
    """How windows are cut: length and stride in calls or in ns, per thread or instance."""

    length: int = 200
    stride: int = 100
    unit: str = "calls"  # calls | time (length and stride in ns)
    by: str = "thread"
    min_calls: int = 1

    @classmethod
    def parse(
        cls, length: str, stride: str | None = None, by: str = "thread", min_calls: int = 1
    ) -> WindowSpec:
        """From option text: '200' calls, or a time such as '2s', '500ms' (stride: the
        same unit, default half the length); one-line errors naming the option."""
        n, unit = parse_extent(length, "--length")
        s, s_unit = parse_extent(stride, "--stride") if stride else (max(n // 2, 1), unit)
        if s_unit != unit:
            raise InputError(f"--stride: {stride!r} is not in the unit of --length ({unit})")
        if by not in BY:
            raise InputError(f"--by: {by!r} is not one of {', '.join(BY)}")
        if min_calls < 1:
            raise InputError("--min-calls: must be at least 1")
        return cls(n, s, unit, by, min_calls)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"length": self.length, "stride": self.stride, "unit": self.unit,
                "by": self.by, "min_calls": self.min_calls}  # fmt: skip


def parse_extent(text: str, option: str) -> tuple[int, str]:
    """'200' -> (200, 'calls'); '2s', '1.5s', '500ms', '1m' -> (ns, 'time')."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h)?\s*", text)
    if not m:
        raise InputError(f"{option}: {text!r} is not a number of calls or a time (2s, 500ms)")
    if m.group(2) is None:
        if "." in m.group(1) or int(m.group(1)) < 1:
            raise InputError(f"{option}: {text!r} calls must be a whole number >= 1")
        return int(m.group(1)), "calls"
    ns = round(float(m.group(1)) * _UNITS[m.group(2)])
    if ns < 1:
        raise InputError(f"{option}: {text!r} must be positive")
    return ns, "time"


def run_of(source: str | None) -> str:
    """The run a call belongs to: its source's folder (the source where it has none)."""
    if not source:
        return ""
    folder = posixpath.dirname(source.replace("\\", "/"))
    return folder or source


# -- the calls, sorted -----------------------------------------------------------------------


def _codes(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of a string column, ranked by the sorted distinct values (so they do
    not depend on row order), and those values."""
    enc = pc.dictionary_encode(values).combine_chunks()
    words = np.asarray(enc.dictionary.to_pylist(), dtype=object)
    idx = enc.indices.to_numpy(zero_copy_only=False)
    if not len(words):
        return np.zeros(len(idx), dtype=np.int64), words
    order = np.argsort(words.astype(str), kind="stable")
    rank = np.empty(len(words), dtype=np.int64)
    rank[order] = np.arange(len(words))
    return rank[idx], words[order]


@dataclass
class Calls:
    """The calls of a syscalls table as numpy columns, sorted by (group, time)."""

    group: np.ndarray  # group (thread or instance) of each call
    time: np.ndarray
    end: np.ndarray  # exit, or entry where the exit is unknown
    log_dur: np.ndarray  # ln(1 + µs), NaN without exit
    ret: np.ndarray  # float, NaN without return value
    name: np.ndarray  # code into names
    names: np.ndarray  # distinct call names, sorted
    prev: np.ndarray  # the previous call of the same thread in the group, or -1
    keys: pa.Table  # per group: run, service, instance, thread
    recording: np.ndarray  # per group: its (run, service, instance), a code

    @property
    def n(self) -> int:
        """Number of calls."""
        return len(self.time)


def _col(table: pa.Table, name: str) -> pa.ChunkedArray:
    return table.column(name) if name in table.column_names else pa.nulls(table.num_rows)


def _identity(table: pa.Table) -> tuple[np.ndarray, ...]:
    """Per call: run, service and instance codes and values, and the tid."""
    src_codes, sources = _codes(pc.cast(_col(table, "source"), pa.string()))
    runs = np.asarray([run_of(s) for s in sources], dtype=object)  # per distinct source
    run_names, run_idx = np.unique(runs.astype(str), return_inverse=True)
    run = run_idx.reshape(-1)[src_codes] if len(sources) else np.zeros(table.num_rows, np.int64)
    pid = pc.cast(_col(table, "pid"), pa.string())
    service = pc.coalesce(_col(table, "service"), _col(table, "process"), pa.scalar(""))
    instance = pc.coalesce(_col(table, "instance"), pid, service)
    svc, svc_names = _codes(service)
    inst, inst_names = _codes(instance)
    tid = table.column("tid").to_numpy(zero_copy_only=False).astype(np.int64)
    return run, run_names.astype(object), svc, svc_names, inst, inst_names, tid


def prepare(table: pa.Table, by: str = "thread") -> Calls:
    """The calls of a syscalls table, grouped per thread or per instance, in time order."""
    if by not in BY:
        raise InputError(f"--by: {by!r} is not one of {', '.join(BY)}")
    run, runs, svc, svcs, inst, insts, tid = _identity(table)
    thread = tid if by == "thread" else np.full(len(tid), -1, dtype=np.int64)
    ident = np.rec.fromarrays([run, svc, inst, thread])
    uniq, group = np.unique(ident, return_inverse=True)
    group = group.reshape(-1).astype(np.int64)
    time = table.column("time_ns").to_numpy(zero_copy_only=False).astype(np.int64)
    name, names = _codes(table.column("name"))
    order = np.lexsort((name, tid, time, group))
    dur = pc.fill_null(pc.cast(_col(table, "duration_ns"), pa.float64()), np.nan)
    dur = dur.to_numpy(zero_copy_only=False)[order]
    ret = pc.fill_null(pc.cast(_col(table, "ret"), pa.float64()), np.nan)
    group, time, tid, name = group[order], time[order], tid[order], name[order]
    keys = pa.table({
        "run": pa.array(runs[uniq["f0"]].astype(str) if len(uniq) else [], pa.string()),
        "service": pa.array(svcs[uniq["f1"]].astype(str) if len(uniq) else [], pa.string()),
        "instance": pa.array(insts[uniq["f2"]].astype(str) if len(uniq) else [], pa.string()),
        "thread": pa.array(np.where(uniq["f3"] < 0, None, uniq["f3"]) if len(uniq) else [],
                           pa.int64()),
    })  # fmt: skip
    return Calls(
        group=group,
        time=time,
        end=time + np.nan_to_num(np.maximum(dur, 0), nan=0).astype(np.int64),
        log_dur=np.log1p(np.maximum(dur, 0) / 1e3),
        ret=ret.to_numpy(zero_copy_only=False)[order],
        name=name,
        names=names,
        prev=_previous_of_thread(group, tid),
        keys=keys,
        recording=_recordings(uniq),
    )


def _recordings(uniq: np.ndarray) -> np.ndarray:
    """Per group (run, service, instance, thread codes): a code of its run, service and
    instance."""
    if not len(uniq):
        return np.zeros(0, dtype=np.int64)
    ident = np.rec.fromarrays([uniq["f0"], uniq["f1"], uniq["f2"]])
    return np.unique(ident, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _previous_of_thread(group: np.ndarray, tid: np.ndarray) -> np.ndarray:
    """Per call (sorted by group and time): the index of the same thread's previous call in
    the group, or -1."""
    n = len(group)
    order = np.lexsort((np.arange(n), tid, group))  # by group, thread, then time
    prev = np.full(n, -1, dtype=np.int64)
    if n > 1:
        same = (group[order[1:]] == group[order[:-1]]) & (tid[order[1:]] == tid[order[:-1]])
        prev[order[1:][same]] = order[:-1][same]
    return prev


# -- windows ----------------------------------------------------------------------------------


@dataclass
class SyscallWindows:
    """Windows over prepared calls: row ranges [lo, hi) and their keys (KEY_NAMES)."""

    calls: Calls
    lo: np.ndarray
    hi: np.ndarray
    keys: pa.Table
    spec: WindowSpec = field(default_factory=WindowSpec)

    @property
    def n(self) -> int:
        """Number of windows."""
        return len(self.lo)

    def column(self, name: str) -> np.ndarray:
        """One key column as numpy."""
        col = self.keys.column(name)
        if name in ("start_ns", "end_ns"):
            return col.to_numpy().astype(np.int64)
        return np.asarray(col.to_pylist(), dtype=object)  # thread: None per instance

    def take(self, rows: np.ndarray) -> SyscallWindows:
        """Some windows (indices or a boolean mask); the calls are shared."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows, dtype=np.int64)
        keys = self.keys.take(pa.array(rows, pa.int64()))
        return SyscallWindows(self.calls, self.lo[rows], self.hi[rows], keys, self.spec)


def _group_bounds(group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(group, minlength=n_groups)
    first = np.cumsum(counts) - counts
    return first, counts


def _ranks(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts k per group: the group of each of sum(k) items and its rank within it."""
    owner = np.repeat(np.arange(len(k)), k)
    rank = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
    return owner, rank


def _rows_before(group: np.ndarray, time: np.ndarray, qg: np.ndarray, qt: np.ndarray) -> np.ndarray:  # fmt: skip
    """For each query (group, time): the number of calls ordered before it (calls are sorted
    by group then time; a query comes before calls of equal time)."""
    n = len(group)
    g = np.concatenate([group, qg])
    t = np.concatenate([time, qt])
    is_call = np.concatenate([np.ones(n, dtype=bool), np.zeros(len(qg), dtype=bool)])
    order = np.lexsort((is_call, t, g))
    calls_seen = np.cumsum(is_call[order]) - is_call[order]
    out = np.empty(len(qg), dtype=np.int64)
    queries = ~is_call[order]
    out[order[queries] - n] = calls_seen[queries]
    return out


def call_windows(table: pa.Table, spec: WindowSpec) -> SyscallWindows:
    """The windows of a syscalls table under spec (see the module's docstring)."""
    calls = prepare(table, spec.by)
    n_groups = calls.keys.num_rows
    first, counts = _group_bounds(calls.group, n_groups)
    L, S = spec.length, spec.stride
    if spec.unit == "calls":
        k = np.where(counts >= L, (counts - L) // S + 1, 0)
        owner, rank = _ranks(k)
        lo = first[owner] + rank * S
        hi = lo + L
        start = calls.time[lo]
        end = _range_max(calls.end, lo, hi)
    else:
        has = counts > 0
        t0 = np.where(has, calls.time[np.minimum(first, max(calls.n - 1, 0))], 0)
        t1 = np.where(has, calls.time[np.minimum(first + counts - 1, max(calls.n - 1, 0))], 0)
        k_first = (t0 - L) // S + 1  # first start k * S with k * S + L > t0
        k = np.where(has, t1 // S - k_first + 1, 0)
        owner, rank = _ranks(k)
        start = (k_first[owner] + rank) * S
        end = start + L
        lo = _rows_before(calls.group, calls.time, owner, start)
        hi = _rows_before(calls.group, calls.time, owner, end)
        first_t, last_t = _recording_bounds(calls.recording, t0, t1, has)
        rec = calls.recording[owner]
        covered = (start >= first_t[rec]) & (end <= last_t[rec])
        lo, hi = np.where(covered, lo, 0), np.where(covered, hi, 0)  # not covered: empty
    keep = (hi - lo) >= spec.min_calls
    owner, lo, hi, start, end = owner[keep], lo[keep], hi[keep], start[keep], end[keep]
    keys = calls.keys.take(pa.array(owner, pa.int64()))
    keys = keys.append_column("start_ns", pa.array(start, pa.int64()))
    keys = keys.append_column("end_ns", pa.array(end, pa.int64()))
    return SyscallWindows(calls, lo, hi, keys, spec)


def _recording_bounds(recording: np.ndarray, t0: np.ndarray, t1: np.ndarray, has: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per recording: the time of its first and last call, from those of its groups."""
    n = int(recording.max()) + 1 if len(recording) else 0
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, recording[has], t0[has])  # per group: thousands at most
    np.maximum.at(last, recording[has], t1[has])
    return first, last


def _range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """max(values[lo:hi]) per range (ranges non-empty; they may overlap)."""
    _, idx = _expand(lo, hi)
    offsets = np.cumsum(hi - lo) - (hi - lo)
    return np.maximum.reduceat(values[idx], offsets) if len(idx) else np.zeros(0, np.int64)


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (window, call row) of the ranges [lo, hi), window by window."""
    owner, rank = _ranks(hi - lo)
    return owner, lo[owner] + rank


# -- features ---------------------------------------------------------------------------------


def _name_hashes(names: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash of each call name (the same in every process)."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(str(n).encode(), digest_size=8).digest(), "little")
         for n in names],  # one per distinct name
        dtype=np.uint64,
    )  # fmt: skip


def _quantiles(win: np.ndarray, v: np.ndarray, n_win: int, qs: tuple[float, ...]) -> np.ndarray:
    """Per window: mean, the qs quantiles (linear) and max of its values v (0 where none)."""
    order = np.lexsort((v, win))
    s, w = v[order], win[order]
    m = np.bincount(w, minlength=n_win)
    start = np.cumsum(m) - m
    out = np.zeros((n_win, len(qs) + 2))
    ok = m > 0
    out[ok, 0] = np.bincount(w, weights=s, minlength=n_win)[ok] / m[ok]
    for j, q in enumerate(qs):
        pos = q * (m[ok] - 1)
        below = np.floor(pos).astype(np.int64)
        above = np.minimum(below + 1, m[ok] - 1)
        frac = pos - below
        a, b = s[start[ok] + below], s[start[ok] + above]
        out[ok, j + 1] = a + frac * (b - a)
    out[ok, -1] = s[start[ok] + m[ok] - 1]
    return out


def _gaps(windows: SyscallWindows, win: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per window: mean, p50, p95 and max of ln(1 + µs) between a call's exit and the same
    thread's next call (both in the window), and the share of the threads' time inside calls."""
    c, n_win = windows.calls, windows.n
    prev = c.prev[idx]
    ok = prev >= windows.lo[win]  # the thread's previous call is in the window
    gap = np.maximum(c.time[idx[ok]] - c.end[prev[ok]], 0).astype(np.float64)
    stats = _quantiles(win[ok], np.log1p(gap / 1e3), n_win, (0.5, 0.95))
    inside = np.maximum(c.end[prev[ok]] - c.time[prev[ok]], 0).astype(np.float64)
    busy = np.bincount(win[ok], weights=inside, minlength=n_win)
    idle = np.bincount(win[ok], weights=gap, minlength=n_win)
    return np.column_stack([stats, busy / np.maximum(busy + idle, 1)])


def _call_classes(windows: SyscallWindows, win: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per window and family of calls (CALL_CLASSES): its share of the calls, and the mean
    and p95 of ln(1 + µs) of its calls with an exit."""
    c, n_win, K = windows.calls, windows.n, len(CALL_CLASSES)
    family = np.array([0 if n in WAIT_CALLS else 1 if n in IO_CALLS else 2 for n in c.names],
                      dtype=np.int64)[c.name[idx]]  # fmt: skip
    share = np.bincount(win * K + family, minlength=n_win * K).reshape(n_win, K)
    share = share / np.maximum(share.sum(axis=1), 1)[:, None]
    d = c.log_dur[idx]
    known = np.isfinite(d)
    stats = _quantiles(win[known] * K + family[known], d[known], n_win * K, (0.95,))
    stats = stats[:, :2].reshape(n_win, K, 2)  # mean, p95
    return np.concatenate([share[:, :, None], stats], axis=2).reshape(n_win, 3 * K)


def _returns(windows: SyscallWindows, win: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per window: RETURN_FEATURES (see the module docstring)."""
    c, n_win = windows.calls, windows.n
    r = c.ret[idx]
    has = np.isfinite(r)
    seconds = np.maximum(windows.column("end_ns") - windows.column("start_ns"), 1000) / NS
    cols = []
    for calls in (IN_CALLS, OUT_CALLS):  # two directions
        of = np.array([str(n) in calls for n in c.names], dtype=bool)[c.name[idx]]
        ok = of & has & (r >= 0)
        size = np.log1p(np.where(ok, r, 0))
        stats = _quantiles(win[ok], size[ok], n_win, (0.95,))[:, :2]
        n_ok = np.bincount(win[ok], minlength=n_win)
        zero = np.bincount(win[ok], weights=(r[ok] == 0), minlength=n_win)
        total = np.bincount(win[ok], weights=r[ok], minlength=n_win)
        cols += [stats, (zero / np.maximum(n_ok, 1))[:, None], np.log1p(total / seconds)[:, None]]
    n_ret = np.maximum(np.bincount(win[has], minlength=n_win), 1)
    eagain = np.bincount(win[has], weights=(r[has] == -EAGAIN), minlength=n_win)
    fail = np.bincount(win[has], weights=(r[has] < 0) & (r[has] != -EAGAIN), minlength=n_win)
    return np.column_stack([*cols, eagain / n_ret, fail / n_ret])


@dataclass
class SyscallFeatures:
    """The vocabulary of calls and the feature map of windows (see the module docstring)."""

    max_vocab: int = 64
    width: int = 32
    vocabulary: list[str] = field(default_factory=list)
    timed_calls: int = 8
    timed: list[str] = field(default_factory=list)

    def fit(self, windows: SyscallWindows) -> SyscallFeatures:
        """Learn the vocabulary: the commonest calls of the windows (ties by name), and the
        `timed_calls` commonest of them whose durations are features of their own."""
        _, idx = _expand(windows.lo, windows.hi)
        counts = np.bincount(windows.calls.name[idx], minlength=len(windows.calls.names))
        order = np.lexsort((windows.calls.names.astype(str), -counts))
        order = order[counts[order] > 0][: self.max_vocab]
        self.vocabulary = sorted(str(windows.calls.names[i]) for i in order)
        self.timed = [str(windows.calls.names[i]) for i in order[: self.timed_calls]]
        return self

    @property
    def names(self) -> list[str]:
        """The feature names, in column order."""
        calls = [f"f.{c}" for c in (*self.vocabulary, OTHER)]
        bigrams = [f"g.{k}" for k in range(self.width)]
        timed = [f"k.{c}.d_mean" for c in self.timed]
        return [*calls, *bigrams, *DURATION_FEATURES, *TAIL_FEATURES, *GAP_FEATURES,
                *CLASS_FEATURES, *timed, *RETURN_FEATURES]  # fmt: skip

    def transform(self, windows: SyscallWindows) -> np.ndarray:
        """The feature matrix of the windows."""
        c = windows.calls
        n_win, V = windows.n, len(self.vocabulary)
        win, idx = _expand(windows.lo, windows.hi)
        lens = (windows.hi - windows.lo).astype(np.float64)
        slot = {name: i for i, name in enumerate(self.vocabulary)}
        code = np.array([slot.get(str(n), V) for n in c.names], dtype=np.int64)[c.name]
        freq = np.bincount(win * (V + 1) + code[idx], minlength=n_win * (V + 1))
        freq = freq.reshape(n_win, V + 1) / np.maximum(lens, 1)[:, None]
        return np.hstack([
            freq, self._bigrams(windows, win, idx), self._tail(windows, win, idx, lens),
            _gaps(windows, win, idx), _call_classes(windows, win, idx),
            self._timed(windows, win, idx), _returns(windows, win, idx),
        ])  # fmt: skip

    def _timed(self, windows: SyscallWindows, win: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Mean ln(1 + µs) of each timed call in the window (0 where it has none)."""
        c, n_win, K = windows.calls, windows.n, len(self.timed)
        slot = {name: i for i, name in enumerate(self.timed)}
        code = np.array([slot.get(str(n), -1) for n in c.names], dtype=np.int64)[c.name[idx]]
        d = c.log_dur[idx]
        ok = (code >= 0) & np.isfinite(d)
        cell = win[ok] * K + code[ok]
        total = np.bincount(cell, weights=d[ok], minlength=n_win * K)
        count = np.bincount(cell, minlength=n_win * K)
        return (total / np.maximum(count, 1)).reshape(n_win, K)

    def _bigrams(self, windows: SyscallWindows, win: np.ndarray, idx: np.ndarray) -> np.ndarray:
        c, n_win = windows.calls, windows.n
        h = _name_hashes(c.names)
        prev = c.prev[idx]
        ok = prev >= windows.lo[win]  # the previous call of the thread is in the window
        a, b = h[c.name[prev[ok]]], h[c.name[idx[ok]]]
        bucket = ((a * _MIX) ^ b) % np.uint64(self.width)
        w = win[ok]
        counts = np.bincount(w * self.width + bucket.astype(np.int64), minlength=n_win * self.width)
        total = np.bincount(w, minlength=n_win).astype(np.float64)
        return counts.reshape(n_win, self.width) / np.maximum(total, 1)[:, None]

    def _tail(self, windows: SyscallWindows, win: np.ndarray, idx: np.ndarray, lens: np.ndarray) -> np.ndarray:  # fmt: skip
        c, n_win = windows.calls, windows.n
        d = c.log_dur[idx]
        known = np.isfinite(d)
        stats = _quantiles(win[known], d[known], n_win, (0.5, 0.95))
        r = c.ret[idx]
        has_ret = np.isfinite(r)
        errors = np.bincount(win[has_ret], weights=(r[has_ret] < 0), minlength=n_win)
        with_ret = np.bincount(win[has_ret], minlength=n_win)
        seconds = np.maximum(windows.column("end_ns") - windows.column("start_ns"), 1000) / NS
        return np.column_stack([
            stats, errors / np.maximum(with_ret, 1), np.log1p(lens), np.log1p(lens / seconds),
        ])  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"max_vocab": self.max_vocab, "width": self.width, "vocabulary": self.vocabulary,
                "timed_calls": self.timed_calls, "timed": self.timed}  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SyscallFeatures:
        """The features written by `to_json`."""
        return cls(int(doc["max_vocab"]), int(doc["width"]), [str(v) for v in doc["vocabulary"]],
                   int(doc.get("timed_calls", 0)), [str(v) for v in doc.get("timed", [])])  # fmt: skip
