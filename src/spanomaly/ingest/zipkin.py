"""Decoder of Zipkin v2 JSON: a list of spans (as POSTed to `/api/v2/spans` or returned by
`/api/v2/trace/{id}`), or a list of traces, each a list of spans (`/api/v2/traces`).

A span has `traceId` (16 or 32 hex, left-padded to 32), `id` (16 hex), `parentId`, `name`,
`kind` (CLIENT, SERVER, PRODUCER, CONSUMER), `timestamp` and `duration` in microseconds,
`localEndpoint` and `remoteEndpoint` ({serviceName, ipv4, ipv6, port}), `annotations`,
`tags` (a string map), `debug` and `shared`. Ids shorter than their width are left-padded
with zeros, as Zipkin itself does.

Mapping to `schema.SPANS`:

- service: `localEndpoint.serviceName`, lower-cased as Zipkin does; instance: the local
  endpoint's `ipv4` (else `ipv6`) with `:port` where a port is given (`[ipv6]:port`); an
  endpoint without a port is the instance the same service shows with one port at that
  address in the same file (a client span's local endpoint has none).
  Zipkin carries no version or host: both are null.
- operation: `name`, "unknown" when missing or empty. kind: lower-cased `kind`,
  "unspecified" when missing.
- start_ns / duration_ns: `timestamp` / `duration` times 1000; a span without `timestamp`
  is rejected, one without `duration` (an instant or unfinished span) gets 0.
- status: the `error` tag present (any value) → error, with the tag value as
  status_message; else tag `otel.status_code` ERROR/OK; else an HTTP status >= 500 → error;
  else unset.
- http_method: `http.method`; http_route: `http.route`; http_status_code: `http.status_code`
  (a string in Zipkin, made an int); http_url: `http.url`, else `http.path`;
  peer_service: tag `peer.service`, else `remoteEndpoint.serviceName`.
- attributes: the tags as a JSON object. Annotations, `debug` and `shared` are not kept.

With `shared: true` Zipkin reports the server side of an RPC under the same span id as the
client side (B3 single-host spans). Both are decoded as they are, two rows with one
(trace_id, span_id); the store keeps one row per key, so deduplication happens there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spanomaly.errors import FormatError
from spanomaly.ingest import _json_spans as js
from spanomaly.ingest.base import Chunk, DecodeOptions
from spanomaly.ingest.files import read_all

_REQUIRED = ("traceId", "id", "timestamp")
_ID_KEY = "id"
_NO_ENDPOINT: tuple[str | None, str | None] = (None, None)


def decode_file(path: Path, options: DecodeOptions) -> Iterator[Chunk]:
    """Chunks of spans (at most options.batch_rows each) from a Zipkin v2 JSON file."""
    source = str(path)
    doc = js.load_json(read_all(path), source)
    yield from _decode(doc, source, options.batch_rows)


def decode_document(doc: object, source: str) -> list[Chunk]:
    """Chunks of spans from an already parsed Zipkin v2 JSON document (no I/O)."""
    return list(_decode(doc, source, DecodeOptions().batch_rows))


def _decode(doc: object, source: str, batch_rows: int) -> Iterator[Chunk]:
    records = _records(doc, source)
    yield from js.chunks(
        records, source, batch_rows, lambda r: js.missing(r.raw, _REQUIRED), _columns, _ID_KEY
    )


def _records(doc: object, source: str) -> list[js.Record]:
    """The span records of a span list or of a list of traces (lists of spans)."""
    if isinstance(doc, dict) and "traceId" in doc:
        doc = [doc]  # one span on its own
    if not isinstance(doc, list):
        raise FormatError(
            f"{source}: not Zipkin v2 JSON: expected a list of spans or of traces "
            f"(got {js.type_name(doc)})"
        )
    records: list[js.Record] = []
    for i, item in enumerate(doc):
        if isinstance(item, list):
            records.extend(js.Record(f"trace[{i}].span", j, s) for j, s in enumerate(item))
        else:
            records.append(js.Record("span", i, item))
    return records


def _tags(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if v is not None}


def _service(endpoint: object) -> str | None:
    if not isinstance(endpoint, dict):
        return None
    name = endpoint.get("serviceName")
    return name.lower() if isinstance(name, str) and name else None


def _address(endpoint: dict[str, Any]) -> str | None:
    ipv4, ipv6, port = endpoint.get("ipv4"), endpoint.get("ipv6"), endpoint.get("port")
    has_port = isinstance(port, int) and not isinstance(port, bool) and port > 0
    if isinstance(ipv4, str) and ipv4:
        return f"{ipv4}:{port}" if has_port else ipv4
    if isinstance(ipv6, str) and ipv6:
        return f"[{ipv6}]:{port}" if has_port else ipv6
    return None


def _local(
    endpoint: object, cache: dict[tuple[Any, ...], tuple[str | None, str | None]]
) -> tuple[str | None, str | None]:
    """(service, instance) of a local endpoint, computed once per distinct endpoint."""
    if not isinstance(endpoint, dict):
        return _NO_ENDPOINT
    key = (endpoint.get("serviceName"), endpoint.get("ipv4"), endpoint.get("ipv6"))
    key += (endpoint.get("port"),)
    try:
        return cache[key]
    except KeyError:
        cache[key] = found = (_service(endpoint), _address(endpoint))
        return found
    except TypeError:  # a field holding a list or object: not cacheable, rejected later
        return _service(endpoint), _address(endpoint)


def _with_ports(
    cache: dict[tuple[Any, ...], tuple[str | None, str | None]],
) -> dict[tuple[str | None, str | None], str]:
    """(service, address without port) -> the one address with a port that service shows
    at that address in the batch: a client span's local endpoint carries no port (it calls
    from an ephemeral one) while the same process's server spans carry its listening port,
    and both are one instance. An address seen with two ports is left as it is."""
    ported: dict[tuple[str | None, str], set[str]] = {}
    for service, instance in cache.values():
        if instance and ("]:" in instance or instance.count(":") == 1):  # [ipv6]:port, ipv4:port
            host = instance.rpartition(":")[0].strip("[]")
            ported.setdefault((service, host), set()).add(instance)
    return {(svc, host): next(iter(a)) for (svc, host), a in ported.items() if len(a) == 1}


def _name(value: object) -> str:
    return value if isinstance(value, str) and value else "unknown"


def _columns(records: list[js.Record]) -> js.Columns:
    spans: list[dict[str, Any]] = [r.raw for r in records]
    tags = [_tags(s.get("tags")) for s in spans]
    cache: dict[tuple[Any, ...], tuple[str | None, str | None]] = {}
    local = [_local(s.get("localEndpoint"), cache) for s in spans]
    same = _with_ports(cache)  # per distinct endpoint, not per span
    if same:
        local = [(svc, same.get((svc, inst), inst)) for svc, inst in local]
    codes = [
        js.http_status(js.first(t, "http.status_code", "http.response.status_code")) for t in tags
    ]
    nulls: list[str | None] = [None] * len(spans)
    return {
        "trace_id": [js.raw_id(s.get("traceId")) for s in spans],
        "span_id": [js.raw_id(s.get("id")) for s in spans],
        "parent_id": [js.raw_id(s.get("parentId")) for s in spans],
        "service": [e[0] for e in local],
        "instance": [e[1] for e in local],
        "version": nulls,
        "host": nulls,
        "operation": [_name(s.get("name")) for s in spans],
        "kind": [js.kind(s.get("kind")) for s in spans],
        "start_ns": [js.micros_to_ns(s.get("timestamp")) for s in spans],
        "duration_ns": [
            0 if s.get("duration") is None else js.micros_to_ns(s["duration"]) for s in spans
        ],
        "status": [js.status("error" in t, t, c) for t, c in zip(tags, codes, strict=True)],
        "status_message": [
            js.text(t.get("error")) or js.text(t.get("otel.status_description")) for t in tags
        ],
        "http_method": [js.text(js.first(t, "http.method", "http.request.method")) for t in tags],
        "http_route": [js.text(t.get("http.route")) for t in tags],
        "http_status_code": codes,
        "http_url": [js.text(js.first(t, "http.url", "url.full", "http.path")) for t in tags],
        "peer_service": [
            js.text(t.get("peer.service")) or _service(s.get("remoteEndpoint"))
            for s, t in zip(spans, tags, strict=True)
        ],
        "attributes": [js.attributes_json(t) for t in tags],
    }
