"""The same small set of traces written as a Jaeger, a Zipkin and an OTLP/JSON file, for the
service-graph tests: gateway calls orders twice (on two instances, one call an error) and
users once; orders calls db on each of its calls. Expected tables: `EDGES`, `NODES`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

T0_US = 1_700_000_000_000_000
# (trace, span, parent, service, instance, start µs from T0, duration µs, error)
SPANS = [
    ("a1" * 16, "1" * 16, None, "gateway", "gw-1", 0, 9000, False),
    ("a1" * 16, "2" * 16, "1" * 16, "orders", "orders-1", 100, 8000, False),
    ("a1" * 16, "3" * 16, "2" * 16, "db", "db-1", 200, 3000, False),
    ("b2" * 16, "4" * 16, None, "gateway", "gw-1", 1_000_000, 7000, True),
    ("b2" * 16, "5" * 16, "4" * 16, "orders", "orders-2", 1_000_100, 6000, True),
    ("b2" * 16, "6" * 16, "5" * 16, "db", "db-1", 1_000_200, 1000, False),
    ("c3" * 16, "7" * 16, None, "gateway", "gw-1", 2_000_000, 2000, False),
    ("c3" * 16, "8" * 16, "7" * 16, "users", "users-1", 2_000_100, 1000, False),
]
# (caller, callee, calls, errors, mean_ms)
EDGES = [("gateway", "orders", 2, 1, 7.0), ("gateway", "users", 1, 0, 1.0),
         ("orders", "db", 2, 0, 2.0)]  # fmt: skip
# (service, instances, requests, errors)
NODES = [("db", 1, 2, 0), ("gateway", 1, 3, 1), ("orders", 2, 2, 1), ("users", 1, 1, 0)]


def jaeger(path: Path) -> Path:
    """The spans as a Jaeger query answer."""
    traces: dict[str, dict[str, Any]] = {}
    for tid, sid, parent, svc, inst, start, dur, err in SPANS:
        t = traces.setdefault(tid, {"traceID": tid, "spans": [], "processes": {}})
        t["processes"][inst] = {
            "serviceName": svc,
            "tags": [{"key": "service.instance.id", "type": "string", "value": inst}],
        }
        refs = [{"refType": "CHILD_OF", "traceID": tid, "spanID": parent}] if parent else []
        tags = [{"key": "error", "type": "bool", "value": True}] if err else []
        t["spans"].append({"traceID": tid, "spanID": sid, "operationName": f"{svc} op",
                           "references": refs, "startTime": T0_US + start, "duration": dur,
                           "tags": tags, "processID": inst})  # fmt: skip
    path.write_text(json.dumps({"data": list(traces.values())}))
    return path


def zipkin(path: Path) -> Path:
    """The spans as a Zipkin v2 JSON list (an instance per address)."""
    addresses = {inst: f"10.0.0.{k + 1}" for k, inst in enumerate(sorted({s[4] for s in SPANS}))}
    out = []
    for tid, sid, parent, svc, inst, start, dur, err in SPANS:
        span: dict[str, Any] = {"traceId": tid, "id": sid, "name": f"{svc} op",
                                "timestamp": T0_US + start, "duration": dur,
                                "localEndpoint": {"serviceName": svc, "ipv4": addresses[inst],
                                                  "port": 8080}}  # fmt: skip
        if parent:
            span["parentId"] = parent
        if err:
            span["tags"] = {"error": "boom"}
        out.append(span)
    path.write_text(json.dumps(out))
    return path


def otlp(path: Path) -> Path:
    """The spans as an OTLP/JSON export request (a resource per instance)."""
    resources: dict[str, dict[str, Any]] = {}
    for tid, sid, parent, svc, inst, start, dur, err in SPANS:
        r = resources.setdefault(inst, {"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": svc}},
            {"key": "service.instance.id", "value": {"stringValue": inst}}]},
            "scopeSpans": [{"spans": []}]})  # fmt: skip
        begin = (T0_US + start) * 1000
        span: dict[str, Any] = {"traceId": tid, "spanId": sid, "name": f"{svc} op",
                                "startTimeUnixNano": str(begin),
                                "endTimeUnixNano": str(begin + dur * 1000),
                                "status": {"code": 2 if err else 1}}  # fmt: skip
        if parent:
            span["parentSpanId"] = parent
        r["scopeSpans"][0]["spans"].append(span)
    path.write_text(json.dumps({"resourceSpans": list(resources.values())}))
    return path


WRITERS = {"jaeger": jaeger, "zipkin": zipkin, "otlp": otlp}
