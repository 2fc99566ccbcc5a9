"""OTLP/HTTP request handling: media types, decompression, decoding and responses.

Pure functions over bytes, with no I/O and no store, so the collector (`spanomaly.serve`)
stays a thin shell around them and every rule of the specification is testable alone:

- `media_type`: ``application/x-protobuf`` or ``application/json``, else 415.
- `decompress`: ``Content-Encoding`` gzip (several members too), deflate, zstd or none, with
  a cap on the decompressed size (a gzip bomb answers 413, a truncated stream 400).
- `decode`: the body into SPANS, METRICS or LOGS chunks (`spanomaly.ingest.otlp`); a body that
  cannot be parsed as a whole answers 400, bad spans or points are counted as rejected.
- `handle`: all of the above for several requests at once (the collector's entry point),
  with `parse_traces` + `decode_traces_batch` as the fast path for protobuf traces. Each body is
  checked on its own (the outer message layers, cheap), then the bodies waiting together are
  joined (protobuf concatenation appends repeated fields) and decoded in one pass, which
  costs much less per span than one pass per small request; rejected spans are handed back
  to the request they came from.
- `export_response` / `status_body`: ExportTrace/Metrics/LogsServiceResponse with
  ``partial_success``, and google.rpc.Status for errors, encoded like the request.

Errors are `RequestError` with the HTTP status to answer and a one-line message.
"""

from __future__ import annotations

import bisect
import logging
import re
import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
import pyarrow as pa
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from spanomaly.errors import FormatError, InputError
from spanomaly.ingest import otlp, otlp_logs, otlp_wire
from spanomaly.ingest.base import Chunk, Reject

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MEDIA_TYPES = (PROTOBUF, JSON)
DEFAULT_MAX_BODY = 16 * 1024 * 1024
DECOMPRESSED_FACTOR = 4  # default cap on a decompressed body: this many times the body cap
MAX_MESSAGES = 5  # rejected records named in a partial_success message

# gRPC status codes carried by google.rpc.Status bodies, by HTTP status.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 408: 4, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}


class Signal(StrEnum):
    """The OTLP signal a route receives."""

    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"


# what each signal's JSON request holds, and what its partial_success counts
_JSON_KEYS = {
    Signal.TRACES: ("resourceSpans", "resource_spans"),
    Signal.METRICS: ("resourceMetrics", "resource_metrics"),
    Signal.LOGS: ("resourceLogs", "resource_logs"),
}
_NOUNS = {Signal.TRACES: "spans", Signal.METRICS: "data points", Signal.LOGS: "log records"}
TABLES = {Signal.TRACES: "spans", Signal.METRICS: "metrics", Signal.LOGS: "logs"}
_JSON_COUNTS = {
    Signal.TRACES: "rejectedSpans",
    Signal.METRICS: "rejectedDataPoints",
    Signal.LOGS: "rejectedLogRecords",
}


class RequestError(InputError):
    """A request the receiver refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[RequestError], tuple[int, str]]:
        """Pickle with the status (requests are decoded in other processes)."""
        return RequestError, (self.status, str(self))


@dataclass(frozen=True)
class Limits:
    """Size limits of one request: the body as sent, and once decompressed."""

    max_body: int = DEFAULT_MAX_BODY
    max_decompressed: int | None = None  # None: DECOMPRESSED_FACTOR × max_body

    @property
    def decompressed(self) -> int:
        """The cap on the decompressed body, in bytes."""
        return self.max_decompressed or DECOMPRESSED_FACTOR * self.max_body


@dataclass
class Decoded:
    """What one request holds: chunks to store, and the records refused."""

    signal: Signal
    chunks: list[Chunk] = field(default_factory=list)  # Arrow chunks with at least one row
    rows: int = 0  # rows to store
    records: int = 0  # records the request held
    rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)

    def message(self) -> str:
        """The partial_success error message: how many were refused, and the first few why."""
        if not self.rejected:
            return ""
        named = "; ".join(
            f"{r.record}: {r.reason}" if r.record else r.reason for r in self.rejects[:MAX_MESSAGES]
        )
        more = self.rejected - min(len(self.rejects), MAX_MESSAGES)
        tail = f"; and {more} more" if more > 0 else ""
        return f"{self.rejected} of {self.records} {_NOUNS[self.signal]} rejected: {named}{tail}"


def media_type(content_type: str | None) -> str:
    """PROTOBUF or JSON from a Content-Type header (parameters ignored); 415 otherwise."""
    value = (content_type or "").split(";", 1)[0].strip().lower()
    if value in MEDIA_TYPES:
        return value
    shown = repr(content_type) if content_type else "none"
    raise RequestError(415, f"unsupported Content-Type {shown}; use {PROTOBUF} or {JSON}")


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body decoded from its Content-Encoding; 413 past limit bytes, 400 when corrupt."""
    name = (encoding or "identity").strip().lower()
    if name in ("identity", ""):
        data = body
    elif name in ("gzip", "x-gzip"):
        data = _inflate(body, limit, zlib.MAX_WBITS | 16, "gzip", members=True)
    elif name == "deflate":
        # RFC 9110 deflate is zlib-wrapped; some senders send raw deflate
        wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
        data = _inflate(body, limit, wbits, "deflate", members=False)
    elif name == "zstd":
        data = _unzstd(body, limit)
    else:
        raise RequestError(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none")
    if len(data) > limit:
        raise RequestError(413, f"request body is larger than {limit} bytes")
    return data


def _inflate(body: bytes, limit: int, wbits: int, name: str, members: bool) -> bytes:
    """zlib/gzip streams (gzip may hold several members) decoded to at most limit bytes."""
    parts: list[bytes] = []
    total = 0
    data = body
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(data, limit - total + 1)
        except zlib.error as exc:
            raise RequestError(400, f"corrupt {name} body: {exc}") from exc
        total += len(part)
        if total > limit:
            raise RequestError(413, f"decompressed request body is larger than {limit} bytes")
        parts.append(part)
        if not inflater.eof:
            raise RequestError(400, f"truncated {name} body")
        data = inflater.unused_data
        if not data.strip(b"\0"):
            break  # zero padding after the last member is tolerated, as gzip(1) does
        if not members:
            raise RequestError(400, f"unexpected bytes after the {name} stream")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _unzstd(body: bytes, limit: int) -> bytes:
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    try:
        # first the size, without holding more than limit + 1 bytes (zstd bombs) ...
        with dctx.stream_reader(body, read_across_frames=True) as reader:
            if len(reader.read(limit + 1)) > limit:
                raise RequestError(413, f"decompressed request body is larger than {limit} bytes")
        # ... then the frames, checking each one ends (the reader stops quietly at a cut)
        parts, data = [], body
        while data.strip(b"\0"):
            frame = dctx.decompressobj()
            parts.append(frame.decompress(data))
            if not frame.eof:
                raise RequestError(400, "truncated zstd body")
            data = frame.unused_data
    except zstandard.ZstdError as exc:
        raise RequestError(400, f"corrupt zstd body: {exc}") from exc
    return b"".join(parts)


def decode(signal: Signal, media: str, data: bytes, source: str) -> Decoded:
    """The chunks of one request body (already decompressed); 400 when it cannot be parsed."""
    try:
        if media == PROTOBUF:
            if signal is Signal.TRACES:
                chunks = otlp.decode_traces_request(data, source)
            elif signal is Signal.LOGS:
                chunks = otlp_logs.decode_logs_request(data, source)
            else:
                chunks = otlp.decode_metrics_request(data, source)
        else:
            chunks = otlp.decode_json_request(_json_request(signal, data), source)
    except FormatError as exc:
        raise RequestError(400, _strip_source(str(exc), source)) from exc
    return _collect(signal, chunks)


def _json_request(signal: Signal, data: bytes) -> dict[str, Any]:
    """The part of an OTLP/JSON request the signal's route reads."""
    if not data.strip():
        raise RequestError(400, "empty body is not an OTLP/JSON request")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"invalid JSON: {' '.join(str(exc).split())}") from exc
    if not isinstance(doc, dict):
        raise RequestError(400, "an OTLP/JSON request must be a JSON object")
    keys = _JSON_KEYS[signal]
    wanted = {k: v for k, v in doc.items() if k in keys}
    if doc and not wanted:
        raise RequestError(400, f"no {keys[0]} in the request (found {', '.join(sorted(doc)[:5])})")
    return wanted


def _strip_source(message: str, source: str) -> str:
    return message.removeprefix(f"{source}: ")


def _collect(signal: Signal, chunks: list[Chunk]) -> Decoded:
    """Gather the decoder's chunks of the signal's table: rows to store and rejects."""
    out = Decoded(signal)
    table = TABLES[signal]
    for chunk in chunks:
        out.rejected += len(chunk.rejects)
        out.rejects.extend(chunk.rejects[: MAX_MESSAGES - len(out.rejects)])
        rows = chunk.data.num_rows if isinstance(chunk.data, pa.Table) else 0
        out.records += chunk.records if chunk.records is not None else rows + len(chunk.rejects)
        if rows and chunk.table == table:
            out.chunks.append(chunk)
            out.rows += rows
    return out


def _unpack(content_encoding: str | None, body: bytes, limits: Limits) -> bytes:
    if len(body) > limits.max_body:
        raise RequestError(413, f"request body is larger than {limits.max_body} bytes")
    return decompress(body, content_encoding, limits.decompressed)


@dataclass(frozen=True)
class RawTraces:
    """A protobuf ExportTraceServiceRequest body whose outer layers parse, not decoded yet."""

    data: bytes
    resources: int  # ResourceSpans in the request
    spans: int


def parse_traces(data: bytes) -> RawTraces:
    """Check a protobuf traces body down to the spans (left raw); 400 when it is malformed.

    This is the whole-body check `otlp.decode_traces_request` makes; malformed spans inside
    a well-formed body are rejected one by one later, when the batch is decoded.
    """
    request = otlp_wire.RawTracesRequest()
    try:
        request.ParseFromString(data)
    except Exception as exc:  # upb raises DecodeError, RuntimeError or ValueError
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise RequestError(400, f"not a valid OTLP protobuf request: {text}") from exc
    return RawTraces(data, len(request.resource_spans), otlp_wire.span_count(request))


def prepare(
    signal: Signal,
    media: str,
    content_encoding: str | None,
    body: bytes,
    limits: Limits,
    source: str,
) -> Decoded | RawTraces:
    """A request body, as sent, made ready: RawTraces for protobuf traces (to be decoded in
    a batch with `decode_traces_batch`), decoded chunks for everything else."""
    data = _unpack(content_encoding, body, limits)
    if signal is Signal.TRACES and media == PROTOBUF:
        return parse_traces(data)
    return decode(signal, media, data, source)


_RESOURCE_LABEL = re.compile(r"resourceSpans\[(\d+)\](.*)", re.DOTALL)


def decode_traces_batch(
    requests: list[RawTraces], source: str
) -> tuple[list[Chunk], list[Decoded | RequestError]]:
    """Decode several checked bodies in one pass: all their SPANS chunks, and per request
    what it held and which of its spans were rejected (labels as in the request alone)."""
    if len(requests) == 1:
        one = _collect(Signal.TRACES, otlp.decode_traces_request(requests[0].data, source))
        return one.chunks, [_without_chunks(one)]
    try:
        chunks = otlp.decode_traces_request(b"".join(r.data for r in requests), source)
    except FormatError:  # cannot happen for checked bodies; decode them one by one
        return _one_by_one(requests, source)
    starts = []
    first = 0
    for r in requests:
        starts.append(first)
        first += r.resources
    out: list[Decoded] = [Decoded(Signal.TRACES, records=r.spans) for r in requests]
    for chunk in chunks:
        for reject in chunk.rejects:
            match = _RESOURCE_LABEL.fullmatch(reject.record)
            if match is None:  # a label we cannot place: be exact the slow way
                return _one_by_one(requests, source)
            index = int(match.group(1))
            i = bisect.bisect_right(starts, index) - 1
            d = out[i]
            d.rejected += 1
            if len(d.rejects) < MAX_MESSAGES:
                label = f"resourceSpans[{index - starts[i]}]{match.group(2)}"
                d.rejects.append(Reject(reject.source, label, reject.reason))
    kept = [c for c in chunks if isinstance(c.data, pa.Table) and c.data.num_rows]
    for d in out:
        d.rows = d.records - d.rejected
    return kept, list(out)


@dataclass(frozen=True)
class Body:
    """One export request as received: what `handle` needs, and all it needs."""

    signal: Signal
    media: str
    encoding: str | None  # Content-Encoding
    data: bytes  # the body as sent

    @property
    def source(self) -> str:
        """The label of its rejected records: the route."""
        return f"/v1/{self.signal}"


def handle(bodies: list[Body], limits: Limits) -> tuple[list[Chunk], list[Decoded | RequestError]]:
    """Several requests made into rows at once: each is decompressed and checked alone (a
    RequestError for a bad one), protobuf traces are then decoded in one pass. The rows to
    store, and per request what it held or why it is refused."""
    results: list[Decoded | RequestError | None] = [None] * len(bodies)
    chunks: list[Chunk] = []
    raws: list[RawTraces] = []
    at: list[int] = []
    for i, body in enumerate(bodies):
        try:
            prepared = prepare(
                body.signal, body.media, body.encoding, body.data, limits, body.source
            )
        except RequestError as exc:
            results[i] = exc
            continue
        if isinstance(prepared, RawTraces):
            if prepared.spans:
                raws.append(prepared)
                at.append(i)
            else:
                results[i] = Decoded(Signal.TRACES)
        else:
            chunks.extend(prepared.chunks)
            results[i] = _without_chunks(prepared)
    if raws:
        source = f"/v1/{Signal.TRACES}"
        try:
            decoded_chunks, decoded = decode_traces_batch(raws, source)
        except Exception as exc:  # one request's content broke the batch: each alone
            log.warning("decoding a batch of %d requests failed (%s); one by one", len(raws), exc)
            decoded_chunks, decoded = _one_by_one(raws, source, refuse=True)
        chunks.extend(decoded_chunks)
        for i, d in zip(at, decoded, strict=True):
            results[i] = d
    done = [r for r in results if r is not None]
    assert len(done) == len(bodies), "a request was left without an answer"
    return chunks, done


def _one_by_one(
    requests: list[RawTraces], source: str, refuse: bool = False
) -> tuple[list[Chunk], list[Decoded | RequestError]]:
    """Each request decoded alone; refuse: one that cannot be decoded gets a 400 (never a
    5xx, which SDKs retry for ever), the others are stored."""
    chunks: list[Chunk] = []
    out: list[Decoded | RequestError] = []
    for r in requests:
        try:
            one = _collect(Signal.TRACES, otlp.decode_traces_request(r.data, source))
        except Exception as exc:
            if not refuse:
                raise
            text = " ".join(str(exc).split()) or type(exc).__name__
            out.append(RequestError(400, f"cannot decode the spans of the request: {text}"))
            continue
        chunks.extend(one.chunks)
        out.append(_without_chunks(one))
    return chunks, out


def _without_chunks(decoded: Decoded) -> Decoded:
    decoded.chunks = []
    return decoded


def export_response(decoded: Decoded, media: str) -> bytes:
    """The Export*ServiceResponse body, partial_success filled when something was refused."""
    if media == JSON:
        if not decoded.rejected:
            return b"{}"
        count = _JSON_COUNTS[decoded.signal]
        doc = {"partialSuccess": {count: str(decoded.rejected), "errorMessage": decoded.message()}}
        return orjson.dumps(doc)
    if not decoded.rejected:
        return b""  # an empty message: every field at its default
    if decoded.signal is Signal.TRACES:
        return trace_pb.ExportTraceServiceResponse(
            partial_success=trace_pb.ExportTracePartialSuccess(
                rejected_spans=decoded.rejected, error_message=decoded.message()
            )
        ).SerializeToString()
    if decoded.signal is Signal.LOGS:
        return logs_pb.ExportLogsServiceResponse(
            partial_success=logs_pb.ExportLogsPartialSuccess(
                rejected_log_records=decoded.rejected, error_message=decoded.message()
            )
        ).SerializeToString()
    return metrics_pb.ExportMetricsServiceResponse(
        partial_success=metrics_pb.ExportMetricsPartialSuccess(
            rejected_data_points=decoded.rejected, error_message=decoded.message()
        )
    ).SerializeToString()


def status_body(status: int, message: str, media: str | None) -> tuple[bytes, str]:
    """(body, content type) of an error answer: a google.rpc.Status encoded like the request."""
    code = _GRPC_CODES.get(status, 2)  # 2: UNKNOWN
    if media == PROTOBUF:
        return status_pb2.Status(code=code, message=message).SerializeToString(), PROTOBUF
    return orjson.dumps({"code": code, "message": message}), JSON
