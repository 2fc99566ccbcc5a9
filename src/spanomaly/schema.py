"""Arrow schemas of the tables that flow between stages and live in the store.

Every column carries its unit and meaning in the field metadata (`unit`, `doc`), so the
schema documents itself: `spanomaly.schema.describe(SPANS)` prints it. Times are integer
nanoseconds since the Unix epoch (`*_ns`), durations integer nanoseconds. Ids are
lower-case hex strings: trace ids 32 characters, span ids 16.
"""

from __future__ import annotations

import pyarrow as pa

STATUS_VALUES = ("unset", "ok", "error")
KIND_VALUES = ("unspecified", "internal", "server", "client", "producer", "consumer")


def _f(name: str, typ: pa.DataType, doc: str, unit: str = "", nullable: bool = True) -> pa.Field:
    meta = {"doc": doc}
    if unit:
        meta["unit"] = unit
    return pa.field(name, typ, nullable=nullable, metadata=meta)


SPANS = pa.schema(
    [
        _f("trace_id", pa.string(), "trace id, 32 lower-case hex characters", nullable=False),
        _f("span_id", pa.string(), "span id, 16 lower-case hex characters", nullable=False),
        _f("parent_id", pa.string(), "parent span id (16 hex); null for a root span"),
        _f("service", pa.string(), "service name (service.name)", nullable=False),
        _f("instance", pa.string(), "instance of the service: pod, container or process id"),
        _f("version", pa.string(), "service version (service.version)"),
        _f("host", pa.string(), "host or node the instance runs on (host.name, k8s node)"),
        _f("operation", pa.string(), "span name: operation or route template", nullable=False),
        _f("kind", pa.string(), "span kind: " + "|".join(KIND_VALUES)),
        _f("start_ns", pa.int64(), "span start", "ns since epoch", nullable=False),
        _f("duration_ns", pa.int64(), "span duration, >= 0", "ns", nullable=False),
        _f("status", pa.string(), "status: " + "|".join(STATUS_VALUES), nullable=False),
        _f("status_message", pa.string(), "status description or error message"),
        _f("http_method", pa.string(), "HTTP request method"),
        _f("http_route", pa.string(), "HTTP route template (http.route)"),
        _f("http_status_code", pa.int32(), "HTTP response status code"),
        _f("http_url", pa.string(), "full URL or target of the request"),
        _f("peer_service", pa.string(), "remote service named by the span (peer.service)"),
        _f("attributes", pa.string(), "all span attributes as a JSON object"),
    ]
)

METRICS = pa.schema(
    [
        _f("time_ns", pa.int64(), "time of the data point", "ns since epoch", nullable=False),
        _f("service", pa.string(), "service the instance belongs to"),
        _f("instance", pa.string(), "instance (pod, process) measured; null for node metrics"),
        _f("host", pa.string(), "host or node"),
        _f("name", pa.string(), "metric name", nullable=False),
        _f("kind", pa.string(), "gauge|sum|histogram"),
        _f("unit", pa.string(), "unit of value, as the source gave it"),
        _f("value", pa.float64(), "gauge or sum value; histogram mean"),
        _f("count", pa.int64(), "histogram: number of observations"),
        _f("sum", pa.float64(), "histogram: sum of observations"),
        _f("bounds", pa.list_(pa.float64()), "histogram: explicit bucket upper bounds"),
        _f("bucket_counts", pa.list_(pa.int64()), "histogram: count per bucket"),
        _f("attributes", pa.string(), "data point attributes as a JSON object"),
    ]
)

LOGS = pa.schema(
    [
        _f("time_ns", pa.int64(), "time of the log line", "ns since epoch", nullable=False),
        _f("service", pa.string(), "service that wrote the line"),
        _f("instance", pa.string(), "instance that wrote the line"),
        _f("trace_id", pa.string(), "trace the line belongs to (32 hex), if any"),
        _f("span_id", pa.string(), "span the line belongs to (16 hex), if any"),
        _f("severity", pa.string(), "severity text (INFO, WARN, ERROR, ...)"),
        _f("body", pa.string(), "log message text", nullable=False),
        _f("template_id", pa.int64(), "id of the mined log template, once mined"),
        _f("params", pa.string(), "template parameters as a JSON list, once mined"),
    ]
)

FAULTS = pa.schema(
    [
        _f("fault_id", pa.string(), "stable id of the injected fault", nullable=False),
        _f("kind", pa.string(), "fault type, e.g. network_delay, cpu_contention", nullable=False),
        _f("service", pa.string(), "service the fault was aimed at"),
        _f("instance", pa.string(), "instance the fault was aimed at; null for a whole service"),
        _f("start_ns", pa.int64(), "fault start", "ns since epoch", nullable=False),
        _f("end_ns", pa.int64(), "fault end", "ns since epoch", nullable=False),
        _f("params", pa.string(), "fault parameters as a JSON object"),
    ]
)

FAULT_TRACES = pa.schema(
    [
        _f("fault_id", pa.string(), "fault that hit the request", nullable=False),
        _f("trace_id", pa.string(), "trace of the request (32 hex)", nullable=False),
        _f("span_id", pa.string(), "span where the fault acted (16 hex)"),
    ]
)

FINDINGS = pa.schema(
    [
        _f("finding_id", pa.string(), "stable id of the finding", nullable=False),
        _f(
            "time_ns",
            pa.int64(),
            "time of the anomalous event, or the end of the anomalous window (when its evidence is complete)",
            "ns since epoch",
        ),
        _f("detector", pa.string(), "detector that raised it", nullable=False),
        _f("entity", pa.string(), "trace|instance|span"),
        _f("trace_id", pa.string(), "trace, for trace findings"),
        _f("span_id", pa.string(), "deviating span, for trace findings"),
        _f("service", pa.string(), "service blamed"),
        _f("instance", pa.string(), "instance blamed"),
        _f("operation", pa.string(), "operation blamed"),
        _f("score", pa.float64(), "anomaly score, higher is more anomalous", nullable=False),
        _f("threshold", pa.float64(), "threshold the score was compared with"),
        _f("reason", pa.string(), "one-line explanation"),
        _f("details", pa.string(), "explanation as a JSON object"),
        _f("feedback", pa.string(), "operator feedback: null or 'normal'"),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "spans": SPANS,
    "metrics": METRICS,
    "logs": LOGS,
    "faults": FAULTS,
    "fault_traces": FAULT_TRACES,
    "findings": FINDINGS,
}

# Columns that identify a row: writing a row whose key is already stored changes nothing.
KEYS: dict[str, tuple[str, ...]] = {
    "spans": ("trace_id", "span_id"),
    "metrics": ("time_ns", "instance", "name", "attributes"),
    "logs": (),
    "faults": ("fault_id",),
    "fault_traces": ("fault_id", "trace_id", "span_id"),
    "findings": ("finding_id",),
}


def empty(schema: pa.Schema) -> pa.Table:
    """An empty table of the given schema."""
    return schema.empty_table()


def describe(schema: pa.Schema) -> str:
    """A plain-text table of the columns with type, unit and meaning."""
    rows = []
    for field in schema:
        meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        rows.append(f"{field.name:18} {field.type!s:16} {meta.get('unit', ''):16} {meta['doc']}")
    return "\n".join(rows)
