"""The service dependency graph: who calls whom, from the events of traces.

An edge caller -> callee counts the spans of `callee` whose parent span runs in `caller`
(a call across services). Instance-level edges name the callee's instance too. Built with
DuckDB over the events table (`features.traces.events`), never a loop over spans.
"""

from __future__ import annotations

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
