"""The feature sets of a period, each built once from the store: span events, log events,
instance windows. Training and detection both take what they need from one `PeriodData`.

- `read_period`: the span events of the traces starting in the period (keys as the trace
  model builds them) and, when asked, their log lines;
- `PeriodData.log_events`: those lines as events under some templates (`features.logs`);
- `PeriodData.trace_events`: the events a trace model sees (some traces, their lines
  interleaved);
- `instance_windows`: the windows of each source (RED and log shares from the same
  events and lines, metrics from the store), host metrics told apart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.pipeline import reads
from spanomaly.store.base import Store

if TYPE_CHECKING:
    from spanomaly.features.logs import TemplateMiner
    from spanomaly.features.traces import FeatureConfig
    from spanomaly.features.windows import InstanceWindows, SelfTimeProfile

log = logging.getLogger(__name__)

# log lines must be in this share of the windows where an instance that logs served
# requests for their shares to be window features (a feature missing from most training
# windows would judge every window that has it)
LOG_COVERAGE = 0.9
FAR_PAST, FAR_FUTURE = -(2**62), 2**62


@dataclass
class PeriodData:
    """Span events of the traces starting in a period, and their log lines."""

    events: pa.Table
    lines: pa.Table | None = None  # LOGS columns (trace_logs), None when not read
    _log_rows: tuple[TemplateMiner, pa.Table] | None = field(default=None, repr=False)

    def log_events(self, templates: TemplateMiner) -> pa.Table:
        """The lines as log events (`features.logs.log_events`), built once per templates."""
        from spanomaly.features import logs as log_features

        if self.lines is None:
            raise ValueError("the period's log lines were not read")
        if self._log_rows is None or self._log_rows[0] is not templates:
            self._log_rows = (templates, log_features.log_events(self.lines, templates))
        return self._log_rows[1]

    def between(self, start_ns: int | None, end_ns: int | None) -> PeriodData:
        """The data of the traces that start in [start, end)."""
        events = _traces(self.events, start_ns, end_ns, None)
        lines = self.lines
        if lines is not None:
            lines = lines.filter(pc.is_in(lines.column("trace_id"), value_set=_ids(events)))
        return PeriodData(events, lines)

    def trace_events(
        self,
        templates: TemplateMiner | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        without: pa.Array | None = None,
    ) -> pa.Table:
        """The events of the traces starting in [start, end) (all by default), minus the
        traces `without` names; with templates, their log lines interleaved as events."""
        events = _traces(self.events, start_ns, end_ns, without)
        if templates is None:
            return events
        from spanomaly.features import logs as log_features

        rows = self.log_events(templates)
        rows = rows.filter(pc.is_in(rows.column("trace_id"), value_set=_ids(events)))
        return log_features.interleave(events, log_features.sequence_events(rows))


def _ids(events: pa.Table) -> pa.Array:
    return pc.unique(events.column("trace_id"))


def _traces(
    events: pa.Table, start_ns: int | None, end_ns: int | None, without: pa.Array | None
) -> pa.Table:
    """The events of the traces that start in [start, end) and are not in `without`."""
    if start_ns is None and end_ns is None and (without is None or len(without) == 0):
        return events
    firsts = events.group_by("trace_id", use_threads=False).aggregate([("start_ns", "min")])
    t = firsts.column("start_ns_min")
    keep = pa.array(np.ones(firsts.num_rows, dtype=bool))
    if start_ns is not None:
        keep = pc.and_(keep, pc.greater_equal(t, start_ns))
    if end_ns is not None:
        keep = pc.and_(keep, pc.less(t, end_ns))
    ids = firsts.column("trace_id").filter(keep)
    if without is not None and len(without):
        ids = ids.filter(pc.invert(pc.is_in(ids, value_set=without)))
    return events.filter(pc.is_in(events.column("trace_id"), value_set=ids))


def read_period(
    store: Store,
    start_ns: int | None,
    end_ns: int | None,
    exclude: Iterable[tuple[int, int]] = (),
    config: FeatureConfig | None = None,
    lines: bool = False,
) -> PeriodData:
    """The span events (and, with lines, the log lines) of the traces starting in the
    period, minus those starting in an excluded window."""
    exclude = list(exclude)
    events = reads.trace_events(store, start_ns, end_ns, exclude, config=config)
    body = reads.log_bodies(store, start_ns, end_ns, exclude) if lines else None
    return PeriodData(events, body)


# -- instance windows -------------------------------------------------------------------------


def overlapping(starts: np.ndarray, periods: Iterable[tuple[int, int]], w_ns: int) -> np.ndarray:
    """Whether each window [start, start + w_ns) overlaps any [from, to) of periods."""
    out = np.zeros(len(starts), dtype=bool)
    for lo, hi in periods:
        out |= (starts + w_ns > lo) & (starts < hi)
    return out


def edges(start_ns: int | None, end_ns: int | None) -> list[tuple[int, int]]:
    """The times outside [start, end): windows cut by a period's edge hold a fraction of
    its requests and read as a collapse of traffic, so only whole windows count."""
    out = [(FAR_PAST, start_ns)] if start_ns is not None else []
    return out + ([(end_ns, FAR_FUTURE)] if end_ns is not None else [])


@dataclass
class Windows:
    """The instance windows of a period per source, and what was learnt building them."""

    sources: dict[str, InstanceWindows]
    host_metrics: list[str]
    log_coverage: float | None = None  # share of served windows with log lines, if counted


def instance_windows(
    store: Store,
    data: PeriodData,
    period: tuple[int | None, int | None],
    profile: SelfTimeProfile,
    window_s: float,
    templates: TemplateMiner | None = None,
    drop: Iterable[tuple[int, int]] = (),
) -> Windows:
    """Windows of each source: 'traces' (RED features from the period's events and, with
    templates, the log shares of their lines) and 'metrics'; windows that overlap a period
    of `drop` are left out."""
    from spanomaly.features import windows as win

    red = win.span_windows(data.events, profile, window_s)
    coverage = None
    if templates is not None:
        from spanomaly.features import logs as log_features

        counts = log_features.window_counts(data.log_events(templates), window_s)
        red = log_features.with_window_counts(red, counts)
        coverage = _log_coverage(red, counts)
    metric_table = win.metric_windows(reads.metric_points(store, *period), window_s)
    sources = {"traces": win.combine(red), "metrics": win.combine(metric_table)}
    drop = list(drop)
    if drop:
        w_ns = int(window_s * 1e9)
        sources = {
            k: w if w.n == 0 else w.take(~overlapping(w.column("time_ns"), drop, w_ns))
            for k, w in sources.items()
        }
    return Windows(sources, win.host_metrics(metric_table), coverage)


def _log_coverage(red: pa.Table, counts: pa.Table) -> float:
    """Share of the windows in which an instance that writes lines served requests that
    have its lines too (instances that never log do not count)."""
    writers = pc.unique(counts.column("instance"))
    served = red.filter(
        pc.and_(
            pc.greater(red.column("t.requests_s"), 0),
            pc.is_in(red.column("instance"), value_set=writers),
        )
    )
    if served.num_rows == 0:
        return 0.0
    keys = ["time_ns", "service", "instance"]
    logged = served.select(keys).join(counts.select(keys), keys, join_type="inner")
    return logged.num_rows / served.num_rows


def without_log_features(windows: Windows) -> None:
    """Leave the log shares out of the span windows (in place)."""
    from spanomaly.features.logs import LOG_FEATURES

    w = windows.sources["traces"]
    windows.sources["traces"] = w.select([n for n in w.names if n not in LOG_FEATURES])


def window_labels(w: InstanceWindows, faults: pa.Table, w_ns: int) -> np.ndarray:
    """Per window: the kind of a fault of its instance (or, for a fault that names no
    instance, of its service) that overlaps it, else "normal"."""
    labels = np.full(w.n, "normal", dtype=object)
    start = w.column("time_ns")
    inst, svc = w.column("instance"), w.column("service")
    for f in faults.to_pylist():  # per fault (a few), never per window
        on = inst == f["instance"] if f["instance"] else svc == f["service"]
        labels[on & (start < f["end_ns"]) & (start + w_ns > f["start_ns"])] = f["kind"]
    return labels
