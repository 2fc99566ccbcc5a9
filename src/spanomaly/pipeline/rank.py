"""Root-cause ranking of a period: its findings, calls and traffic → ranked suspects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.errors import InputError, ModelError
from spanomaly.pipeline import metrics_only, reads
from spanomaly.pipeline.model_dir import has_trace_model, load_points, point_window_ns
from spanomaly.store.base import Store

RCA_METHODS = ("ranked", "baseline")


def check_choice(evidence: str, method: str) -> None:
    """One-line errors for an unknown --evidence or --method."""
    from spanomaly.rca import ranking

    if method not in RCA_METHODS:
        raise InputError(f"--method: {method!r} is not one of {', '.join(RCA_METHODS)}")
    if evidence not in ranking.EVIDENCE:
        raise InputError(f"--evidence: {evidence!r} is not one of {', '.join(ranking.EVIDENCE)}")


@dataclass
class WindowContext:
    """What the ranking of one period needs besides findings: calls, traffic, events."""

    events: pa.Table
    graph: pa.Table
    traffic: pa.Table


def window_context(store: Store, start_ns: int, end_ns: int) -> WindowContext:
    """The events, the service graph and the requests served per instance of a period."""
    from spanomaly.features.graph import dependency_graph

    events = reads.trace_events(store, start_ns, end_ns)
    graph = dependency_graph(events)
    if graph.num_rows == 0:  # no spans show calls: an imported edge list may
        graph = metrics_only.calls_graph(store)
    if events.num_rows:
        served = events.filter(
            pc.not_equal(events.column("parent_service"), events.column("service"))
        )
        traffic = served.group_by(["service", "instance"]).aggregate([("span_id", "count")])
        traffic = traffic.rename_columns(["service", "instance", "requests"])
    else:
        traffic = pa.table(
            {"service": pa.array([], pa.string()), "instance": pa.array([], pa.string()),
             "requests": pa.array([], pa.int64())}
        )  # fmt: skip
    return WindowContext(events, graph, traffic)


def between(table: pa.Table, lo: int, hi: int, window_ns: int = 0) -> pa.Table:
    """Findings of [lo, hi]; an instance window's finding (timed at the window's end) only
    where most of its window lies after lo: what mostly happened before a period is not
    evidence of it."""
    if table.num_rows == 0:
        return table
    t = table.column("time_ns")
    keep = pc.and_(pc.greater_equal(t, lo), pc.less_equal(t, hi))
    if window_ns:
        windowed = pc.equal(table.column("entity"), "instance")
        early = pc.less(pc.subtract(t, window_ns // 2), lo)
        keep = pc.and_(keep, pc.invert(pc.fill_null(pc.and_(windowed, early), False)))
    return table.filter(keep)


def rank_period(
    store: Store,
    start_ns: int,
    end_ns: int,
    evidence: str,
    method: str,
    model_dir: str | Path | None,
    findings: pa.Table | None = None,
) -> pa.Table:
    """The suspects (rca.ranking.SUSPECTS) of a period, from its findings (read when not
    given) or, with the baseline method, from the self times of its spans."""
    from spanomaly.rca import ranking

    check_choice(evidence, method)
    context = window_context(store, start_ns, end_ns)
    if method == "baseline":
        model = load_points(model_dir) if model_dir is not None else None
        if model is None:
            raise ModelError(
                f"{model_dir}: the baseline needs the self-time profile of a trained model "
                "(spanomaly train)"
            )
        return ranking.baseline(context.events, model.profile_.table())
    if findings is None:
        found = reads.findings_between(store, start_ns, end_ns)
        findings = between(found, start_ns, end_ns, point_window_ns(model_dir))
    model = load_points(model_dir) if model_dir is not None else None
    if model is not None and not has_trace_model(model_dir):  # metrics alone
        findings = metrics_only.period_findings(store, model, start_ns, end_ns, findings)
    return ranking.rank(findings, context.graph, context.traffic, evidence)


def period_or_all(store: Store, start_ns: int | None, end_ns: int | None) -> tuple[int, int]:
    """[start, end) of a period, the store's spans (else its metrics) where a bound is not
    given."""
    lo, hi = reads.span_range(store)
    if lo is None:
        lo, hi = metrics_only.metric_range(store)
    start = start_ns if start_ns is not None else (lo or 0)
    end = end_ns if end_ns is not None else ((hi or 0) + 1)
    if start >= end:
        raise InputError("--from must be before --to")
    return start, end


def rca(
    store: Store,
    start_ns: int | None = None,
    end_ns: int | None = None,
    evidence: str = "both",
    method: str = "ranked",
    model_dir: str | Path | None = None,
    top: int | None = 10,
) -> list[dict[str, object]]:
    """Ranked suspects of the period: rank, service, instance, operation, score, evidence."""
    start, end = period_or_all(store, start_ns, end_ns)
    rows = rank_period(store, start, end, evidence, method, model_dir).to_pylist()
    for r in rows:
        r["evidence"] = json.loads(r["evidence"])
    return rows[:top] if top else rows


def why_empty(
    store: Store, start_ns: int | None, end_ns: int | None, evidence: str = "both"
) -> str:
    """Why the ranking of a period is empty, in one line."""
    start_ns, end_ns = period_or_all(store, start_ns, end_ns)
    from spanomaly.detect.trace_findings import iso

    total = store.sql("SELECT count(*) AS n FROM findings").to_pylist()[0]["n"]
    inside = store.sql(
        "SELECT count(*) AS n FROM findings WHERE time_ns >= ? AND time_ns <= ?",
        [start_ns, end_ns],
    ).to_pylist()[0]["n"]
    period = f"{iso(start_ns)} to {iso(end_ns)}"
    if not total:
        return "the store holds no findings: run spanomaly detect first (with a trained model)"
    if not inside:
        return f"no findings from {period} ({total} elsewhere): detect flagged nothing there"
    return (
        f"none of the {inside} findings from {period} counts as --evidence {evidence} "
        "(or all are marked normal)"
    )
