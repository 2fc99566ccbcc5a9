"""Trace completion: which traces are finished enough to score, told to subscribers.

A trace is *complete* when its root span (no parent) has arrived, which for OpenTelemetry
means it has ended, and no new span of it has arrived for ``idle_s`` seconds of server time
(arrival time, so senders' clock skew does not matter). Traces that never get there are let
go too, so the state stays bounded:

- ``timeout``: ``max_wait_s`` seconds after the trace's first span arrived (a lost root, a
  parent in another system, a trace that never ends);
- ``evicted``: more than ``max_traces`` traces open; the longest idle go first;
- ``shutdown``: what is open when the tracker stops (`flush`).

The state is one Arrow table with a row per open trace, merged with the spans observed since
the last sweep by one ``group_by``: no Python per span or per trace. `observe` only appends
the new columns under a lock, so the writer that calls it after each commit never waits.
Subscribers get an Arrow table in the `COMPLETED` schema, in the sweeping thread; they should
hand heavy work to their own queue. A span arriving after its trace was delivered opens the
trace again (it will be delivered again, usually as ``timeout`` with ``root`` false).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

DEFAULT_IDLE_S = 5.0
DEFAULT_MAX_WAIT_S = 300.0
DEFAULT_MAX_TRACES = 200_000

COMPLETED = pa.schema(
    [
        pa.field("trace_id", pa.string(), nullable=False),
        pa.field("spans", pa.int64(), nullable=False),  # spans observed
        pa.field("root", pa.bool_(), nullable=False),  # whether the root span arrived
        pa.field("start_ns", pa.int64()),  # earliest span start
        pa.field("end_ns", pa.int64()),  # latest span end
        pa.field("reason", pa.string(), nullable=False),  # idle|timeout|evicted|shutdown
    ]
)
# one row per open trace (and per observed span before the merge)
_STATE = pa.schema(
    [
        ("trace_id", pa.string()),
        ("spans", pa.int64()),
        ("root", pa.bool_()),
        ("start_ns", pa.int64()),
        ("end_ns", pa.int64()),
        ("first_seen", pa.float64()),
        ("last_seen", pa.float64()),
    ]
)
_AGGREGATES = [
    ("spans", "sum"),
    ("root", "max"),
    ("start_ns", "min"),
    ("end_ns", "max"),
    ("first_seen", "min"),
    ("last_seen", "max"),
]

Callback = Callable[[pa.Table], None]


class TraceTracker:
    """Tracks open traces by arrival time and hands completed ones to subscribers."""

    def __init__(
        self,
        idle_s: float = DEFAULT_IDLE_S,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        max_traces: int = DEFAULT_MAX_TRACES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_wait_s = max(max_wait_s, idle_s)
        self.max_traces = max_traces
        self.clock = clock
        self._callbacks: list[Callback] = []
        self._pending: list[pa.Table] = []
        self._lock = threading.Lock()
        self._sweep_lock = threading.Lock()
        self._state = _STATE.empty_table()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered: dict[str, int] = {"idle": 0, "timeout": 0, "evicted": 0, "shutdown": 0}

    # -- input -----------------------------------------------------------------------------

    def subscribe(self, callback: Callback) -> None:
        """Call callback(table in COMPLETED schema) with each batch of completed traces."""
        self._callbacks.append(callback)

    def observe(self, spans: pa.Table, now: float | None = None) -> None:
        """Note stored spans (columns trace_id, parent_id, start_ns, duration_ns) as arrived."""
        n = spans.num_rows
        if not n:
            return
        seen = pa.repeat(pa.scalar(self.clock() if now is None else now, pa.float64()), n)
        rows = pa.table(
            [
                spans["trace_id"],
                pa.repeat(pa.scalar(1, pa.int64()), n),
                pc.is_null(spans["parent_id"]),
                spans["start_ns"],
                pc.add(spans["start_ns"], spans["duration_ns"]),
                seen,
                seen,
            ],
            schema=_STATE,
        )
        with self._lock:
            self._pending.append(rows)

    # -- output ----------------------------------------------------------------------------

    @property
    def open_traces(self) -> int:
        """Traces tracked after the last sweep."""
        return self._state.num_rows

    def sweep(self, now: float | None = None) -> pa.Table:
        """Merge what arrived, deliver the traces that are done; the delivered table."""
        with self._sweep_lock:
            now = self.clock() if now is None else now
            state = self._merge()
            idle = pc.less_equal(state["last_seen"], now - self.idle_s)
            done = pc.and_(state["root"], idle)
            timeout = pc.and_(
                pc.invert(done), pc.less_equal(state["first_seen"], now - self.max_wait_s)
            )
            parts = [(state.filter(done), "idle"), (state.filter(timeout), "timeout")]
            state = state.filter(pc.invert(pc.or_(done, timeout)))
            if state.num_rows > self.max_traces:
                order = pc.sort_indices(state["last_seen"])
                cut = state.num_rows - self.max_traces
                parts.append((state.take(order[:cut]), "evicted"))
                state = state.take(order[cut:])
            self._state = state
            return self._deliver(parts)

    def flush(self) -> pa.Table:
        """Deliver every open trace (reason 'shutdown') and forget them."""
        with self._sweep_lock:
            state = self._merge()
            self._state = _STATE.empty_table()
            return self._deliver([(state, "shutdown")])

    def _merge(self) -> pa.Table:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return self._state
        merged = pa.concat_tables([self._state, *pending])
        grouped = merged.group_by("trace_id", use_threads=False).aggregate(_AGGREGATES)
        names = {f"{column}_{how}": column for column, how in _AGGREGATES}
        grouped = grouped.rename_columns([names.get(c, c) for c in grouped.column_names])
        return grouped.select(_STATE.names).cast(_STATE)

    def _deliver(self, parts: list[tuple[pa.Table, str]]) -> pa.Table:
        tables = []
        for table, reason in parts:
            if not table.num_rows:
                continue
            self.delivered[reason] += table.num_rows
            reasons = pa.repeat(pa.scalar(reason, pa.string()), table.num_rows)
            tables.append(table.select(COMPLETED.names[:-1]).append_column("reason", reasons))
        out = pa.concat_tables(tables).cast(COMPLETED) if tables else COMPLETED.empty_table()
        if out.num_rows:
            for callback in self._callbacks:
                try:
                    callback(out)
                except Exception:
                    log.exception("trace completion callback %r failed", callback)
        return out

    # -- background sweeping ---------------------------------------------------------------

    def start(self, interval_s: float | None = None) -> None:
        """Sweep in a background thread every interval_s seconds (default: idle_s / 5)."""
        if self._thread is not None:
            return
        interval = interval_s or min(max(self.idle_s / 5, 0.05), 1.0)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="spanomaly-completion", daemon=True
        )
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except Exception:
                log.exception("trace completion sweep failed")

    def stop(self, flush: bool = True) -> None:
        """Stop the background thread; deliver what is open when flush is true."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if flush:
            self.flush()
