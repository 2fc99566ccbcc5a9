"""`GET /metrics`: the collector in Prometheus' text format (prometheus_client).

Figures are read from the collector's state when Prometheus scrapes (a custom collector),
so nothing is counted twice and ingest does no extra work; the request latency histogram
is the one figure observed as requests are answered. Names start with ``spanomaly_``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PromCollector

from spanomaly.serve.hooks import Online

if TYPE_CHECKING:
    from spanomaly.serve.alerting import Alerting
    from spanomaly.serve.app import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The registry behind /metrics and the latency histogram the routes observe."""

    def __init__(
        self, collector: Collector, online: Online | None, alerting: Alerting | None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "spanomaly_request_duration_seconds",
            "Time to answer an OTLP export request, by signal",
            ["signal"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.registry.register(_Snapshot(collector, online, alerting))

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


class _Snapshot(PromCollector):
    """The collector's counters, the online detector's scores and the incidents, as read
    at scrape time."""

    def __init__(
        self, collector: Collector, online: Online | None, alerting: Alerting | None
    ) -> None:
        self.collector = collector
        self.online = online
        self.alerting = alerting

    def collect(self) -> Iterator[Metric]:
        """Every family, read now."""
        yield from _intake(self.collector)
        if self.online is not None:
            yield from _model(self.online.status())
            yield from _levels(self.online.levels())
        if self.alerting is not None:
            yield from _incidents(self.alerting)


def _counter(name: str, doc: str, labels: list[str], rows: dict[tuple[str, ...], float]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(rows.items()):
        family.add_metric(list(key), value)
    return family


def _gauge(
    name: str, doc: str, value: float | None = None, labels: list[str] | None = None
) -> GaugeMetricFamily:
    if labels is None:
        return GaugeMetricFamily(name, doc, value=0.0 if value is None else value)
    return GaugeMetricFamily(name, doc, labels=labels)


def _intake(c: Collector) -> Iterator[Metric]:
    h = c.health()
    w, n = h["writer"], c.counters
    yield _counter("spanomaly_requests", "Requests answered, by HTTP status", ["code"],
                   {(k,): v for k, v in n.requests.items()})  # fmt: skip
    received = {(k,): n.accepted[k] + n.rejected[k] for k in n.accepted}
    yield _counter("spanomaly_records_received", "Spans, metric points and log records received", ["signal"], received)  # fmt: skip
    yield _counter("spanomaly_records_rejected", "Records refused (partial_success)", ["signal"],
                   {(k,): v for k, v in n.rejected.items()})  # fmt: skip
    yield _counter("spanomaly_rows_stored", "Rows committed to the store, by table", ["table"],
                   {(k,): v for k, v in w["stored"].items()})  # fmt: skip
    yield _counter("spanomaly_duplicates", "Rows received again and stored once", [], {(): w["duplicates"]})  # fmt: skip
    yield _gauge("spanomaly_writer_queue_rows", "Rows waiting to be committed", w["pending_rows"])
    yield _gauge("spanomaly_writer_queue_max_rows", "Rows the writer queue holds (503 beyond)", w["max_pending_rows"])  # fmt: skip
    yield _gauge("spanomaly_decoder_queue_bytes", "Request bytes waiting to be decoded", h["decoder"]["pending_bytes"])  # fmt: skip
    yield _gauge("spanomaly_inflight_bytes", "Request bytes being received", h["inflight_bytes"])
    spool = c.writer.spool
    yield _gauge("spanomaly_spool_bytes", "Bytes spooled and not yet committed", spool.size_bytes() if spool else 0)  # fmt: skip
    memory = _gauge("spanomaly_store_memory_bytes", "DuckDB memory in use, by tag", labels=["tag"])
    for tag, b in sorted(c.store_memory().items()):
        memory.add_metric([tag], b)
    yield memory
    yield _gauge("spanomaly_open_traces", "Traces waiting to complete", h["traces"]["open"])
    from spanomaly.serve.http import HeaderDeadline

    yield _counter("spanomaly_connections_closed_slow", "Connections closed for headers slower than the header timeout", [], {(): HeaderDeadline.closed_slow})  # fmt: skip
    yield _gauge("spanomaly_uptime_seconds", "Seconds since the collector started", h["uptime_s"])


def _model(status: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge("spanomaly_model_loaded", "1 when a model is loaded", 1.0 if status.get("loaded") else 0.0)  # fmt: skip
    trained = status.get("trained_on") or {}
    from spanomaly.timeparse import parse_time

    for edge in ("from", "to"):
        text = trained.get(edge)
        if text:
            value = (parse_time(text, edge) or 0) / 1e9
            yield _gauge(f"spanomaly_model_trained_{edge}_seconds", f"The {edge} edge of the period the model was trained on, unix s", value)  # fmt: skip
    scored = status.get("scored") or {}
    yield _counter("spanomaly_scored", "Traces and instance windows scored online, and the anomalous ones",
                   ["what"], {(k,): v for k, v in scored.items()})  # fmt: skip
    yield _counter("spanomaly_online_errors", "Online scoring rounds that failed", [], {(): status.get("errors", 0)})  # fmt: skip


def _levels(levels: list[dict[str, Any]]) -> Iterator[Metric]:
    keys = ["service", "instance", "source"]
    score = _gauge("spanomaly_anomaly_score", "Score of the instance's latest window", labels=keys)
    threshold = _gauge(
        "spanomaly_anomaly_threshold", "Threshold the score is compared with", labels=keys
    )
    ratio: dict[str, float] = {}
    for row in levels:
        key = [row["service"], row["instance"] or "", row["source"]]
        score.add_metric(key, row["score"])
        threshold.add_metric(key, row["threshold"])
        if row["threshold"] and row["threshold"] > 0:
            r = row["score"] / row["threshold"]
            ratio[row["service"]] = max(ratio.get(row["service"], r), r)
    service = _gauge("spanomaly_service_anomaly_ratio",
                     "Largest score / threshold over the service's instances (> 1: anomalous)", labels=["service"])  # fmt: skip
    for name, value in sorted(ratio.items()):
        service.add_metric([name], value)
    yield from (score, threshold, service)


def _incidents(a: Alerting) -> Iterator[Metric]:
    incidents = a.incidents
    yield _counter("spanomaly_findings", "Findings stored since the collector started", ["service", "detector"],
                   dict(incidents.counts))  # fmt: skip
    active = _gauge("spanomaly_incidents_active", "Open incidents, by service and severity",
                    labels=["service", "severity"])  # fmt: skip
    for i in incidents.open.values():
        active.add_metric([i.service, i.severity], 1.0)
    yield active
    yield _counter("spanomaly_incidents_opened", "Incidents opened", [], {(): incidents.opened})
    yield _counter(
        "spanomaly_incidents_resolved", "Incidents resolved", [], {(): incidents.resolved}
    )
    for what in ("sent", "failed", "dropped", "retries"):
        rows = {(r.name,): getattr(r.delivery, what) for r in a.receivers}
        yield _counter(
            f"spanomaly_alerts_{what}", f"Alert messages {what}, by receiver", ["receiver"], rows
        )
