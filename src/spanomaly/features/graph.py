"""The service dependency graph: who calls whom, from the events of traces.

An edge caller -> callee counts the spans of `callee` whose parent span runs in `caller`
(a call across services). Instance-level edges name the callee's instance too. Built with
DuckDB over the events table (`features.traces.events`), never a loop over spans.
`service_edges` and `service_nodes` give the drawn graph of a set of spans (`spanomaly
graph`): calls, errors and mean duration per edge and per service, and the findings on them.
"""

from __future__ import annotations

import math

import duckdb
import pyarrow as pa

GRAPH_SCHEMA = pa.schema(
    [
        ("caller", pa.string()),
        ("callee", pa.string()),
        ("callee_instance", pa.string()),
        ("calls", pa.int64()),
    ]
)


def dependency_graph(events: pa.Table) -> pa.Table:
    """Edges (caller, callee, callee_instance, calls) of the calls in the events."""
    if events.num_rows == 0:
        return GRAPH_SCHEMA.empty_table()
    con = duckdb.connect()
    try:
        con.register("_ev", events.select(["parent_service", "service", "instance"]))
        return (
            con.sql(
                "SELECT parent_service AS caller, service AS callee, instance AS callee_instance, "
                "count(*) AS calls FROM _ev WHERE parent_service <> '' "
                "AND parent_service <> service GROUP BY ALL ORDER BY 1, 2, 3"
            )
            .to_arrow_table()
            .cast(GRAPH_SCHEMA)
        )
    finally:
        con.close()


EDGE_SCHEMA = pa.schema(
    [
        ("caller", pa.string()),
        ("callee", pa.string()),
        ("calls", pa.int64()),
        ("errors", pa.int64()),
        ("mean_ms", pa.float64()),
        ("findings", pa.int64()),
    ]
)
NODE_SCHEMA = pa.schema(
    [
        ("service", pa.string()),
        ("instances", pa.int64()),
        ("requests", pa.int64()),
        ("errors", pa.int64()),
        ("mean_ms", pa.float64()),
        ("findings", pa.int64()),
    ]
)
# the columns of spans (schema.SPANS) and findings (schema.FINDINGS) the two tables read
EDGE_SPAN_COLUMNS = ("trace_id", "span_id", "parent_id", "service", "instance", "status",
                     "duration_ns")  # fmt: skip
FINDING_COLUMNS = ("trace_id", "span_id", "service")


def _no_findings() -> pa.Table:
    return pa.table({c: pa.array([], pa.string()) for c in FINDING_COLUMNS})


def _aggregate(sql: str, schema: pa.Schema, spans: pa.Table, findings: pa.Table | None) -> pa.Table:
    con = duckdb.connect()
    try:
        con.register("_s", spans.select(list(EDGE_SPAN_COLUMNS)))
        con.register("_f", (findings if findings is not None else _no_findings()).select(
            list(FINDING_COLUMNS)))  # fmt: skip
        return con.sql(sql).to_arrow_table().cast(schema)
    finally:
        con.close()


def service_edges(spans: pa.Table, findings: pa.Table | None = None) -> pa.Table:
    """Calls across services (EDGE_SCHEMA): calls, errors (the callee's span has status
    error), mean duration of the callee's span, and calls with a finding on either span of
    the call (the callee's, or the caller's span that made it)."""
    return _aggregate(
        "WITH flagged AS (SELECT DISTINCT trace_id, span_id FROM _f WHERE span_id IS NOT NULL) "
        "SELECT p.service AS caller, c.service AS callee, count(*) AS calls, "
        "count(*) FILTER (WHERE c.status = 'error') AS errors, "
        "avg(c.duration_ns) / 1e6 AS mean_ms, "
        "count(*) FILTER (WHERE fc.span_id IS NOT NULL OR fp.span_id IS NOT NULL) AS findings "
        "FROM _s c JOIN _s p ON p.trace_id = c.trace_id AND p.span_id = c.parent_id "
        "LEFT JOIN flagged fc ON fc.trace_id = c.trace_id AND fc.span_id = c.span_id "
        "LEFT JOIN flagged fp ON fp.trace_id = p.trace_id AND fp.span_id = p.span_id "
        "WHERE p.service <> c.service GROUP BY ALL ORDER BY 1, 2",
        EDGE_SCHEMA,
        spans,
        findings,
    )


def service_nodes(spans: pa.Table, findings: pa.Table | None = None) -> pa.Table:
    """Per service (NODE_SCHEMA): instances, spans (requests), errors, mean duration and the
    findings that name it."""
    return _aggregate(
        "WITH f AS (SELECT service, count(*) AS n FROM _f GROUP BY ALL) "
        "SELECT s.service, count(DISTINCT s.instance) AS instances, count(*) AS requests, "
        "count(*) FILTER (WHERE s.status = 'error') AS errors, "
        "avg(s.duration_ns) / 1e6 AS mean_ms, coalesce(any_value(f.n), 0) AS findings "
        "FROM _s s LEFT JOIN f ON f.service = s.service GROUP BY s.service ORDER BY 1",
        NODE_SCHEMA,
        spans,
        findings,
    )


def findings_anomaly(findings: int) -> float:
    """Colour scale of a node by its findings: 0 without, towards 1 as they pile up."""
    return round(1.0 - math.exp(-findings / 3.0), 4)


def error_anomaly(errors: int, requests: int) -> float:
    """Colour scale of a node by its error share: 0 without errors, 0.63 at 5 %, towards 1."""
    return round(1.0 - math.exp(-(errors / requests) / 0.05), 4) if requests else 0.0


def adjacency(graph: pa.Table) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(callees of each service, callers of each service), from a graph table."""
    callees: dict[str, set[str]] = {}
    callers: dict[str, set[str]] = {}
    for a, b in zip(
        graph.column("caller").to_pylist(), graph.column("callee").to_pylist(), strict=True
    ):  # one row per edge: a few hundred at most
        callees.setdefault(a, set()).add(b)
        callers.setdefault(b, set()).add(a)
    return callees, callers
