"""Detection figures against fault labels, as DESIGN.md defines them.

- A fault is *detected* when a finding falls in [start, end + slack] (slack 60 s).
- An *alarm* is what a user would be paged for: the findings of one service grouped into
  one incident while they keep coming (gap under 60 s).
- A *false alarm* is an alarm that starts outside every fault window (+ slack).
- The *trace false-positive rate* is the share of traces outside every fault window (+ slack)
  that were flagged.

Inputs are Arrow tables with the columns of `schema.FINDINGS` and `schema.FAULTS` (only the
columns used are required) and, for the trace rate, a table of the scored traces
(`trace_id`, `start_ns`). Everything is numpy over columns; nothing reads the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SLACK_S = 60.0
ALARM_GAP_S = 60.0
_NS = 1_000_000_000


def _ns(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).to_numpy(zero_copy_only=False).astype(np.int64)


def fault_windows(faults: pa.Table, slack_s: float = SLACK_S) -> tuple[np.ndarray, np.ndarray]:
    """(start, end + slack) of every fault, in ns; the slack stops short of the next
    fault's start (a dense schedule would credit one fault with the next one's findings)."""
    if faults.num_rows == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts, ends = _ns(faults, "start_ns"), _ns(faults, "end_ns")
    later = np.unique(starts)
    k = np.searchsorted(later, starts, side="right")
    nxt = np.where(k < len(later), later[np.minimum(k, len(later) - 1)] - 1, np.iinfo(np.int64).max)
    return starts, np.maximum(ends, np.minimum(ends + int(slack_s * _NS), nxt))


def in_windows(times: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether each time lies in any [start, end] window."""
    times = np.asarray(times, dtype=np.int64)
    if not len(starts) or not len(times):
        return np.zeros(len(times), dtype=bool)
    inside = (times[:, None] >= starts[None, :]) & (times[:, None] <= ends[None, :])
    return inside.any(axis=1)


def detected_faults(findings: pa.Table, faults: pa.Table, slack_s: float = SLACK_S) -> np.ndarray:
    """Whether each fault (in table order) has a finding in [start, end + slack]."""
    starts, ends = fault_windows(faults, slack_s)
    times = _ns(findings, "time_ns") if findings.num_rows else np.zeros(0, dtype=np.int64)
    if not len(times):
        return np.zeros(len(starts), dtype=bool)
    times = np.sort(times)
    first = np.searchsorted(times, starts, side="left")
    return (first < len(times)) & (times[np.minimum(first, len(times) - 1)] <= ends)


def alarms(findings: pa.Table, gap_s: float = ALARM_GAP_S) -> pa.Table:
    """Findings grouped per service into incidents: (service, start_ns, end_ns, findings)."""
    schema = pa.schema(
        [("service", pa.string()), ("start_ns", pa.int64()), ("end_ns", pa.int64()),
         ("findings", pa.int64())]
    )  # fmt: skip
    if findings.num_rows == 0:
        return schema.empty_table()
    service = pc.fill_null(findings.column("service"), "").to_numpy(zero_copy_only=False)
    service = service.astype(str)
    times = _ns(findings, "time_ns")
    order = np.lexsort((times, service))
    service, times = service[order], times[order]
    new = np.ones(len(times), dtype=bool)
    new[1:] = (service[1:] != service[:-1]) | (np.diff(times) >= int(gap_s * _NS))
    first = np.flatnonzero(new)
    last = np.concatenate([first[1:], [len(times)]]) - 1
    out = pa.table(
        {
            "service": service[first],
            "start_ns": times[first],
            "end_ns": times[last],
            "findings": last - first + 1,
        },
        schema=schema,
    )
    return out.sort_by([("start_ns", "ascending"), ("service", "ascending")])


def false_alarms(alarm_table: pa.Table, faults: pa.Table, slack_s: float = SLACK_S) -> int:
    """Alarms that start outside every fault window (+ slack)."""
    if alarm_table.num_rows == 0:
        return 0
    starts, ends = fault_windows(faults, slack_s)
    return int((~in_windows(_ns(alarm_table, "start_ns"), starts, ends)).sum())


def trace_fpr(
    traces: pa.Table, findings: pa.Table, faults: pa.Table, slack_s: float = SLACK_S
) -> tuple[float, int, int]:
    """(rate, flagged, total) over the scored traces outside every fault window (+ slack)."""
    starts, ends = fault_windows(faults, slack_s)
    outside = ~in_windows(_ns(traces, "start_ns"), starts, ends)
    total = int(outside.sum())
    if total == 0:
        return 0.0, 0, 0
    flagged_ids = (
        pc.unique(pc.drop_null(findings.column("trace_id")))
        if findings.num_rows
        else pa.array([], pa.string())
    )
    flagged = pc.is_in(traces.column("trace_id"), value_set=flagged_ids).to_numpy(
        zero_copy_only=False
    )
    n = int((flagged & outside).sum())
    return n / total, n, total


@dataclass
class Summary:
    """The detection figures of one run."""

    faults: int
    detected: int
    fault_recall: float | None
    alarms: int
    false_alarms: int
    hours: float
    false_alarms_per_hour: float | None
    traces: int
    flagged_traces: int
    trace_fpr: float

    def to_json(self) -> dict[str, object]:
        """A JSON-able dict."""
        return dict(self.__dict__)


def summarize(
    findings: pa.Table,
    faults: pa.Table,
    traces: pa.Table,
    start_ns: int,
    end_ns: int,
    slack_s: float = SLACK_S,
) -> Summary:
    """Fault recall, alarms, false alarms and trace FPR over [start_ns, end_ns).

    Only faults, findings and traces inside the period count.
    """

    def within(table: pa.Table, column: str) -> pa.Table:
        if table.num_rows == 0:
            return table
        t = table.column(column)
        mask = pc.and_(pc.greater_equal(t, start_ns), pc.less(t, end_ns))
        return table.filter(mask)

    faults = within(faults, "start_ns")
    findings = within(findings, "time_ns")
    traces = within(traces, "start_ns")
    det = detected_faults(findings, faults, slack_s)
    alarm_table = alarms(findings)
    fa = false_alarms(alarm_table, faults, slack_s)
    rate, flagged, total = trace_fpr(traces, findings, faults, slack_s)
    hours = (end_ns - start_ns) / (3600 * _NS)
    return Summary(
        faults=faults.num_rows,
        detected=int(det.sum()),
        fault_recall=float(det.mean()) if len(det) else None,
        alarms=alarm_table.num_rows,
        false_alarms=fa,
        hours=round(hours, 4),
        false_alarms_per_hour=round(fa / hours, 4) if hours > 0 else None,
        traces=total,
        flagged_traces=flagged,
        trace_fpr=rate,
    )


# -- root-cause accuracy and time to detect (issue 6) -----------------------------------------


def accuracy_at_k(
    ranks: list[int | None], ks: tuple[int, ...] = (1, 3, 5)
) -> dict[str, float | None]:
    """AS@k: the share of faults whose true service (or instance) is ranked in the top k
    (a rank of None: not ranked at all). Keys top1, top3, top5; None without faults."""
    n = len(ranks)
    return {
        f"top{k}": (sum(1 for r in ranks if r is not None and r <= k) / n if n else None)
        for k in ks
    }


def time_to_detect(findings: pa.Table, faults: pa.Table, slack_s: float = SLACK_S) -> np.ndarray:
    """Seconds from each fault's start to its first finding in [start, end + slack]; NaN
    for a fault without one."""
    starts, ends = fault_windows(faults, slack_s)
    out = np.full(len(starts), np.nan)
    if not findings.num_rows or not len(starts):
        return out
    times = np.sort(_ns(findings, "time_ns"))
    first = np.searchsorted(times, starts, side="left")
    ok = first < len(times)
    hit = np.zeros(len(starts), dtype=bool)
    hit[ok] = times[first[ok]] <= ends[ok]
    out[hit] = (times[first[hit]] - starts[hit]) / _NS
    return out


def mean_or_none(values: np.ndarray) -> float | None:
    """Mean of the finite values, or None when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return round(float(v.mean()), 3) if len(v) else None


def trace_prf(
    scored: pa.Array | pa.ChunkedArray,
    flagged: pa.Array | pa.ChunkedArray,
    labelled: pa.Array | pa.ChunkedArray,
) -> dict[str, float]:
    """Per-request precision, recall and F1 over the scored traces: flagged versus
    labelled anomalous (fault_traces)."""
    is_flagged = pc.is_in(scored, value_set=pa.chunked_array([flagged]).combine_chunks())
    is_labelled = pc.is_in(scored, value_set=pa.chunked_array([labelled]).combine_chunks())
    f = np.asarray(is_flagged.to_numpy(zero_copy_only=False), dtype=bool)
    y = np.asarray(is_labelled.to_numpy(zero_copy_only=False), dtype=bool)
    tp = int((f & y).sum())
    precision = tp / int(f.sum()) if f.sum() else 0.0
    recall = tp / int(y.sum()) if y.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
