"""Arrow schemas of the tables that flow between stages and live in the store.

Every column carries its unit and meaning in the field metadata (`unit`, `doc`), so the
schema documents itself: `spanomaly.schema.describe(SPANS)` prints it. Times are integer
nanoseconds since the Unix epoch (`*_ns`), durations integer nanoseconds. Ids are
lower-case hex strings: trace ids 32 characters, span ids 16.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # built on first use (module __getattr__): a CSV import never loads Arrow
    import pyarrow as pa

    SPANS: pa.Schema
    METRICS: pa.Schema
    LOGS: pa.Schema
    FAULTS: pa.Schema
    FAULT_TRACES: pa.Schema
    FINDINGS: pa.Schema
    CALLS: pa.Schema
    TABLES: dict[str, pa.Schema]

STATUS_VALUES = ("unset", "ok", "error")
KIND_VALUES = ("unspecified", "internal", "server", "client", "producer", "consumer")


# The columns that say which span it is and where it ran: the first of SPANS, of the events
# of a trace (features.traces) and of the spans a plain CSV fills (the store's spans_core).
SPAN_IDENTITY = ("trace_id", "span_id", "parent_id", "service", "instance", "operation")


class Column(NamedTuple):
    """One column: name, Arrow type (string, int32, int64, float64, bool or list<...>),
    meaning, unit, and whether it may be null."""

    name: str
    type: str
    doc: str
    unit: str = ""
    nullable: bool = True


_f = Column  # short, for the column tables below


_SPANS = (
    _f("trace_id", "string", "trace id, 32 lower-case hex characters", nullable=False),
    _f("span_id", "string", "span id, 16 lower-case hex characters", nullable=False),
    _f("parent_id", "string", "parent span id (16 hex); null for a root span"),
    _f("service", "string", "service name (service.name)", nullable=False),
    _f("instance", "string", "instance of the service: pod, container or process id"),
    _f("version", "string", "service version (service.version)"),
    _f("host", "string", "host or node the instance runs on (host.name, k8s node)"),
    _f("operation", "string", "span name: operation or route template", nullable=False),
    _f("kind", "string", "span kind: " + "|".join(KIND_VALUES)),
    _f("start_ns", "int64", "span start", "ns since epoch", nullable=False),
    _f("duration_ns", "int64", "span duration, >= 0", "ns", nullable=False),
    _f("status", "string", "status: " + "|".join(STATUS_VALUES), nullable=False),
    _f("status_message", "string", "status description or error message"),
    _f("http_method", "string", "HTTP request method"),
    _f("http_route", "string", "HTTP route template (http.route)"),
    _f("http_status_code", "int32", "HTTP response status code"),
    _f("http_url", "string", "full URL or target of the request"),
    _f("peer_service", "string", "remote service named by the span (peer.service)"),
    _f("attributes", "string", "all span attributes as a JSON object"),
)

_METRICS = (
    _f("time_ns", "int64", "time of the data point", "ns since epoch", nullable=False),
    _f("service", "string", "service the instance belongs to"),
    _f("instance", "string", "instance (pod, process) measured; null for node metrics"),
    _f("host", "string", "host or node"),
    _f("name", "string", "metric name", nullable=False),
    _f("kind", "string", "gauge|sum|histogram"),
    _f("unit", "string", "unit of value, as the source gave it"),
    _f("value", "float64", "gauge or sum value; histogram mean"),
    _f("count", "int64", "histogram: number of observations"),
    _f("sum", "float64", "histogram: sum of observations"),
    _f("bounds", "list<float64>", "histogram: explicit bucket upper bounds"),
    _f("bucket_counts", "list<int64>", "histogram: count per bucket"),
    _f("attributes", "string", "data point attributes as a JSON object"),
)

_LOGS = (
    _f("time_ns", "int64", "time of the log line", "ns since epoch", nullable=False),
    _f("service", "string", "service that wrote the line"),
    _f("instance", "string", "instance that wrote the line"),
    _f("trace_id", "string", "trace the line belongs to (32 hex), if any"),
    _f("span_id", "string", "span the line belongs to (16 hex), if any"),
    _f("severity", "string", "severity text (INFO, WARN, ERROR, ...)"),
    _f("body", "string", "log message text", nullable=False),
    _f("template_id", "int64", "id of the log template (-1: none fits), set by detect"),
    _f("params", "string", "the line's masked values as a JSON list, set by detect"),
)

_FAULTS = (
    _f("fault_id", "string", "stable id of the injected fault", nullable=False),
    _f("kind", "string", "fault type, e.g. network_delay, cpu_contention", nullable=False),
    _f("service", "string", "service the fault was aimed at"),
    _f("instance", "string", "instance the fault was aimed at; null for a whole service"),
    _f("start_ns", "int64", "fault start", "ns since epoch", nullable=False),
    _f("end_ns", "int64", "fault end", "ns since epoch", nullable=False),
    _f("params", "string", "fault parameters as a JSON object"),
)

_FAULT_TRACES = (
    _f("fault_id", "string", "fault that hit the request", nullable=False),
    _f("trace_id", "string", "trace of the request (32 hex)", nullable=False),
    _f("span_id", "string", "span where the fault acted (16 hex)"),
)

_CALLS = (
    _f("caller", "string", "calling service", nullable=False),
    _f("callee", "string", "called service", nullable=False),
    _f("calls", "int64", "number of calls, where the source says; null otherwise"),
    _f("source", "string", "file the edge came from"),
)

_SYSCALLS = (
    _f("time_ns", "int64", "entry of the system call", "ns since epoch", nullable=False),
    _f("duration_ns", "int64", "entry to exit; null when the exit is not in the trace", "ns"),
    _f(
        "name", "string", "system call, e.g. read, futex (no syscall_entry_ prefix)", nullable=False
    ),
    _f("ret", "int64", "return value (negative: -errno); null without an exit"),
    _f("pid", "int64", "process id (thread group)"),
    _f("tid", "int64", "thread id", nullable=False),
    _f("process", "string", "process (command) name"),
    _f("cpu", "int32", "CPU it ran on, where the trace says (LTTng); null for strace"),
    _f("service", "string", "service of the traced process, where known"),
    _f("instance", "string", "instance of the traced process, where known"),
    _f("source", "string", "file or trace the call came from"),
)

_FINDINGS = (
    _f("finding_id", "string", "stable id of the finding", nullable=False),
    _f(
        "time_ns",
        "int64",
        "time of the anomalous event, or the end of the anomalous window (when its evidence is complete)",
        "ns since epoch",
    ),
    _f("detector", "string", "detector that raised it", nullable=False),
    _f("entity", "string", "trace|instance|span"),
    _f("trace_id", "string", "trace, for trace findings"),
    _f("span_id", "string", "deviating span, for trace findings"),
    _f("service", "string", "service blamed"),
    _f("instance", "string", "instance blamed"),
    _f("operation", "string", "operation blamed"),
    _f("score", "float64", "anomaly score, higher is more anomalous", nullable=False),
    _f("threshold", "float64", "threshold the score was compared with"),
    _f("reason", "string", "one-line explanation"),
    _f("details", "string", "explanation as a JSON object"),
    _f("feedback", "string", "operator feedback: null or 'normal'"),
)

COLUMNS: dict[str, tuple[Column, ...]] = {
    "spans": _SPANS,
    "metrics": _METRICS,
    "logs": _LOGS,
    "faults": _FAULTS,
    "fault_traces": _FAULT_TRACES,
    "findings": _FINDINGS,
    "calls": _CALLS,
    "syscalls": _SYSCALLS,
}
_SCHEMAS = {
    "SPANS": "spans",
    "METRICS": "metrics",
    "LOGS": "logs",
    "FAULTS": "faults",
    "FAULT_TRACES": "fault_traces",
    "FINDINGS": "findings",
    "CALLS": "calls",
    "SYSCALLS": "syscalls",
}


def names(table: str) -> list[str]:
    """Column names of a table, in order."""
    return [c.name for c in COLUMNS[table]]


def arrow_type(typ: str) -> pa.DataType:
    """The Arrow type of a Column type name."""
    import pyarrow as pa

    if typ.startswith("list<"):
        return pa.list_(arrow_type(typ[5:-1]))
    return {"bool": pa.bool_()}.get(typ) or pa.type_for_alias(typ)


@functools.cache
def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of a table, each field with its meaning and unit as metadata."""
    import pyarrow as pa

    fields = []
    for c in COLUMNS[table]:
        meta = {"doc": c.doc} | ({"unit": c.unit} if c.unit else {})
        fields.append(pa.field(c.name, arrow_type(c.type), nullable=c.nullable, metadata=meta))
    return pa.schema(fields)


@functools.cache
def _tables() -> dict[str, pa.Schema]:
    return {t: arrow_schema(t) for t in COLUMNS}


def __getattr__(name: str) -> object:
    """SPANS, METRICS, ... and TABLES, built from COLUMNS on first use."""
    if name in _SCHEMAS:
        return arrow_schema(_SCHEMAS[name])
    if name == "TABLES":
        return _tables()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Columns that identify a row: writing a row whose key is already stored changes nothing.
KEYS: dict[str, tuple[str, ...]] = {
    "spans": ("trace_id", "span_id"),
    "metrics": ("time_ns", "instance", "name", "attributes"),
    "logs": (),
    "faults": ("fault_id",),
    "fault_traces": ("fault_id", "trace_id", "span_id"),
    "findings": ("finding_id",),
    "calls": ("caller", "callee"),
    "syscalls": ("tid", "time_ns", "name", "source"),
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
