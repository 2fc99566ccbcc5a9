"""The dashboard's read queries: bounded DuckDB SQL over the store, JSON-ready results.

Every function takes the store (called in the writer thread through `Writer.call`, so it
never races the collector's writes) and returns plain dicts and lists. Queries are
bounded: a time range (default: the last `DEFAULT_WINDOW_S` seconds of data) and a LIMIT;
aggregation happens in SQL. Times go out as ISO-8601 (``time``) and milliseconds since
the epoch (``time_ms``, a float: JavaScript cannot hold nanosecond integers exactly).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from spanomaly.evaluate.metrics import alarms
from spanomaly.features.graph import GRAPH_SCHEMA, findings_anomaly
from spanomaly.rca.ranking import rank
from spanomaly.store.base import Store
from spanomaly.timeparse import iso

DEFAULT_WINDOW_S = 900.0  # the overview: the last 15 minutes of data
ALARM_ACTIVE_S = 60.0  # an alarm with a finding this close to the window's end is current
MAX_FINDINGS = 500  # rows per page of the findings list
MAX_WINDOW_FINDINGS = 5000  # findings the overview ranks at most
MAX_TRACE_SPANS = 5000
MAX_SERIES = 24  # metric names per instance chart
SERIES_POINTS = 240  # buckets per series
_NS = 1_000_000_000
_FINDING_COLUMNS = (
    "finding_id, time_ns, detector, entity, trace_id, span_id, service, instance, "
    "operation, score, threshold, reason, feedback"
)


def _ms(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e6


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def _scalar(store: Store, sql: str, params: list[object] | None = None) -> Any:
    table = store.sql(sql, params)
    return table.column(0)[0].as_py() if table.num_rows else None


@dataclass(frozen=True)
class Window:
    """A half-open time range [start_ns, end_ns) of a view."""

    start_ns: int
    end_ns: int

    def to_json(self) -> dict[str, Any]:
        """The window as the API reports it."""
        return {
            "from": iso(self.start_ns),
            "to": iso(self.end_ns),
            "from_ms": _ms(self.start_ns),
            "to_ms": _ms(self.end_ns),
        }


def data_end(store: Store) -> int | None:
    """The latest span start or metric time in the store (ns), None when empty."""
    return _scalar(
        store,
        "SELECT max(t) FROM (SELECT max(start_ns) AS t FROM spans "
        "UNION ALL SELECT max(time_ns) FROM metrics)",
    )


def window(
    store: Store, start_ns: int | None, end_ns: int | None, default_s: float = DEFAULT_WINDOW_S
) -> Window:
    """The given range with open sides filled in: the last default_s seconds of data."""
    if end_ns is None:
        last = data_end(store)
        end_ns = (last + 1) if last is not None else int(datetime.now(UTC).timestamp() * _NS)
    if start_ns is None:
        start_ns = end_ns - int(default_s * _NS)
    return Window(start_ns, end_ns)


# -- overview: graph, alarms, suspects ---------------------------------------------------------


def _traffic(store: Store, w: Window) -> pa.Table:
    """(service, instance, requests, errors, sum_ns) of the spans starting in the window."""
    return store.sql(
        "SELECT service, instance, count(*) AS requests, "
        "count(*) FILTER (WHERE status = 'error') AS errors, sum(duration_ns)::DOUBLE AS sum_ns "
        "FROM spans WHERE start_ns >= ? AND start_ns < ? GROUP BY ALL",
        [w.start_ns, w.end_ns],
    )


def _calls(store: Store, w: Window) -> pa.Table:
    """Calls across services in the window: (caller, callee, callee_instance, calls, ...)."""
    return store.sql(
        "SELECT p.service AS caller, c.service AS callee, c.instance AS callee_instance, "
        "count(*) AS calls, count(*) FILTER (WHERE c.status = 'error') AS errors, "
        "sum(c.duration_ns)::DOUBLE AS sum_ns "
        "FROM spans c JOIN spans p ON p.trace_id = c.trace_id AND p.span_id = c.parent_id "
        "WHERE c.start_ns >= ? AND c.start_ns < ? AND p.start_ns >= ? AND p.start_ns < ? "
        "AND p.service <> c.service GROUP BY ALL",
        # a parent starts before its child; an hour of slack covers long requests
        [w.start_ns, w.end_ns, w.start_ns - 3600 * _NS, w.end_ns],
    )


def window_findings(store: Store, w: Window, limit: int = MAX_WINDOW_FINDINGS) -> pa.Table:
    """Findings in the window that no operator marked normal, the strongest first."""
    return store.sql(
        f"SELECT {_FINDING_COLUMNS}, details FROM findings "
        "WHERE time_ns >= ? AND time_ns < ? AND feedback IS NULL "
        "ORDER BY score DESC LIMIT ?",
        [w.start_ns, w.end_ns, limit],
    )


def graph(store: Store, w: Window, found: pa.Table, traffic: pa.Table) -> dict[str, Any]:
    """Nodes (services) and edges (calls) of the window with their rates and anomalies."""
    seconds = max((w.end_ns - w.start_ns) / _NS, 1e-9)
    per_service: dict[str, dict[str, Any]] = {
        s: {"service": s, "instances": 0, "requests": 0, "errors": 0, "sum_ns": 0}
        for s in store.services()
    }
    for r in _rows(traffic):  # one row per instance: hundreds at most
        node = per_service.setdefault(
            r["service"],
            {"service": r["service"], "instances": 0, "requests": 0, "errors": 0, "sum_ns": 0},
        )
        node["instances"] += 1
        node["requests"] += r["requests"]
        node["errors"] += r["errors"]
        node["sum_ns"] += r["sum_ns"] or 0
    counts: dict[str, tuple[int, float]] = {}
    for service, score in zip(
        found.column("service").to_pylist(), found.column("score").to_pylist(), strict=True
    ):
        n, best = counts.get(service or "", (0, 0.0))
        counts[service or ""] = (n + 1, max(best, score or 0.0))
    nodes = []
    for node in per_service.values():
        n, best = counts.get(node["service"], (0, 0.0))
        sum_ns = node.pop("sum_ns")
        nodes.append(
            node
            | {
                "rate": round(node["requests"] / seconds, 4),
                "mean_ms": round(sum_ns / node["requests"] / 1e6, 3) if node["requests"] else None,
                "findings": n,
                "max_score": round(best, 4),
                "anomaly": findings_anomaly(n),
            }
        )
    calls = _calls(store, w)
    edges: dict[tuple[str, str], dict[str, Any]] = {}
    for r in _rows(calls):  # one row per (caller, callee instance)
        e = edges.setdefault(
            (r["caller"], r["callee"]),
            {"caller": r["caller"], "callee": r["callee"], "calls": 0, "errors": 0, "sum_ns": 0},
        )
        e["calls"] += r["calls"]
        e["errors"] += r["errors"]
        e["sum_ns"] += r["sum_ns"] or 0
    edge_list = [
        {k: v for k, v in e.items() if k != "sum_ns"}
        | {
            "rate": round(e["calls"] / seconds, 4),
            "mean_ms": round(e["sum_ns"] / e["calls"] / 1e6, 3),
        }
        for e in edges.values()
    ]
    return {
        "nodes": sorted(nodes, key=lambda n: n["service"]),
        "edges": sorted(edge_list, key=lambda e: (e["caller"], e["callee"])),
        "calls": calls,
    }


def overview(store: Store, w: Window, top: int = 5) -> dict[str, Any]:
    """The overview: service graph, alarms (current ones flagged) and top suspects."""
    found = window_findings(store, w)
    traffic = _traffic(store, w)
    g = graph(store, w, found, traffic)
    calls: pa.Table = g.pop("calls")
    incidents = alarms(found) if found.num_rows else None
    alarm_list = []
    if incidents is not None:
        active_from = w.end_ns - int(ALARM_ACTIVE_S * _NS)
        for a in _rows(incidents.sort_by([("end_ns", "descending")])):
            alarm_list.append(
                {
                    "service": a["service"],
                    "from": iso(a["start_ns"]),
                    "to": iso(a["end_ns"]),
                    "from_ms": _ms(a["start_ns"]),
                    "to_ms": _ms(a["end_ns"]),
                    "findings": a["findings"],
                    "active": a["end_ns"] >= active_from,
                }
            )
    suspects: list[dict[str, Any]] = []
    if found.num_rows:
        edges = calls.select(["caller", "callee", "callee_instance", "calls"]).cast(GRAPH_SCHEMA)
        ranked = rank(found, edges, traffic.select(["service", "instance", "requests"]))
        suspects = [
            r | {"evidence": json.loads(r["evidence"]) if r["evidence"] else None}
            for r in _rows(ranked.slice(0, top))
        ]
    return {
        "window": w.to_json(),
        "graph": g,
        "alarms": alarm_list,
        "suspects": suspects,
        "findings": found.num_rows,
    }


# -- findings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FindingQuery:
    """Filters of the findings list."""

    start_ns: int | None = None
    end_ns: int | None = None
    service: str | None = None
    kind: str | None = None  # entity: trace|instance|span
    detector: str | None = None  # prefix, e.g. 'sequence' or 'point:ecod'
    include_normal: bool = True  # findings marked as false positives too
    limit: int = 100
    offset: int = 0


def _finding_json(r: dict[str, Any]) -> dict[str, Any]:
    r = dict(r)
    r["time"] = iso(r["time_ns"])
    r["time_ms"] = _ms(r.pop("time_ns"))
    if "details" in r:
        r["details"] = json.loads(r["details"]) if r["details"] else None
    return r


def findings(store: Store, q: FindingQuery) -> dict[str, Any]:
    """A page of findings matching the filters, newest first, and how many match."""
    where, params = ["TRUE"], []
    for column, op, value in (
        ("time_ns", ">=", q.start_ns),
        ("time_ns", "<", q.end_ns),
        ("service", "=", q.service),
        ("entity", "=", q.kind),
    ):
        if value is not None:
            where.append(f"{column} {op} ?")
            params.append(value)
    if q.detector:
        where.append("starts_with(detector, ?)")
        params.append(q.detector)
    if not q.include_normal:
        where.append("feedback IS NULL")
    cond = " AND ".join(where)
    total = _scalar(store, f"SELECT count(*) FROM findings WHERE {cond}", params)
    limit = max(1, min(q.limit, MAX_FINDINGS))
    page = store.sql(
        f"SELECT {_FINDING_COLUMNS} FROM findings WHERE {cond} "
        "ORDER BY time_ns DESC, finding_id LIMIT ? OFFSET ?",
        [*params, limit, max(q.offset, 0)],
    )
    return {"total": total, "items": [_finding_json(r) for r in _rows(page)]}


def finding(store: Store, finding_id: str) -> dict[str, Any] | None:
    """One finding with its explanation (details parsed), None when unknown."""
    rows = _rows(
        store.sql(
            f"SELECT {_FINDING_COLUMNS}, details FROM findings WHERE finding_id = ?", [finding_id]
        )
    )
    return _finding_json(rows[0]) if rows else None


def filters(store: Store) -> dict[str, Any]:
    """Values the findings filters offer: services, kinds, detectors, time range."""
    kinds = store.sql("SELECT DISTINCT entity FROM findings WHERE entity IS NOT NULL ORDER BY 1")
    detectors = store.sql("SELECT DISTINCT detector FROM findings ORDER BY 1 LIMIT 200")
    span = store.sql("SELECT min(time_ns) AS lo, max(time_ns) AS hi FROM findings").to_pylist()[0]
    return {
        "services": store.services(),
        "kinds": kinds.column(0).to_pylist(),
        "detectors": detectors.column(0).to_pylist(),
        "from": iso(span["lo"]),
        "to": iso(span["hi"]),
        "from_ms": _ms(span["lo"]),
        "to_ms": _ms(span["hi"]),
    }


# -- traces -----------------------------------------------------------------------------------


def trace(store: Store, trace_id: str, limit: int = MAX_TRACE_SPANS) -> dict[str, Any] | None:
    """The spans of a trace (offsets from its start in ms) and its findings; None if unknown."""
    spans = store.sql(
        "WITH s AS (SELECT * FROM spans WHERE trace_id = ?) "
        "SELECT span_id, parent_id, service, instance, operation, kind, status, "
        "status_message, http_method, http_route, http_status_code, http_url, "
        "(start_ns - min(start_ns) OVER ()) / 1e6 AS offset_ms, duration_ns / 1e6 AS "
        "duration_ms, start_ns FROM s ORDER BY start_ns, span_id LIMIT ?",
        [trace_id, limit],
    )
    if not spans.num_rows:
        return None
    start = spans.column("start_ns")[0].as_py()
    rows = _rows(spans.drop_columns(["start_ns"]))
    found = store.sql(
        f"SELECT {_FINDING_COLUMNS}, details FROM findings WHERE trace_id = ? "
        "ORDER BY score DESC LIMIT 50",
        [trace_id],
    )
    findings = [_finding_json(r) for r in _rows(found)]
    return {
        "trace_id": trace_id,
        "start": iso(start),
        "start_ms": _ms(start),
        "spans": rows,
        "truncated": len(rows) >= limit,
        "findings": findings,
        "logs": trace_log_lines(store, trace_id, start, findings),
    }


def trace_log_lines(
    store: Store, trace_id: str, start_ns: int, findings: list[dict[str, Any]], limit: int = 500
) -> list[dict[str, Any]]:
    """The log lines of a trace (offsets from its start in ms), each with its span, and
    `finding` set on a line that a finding names as its deviating event."""
    lines = _rows(
        store.sql(
            "SELECT span_id, (time_ns - ?) / 1e6 AS offset_ms, time_ns, severity, body, "
            "template_id FROM logs WHERE trace_id = ? ORDER BY time_ns, span_id LIMIT ?",
            [start_ns, trace_id, limit],
        )
    )
    named = {}  # (span, time) of the log-line events the findings name
    for f in findings:
        event = (f.get("details") or {}).get("event") or {}
        if str(event.get("key", "")).startswith("log | "):
            named[(event.get("span_id"), event.get("start"))] = f["finding_id"]
    for line in lines:  # one trace's lines (LIMIT above), not the store's
        line["finding"] = named.get((line["span_id"], iso(line.pop("time_ns"))))
    return lines


# -- instances --------------------------------------------------------------------------------


def instances(store: Store, limit: int = 2000) -> list[dict[str, Any]]:
    """Every instance with its service, span and metric counts and its findings."""
    return _rows(
        store.sql(
            "WITH u AS ("
            " SELECT service, instance, count(*) AS spans, 0 AS points FROM spans "
            " WHERE instance IS NOT NULL GROUP BY ALL UNION ALL "
            " SELECT service, instance, 0, count(*) FROM metrics "
            " WHERE instance IS NOT NULL GROUP BY ALL), "
            "f AS (SELECT instance, count(*) AS findings FROM findings "
            " WHERE instance IS NOT NULL AND feedback IS NULL GROUP BY ALL) "
            "SELECT u.service, u.instance, sum(spans)::BIGINT AS spans, "
            "sum(points)::BIGINT AS points, coalesce(any_value(f.findings), 0) AS findings "
            "FROM u LEFT JOIN f USING (instance) GROUP BY u.service, u.instance "
            "ORDER BY u.service, u.instance LIMIT ?",
            [limit],
        )
    )


def _instance_end(store: Store, instance: str) -> int | None:
    return _scalar(
        store,
        "SELECT max(t) FROM (SELECT max(start_ns) AS t FROM spans WHERE instance = ? "
        "UNION ALL SELECT max(time_ns) FROM metrics WHERE instance = ?)",
        [instance, instance],
    )


def instance_series(
    store: Store,
    instance: str,
    start_ns: int | None,
    end_ns: int | None,
    default_s: float = 3600.0,
) -> dict[str, Any] | None:
    """Metric and span-derived (rate, errors, mean latency) series of an instance, bucketed,
    with its anomaly windows (findings) and fault windows (labels); None if unknown."""
    last = _instance_end(store, instance)
    if last is None:
        return None
    w = Window(
        start_ns if start_ns is not None else (end_ns or last + 1) - int(default_s * _NS),
        end_ns if end_ns is not None else last + 1,
    )
    width = max((w.end_ns - w.start_ns) // SERIES_POINTS, _NS)
    metrics = store.sql(
        "WITH top AS (SELECT name FROM metrics WHERE instance = ? AND time_ns >= ? "
        " AND time_ns < ? GROUP BY name ORDER BY name LIMIT ?) "
        "SELECT name, (time_ns - ?) // ? AS b, avg(value) AS v FROM metrics "
        "WHERE instance = ? AND time_ns >= ? AND time_ns < ? AND value IS NOT NULL "
        "AND name IN (SELECT name FROM top) GROUP BY ALL ORDER BY name, b",
        [instance, w.start_ns, w.end_ns, MAX_SERIES, w.start_ns, width, instance, w.start_ns,
         w.end_ns],
    )  # fmt: skip
    red = store.sql(
        "SELECT (start_ns - ?) // ? AS b, count(*) AS n, "
        "count(*) FILTER (WHERE status = 'error') AS e, avg(duration_ns) / 1e6 AS ms "
        "FROM spans WHERE instance = ? AND start_ns >= ? AND start_ns < ? GROUP BY ALL "
        "ORDER BY b",
        [w.start_ns, width, instance, w.start_ns, w.end_ns],
    )
    series: dict[str, dict[str, list[float]]] = {}
    width_s = width / _NS

    def t_ms(b: list[int]) -> list[float]:
        return [(w.start_ns + i * width) / 1e6 for i in b]

    if red.num_rows:
        b = red.column("b").to_pylist()
        for name, col, scale in (
            ("spans.rate_per_s", "n", 1 / width_s),
            ("spans.errors_per_s", "e", 1 / width_s),
            ("spans.mean_ms", "ms", 1.0),
        ):
            series[name] = {
                "t_ms": t_ms(b),
                "v": [round(v * scale, 6) for v in red.column(col).to_pylist()],
            }
    for name, group in _group(metrics):
        series[name] = {"t_ms": t_ms(group["b"]), "v": group["v"]}
    service = _scalar(
        store,
        "SELECT any_value(service) FROM ((SELECT service FROM spans WHERE instance = ? LIMIT 1) "
        "UNION ALL (SELECT service FROM metrics WHERE instance = ? LIMIT 1))",
        [instance, instance],
    )
    anomalies = store.sql(
        f"SELECT {_FINDING_COLUMNS} FROM findings WHERE instance = ? AND time_ns >= ? "
        "AND time_ns < ? ORDER BY time_ns LIMIT 1000",
        [instance, w.start_ns, w.end_ns],
    )
    faults = store.sql(
        "SELECT fault_id, kind, service, instance, start_ns, end_ns FROM faults "
        "WHERE (instance = ? OR (instance IS NULL AND service = ?)) "
        "AND end_ns >= ? AND start_ns < ? ORDER BY start_ns LIMIT 200",
        [instance, service, w.start_ns, w.end_ns],
    )
    return {
        "instance": instance,
        "service": service,
        "window": w.to_json(),
        "bucket_s": width_s,
        "series": series,
        "anomalies": [_finding_json(r) for r in _rows(anomalies)],
        "faults": [
            r | {"from_ms": _ms(r.pop("start_ns")), "to_ms": _ms(r.pop("end_ns"))}
            for r in _rows(faults)
        ],
    }


def _group(table: pa.Table) -> list[tuple[str, dict[str, list[Any]]]]:
    """(name, {"b": buckets, "v": values}) per metric name of a (name, b, v) table."""
    out: list[tuple[str, dict[str, list[Any]]]] = []
    if not table.num_rows:
        return out
    names = table.column("name").to_pylist()
    b = table.column("b").to_pylist()
    v = table.column("v").to_pylist()
    # rows are sorted by name: cut at each change (bounded: MAX_SERIES × SERIES_POINTS rows)
    start = 0
    for i in range(1, len(names) + 1):
        if i == len(names) or names[i] != names[start]:
            out.append((names[start], {"b": b[start:i], "v": [round(x, 6) for x in v[start:i]]}))
            start = i
    return out
