"""Trace findings: which event of an anomalous trace is named, what it blames, and the
explanation a finding carries (the reason line and its details).

A trace's explanation names one event, the *primary* one: for the sequence detector the
first deviating event (everything after it may be a consequence), for the duration detector
the event furthest above its normal range; a rule (unknown key, impossible transition) or
the larger score relative to its threshold decides between the two. The finding carries the
event's span, the service and instance it blames (for a client span the callee, whose network
the call's own time measures), the observed key and the expected keys with their
probabilities, and observed versus expected duration and self time. The loops here run per
flagged trace (findings are few), never per span.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.detect.trace import REASON_TEXT, EventScores, Reason, TraceDetector, segment_argmax
from spanomaly.features.traces import Sequences
from spanomaly.schema import FINDINGS
from spanomaly.timeparse import iso

TOP_EXPECTED = 5
LOG_KEY_PREFIX = "log | "  # event keys of log lines (spanomaly.features.logs)
MAX_LISTED_EVENTS = 10
MAX_DEPTH = 512  # of a span tree (as features.traces orders it)
EVENT_COLUMNS = (
    "span_id", "service", "instance", "operation", "key", "parent_service", "blame_service",
    "blame_instance", "start_ns", "duration_ns", "self_ns",
)  # fmt: skip


def finding_id(trace_id: str) -> str:
    """Stable id of the finding of a trace: re-running detect stores it once."""
    return hashlib.sha1(f"trace:{trace_id}".encode()).hexdigest()[:16]


@dataclass
class TraceResult:
    """Scores and decisions per trace, and the findings of the anomalous ones."""

    trace_ids: np.ndarray
    start_ns: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # score / threshold per role
    flagged: dict[str, np.ndarray] = field(default_factory=dict)
    findings: pa.Table = field(default_factory=FINDINGS.empty_table)

    @property
    def anomalous(self) -> np.ndarray:
        """Whether each trace is flagged by any detector."""
        out = np.zeros(len(self.trace_ids), dtype=bool)
        for f in self.flagged.values():
            out |= f
        return out

    @property
    def score(self) -> np.ndarray:
        """The trace score: the largest of the detectors' score / threshold (> 1: anomalous)."""
        out = np.zeros(len(self.trace_ids))
        for s in self.scores.values():
            out = np.maximum(out, s)
        return out


@dataclass
class _Scored:
    """What the explanation of every flagged trace of one batch reads."""

    detectors: dict[str, TraceDetector]
    tokens: list[str]
    data: Sequences
    result: TraceResult
    per_event: dict[str, EventScores]
    col: dict[str, np.ndarray]
    primary: dict[str, tuple[np.ndarray, np.ndarray]]
    is_log: np.ndarray
    serious: np.ndarray  # warning or error log lines
    expected: dict[int, list[tuple[int, float]]]


def trace_findings(
    detectors: dict[str, TraceDetector],
    tokens: list[str],
    data: Sequences,
    result: TraceResult,
    per_event: dict[str, EventScores],
) -> pa.Table:
    """A finding (FINDINGS rows) with its explanation per anomalous trace of a batch."""
    flagged = np.flatnonzero(result.anomalous)
    if not len(flagged) or data.events is None:
        return FINDINGS.empty_table()
    ev_tab = data.events
    col = {name: ev_tab.column(name).to_numpy(zero_copy_only=False) for name in EVENT_COLUMNS}
    primary = _primary(detectors, data, per_event)
    # log-line events (features.logs): a deviation among them is weaker evidence of
    # where a trace lost time than the duration detector's measured excess
    is_log = pc.starts_with(ev_tab.column("key"), LOG_KEY_PREFIX).to_numpy(zero_copy_only=False)
    warned = pc.match_substring(ev_tab.column("key"), " | WARN | ").to_numpy(zero_copy_only=False)
    serious = is_log & (_error_lines(data) | warned)
    expected = _expected_keys(detectors, data, result, per_event, primary, flagged)
    s = _Scored(detectors, tokens, data, result, per_event, col, primary, is_log, serious, expected)
    rows = [row for t in flagged.tolist() if (row := _finding(s, t)) is not None]
    return pa.Table.from_pylist(rows, schema=FINDINGS)


def _expected_keys(
    detectors: dict[str, TraceDetector],
    data: Sequences,
    result: TraceResult,
    per_event: dict[str, EventScores],
    primary: dict[str, tuple[np.ndarray, np.ndarray]],
    flagged: np.ndarray,
) -> dict[int, list[tuple[int, float]]]:
    """Expected keys at the sequence detector's primary position, in one batch."""
    if per_event.get("sequence") is None:
        return {}
    idx, _ = primary["sequence"]
    sel = flagged[result.flagged["sequence"][flagged]]
    pos = np.where(idx[sel] >= 0, idx[sel] - data.offsets[sel], data.lengths[sel])
    lists = detectors["sequence"].expected(data, sel, pos, TOP_EXPECTED)  # type: ignore[attr-defined]
    return dict(zip(sel.tolist(), lists, strict=True))


def _finding(s: _Scored, t: int) -> dict[str, Any] | None:
    """The finding of flagged trace t (None for an empty trace)."""
    data, result, col = s.data, s.result, s.col
    lo, hi = int(data.offsets[t]), int(data.offsets[t + 1])
    roles = [r for r in s.detectors if result.flagged[r][t]]
    choice = _choose(s.detectors, roles, t, s.primary, s.per_event, data, s.is_log)
    ev_scores = s.per_event[choice]
    e_idx = int(s.primary[choice][0][t])
    at_end = e_idx < 0  # the sequence detector's end: name the last event
    e = hi - 1 if at_end else e_idx
    if e < lo:  # an empty trace: nothing to name
        return None
    # a span event that deviates right after a warning or error line: the flow of the span
    # that wrote the line changed there, so its service and instance are blamed rather than
    # (for a client span) the callee
    after_line = choice == "sequence" and e > lo and s.serious[e - 1] and not s.is_log[e]
    b = e - 1 if after_line else e
    det = s.detectors[choice]
    reason = Reason(int(ev_scores.reason[e]) if not at_end else int(_end_reason(ev_scores, t)))
    details: dict[str, Any] = {
        "trace_id": result.trace_ids[t],
        "detector": det.name,
        "reason": REASON_TEXT[reason],
        "event": _event_doc(col, e, lo),
        "at_end": at_end,
        "blame": {"service": col["blame_service"][b], "instance": col["blame_instance"][b]},
        "scores": {r: round(float(result.scores[r][t]), 4) for r in s.detectors},
        "sequence": _sequence_doc(s, t, lo, hi),
        "duration": _duration_doc(s, t, lo, hi),
    }
    details["anomalous_events"] = _listed(s.per_event, s.detectors, lo, hi, col)
    seq = s.per_event.get("sequence")
    if choice == "sequence" and seq is not None:
        details["log_flow_only"] = _log_flow_only(s.detectors, seq, s.is_log, s.serious, t, lo, hi)
    return {
        "finding_id": finding_id(str(result.trace_ids[t])),
        "time_ns": int(col["start_ns"][e]),
        "detector": f"{choice}:{det.name}",
        "entity": "trace",
        "trace_id": str(result.trace_ids[t]),
        "span_id": col["span_id"][e],
        "service": col["blame_service"][b],
        "instance": col["blame_instance"][b],
        "operation": col["operation"][e],
        # a rule (unknown key, impossible transition) flags whatever the score
        "score": round(max(float(result.score[t]), 1.0), 6),
        "threshold": 1.0,
        "reason": _reason_line(reason, details, at_end),
        "details": json.dumps(details, default=json_default),
        "feedback": None,
    }


def _event_doc(col: dict[str, np.ndarray], e: int, lo: int) -> dict[str, Any]:
    return {
        "index": e - lo,
        "span_id": col["span_id"][e],
        "service": col["service"][e],
        "instance": col["instance"][e],
        "operation": col["operation"][e],
        "key": col["key"][e],
        "parent_service": col["parent_service"][e],
        "start": iso(int(col["start_ns"][e])),
        "duration_ms": round(col["duration_ns"][e] / 1e6, 3),
        "self_ms": round(col["self_ns"][e] / 1e6, 3),
    }


def _sequence_doc(s: _Scored, t: int, lo: int, hi: int) -> dict[str, Any] | None:
    """What the sequence detector saw at its primary event (None where it did not flag)."""
    seq = s.per_event.get("sequence")
    if seq is None or t not in s.expected:
        return None
    col = s.col
    si = int(s.primary["sequence"][0][t])
    s_end = si < 0
    s_e = hi - 1 if s_end else si
    logp = float(seq.extra["end_logp"][t] if s_end else seq.extra["logp"][s_e])
    # the key before the deviation: the last event for the end, else the previous
    before = s_e if s_end else s_e - 1
    return {
        "detector": s.detectors["sequence"].name,
        "event_index": (hi - lo) if s_end else s_e - lo,
        "observed": "<end>" if s_end else col["key"][s_e],
        "previous": col["key"][before] if before >= lo else "<start>",
        "p": float(np.exp(logp)),
        "rank": int(seq.extra["end_rank"][t] if s_end else seq.extra["rank"][s_e]),
        "expected": [{"key": s.tokens[k], "p": round(p, 6)} for k, p in s.expected[t]],
        "threshold_p": float(np.exp(-s.detectors["sequence"].threshold_)),
    }


def _duration_doc(s: _Scored, t: int, lo: int, hi: int) -> dict[str, Any] | None:
    """Observed and normal times of the duration detector's event (None: no excess)."""
    dur = s.per_event.get("duration")
    if dur is None or not dur.score[lo:hi].max() > 0:
        return None
    col = s.col
    di = int(s.primary["duration"][0][t])
    d_e = di if di >= 0 else int(lo + np.argmax(dur.score[lo:hi]))
    x = dur.extra
    return {
        "detector": s.detectors["duration"].name,
        "event_index": d_e - lo,
        "span_id": col["span_id"][d_e],
        "duration_ms": round(col["duration_ns"][d_e] / 1e6, 3),
        "normal_duration_ms": _ms(x["normal_duration_ms"][d_e]),
        "upper_duration_ms": _ms(x["upper_duration_ms"][d_e]),
        "self_ms": round(col["self_ns"][d_e] / 1e6, 3),
        "normal_self_ms": _ms(x["normal_self_ms"][d_e]),
        "upper_self_ms": _ms(x["upper_self_ms"][d_e]),
        "excess_ms": _ms(dur.score[d_e]),
        "trace_excess_ms": _ms(dur.score[lo:hi].sum()),
        "threshold_ms": _ms(s.detectors["duration"].threshold_),
    }


def _primary(
    detectors: dict[str, TraceDetector], data: Sequences, per_event: dict[str, EventScores]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per role: the primary event of every trace (-1 if none) and its ratio."""
    out = {}
    for role, ev in per_event.items():
        det = detectors[role]
        ratio = ev.score / det.threshold_
        anomalous = det.event_flags(ev)
        if role == "sequence":
            # the first deviating event; the end when only the end deviates. A
            # deviating error-level log line says where a failure was caught: one of
            # them is named. Errors travel up the call tree (a failed call fails its
            # callers, and each may log it again), so the deepest deviating error line
            # is named (the first of the deepest); where deviating spans are errors and
            # no line is, the last of them (the deepest) is named.
            lines = _error_lines(data)
            weight = anomalous.astype(np.float64)
            on = anomalous & lines
            if on.any():
                depth = span_depth(data)
                weight[on] = 2.0 + depth[on] / (float(depth[on].max()) + 1.0)
            idx = segment_argmax(weight, data.offsets)
            has = np.zeros(data.n_traces, dtype=bool)
            ok = idx >= 0
            has[ok] = anomalous[idx[ok]]
            idx = np.where(has, idx, -1)
            on_line = np.zeros(data.n_traces, dtype=bool)
            on_line[has] = lines[idx[has]]
            err_idx = _last_error(data, anomalous)
            idx = np.where((err_idx >= 0) & ~on_line, err_idx, idx)
        else:
            idx = segment_argmax(np.where(anomalous, ratio, -np.inf), data.offsets)
        r = np.where(idx >= 0, ratio[np.maximum(idx, 0)] if len(ratio) else 0.0, 0.0)
        out[role] = (idx, r)
    return out


def _last_error(data: Sequences, anomalous: np.ndarray) -> np.ndarray:
    """Per trace, the last deviating event whose status is an error (-1 if none)."""
    if data.events is None or "status_class" not in data.events.column_names:
        return np.full(data.n_traces, -1, dtype=np.int64)
    err = np.asarray(
        pc.equal(data.events.column("status_class"), "error")
        .fill_null(False)
        .to_numpy(zero_copy_only=False),
        dtype=bool,
    )
    pos = np.arange(len(anomalous), dtype=np.float64)
    last = segment_argmax(np.where(anomalous & err, pos, -1.0), data.offsets)
    ok = last >= 0
    hit = np.zeros(data.n_traces, dtype=bool)
    hit[ok] = (anomalous & err)[last[ok]]
    return np.where(hit, last, -1)


def _choose(
    detectors: dict[str, TraceDetector],
    roles: list[str],
    t: int,
    primary: dict[str, tuple[np.ndarray, np.ndarray]],
    per_event: dict[str, EventScores],
    data: Sequences,
    is_log: np.ndarray,
) -> str:
    if len(roles) == 1:
        return roles[0]
    seq = per_event["sequence"]
    lo, hi = data.offsets[t], data.offsets[t + 1]
    if _about_logs(detectors, seq, is_log, lo, hi):
        return "duration"
    if seq.rule[lo:hi].any() or seq.end_rule[t]:
        return "sequence"
    seq_ratio = max(
        float(primary["sequence"][1][t]),
        float(seq.end_score[t]) / detectors["sequence"].threshold_,
    )
    return "sequence" if seq_ratio >= float(primary["duration"][1][t]) else "duration"


def _about_logs(
    detectors: dict[str, TraceDetector], seq: EventScores, is_log: np.ndarray, lo: int, hi: int
) -> bool:
    """Whether the sequence deviations of a trace all concern log-line events (the
    deviating event or the one before it is a log line): then, when the duration
    detector flags the trace too, its measured excess explains it better."""
    if not is_log[lo:hi].any():
        return False
    flags = detectors["sequence"].event_flags(seq)[lo:hi]
    idx = np.flatnonzero(flags) + lo
    if not len(idx):
        return False
    before = np.maximum(idx - 1, lo)
    return bool(np.all(is_log[idx] | (is_log[before] & (idx > lo))))


def _log_flow_only(
    detectors: dict[str, TraceDetector],
    seq: EventScores,
    is_log: np.ndarray,
    serious: np.ndarray,
    t: int,
    lo: int,
    hi: int,
) -> bool:
    """Whether a trace's sequence deviations only reorder known, ordinary log lines: each
    deviation concerns a log line (as `_about_logs`), none is a warning or error line,
    an unknown key or the trace's end. Such a deviation says the flow of log lines
    changed, not where the trace failed or lost time."""
    if not _about_logs(detectors, seq, is_log, lo, hi):
        return False
    det = detectors["sequence"]
    if seq.end_rule[t] or seq.end_score[t] > det.threshold_:
        return False
    idx = np.flatnonzero(det.event_flags(seq)[lo:hi]) + lo
    before = np.maximum(idx - 1, lo)
    return not (
        serious[idx].any()
        or (serious[before] & (idx > lo)).any()
        or (seq.reason[idx] == Reason.UNKNOWN).any()
    )


def span_depth(data: Sequences) -> np.ndarray:
    """Per event: its depth in its trace's span tree (a root 0, a log line one below its
    own span's event); an event whose parent is not among the trace's spans counts as a
    root."""
    ev = data.events
    depth = np.zeros(data.n_events, dtype=np.int64)
    if ev is None or not data.n_events:
        return depth
    is_log = pc.starts_with(ev.column("key"), LOG_KEY_PREFIX).to_numpy(zero_copy_only=False)
    tid = pc.cast(ev.column("trace_id"), pa.string())
    own = pc.binary_join_element_wise(tid, pc.fill_null(ev.column("span_id"), ""), "\x1f")
    up = pc.binary_join_element_wise(tid, pc.fill_null(ev.column("parent_id"), ""), "\x1f")
    spans = np.flatnonzero(~is_log)
    keys = pc.take(own, pa.array(spans, pa.int64()))
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    idx = pc.index_in(up, value_set=keys)
    found = pc.is_valid(idx).to_numpy(zero_copy_only=False)
    pos = pc.fill_null(idx, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    parent = np.where(found, spans[pos] if len(spans) else -1, -1)
    parent[parent == np.arange(len(parent))] = -1  # a span that names itself its parent
    cur = parent
    for _ in range(MAX_DEPTH):  # one step up the tree for every event at once
        has = cur >= 0
        if not has.any():
            break
        depth += has
        cur = np.where(has, parent[np.maximum(cur, 0)], -1)
    return depth


def _error_lines(data: Sequences) -> np.ndarray:
    """Per event: whether it is an error-level log line (features.logs)."""
    ev = data.events
    if ev is None or "status_class" not in ev.column_names:
        return np.zeros(data.n_events, dtype=bool)
    is_log = pc.starts_with(ev.column("key"), LOG_KEY_PREFIX)
    is_error = pc.equal(ev.column("status_class"), "error")
    return pc.and_(is_log, is_error).to_numpy(zero_copy_only=False).astype(bool)


def _end_reason(ev: EventScores, t: int) -> Reason:
    reason = Reason.EARLY_END
    if ev.end_rule[t]:
        reason = Reason.IMPOSSIBLE
    return reason


def _listed(
    per_event: dict[str, EventScores],
    detectors: dict[str, TraceDetector],
    lo: int,
    hi: int,
    col: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """The anomalous events of one trace, most deviating first (at most MAX_LISTED_EVENTS)."""
    out = []
    for role, ev in per_event.items():
        thr = detectors[role].threshold_
        s = ev.score[lo:hi]
        hit = np.flatnonzero(detectors[role].event_flags(ev)[lo:hi])
        for i in hit[np.argsort(-s[hit], kind="stable")][:MAX_LISTED_EVENTS]:
            e = lo + int(i)
            out.append(
                {
                    "index": int(i),
                    "span_id": col["span_id"][e],
                    "service": col["blame_service"][e],
                    "operation": col["operation"][e],
                    "detector": detectors[role].name,
                    "reason": REASON_TEXT[Reason(int(ev.reason[e]))],
                    "score": round(float(s[i] / thr), 4),
                }
            )
    out.sort(key=lambda d: -d["score"])
    return out[:MAX_LISTED_EVENTS]


def _reason_line(reason: Reason, details: dict[str, Any], at_end: bool) -> str:
    ev = details["event"]
    what = f"{ev['service']} {ev['operation']}"
    seq = details.get("sequence")
    dur = details.get("duration")
    if reason in (Reason.SLOW, Reason.SLOW_SELF) and dur is not None:
        blame = details["blame"]["service"]
        where = f" (blames {blame})" if blame and blame != ev["service"] else ""
        if reason == Reason.SLOW_SELF:
            return (
                f"slow self time of {what}: {dur['self_ms']:.1f} ms, normal "
                f"{dur['normal_self_ms']:.1f} ms (up to {dur['upper_self_ms']:.1f}){where}"
            )
        return (
            f"slow span {what}: {dur['duration_ms']:.1f} ms, normal "
            f"{dur['normal_duration_ms']:.1f} ms (up to {dur['upper_duration_ms']:.1f}){where}"
        )
    top = ""
    if seq is not None and seq["expected"]:
        best = seq["expected"][0]
        top = f"; expected {best['key']} (p={best['p']:.2f})"
    if at_end:
        if reason == Reason.IMPOSSIBLE:
            return f"impossible transition: no trace ended after {what}{top}"
        return f"trace ended early after {what}{top}"
    if reason == Reason.UNKNOWN:
        return f"unknown event {ev['key']}"
    if reason == Reason.MISSING_LINES:
        return f"log lines missing: {what} wrote fewer lines than any normal span of its kind"
    if reason == Reason.IMPOSSIBLE and seq is not None:
        return f"impossible transition {seq['previous']} -> {ev['key']}"
    p = f" (p={seq['p']:.2g})" if seq is not None else ""
    return f"unexpected event {what}{p}{top}"


def _ms(value: float) -> float:
    return round(float(value), 3)


def json_default(value: Any) -> Any:
    """numpy scalars and arrays as JSON values."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
