"""OTLP traces, metrics and logs: protobuf (.pb/.binpb), JSON and JSON lines into SPANS,
METRICS and LOGS (log records through `otlp_logs`).

Public entry points:

- `decode_file(path, kind, options)`: a file of kind "otlp-pb", "otlp-json" or "otlp-jsonl"
  (as `files.sniff` tells it) as a stream of chunks of at most ``options.batch_rows`` rows.
- `decode_traces_request`, `decode_metrics_request`: the body of an OTLP/HTTP protobuf
  export request; `decode_json_request`: a parsed OTLP/JSON request (traces or metrics).

The request functions are pure (no I/O) and never raise for a bad record: it becomes a
`Reject` naming it ("resourceSpans[0].scopeSpans[1].spans[7]") while the rest is kept.
They raise `FormatError` only when the whole body cannot be parsed.

Protobuf spans are decoded by `otlp_wire` (numpy over the wire format, no Python per span);
metrics and JSON go through Python per record (`otlp_json`, `_iter_pb_metric_chunks`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from spanomaly.errors import FormatError
from spanomaly.ingest import files, otlp_json, otlp_logs, otlp_wire
from spanomaly.ingest.base import Chunk, DecodeOptions, Reject
from spanomaly.ingest.otlp_common import (
    MetricRows,
    ResourceInfo,
    attrs_py,
    histogram_point,
    resource_info,
)
from spanomaly.schema import LOGS, METRICS, SPANS

log = logging.getLogger(__name__)

KINDS = ("otlp-pb", "otlp-json", "otlp-jsonl")
DEFAULT_BATCH_ROWS = DecodeOptions().batch_rows


# ---------------------------------------------------------------------------------------
# Protobuf


def _parse_raw_traces(data: bytes | memoryview, source: str) -> Message:
    request = otlp_wire.RawTracesRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise FormatError(f"{source}: not a valid OTLP protobuf request: {_one_line(exc)}") from exc
    return request


def _parse_metrics(data: bytes, source: str) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise FormatError(
            f"{source}: not a valid OTLP protobuf metrics request: {_one_line(exc)}"
        ) from exc
    return request


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def decode_traces_request(
    data: bytes, source: str, batch_rows: int = DEFAULT_BATCH_ROWS
) -> list[Chunk]:
    """SPANS chunks from a protobuf ExportTraceServiceRequest body; bad spans rejected."""
    request = _parse_raw_traces(data, source)
    return list(otlp_wire.iter_span_chunks(request, source, batch_rows))


def decode_metrics_request(
    data: bytes, source: str, batch_rows: int = DEFAULT_BATCH_ROWS
) -> list[Chunk]:
    """METRICS chunks from a protobuf ExportMetricsServiceRequest body; bad points rejected."""
    return list(_iter_pb_metric_chunks(_parse_metrics(data, source), source, batch_rows))


def _read_pb_file(path: Path, source: str) -> tuple[Message, str, bytes | None]:
    """A protobuf file parsed as a raw traces request, its record kind, and its bytes
    where the records are not spans (they are parsed again as what they are)."""
    with files.content_view(path) as data:
        request = _parse_raw_traces(data, source)
        kind = otlp_wire.record_kind(request)
        return request, kind, None if kind == "spans" else bytes(data)


def _iter_pb_file(path: Path, source: str, batch_rows: int) -> Iterator[Chunk]:
    """Chunks of a protobuf file: a traces request, or else a metrics request."""
    request, kind, data = _read_pb_file(path, source)
    if data is None:
        yield from otlp_wire.iter_span_chunks(request, source, batch_rows)
    elif kind == "logs":
        del request
        yield from otlp_logs.decode_logs_request(data, source, batch_rows)
    else:
        del request
        yield from _iter_pb_metric_chunks(_parse_metrics(data, source), source, batch_rows)


_PB_DATA = {
    "gauge": ("gauge", "gauge"),
    "sum": ("sum", "sum"),
    "histogram": ("histogram", "histogram"),
    "exponential_histogram": ("exponentialHistogram", "histogram"),
    "summary": ("summary", "histogram"),
}


def _pb_point(which: str, dp: Any) -> tuple[Any, ...]:
    if which in ("gauge", "sum"):
        kind = dp.WhichOneof("value")
        value = None if kind is None else float(getattr(dp, kind))
        return value, None, None, None, None
    total = dp.sum if which == "summary" or dp.HasField("sum") else None
    if which == "histogram":
        return histogram_point(
            dp.count, total, list(dp.explicit_bounds) or None, list(dp.bucket_counts) or None
        )
    return histogram_point(dp.count, total, None, None)


def _iter_pb_metric_chunks(
    request: ExportMetricsServiceRequest, source: str, batch_rows: int, prefix: str = ""
) -> Iterator[Chunk]:
    rows = MetricRows()
    for r, rm in enumerate(request.resource_metrics):
        res: ResourceInfo = resource_info(attrs_py(rm.resource.attributes))
        for s, sm in enumerate(rm.scope_metrics):
            for m, metric in enumerate(sm.metrics):
                which = metric.WhichOneof("data")
                if which is None:
                    continue
                key, kind = _PB_DATA[which]
                where = f"{prefix}resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}].{key}"
                for p, dp in enumerate(getattr(metric, which).data_points):
                    rows.add(
                        res,
                        metric.name,
                        kind,
                        metric.unit,
                        dp.time_unix_nano,
                        _pb_point(which, dp),
                        attrs_py(dp.attributes),
                        source,
                        f"{where}.dataPoints[{p}]",
                    )
                    if len(rows) >= batch_rows:
                        yield rows.chunk()
                        rows = MetricRows()
    if len(rows) or rows.rejects or rows.records:
        yield rows.chunk()


# ---------------------------------------------------------------------------------------
# JSON


def decode_json_request(
    doc: dict[str, Any],
    source: str,
    record_prefix: str = "",
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> list[Chunk]:
    """SPANS, METRICS and/or LOGS chunks from a parsed OTLP/JSON request; bad records
    rejected."""
    return list(_iter_json_request(doc, source, record_prefix, batch_rows))


def _iter_json_request(
    doc: Any, source: str, record_prefix: str, batch_rows: int
) -> Iterator[Chunk]:
    if not isinstance(doc, dict):
        raise FormatError(f"{source}: {record_prefix}not an OTLP JSON request (not an object)")
    has_spans = otlp_json.get(doc, "resourceSpans") is not None
    has_metrics = otlp_json.get(doc, "resourceMetrics") is not None
    if has_spans:
        yield from otlp_json.iter_span_chunks(doc, source, record_prefix, batch_rows)
    if has_metrics:
        yield from otlp_json.iter_metric_chunks(doc, source, record_prefix, batch_rows)
    if otlp_json.get(doc, "resourceLogs") is not None:
        yield from otlp_logs.iter_json_chunks(doc, source, record_prefix, batch_rows)


class _Batcher:
    """Gathers small chunks of one table into chunks of at most batch_rows rows."""

    def __init__(self, table: str, batch_rows: int) -> None:
        self.table = table
        self.batch_rows = batch_rows
        self.tables: list[pa.Table] = []
        self.rows = 0
        self.rejects: list[Reject] = []
        self.records = 0

    def add(self, chunk: Chunk) -> Iterator[Chunk]:
        """Take a chunk; yield a full chunk first when this one would not fit."""
        rows = chunk.data.num_rows if isinstance(chunk.data, pa.Table) else 0
        if self.rows and self.rows + rows > self.batch_rows:
            yield self.flush()
        if isinstance(chunk.data, pa.Table) and rows:
            self.tables.append(chunk.data)
        self.rows += rows
        self.rejects.extend(chunk.rejects)
        self.records += chunk.records or 0

    def flush(self) -> Chunk:
        """The gathered rows as one chunk, and start again."""
        schema = {"spans": SPANS, "metrics": METRICS, "logs": LOGS}[self.table]
        data = pa.concat_tables(self.tables) if self.tables else schema.empty_table()
        chunk = Chunk(self.table, data, self.rejects, records=self.records)  # type: ignore[arg-type]
        self.tables, self.rows, self.rejects, self.records = [], 0, [], 0
        return chunk

    def pending(self) -> bool:
        """Whether anything is gathered."""
        return bool(self.rows or self.rejects or self.records)


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a decompressed text file, empty lines skipped.

    Like files.iter_lines, but it closes its line reader itself: files.iter_lines lets the
    reader it wraps around the file be finalised unclosed, a ResourceWarning.
    """
    try:
        with files.open_binary(path) as raw, io.BufferedReader(raw) as reader:  # type: ignore[arg-type]
            for no, line in enumerate(reader, start=1):
                if line.strip():
                    yield no, line
    except FormatError:
        raise
    except Exception as exc:  # OSError, EOFError, zstandard.ZstdError
        raise FormatError(f"{path}: cannot decompress: {_one_line(exc)}") from exc


def _iter_jsonl(path: Path, batch_rows: int) -> Iterator[Chunk]:
    source = str(path)
    batchers = {t: _Batcher(t, batch_rows) for t in ("spans", "metrics", "logs")}
    for no, line in _iter_lines(path):
        prefix = f"line {no}: "
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            batchers["spans"].rejects.append(
                Reject(source, f"line {no}", f"invalid JSON: {_one_line(exc)}")
            )
            continue
        try:
            chunks: Iterable[Chunk] = list(_iter_json_request(doc, source, prefix, batch_rows))
        except FormatError as exc:
            reason = str(exc).removeprefix(f"{source}: {prefix}")
            batchers["spans"].rejects.append(Reject(source, f"line {no}", reason))
            continue
        for chunk in chunks:
            yield from batchers[chunk.table].add(chunk)
    for batcher in batchers.values():
        if batcher.pending():
            yield batcher.flush()


# ---------------------------------------------------------------------------------------
# Files


def decode_file(path: Path, kind: str, options: DecodeOptions) -> Iterator[Chunk]:
    """Chunks of SPANS and METRICS rows from an OTLP file of the given (sniffed) kind."""
    path = Path(path)
    source = str(path)
    batch_rows = max(1, options.batch_rows)
    if kind == "otlp-pb":
        yield from _iter_pb_file(path, source, batch_rows)
    elif kind == "otlp-json":
        data = files.read_all(path)
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise FormatError(f"{source}: invalid JSON: {_one_line(exc)}") from exc
        del data
        yield from _iter_json_request(doc, source, "", batch_rows)
    elif kind == "otlp-jsonl":
        yield from _iter_jsonl(path, batch_rows)
    else:
        raise FormatError(f"{source}: not an OTLP file (content kind {kind!r})")
