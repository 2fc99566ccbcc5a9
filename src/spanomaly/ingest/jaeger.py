"""Decoder of Jaeger JSON: the query API's `/api/traces` answer and the UI's "Download JSON".

Accepted documents: `{"data": [trace, ...], "total", "limit", "offset", "errors"}`, one
trace `{"traceID", "spans", "processes", "warnings"}`, or a list of traces. A span has
`traceID`, `spanID` (hex; Jaeger drops leading zeros, so ids are left-padded to 32 and 16),
`operationName`, `references` (`CHILD_OF` / `FOLLOWS_FROM`) or the legacy `parentSpanID`,
`startTime` and `duration` in microseconds, typed `tags`, `logs` and a `processID` into the
trace's `processes` (or an embedded `process`).

Mapping to `schema.SPANS`:

- parent: the first `CHILD_OF` reference within the same trace, else the first
  `FOLLOWS_FROM` one, else `parentSpanID`; an all-zero id means a root span.
- service: the process's `serviceName`; instance: process tag `service.instance.id`, else
  `hostname`, `ip`, `k8s.pod.name`; version: `service.version`, else `version`; host:
  `host.name`, else `k8s.node.name`, `hostname`. Resolved once per process.
- kind: tag `span.kind`. status: tag `error` true (boolean or "true") → error, else tag
  `otel.status_code` ERROR/OK, else an HTTP status code >= 500 → error, else unset;
  status_message: `otel.status_description`, else `error.message`.
- http_*: `http.method`/`http.request.method`, `http.route`,
  `http.status_code`/`http.response.status_code` (int, also from a string),
  `http.url`/`url.full`/`http.target`; peer_service: `peer.service`.
- attributes: every span tag as a compact JSON object, with typed values. Logs (span
  events) and the trace `warnings` are not kept. Entries of the `errors` list of a query
  answer are reported as rejects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spanomaly.errors import FormatError
from spanomaly.ingest import _json_spans as js
from spanomaly.ingest.base import Chunk, DecodeOptions, Reject
from spanomaly.ingest.files import read_all

_REQUIRED = ("traceID", "spanID", "startTime")
_ID_KEY = "spanID"


@dataclass(frozen=True, slots=True)
class _Process:
    service: str | None
    instance: str | None
    version: str | None
    host: str | None


def decode_file(path: Path, options: DecodeOptions) -> Iterator[Chunk]:
    """Chunks of spans (at most options.batch_rows each) from a Jaeger JSON file."""
    source = str(path)
    doc = js.load_json(read_all(path), source)
    yield from _decode(doc, source, options.batch_rows)


def decode_document(doc: object, source: str) -> list[Chunk]:
    """Chunks of spans from an already parsed Jaeger JSON document (no I/O)."""
    return list(_decode(doc, source, DecodeOptions().batch_rows))


def _decode(doc: object, source: str, batch_rows: int) -> Iterator[Chunk]:
    traces, rejects = _traces(doc, source)
    records: list[js.Record] = []
    for path, trace in traces:
        if not isinstance(trace, dict):
            rejects.append(
                Reject(source, path, f"trace is not a JSON object (got {js.type_name(trace)})")
            )
            continue
        spans = trace.get("spans")
        if not isinstance(spans, list):
            rejects.append(Reject(source, path, 'trace has no "spans" list'))
            continue
        processes = trace.get("processes")
        procs = (
            {pid: _process(p) for pid, p in processes.items()}
            if isinstance(processes, dict)
            else {}
        )
        where = f"{path}.spans" if path else "spans"
        records.extend(
            js.Record(where, j, raw, _span_process(raw, procs)) for j, raw in enumerate(spans)
        )
    yield from js.chunks(records, source, batch_rows, _problem, _columns, _ID_KEY, rejects)


def _traces(doc: object, source: str) -> tuple[list[tuple[str, object]], list[Reject]]:
    """(path, trace) pairs of the document, and rejects for the query's reported errors."""
    if isinstance(doc, dict) and "data" in doc:
        data = doc["data"]
        if data is None:
            data = []
        if not isinstance(data, list):
            raise FormatError(
                f'{source}: not Jaeger JSON: "data" is not a list of traces '
                f"(got {js.type_name(data)})"
            )
        errors = doc.get("errors")
        rejects = [
            Reject(source, f"errors[{i}]", f"Jaeger reported an error: {_error_text(e)}")
            for i, e in enumerate(errors if isinstance(errors, list) else [])
        ]
        return [(f"data[{i}]", t) for i, t in enumerate(data)], rejects
    if isinstance(doc, dict) and "spans" in doc:
        return [("", doc)], []
    if isinstance(doc, list):
        return [(f"[{i}]", t) for i, t in enumerate(doc)], []
    raise FormatError(
        f'{source}: not Jaeger JSON: expected an object with "data" or "spans", '
        f"or a list of traces (got {js.type_name(doc)})"
    )


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        msg = js.text(error.get("msg")) or js.text(error.get("code")) or "no message"
        trace = error.get("traceID")
        return f"{msg} (traceID={trace!r})" if trace else msg
    return js.text(error) or "no message"


def _tag_map(tags: object) -> dict[str, Any]:
    """Jaeger tags [{key, type, value}] as {key: typed value}; a later key wins."""
    if not isinstance(tags, list):
        return {}
    return {
        t["key"]: _tag_value(t)
        for t in tags
        if isinstance(t, dict) and isinstance(t.get("key"), str)
    }


def _tag_value(tag: dict[str, Any]) -> Any:
    """The tag's value, converted from a string where its type says bool, int64 or float64."""
    value = tag.get("value")
    if not isinstance(value, str):
        return value
    typ = tag.get("type")
    typ = typ.lower() if isinstance(typ, str) else "string"
    try:
        if typ == "int64":
            number = int(value)
            return number if -(2**63) <= number < 2**63 else value
        if typ == "float64":
            return float(value)
    except ValueError:
        return value
    if typ == "bool" and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def _process(raw: object) -> _Process | None:
    """Service, instance, version and host of a Jaeger process; None if it is not an object."""
    if not isinstance(raw, dict):
        return None
    tags = _tag_map(raw.get("tags"))
    name = raw.get("serviceName")
    return _Process(
        service=name if isinstance(name, str) and name else None,
        instance=js.text(js.first(tags, "service.instance.id", "hostname", "ip", "k8s.pod.name")),
        version=js.text(js.first(tags, "service.version", "version")),
        host=js.text(js.first(tags, "host.name", "k8s.node.name", "hostname")),
    )


def _span_process(raw: object, procs: dict[str, _Process | None]) -> _Process | str:
    """The span's process, or why it has none."""
    if not isinstance(raw, dict):
        return "span is not a JSON object"
    embedded = raw.get("process")
    if embedded is not None:
        proc = _process(embedded)
        return proc if proc is not None else '"process" is not a JSON object'
    pid = raw.get("processID")
    if pid is None:
        return "no processID or process"
    proc = procs.get(pid) if isinstance(pid, str) else None
    return proc if proc is not None else f"processID {pid!r} is not among the trace's processes"


def _problem(record: js.Record) -> str | None:
    why = js.missing(record.raw, _REQUIRED)
    if why is None and isinstance(record.context, str):
        return record.context
    return why


def _trace_key(trace_id: object) -> str | None:
    """A trace id in a form where ids differing only in case or leading zeros compare equal."""
    return trace_id.strip().lower().lstrip("0") if isinstance(trace_id, str) else None


def _parent(span: dict[str, Any]) -> str | None:
    """CHILD_OF reference in the same trace, else first FOLLOWS_FROM, else parentSpanID."""
    refs = span.get("references")
    if isinstance(refs, list) and refs:
        trace = span.get("traceID")
        follows: str | None = None
        for ref in refs:
            if not isinstance(ref, dict):
                continue
            ref_trace = ref.get("traceID")
            if (
                ref_trace is not None
                and ref_trace != trace
                and _trace_key(ref_trace) != _trace_key(trace)
            ):
                continue  # a reference into another trace is a link, not a parent
            typ = ref.get("refType", "CHILD_OF")
            typ = typ.upper() if isinstance(typ, str) else ""
            if typ == "CHILD_OF":
                return js.raw_id(ref.get("spanID"))
            if typ == "FOLLOWS_FROM" and follows is None:
                follows = js.raw_id(ref.get("spanID"))
        if follows is not None:
            return follows
    return js.raw_id(span.get("parentSpanID"))


def _columns(records: list[js.Record]) -> js.Columns:
    spans: list[dict[str, Any]] = [r.raw for r in records]
    procs: list[_Process] = [r.context for r in records]
    tags = [_tag_map(s.get("tags")) for s in spans]
    codes = [
        js.http_status(js.first(t, "http.status_code", "http.response.status_code")) for t in tags
    ]
    return {
        "trace_id": [js.raw_id(s.get("traceID")) for s in spans],
        "span_id": [js.raw_id(s.get("spanID")) for s in spans],
        "parent_id": [_parent(s) for s in spans],
        "service": [p.service for p in procs],
        "instance": [p.instance for p in procs],
        "version": [p.version for p in procs],
        "host": [p.host for p in procs],
        "operation": [js.text(s.get("operationName")) for s in spans],
        "kind": [js.kind(t.get("span.kind")) for t in tags],
        "start_ns": [js.micros_to_ns(s.get("startTime")) for s in spans],
        "duration_ns": [js.micros_to_ns(s.get("duration")) for s in spans],
        "status": [
            js.status(js.is_true(t.get("error")), t, c) for t, c in zip(tags, codes, strict=True)
        ],
        "status_message": [
            js.text(js.first(t, "otel.status_description", "error.message")) for t in tags
        ],
        "http_method": [js.text(js.first(t, "http.method", "http.request.method")) for t in tags],
        "http_route": [js.text(t.get("http.route")) for t in tags],
        "http_status_code": codes,
        "http_url": [js.text(js.first(t, "http.url", "url.full", "http.target")) for t in tags],
        "peer_service": [js.text(t.get("peer.service")) for t in tags],
        "attributes": [js.attributes_json(t) for t in tags],
    }
