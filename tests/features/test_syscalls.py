"""System-call windows: by calls and by time, per thread and per instance; the features
exact on a tiny table."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from spanomaly.errors import InputError
from spanomaly.features.syscalls import (
    OTHER,
    SyscallFeatures,
    WindowSpec,
    call_windows,
    parse_extent,
    run_of,
)
from spanomaly.schema import arrow_schema


def tiny() -> pa.Table:
    """Two threads of one instance; thread 1: read write read futex read, thread 2: read
    epoll_wait (the rows out of order on purpose)."""
    rows = [
        (50, 5000, "read", 3, 1), (10, 1000, "read", 1, 1), (20, 2000, "write", -11, 1),
        (30, None, "read", None, 1), (40, 4000, "futex", 0, 1), (15, 1000, "read", 0, 2),
        (25, 1000, "epoll_wait", 0, 2),
    ]  # fmt: skip
    n = len(rows)
    return pa.table(
        {
            "time_ns": [r[0] for r in rows],
            "duration_ns": [r[1] for r in rows],
            "name": [r[2] for r in rows],
            "ret": [r[3] for r in rows],
            "pid": [7] * n,
            "tid": [r[4] for r in rows],
            "process": ["app"] * n,
            "cpu": [None] * n,
            "service": ["svc"] * n,
            "instance": ["svc-1"] * n,
            "source": ["runs/r1/syscalls/svc@svc-1.strace"] * n,
        },
        schema=arrow_schema("syscalls"),
    )


def ld(us: float) -> float:
    return math.log1p(us)


def test_windows_by_calls_per_thread() -> None:
    w = call_windows(tiny(), WindowSpec(3, 2, "calls", "thread"))
    keys = w.keys.to_pylist()
    # thread 1 has 5 calls: windows at calls 0-2 and 2-4; thread 2 has 2 < 3: none
    assert [(k["thread"], k["start_ns"], k["end_ns"]) for k in keys] == [(1, 10, 2020), (1, 30, 5050)]  # fmt: skip
    assert {k["run"] for k in keys} == {"runs/r1/syscalls"}
    assert {(k["service"], k["instance"]) for k in keys} == {("svc", "svc-1")}
    f = SyscallFeatures(width=4).fit(w)
    assert f.vocabulary == ["futex", "read", "write"]  # epoll_wait is in no window
    X = f.transform(w)
    col = {n: X[:, i] for i, n in enumerate(f.names)}
    assert col["f.read"] == pytest.approx([2 / 3, 2 / 3])
    assert col["f.write"] == pytest.approx([1 / 3, 0])
    assert col["f.futex"] == pytest.approx([0, 1 / 3])
    assert col[f"f.{OTHER}"] == pytest.approx([0, 0])
    # two bigrams per window, their shares sum to one
    g = X[:, [i for i, n in enumerate(f.names) if n.startswith("g.")]]
    assert g.sum(axis=1) == pytest.approx([1, 1])
    # window 1: durations 1 and 2 µs (the third call has no exit); window 2: 4 and 5 µs
    first = [ld(1), ld(2)]
    assert col["d.mean"][0] == pytest.approx(np.mean(first))
    assert col["d.p50"][0] == pytest.approx(np.quantile(first, 0.5))
    assert col["d.p95"][0] == pytest.approx(np.quantile(first, 0.95))
    assert col["d.max"] == pytest.approx([ld(2), ld(5)])
    assert col["e.error_share"] == pytest.approx([0.5, 0.0])  # write's -11 among 2 returns
    assert col["r.log_calls"] == pytest.approx([math.log(4)] * 2)
    assert col["r.log_rate"][0] == pytest.approx(math.log1p(3 / (2010 / 1e9)))


def test_windows_by_calls_per_instance_interleave_threads() -> None:
    w = call_windows(tiny(), WindowSpec(4, 4, "calls", "instance"))
    assert w.column("thread").tolist() == [None]
    assert (w.column("start_ns").tolist(), w.column("end_ns").tolist()) == ([10], [2020])
    f = SyscallFeatures(width=4).fit(w)
    X = f.transform(w)
    col = {n: X[0, i] for i, n in enumerate(f.names)}
    # calls 10 (t1 read), 15 (t2 read), 20 (t1 write), 25 (t2 epoll_wait)
    assert col["f.read"] == pytest.approx(0.5) and col["f.epoll_wait"] == pytest.approx(0.25)
    g = X[0, [i for i, n in enumerate(f.names) if n.startswith("g.")]]
    assert g.sum() == pytest.approx(1.0)  # read->write (t1) and read->epoll_wait (t2)
    assert g.max() in (pytest.approx(0.5), pytest.approx(1.0))


def test_windows_by_time_per_thread_and_per_instance() -> None:
    w = call_windows(tiny(), WindowSpec(20, 10, "time", "thread"))
    rows = list(zip(w.column("thread"), w.column("start_ns"), w.hi - w.lo, strict=True))
    # the instance's calls span 10..50, so windows start at 10, 20, 30 (end 30, 40, 50);
    # thread 1 (calls at 10..50) has two calls in each; thread 2 (15, 25) two, one, none
    assert rows == [(1, 10, 2), (1, 20, 2), (1, 30, 2), (2, 10, 2), (2, 20, 1)]
    assert (w.column("end_ns") - w.column("start_ns") == 20).all()
    w = call_windows(tiny(), WindowSpec(20, 10, "time", "instance", min_calls=3))
    assert list(zip(w.column("start_ns"), w.hi - w.lo, strict=True)) == [(10, 4), (20, 3)]
    X = SyscallFeatures(width=4).fit(w).transform(w)
    # epoll_wait read write <other>, bigrams, durations and the rest, gaps, call families,
    # the three calls' own durations, return values
    assert X.shape == (2, 4 + 4 + 7 + 5 + 9 + 3 + 10)


def test_return_values_per_direction_and_error() -> None:
    w = call_windows(tiny(), WindowSpec(7, 7, "calls", "instance"))
    f = SyscallFeatures(width=4).fit(w)
    col = {n: v for n, v in zip(f.names, f.transform(w)[0], strict=True)}
    # reads returned 1, 0 and 3 bytes (one unfinished); the one write -EAGAIN
    assert col["v.in.bytes_mean"] == pytest.approx(math.log(8) / 3)
    assert col["v.in.bytes_p95"] == pytest.approx(math.log(2) + 0.9 * math.log(2))
    assert col["v.in.zero_share"] == pytest.approx(1 / 3)
    assert col["v.in.rate"] == pytest.approx(math.log1p(4 / 5040e-9))
    assert [col[f"v.out.{s}"] for s in ("bytes_mean", "zero_share", "rate")] == [0, 0, 0]
    assert col["v.eagain_share"] == pytest.approx(1 / 6) and col["v.fail_share"] == 0


def test_unseen_calls_fall_in_the_other_slot() -> None:
    spec = WindowSpec(2, 1, "calls", "thread")
    w = call_windows(tiny(), spec)
    f = SyscallFeatures(max_vocab=1, width=2).fit(w)
    assert f.vocabulary == ["read"]
    X = f.transform(w)
    assert X[:, 0] + X[:, 1] == pytest.approx(np.ones(w.n))
    again = SyscallFeatures.from_json(f.to_json())
    assert np.array_equal(again.transform(w), X)


def test_time_windows_lie_within_the_recording() -> None:
    # a window lies within the recording, from its first call to its last: the instance's
    # calls span 10..50, so 10, 20 and 30 start windows, 0 and 40 do not
    w = call_windows(tiny(), WindowSpec(20, 10, "time", "instance"))
    assert w.column("start_ns").tolist() == [10, 20, 30]
    assert call_windows(tiny(), WindowSpec(50, 10, "time", "instance")).n == 0


def test_row_order_does_not_change_the_windows() -> None:
    t = tiny()
    spec = WindowSpec(2, 1, "calls", "thread")
    a = call_windows(t, spec)
    b = call_windows(t.take(pa.array(np.arange(t.num_rows)[::-1])), spec)
    f = SyscallFeatures(width=8).fit(a)
    assert a.keys.equals(b.keys)
    assert np.array_equal(f.transform(a), f.transform(b))


def test_options_parse_and_fail_in_one_line() -> None:
    assert parse_extent("200", "--length") == (200, "calls")
    assert parse_extent("2s", "--length") == (2 * 10**9, "time")
    assert parse_extent("500ms", "--stride") == (5 * 10**8, "time")
    assert WindowSpec.parse("200") == WindowSpec(200, 100, "calls", "thread")
    for args, what in ((("2s", "100"), "--stride"), (("x",), "--length"),
                       (("1.5",), "whole"), (("10", None, "pod"), "--by")):  # fmt: skip
        with pytest.raises(InputError, match=what) as err:
            WindowSpec.parse(*args)
        assert "\n" not in str(err.value)


def test_the_run_is_the_source_folder() -> None:
    assert run_of("runs/r1/syscalls/a@b.strace") == "runs/r1/syscalls"
    assert run_of("trace.strace") == "trace.strace"
    assert run_of(None) == ""


def test_gaps_between_calls_and_call_families() -> None:
    rows = [(0, 1000, "read"), (3000, 2000, "futex"), (10000, 1000, "write")]  # one thread
    t = tiny().slice(0, 3)
    t = t.set_column(0, "time_ns", pa.array([r[0] for r in rows], pa.int64()))
    t = t.set_column(1, "duration_ns", pa.array([r[1] for r in rows], pa.int64()))
    t = t.set_column(2, "name", pa.array([r[2] for r in rows]))
    t = t.set_column(5, "tid", pa.array([1, 1, 1], pa.int64()))
    w = call_windows(t, WindowSpec(3, 3, "calls", "instance"))
    f = SyscallFeatures(width=2, timed_calls=2).fit(w)
    assert f.timed == ["futex", "read"]  # one call each: ties by name
    col = dict(zip(f.names, f.transform(w)[0], strict=True))
    gaps = [ld(2), ld(5)]  # 3000 - 1000 and 10000 - 5000 ns
    assert col["t.gap_mean"] == pytest.approx(np.mean(gaps))
    assert col["t.gap_p50"] == pytest.approx(np.quantile(gaps, 0.5))
    assert col["t.gap_max"] == pytest.approx(ld(5))
    assert col["t.busy_share"] == pytest.approx(3000 / 10000)  # inside read and futex
    assert col["c.wait.share"] == pytest.approx(1 / 3) and col["c.io.share"] == pytest.approx(2 / 3)
    assert col["c.wait.d_mean"] == pytest.approx(ld(2)) and col["c.io.d_mean"] == pytest.approx(
        ld(1)
    )
    assert col["c.other.share"] == 0 and col["c.other.d_mean"] == 0
    assert col["k.futex.d_mean"] == pytest.approx(ld(2)) and col["k.read.d_mean"] == pytest.approx(
        ld(1)
    )
    again = SyscallFeatures.from_json(f.to_json())
    assert again.timed == f.timed and np.array_equal(again.transform(w), f.transform(w))
