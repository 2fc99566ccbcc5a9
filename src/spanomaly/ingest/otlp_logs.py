"""OTLP log records (protobuf and JSON) into LOGS rows.

A log record keeps its time (`timeUnixNano`, else `observedTimeUnixNano`), its resource's
service and instance, its trace and span ids (the trace context that links it to a span),
its severity (text, else the severity number's range) and its body as text (a structured
body as JSON). An exception recorded on the line (`exception.type`, `exception.message`
attributes, as the OpenTelemetry logging handler writes them) is appended to the body in
brackets, so it reaches the log template.

Like the metric decoders these go through Python per record: log volumes per request are
small, and a bad record becomes a `Reject` naming it
("resourceLogs[0].scopeLogs[1].logRecords[7]") while the rest is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
from google.protobuf.message import DecodeError

from spanomaly.errors import FormatError
from spanomaly.ingest import otlp_json
from spanomaly.ingest.base import Chunk, Reject
from spanomaly.ingest.otlp_common import ResourceInfo, anyvalue_py, attrs_py, dumps, resource_info
from spanomaly.schema import LOGS

# OTLP SeverityNumber ranges: 1-4 TRACE, 5-8 DEBUG, 9-12 INFO, 13-16 WARN, 17-20 ERROR, 21-24 FATAL
_BY_NUMBER = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_HEX = re.compile("[0-9a-f]+")
_TEXT_ALIASES = {"WARNING": "WARN", "ERR": "ERROR", "SEVERE": "ERROR", "CRITICAL": "FATAL"}


def severity(text: Any, number: Any) -> str | None:
    """The normalised severity of a record: its text, else its number's range."""
    if isinstance(text, str) and text.strip():
        t = text.strip().upper()
        return _TEXT_ALIASES.get(t, t)
    if isinstance(number, int) and 1 <= number <= 24:
        return _BY_NUMBER[(number - 1) // 4]
    return None


def body_text(body: Any, attrs: Mapping[str, Any]) -> str:
    """The body as text, with a recorded exception's type and message appended."""
    text = "" if body is None else body if isinstance(body, str) else dumps(body)
    kind = attrs.get("exception.type")
    if isinstance(kind, str) and kind:
        message = attrs.get("exception.message")
        text += f" [{kind}: {message}]" if isinstance(message, str) and message else f" [{kind}]"
    return text


class LogRows:
    """Column lists of LOGS rows being gathered, with the records refused."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {n: [] for n in LOGS.names}
        self.rejects: list[Reject] = []
        self.records = 0

    def __len__(self) -> int:
        return len(self.cols["time_ns"])

    def add(
        self,
        source: str,
        label: str,
        res: ResourceInfo,
        time_ns: int | None,
        trace_id: str,
        span_id: str,
        sev: str | None,
        body: str,
    ) -> None:
        """One record: kept, or a Reject naming it."""
        self.records += 1
        problem = _problem(time_ns, trace_id, span_id)
        if problem:
            self.rejects.append(Reject(source, label, problem))
            return
        for name, value in (
            ("time_ns", time_ns),
            ("service", res.service),
            ("instance", res.instance),
            ("trace_id", trace_id or None),
            ("span_id", span_id or None),
            ("severity", sev),
            ("body", body),
            ("template_id", None),
            ("params", None),
        ):
            self.cols[name].append(value)

    def chunk(self) -> Chunk:
        """The gathered rows as a LOGS chunk."""
        return Chunk("logs", pa.table(self.cols, schema=LOGS), self.rejects, records=self.records)


def _problem(time_ns: int | None, trace_id: str, span_id: str) -> str | None:
    if not time_ns:
        return "timeUnixNano and observedTimeUnixNano are both missing"
    if trace_id and (len(trace_id) != 32 or not _is_hex(trace_id)):
        return "traceId must be 32 hex characters"
    if span_id and (len(span_id) != 16 or not _is_hex(span_id)):
        return "spanId must be 16 hex characters"
    return None


def _is_hex(text: str) -> bool:
    return _HEX.fullmatch(text) is not None


def _zero_is_none(ident: str) -> str:
    return "" if ident.strip("0") == "" else ident


# -- protobuf ---------------------------------------------------------------------------------


def decode_logs_request(data: bytes, source: str, batch_rows: int = 131_072) -> list[Chunk]:
    """LOGS chunks from a protobuf ExportLogsServiceRequest body; bad records rejected."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise FormatError(f"{source}: not a valid OTLP protobuf logs request: {text}") from exc
    return list(_iter_pb(request, source, batch_rows))


def _iter_pb(request: Any, source: str, batch_rows: int) -> Iterator[Chunk]:
    rows = LogRows()
    for r, rl in enumerate(request.resource_logs):
        res = resource_info(attrs_py(rl.resource.attributes))
        for s, sl in enumerate(rl.scope_logs):
            for k, rec in enumerate(sl.log_records):
                attrs = attrs_py(rec.attributes)
                body = anyvalue_py(rec.body) if rec.HasField("body") else None
                rows.add(
                    source,
                    f"resourceLogs[{r}].scopeLogs[{s}].logRecords[{k}]",
                    res,
                    rec.time_unix_nano or rec.observed_time_unix_nano,
                    _zero_is_none(rec.trace_id.hex()),
                    _zero_is_none(rec.span_id.hex()),
                    severity(rec.severity_text, rec.severity_number),
                    body_text(body, attrs),
                )
                if len(rows) >= batch_rows:
                    yield rows.chunk()
                    rows = LogRows()
    if len(rows) or rows.rejects or rows.records:
        yield rows.chunk()


# -- JSON -------------------------------------------------------------------------------------


def iter_json_chunks(
    doc: dict[str, Any], source: str, prefix: str = "", batch_rows: int = 131_072
) -> Iterator[Chunk]:
    """LOGS chunks from a parsed OTLP/JSON logs request; bad records rejected."""
    get = otlp_json.get
    rows = LogRows()
    for r, rl in enumerate(otlp_json._list(doc, "resourceLogs", source, prefix)):
        where = f"{prefix}resourceLogs[{r}]"
        if not isinstance(rl, dict):
            rows.records += 1
            rows.rejects.append(Reject(source, where, "not a JSON object"))
            continue
        res = otlp_json._resource(rl)
        scopes = get(rl, "scopeLogs") or []
        for s, sl in enumerate(scopes if isinstance(scopes, list) else []):
            records = get(sl, "logRecords") if isinstance(sl, dict) else None
            for k, rec in enumerate(records if isinstance(records, list) else []):
                label = f"{where}.scopeLogs[{s}].logRecords[{k}]"
                if not isinstance(rec, dict):
                    rows.records += 1
                    rows.rejects.append(Reject(source, label, "not a JSON object"))
                    continue
                attrs = otlp_json.attributes(get(rec, "attributes"))
                number = get(rec, "severityNumber")
                rows.add(
                    source,
                    label,
                    res,
                    otlp_json.to_int(get(rec, "timeUnixNano"))
                    or otlp_json.to_int(get(rec, "observedTimeUnixNano")),
                    _zero_is_none(otlp_json.hex_id(get(rec, "traceId"))),
                    _zero_is_none(otlp_json.hex_id(get(rec, "spanId"))),
                    severity(get(rec, "severityText"), _severity_number(number)),
                    body_text(otlp_json.anyvalue(get(rec, "body")), attrs),
                )
                if len(rows) >= batch_rows:
                    yield rows.chunk()
                    rows = LogRows()
    if len(rows) or rows.rejects or rows.records:
        yield rows.chunk()


def _severity_number(value: Any) -> int | None:
    if isinstance(value, str):  # an enum name: SEVERITY_NUMBER_ERROR2
        name = value.upper().removeprefix("SEVERITY_NUMBER_").rstrip("1234")
        if name in _BY_NUMBER:
            return _BY_NUMBER.index(name) * 4 + 1
    return otlp_json.to_int(value)
