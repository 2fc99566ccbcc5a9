"""OTLP/JSON requests (already parsed by orjson) decoded by hand into SPANS and METRICS rows.

OTLP/JSON differs from the proto3 JSON mapping where it matters: trace and span ids are hex,
not base64, so `google.protobuf.json_format` is never used here. Keys are lowerCamelCase
(snake_case accepted too), int64 values come as strings or numbers, enums as integers (their
names accepted too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from spanomaly.errors import FormatError
from spanomaly.ingest.base import Chunk, Reject
from spanomaly.ingest.otlp_common import (
    BytesText,
    MetricRows,
    ResourceInfo,
    SpanRows,
    clamp_int64,
    dumps,
    histogram_point,
    kind_name,
    resource_info,
    span_attribute_columns,
    status_name,
)


def _snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)


_SNAKE: dict[str, str] = {}


def get(obj: dict[str, Any], key: str) -> Any:
    """obj[key] for a lowerCamelCase key, or its snake_case spelling; None when absent."""
    value = obj.get(key)
    if value is None:
        snake = _SNAKE.get(key)
        if snake is None:
            snake = _SNAKE[key] = _snake(key)
        value = obj.get(snake)
    return value


def to_int(value: Any) -> int | None:
    """An int64 given as a number or a decimal string; None when absent or not an integer."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return clamp_int64(value)
    if isinstance(value, float):
        return clamp_int64(int(value)) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return clamp_int64(int(value.strip()))
        except ValueError:
            return None
    return None


def to_float(value: Any) -> float | None:
    """A double given as a number or a string ("NaN", "Infinity" too); None otherwise."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


_VALUE_KEYS = {
    "stringValue": "string",
    "string_value": "string",
    "intValue": "int",
    "int_value": "int",
    "boolValue": "bool",
    "bool_value": "bool",
    "doubleValue": "double",
    "double_value": "double",
    "arrayValue": "array",
    "array_value": "array",
    "kvlistValue": "kvlist",
    "kvlist_value": "kvlist",
    "bytesValue": "bytes",
    "bytes_value": "bytes",
}


def anyvalue(value: Any) -> Any:
    """An OTLP/JSON AnyValue as a plain Python value (bytes stay a base64 string)."""
    if not isinstance(value, dict):
        return None
    if len(value) == 1:  # the usual case: a string
        item = value.get("stringValue")
        if isinstance(item, str):
            return item
    out: Any = None
    for key, item in value.items():  # a oneof: the last field set wins, as in protobuf
        kind = _VALUE_KEYS.get(key)
        if kind == "string":
            out = item if isinstance(item, str) else None if item is None else str(item)
        elif kind == "int":
            out = to_int(item)
        elif kind == "bool":
            out = bool(item)
        elif kind == "double":
            out = to_float(item)
        elif kind == "array":
            values = get(item, "values") if isinstance(item, dict) else None
            out = [anyvalue(v) for v in values or []]
        elif kind == "kvlist":
            values = get(item, "values") if isinstance(item, dict) else None
            out = attributes(values)
        elif kind == "bytes":
            out = BytesText(item) if isinstance(item, str) else None
    return out


def attributes(kvs: Any) -> dict[str, Any]:
    """An OTLP/JSON list of KeyValue as a dict (a repeated key keeps its last value)."""
    if not isinstance(kvs, list):
        return {}
    out: dict[str, Any] = {}
    for kv in kvs:
        if isinstance(kv, dict):
            key = kv.get("key")
            key = key if isinstance(key, str) else "" if key is None else str(key)
            out[key] = anyvalue(kv.get("value"))
    return out


def hex_id(value: Any) -> str:
    """A hex id as lower-case text ("" when absent; validation rejects what is not hex)."""
    return value.strip().lower() if isinstance(value, str) else ""


def _list(obj: dict[str, Any], key: str, source: str, where: str) -> list[Any]:
    value = get(obj, key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise FormatError(f"{source}: {where}{key} is not a list")
    return value


def _resource(rs: dict[str, Any]) -> ResourceInfo:
    res = get(rs, "resource")
    return resource_info(attributes(get(res, "attributes")) if isinstance(res, dict) else {})


def _span_values(sp: dict[str, Any], res: ResourceInfo) -> tuple[Any, ...]:
    attrs = attributes(get(sp, "attributes"))
    start = to_int(get(sp, "startTimeUnixNano")) or None
    end = to_int(get(sp, "endTimeUnixNano")) or 0
    status = get(sp, "status")
    status = status if isinstance(status, dict) else {}
    name = get(sp, "name")
    parent = hex_id(get(sp, "parentSpanId"))
    return (
        hex_id(get(sp, "traceId")),
        hex_id(get(sp, "spanId")),
        parent or None,
        res.service,
        res.instance,
        res.version,
        res.host,
        name if isinstance(name, str) and name else None,  # no name, "" or not text: refused
        kind_name(get(sp, "kind") or 0),
        start,
        end - (start or 0),
        status_name(get(status, "code") or 0),
        get(status, "message") or None,
        *span_attribute_columns(attrs),
        dumps(attrs),
    )


def iter_span_chunks(
    doc: dict[str, Any], source: str, prefix: str, batch_rows: int
) -> Iterator[Chunk]:
    """SPANS chunks of at most batch_rows rows from an OTLP/JSON traces request."""
    rows = SpanRows()
    rejects: list[Reject] = []
    for r, rs in enumerate(_list(doc, "resourceSpans", source, "")):
        where = f"{prefix}resourceSpans[{r}]"
        if not isinstance(rs, dict):
            rejects.append(Reject(source, where, "not a JSON object"))
            continue
        res = _resource(rs)
        scopes = get(rs, "scopeSpans") or get(rs, "instrumentationLibrarySpans") or []
        for s, ss in enumerate(scopes if isinstance(scopes, list) else []):
            if not isinstance(ss, dict):
                rejects.append(Reject(source, f"{where}.scopeSpans[{s}]", "not a JSON object"))
                continue
            spans = get(ss, "spans") or []
            for k, sp in enumerate(spans if isinstance(spans, list) else []):
                label = f"{where}.scopeSpans[{s}].spans[{k}]"
                if not isinstance(sp, dict):
                    rejects.append(Reject(source, label, "not a JSON object"))
                    continue
                rows.add(label, _span_values(sp, res))
                if len(rows) >= batch_rows:
                    chunk = rows.chunk(source)
                    chunk.rejects[:0] = rejects
                    yield chunk
                    rows, rejects = SpanRows(), []
    if len(rows) or rejects:
        chunk = rows.chunk(source)
        chunk.rejects[:0] = rejects
        yield chunk


def _number_point(dp: dict[str, Any]) -> tuple[Any, ...]:
    value = get(dp, "asDouble")
    number = to_float(value) if value is not None else None
    if value is None:
        as_int = to_int(get(dp, "asInt"))
        number = float(as_int) if as_int is not None else None
    return number, None, None, None, None


def _histogram_point(dp: dict[str, Any], explicit: bool) -> tuple[Any, ...]:
    count = to_int(get(dp, "count")) or 0
    total = to_float(get(dp, "sum"))
    if not explicit:
        return histogram_point(count, total, None, None)
    bounds = [to_float(b) for b in get(dp, "explicitBounds") or []]
    buckets = [to_int(c) for c in get(dp, "bucketCounts") or []]
    return histogram_point(count, total, bounds or None, buckets or None)


_METRIC_DATA = (
    ("gauge", "gauge"),
    ("sum", "sum"),
    ("histogram", "histogram"),
    ("exponentialHistogram", "histogram"),
    ("summary", "histogram"),
)


def iter_metric_chunks(
    doc: dict[str, Any], source: str, prefix: str, batch_rows: int
) -> Iterator[Chunk]:
    """METRICS chunks of at most batch_rows rows from an OTLP/JSON metrics request."""
    rows = MetricRows()
    for r, rm in enumerate(_list(doc, "resourceMetrics", source, "")):
        where = f"{prefix}resourceMetrics[{r}]"
        if not isinstance(rm, dict):
            rows.rejects.append(Reject(source, where, "not a JSON object"))
            continue
        res = _resource(rm)
        scopes = get(rm, "scopeMetrics") or get(rm, "instrumentationLibraryMetrics") or []
        for s, sm in enumerate(scopes if isinstance(scopes, list) else []):
            metrics = get(sm, "metrics") if isinstance(sm, dict) else None
            for m, metric in enumerate(metrics if isinstance(metrics, list) else []):
                mwhere = f"{where}.scopeMetrics[{s}].metrics[{m}]"
                if not isinstance(metric, dict):
                    rows.rejects.append(Reject(source, mwhere, "not a JSON object"))
                    continue
                name = get(metric, "name") or ""
                unit = get(metric, "unit")
                for key, kind in _METRIC_DATA:
                    data = get(metric, key)
                    if not isinstance(data, dict):
                        continue
                    points = get(data, "dataPoints") or []
                    for p, dp in enumerate(points if isinstance(points, list) else []):
                        label = f"{mwhere}.{key}.dataPoints[{p}]"
                        if not isinstance(dp, dict):
                            rows.rejects.append(Reject(source, label, "not a JSON object"))
                            continue
                        point = (
                            _number_point(dp)
                            if kind != "histogram"
                            else _histogram_point(dp, key == "histogram")
                        )
                        rows.add(
                            res,
                            name,
                            kind,
                            unit,
                            to_int(get(dp, "timeUnixNano")),
                            point,
                            attributes(get(dp, "attributes")),
                            source,
                            label,
                        )
                        if len(rows) >= batch_rows:
                            yield rows.chunk()
                            rows = MetricRows()
    if len(rows) or rows.rejects or rows.records:
        yield rows.chunk()
