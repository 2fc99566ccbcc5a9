"""Pieces shared by the OTLP protobuf and JSON decoders: resources, values, row builders."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from spanomaly.ingest.base import Chunk, Reject
from spanomaly.ingest.validate import split_valid
from spanomaly.schema import KIND_VALUES, METRICS, SPANS, STATUS_VALUES

UNKNOWN_SERVICE = "unknown_service"
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# Span attributes copied into their own columns, most preferred key first.
HTTP_METHOD_KEYS = ("http.request.method", "http.method")
HTTP_ROUTE_KEYS = ("http.route",)
HTTP_STATUS_KEYS = ("http.response.status_code", "http.status_code")
HTTP_URL_KEYS = ("url.full", "http.url", "http.target", "url.path")
PEER_SERVICE_KEYS = ("peer.service",)


class BytesText(str):
    """The base64 text of a bytes attribute value: JSON shows it as text, but it is no text
    attribute (http_method and friends take only string values)."""

    __slots__ = ()


@dataclass(frozen=True)
class ResourceInfo:
    """The columns a resource gives every span or data point it holds."""

    service: str
    instance: str | None
    version: str | None
    host: str | None


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return dumps(value)


def resource_info(attrs: Mapping[str, Any]) -> ResourceInfo:
    """service, instance, version and host from a resource's attributes."""
    service = _text(attrs.get("service.name")) or UNKNOWN_SERVICE
    host = _text(attrs.get("host.name")) or _text(attrs.get("k8s.node.name"))
    instance = _text(attrs.get("service.instance.id")) or _text(attrs.get("k8s.pod.name"))
    if instance is None:
        pid = _text(attrs.get("process.pid"))
        host_name = _text(attrs.get("host.name"))
        if pid is not None and host_name is not None:
            instance = f"{host_name}:{pid}"
    return ResourceInfo(service, instance, _text(attrs.get("service.version")), host)


def anyvalue_py(value: Any) -> Any:
    """A protobuf AnyValue as a plain Python value (bytes become a base64 string)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "bool_value":
        return value.bool_value
    if which == "double_value":
        return value.double_value
    if which == "array_value":
        return [anyvalue_py(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attrs_py(value.kvlist_value.values)
    if which == "bytes_value":
        return BytesText(base64.b64encode(value.bytes_value).decode("ascii"))
    return None


def attrs_py(kvs: Iterable[Any]) -> dict[str, Any]:
    """A protobuf list of KeyValue as a dict (a repeated key keeps its last value)."""
    return {kv.key: anyvalue_py(kv.value) for kv in kvs}


def dumps(value: Any) -> str:
    """Compact JSON text of a plain value (NaN and infinities become null)."""
    return orjson.dumps(value).decode()


def kind_name(code: Any) -> str:
    """A span kind enum (number or SPAN_KIND_* name) as one of schema.KIND_VALUES."""
    if isinstance(code, str):
        name = code.upper().removeprefix("SPAN_KIND_").lower()
        if name in KIND_VALUES:
            return name
        code = int(code) if code.isdigit() else 0
    return (
        KIND_VALUES[code]
        if isinstance(code, int) and 0 <= code < len(KIND_VALUES)
        else (KIND_VALUES[0])
    )


def status_name(code: Any) -> str:
    """A status code enum (number or STATUS_CODE_* name) as one of schema.STATUS_VALUES."""
    if isinstance(code, str):
        name = code.upper().removeprefix("STATUS_CODE_").lower()
        if name in STATUS_VALUES:
            return name
        code = int(code) if code.isdigit() else 0
    return (
        STATUS_VALUES[code]
        if isinstance(code, int) and 0 <= code < len(STATUS_VALUES)
        else (STATUS_VALUES[0])
    )


def http_status(value: Any) -> int | None:
    """An HTTP status code attribute (int or numeric string) as an int32, else None."""
    if isinstance(value, bool | BytesText):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():
            return None
        value = int(value)
    if isinstance(value, int) and 0 <= value < 2**31:
        return value
    return None


def span_attribute_columns(attrs: Mapping[str, Any]) -> tuple[Any, ...]:
    """(http_method, http_route, http_status_code, http_url, peer_service) from attributes."""

    def first(keys: tuple[str, ...]) -> str | None:
        for key in keys:
            value = attrs.get(key)
            if isinstance(value, str) and not isinstance(value, BytesText):
                return value
        return None

    status = None
    for key in HTTP_STATUS_KEYS:
        if key in attrs:
            status = http_status(attrs[key])
            if status is not None:
                break
    return (
        first(HTTP_METHOD_KEYS),
        first(HTTP_ROUTE_KEYS),
        status,
        first(HTTP_URL_KEYS),
        first(PEER_SERVICE_KEYS),
    )


def clamp_int64(value: int) -> int | None:
    """The value when it fits an int64, else None."""
    return value if _INT64_MIN <= value <= _INT64_MAX else None


class SpanRows:
    """Column lists for spans decoded one by one (JSON), turned into SPANS chunks."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in SPANS.names}
        self.labels: list[str] = []

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, label: str, values: tuple[Any, ...]) -> None:
        """Append one span: values in SPANS column order."""
        for column, value in zip(self.columns.values(), values, strict=True):
            column.append(value)
        self.labels.append(label)

    def chunk(self, source: str) -> Chunk:
        """The rows as one validated SPANS chunk; invalid rows become Rejects."""
        table = pa.table(
            {name: pa.array(col, SPANS.field(name).type) for name, col in self.columns.items()}
        )
        labels = self.labels
        good, rejects = split_valid(table, source, lambda i: labels[i])
        return Chunk("spans", good, rejects, records=len(labels))


class MetricRows:
    """Column lists for metric data points, turned into METRICS chunks."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in METRICS.names}
        self.rejects: list[Reject] = []
        self.records = 0

    def __len__(self) -> int:
        return len(self.columns["time_ns"])

    def add(
        self,
        res: ResourceInfo,
        name: str,
        kind: str,
        unit: str | None,
        time_ns: int | None,
        point: tuple[Any, ...],
        attributes: Mapping[str, Any],
        source: str,
        label: str,
    ) -> None:
        """Append one data point (value, count, sum, bounds, bucket_counts) or reject it."""
        self.records += 1
        if not name:
            self.rejects.append(Reject(source, label, "metric name is missing"))
            return
        if not time_ns:
            self.rejects.append(Reject(source, label, "data point time is missing"))
            return
        value, count, total, bounds, buckets = point
        c = self.columns
        c["time_ns"].append(time_ns)
        c["service"].append(res.service)
        c["instance"].append(res.instance)
        c["host"].append(res.host)
        c["name"].append(name)
        c["kind"].append(kind)
        c["unit"].append(unit or None)
        c["value"].append(value)
        c["count"].append(count)
        c["sum"].append(total)
        c["bounds"].append(bounds)
        c["bucket_counts"].append(buckets)
        c["attributes"].append(orjson.dumps(attributes, option=orjson.OPT_SORT_KEYS).decode())

    def chunk(self) -> Chunk:
        """The rows as one METRICS chunk."""
        table = pa.table(
            {name: pa.array(col, METRICS.field(name).type) for name, col in self.columns.items()},
            schema=METRICS,
        )
        return Chunk("metrics", table, list(self.rejects), records=self.records)


def histogram_point(
    count: int, total: float | None, bounds: list[float] | None, buckets: list[int] | None
) -> tuple[Any, ...]:
    """(value, count, sum, bounds, bucket_counts) of a histogram; value is the mean."""
    value = total / count if count and total is not None else None
    return value, count, total, bounds, buckets
