"""The drawn service graph's tables (`service_edges`, `service_nodes`) from small Jaeger,
Zipkin and OTLP files: the same traces give the same calls, errors, durations and findings."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from spanomaly.features.graph import (
    EDGE_SCHEMA,
    EDGE_SPAN_COLUMNS,
    NODE_SCHEMA,
    error_anomaly,
    findings_anomaly,
    service_edges,
    service_nodes,
)
from spanomaly.pipeline import ingest
from spanomaly.store.duckdb import DuckDBStore
from tests.features import graph_files


def _spans(path: Path) -> pa.Table:
    with DuckDBStore(":memory:") as store:
        report = ingest([path], store)
        assert report.rejected == 0 and report.spans == len(graph_files.SPANS)
        return store.sql(f"SELECT {', '.join(EDGE_SPAN_COLUMNS)} FROM spans")


@pytest.mark.parametrize("fmt", sorted(graph_files.WRITERS))
def test_edges_and_nodes_of_each_format(fmt: str, tmp_path: Path) -> None:
    spans = _spans(graph_files.WRITERS[fmt](tmp_path / f"{fmt}.json"))
    edges = service_edges(spans)
    assert edges.schema == EDGE_SCHEMA
    got = [(e["caller"], e["callee"], e["calls"], e["errors"], round(e["mean_ms"], 3))
           for e in edges.to_pylist()]  # fmt: skip
    assert got == graph_files.EDGES
    assert edges.column("findings").to_pylist() == [0, 0, 0]
    nodes = service_nodes(spans)
    assert nodes.schema == NODE_SCHEMA
    got_nodes = [(n["service"], n["instances"], n["requests"], n["errors"])
                 for n in nodes.to_pylist()]  # fmt: skip
    assert got_nodes == graph_files.NODES


def test_findings_count_on_either_span_of_a_call(tmp_path: Path) -> None:
    spans = _spans(graph_files.otlp(tmp_path / "t.json"))
    findings = pa.table(
        {
            "trace_id": ["b2" * 16, "a1" * 16, "a1" * 16],
            "span_id": ["5" * 16, "2" * 16, None],  # the callee's span; the caller's; no span
            "service": ["orders", "orders", "orders"],
        }
    )
    edges = {(e["caller"], e["callee"]): e["findings"] for e in
             service_edges(spans, findings).to_pylist()}  # fmt: skip
    # span 5 (orders) is the callee of gateway -> orders and the caller of orders -> db;
    # span 2 the same for the first trace
    assert edges == {("gateway", "orders"): 2, ("gateway", "users"): 0, ("orders", "db"): 2}
    nodes = {n["service"]: n["findings"] for n in service_nodes(spans, findings).to_pylist()}
    assert nodes == {"db": 0, "gateway": 0, "orders": 3, "users": 0}


def test_empty_spans_give_empty_tables() -> None:
    empty = pa.table({c: pa.array([], pa.int64() if c == "duration_ns" else pa.string())
                      for c in EDGE_SPAN_COLUMNS})  # fmt: skip
    assert service_edges(empty).num_rows == 0 and service_nodes(empty).num_rows == 0


def test_colour_scales() -> None:
    assert findings_anomaly(0) == 0.0 and 0.6 < findings_anomaly(3) < 0.7
    assert error_anomaly(0, 0) == 0.0 and error_anomaly(0, 10) == 0.0
    assert 0.6 < error_anomaly(5, 100) < 0.65 and error_anomaly(100, 100) > 0.99
