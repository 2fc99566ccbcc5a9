"""Trace completion: a trace is handed over once its root has arrived and it has been idle;
the others time out or are evicted, so the tracker's state stays bounded."""

from __future__ import annotations

import threading
import time

import pyarrow as pa

from spanomaly.serve.completion import COMPLETED, TraceTracker


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spans(rows: list[tuple[str, str | None, int, int]]) -> pa.Table:
    """(trace_id, parent_id, start_ns, duration_ns) rows as a spans table."""
    trace, parent, start, duration = zip(*rows, strict=True)
    return pa.table(
        {
            "trace_id": pa.array(trace, pa.string()),
            "span_id": pa.array([f"{i:016x}" for i in range(len(rows))]),
            "parent_id": pa.array(parent, pa.string()),
            "start_ns": pa.array(start, pa.int64()),
            "duration_ns": pa.array(duration, pa.int64()),
        }
    )


def test_complete_after_root_and_idle() -> None:
    clock = Clock()
    tracker = TraceTracker(idle_s=5, max_wait_s=60, clock=clock)
    got: list[pa.Table] = []
    tracker.subscribe(got.append)
    tracker.observe(spans([("a", "p1", 110, 5), ("b", None, 200, 50)]))  # a: no root yet
    clock.now += 3
    tracker.observe(spans([("a", None, 100, 30)]))  # a's root arrives
    assert tracker.sweep().num_rows == 0
    clock.now += 2.5  # b idle 5.5 s: complete; a idle 2.5 s: not yet
    done = tracker.sweep()
    assert done.schema == COMPLETED
    assert done.to_pylist() == [
        {
            "trace_id": "b",
            "spans": 1,
            "root": True,
            "start_ns": 200,
            "end_ns": 250,
            "reason": "idle",
        }
    ]
    clock.now += 1
    tracker.observe(spans([("a", "r", 120, 1)]))  # a late child: a waits again
    clock.now += 4.9
    assert tracker.sweep().num_rows == 0
    clock.now += 0.2
    row = tracker.sweep().to_pylist()[0]
    assert row == {
        "trace_id": "a",
        "spans": 3,
        "root": True,
        "start_ns": 100,
        "end_ns": 130,
        "reason": "idle",
    }
    assert [t.num_rows for t in got] == [1, 1]
    assert tracker.open_traces == 0
    assert tracker.delivered["idle"] == 2


def test_a_trace_without_root_times_out() -> None:
    clock = Clock()
    tracker = TraceTracker(idle_s=1, max_wait_s=30, clock=clock)
    tracker.observe(spans([("lost", "p", 1, 1)]))
    for _ in range(29):
        clock.now += 1
        tracker.observe(spans([("lost", "p", 2, 1)]))  # keeps coming, never a root
        assert tracker.sweep().num_rows == 0
    clock.now += 1
    row = tracker.sweep().to_pylist()[0]
    assert (row["trace_id"], row["spans"], row["root"], row["reason"]) == (
        "lost",
        30,
        False,
        "timeout",
    )


def test_state_is_capped_oldest_evicted() -> None:
    clock = Clock()
    tracker = TraceTracker(idle_s=5, max_wait_s=60, max_traces=1000, clock=clock)
    for batch in range(5):
        ids = [f"t{batch}-{i}" for i in range(500)]
        tracker.observe(spans([(t, "p", 1, 1) for t in ids]))
        clock.now += 0.1
        tracker.sweep()
    assert tracker.open_traces == 1000
    assert tracker.delivered["evicted"] == 1500
    # the newest stayed
    tracker.observe(spans([("t4-0", None, 1, 1)]))
    clock.now += 10
    done = tracker.sweep()
    assert "t4-0" in done.filter(pa.compute.equal(done["reason"], "idle"))["trace_id"].to_pylist()


def test_many_spans_are_merged_into_their_traces() -> None:
    """200,000 spans in one batch: each of the 25,000 traces completes once with its 8."""
    tracker = TraceTracker(idle_s=0.01, max_wait_s=60)
    n = 200_000
    table = spans([(f"{i // 8:032x}", None if i % 8 == 0 else "x", i, 10) for i in range(n)])
    tracker.observe(table)
    time.sleep(0.02)
    done = tracker.sweep()
    assert done.num_rows == n // 8
    assert set(done["spans"].to_pylist()) == {8}
    assert tracker.open_traces == 0


def test_background_sweeps_and_flush_on_stop() -> None:
    tracker = TraceTracker(idle_s=0.05, max_wait_s=60)
    got: list[pa.Table] = []
    event = threading.Event()

    def callback(table: pa.Table) -> None:
        got.append(table)
        event.set()

    def broken(table: pa.Table) -> None:
        raise RuntimeError("a subscriber's bug must not stop the others")

    tracker.subscribe(broken)
    tracker.subscribe(callback)
    tracker.start()
    tracker.observe(spans([("done", None, 1, 1)]))
    assert event.wait(5)
    tracker.observe(spans([("open", "p", 1, 1)]))
    tracker.stop(flush=True)
    reasons = {r["trace_id"]: r["reason"] for t in got for r in t.to_pylist()}
    assert reasons == {"done": "idle", "open": "shutdown"}
