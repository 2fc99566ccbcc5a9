"""The real OpenTelemetry exporters (opentelemetry-exporter-otlp-proto-http) deliver to
`spanomaly serve`: every span and data point arrives with the right fields."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import duckdb
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, format_span_id, format_trace_id

from tests.serve.conftest import Server, StartServer

_STATUS = {StatusCode.UNSET: "unset", StatusCode.OK: "ok", StatusCode.ERROR: "error"}
_KIND = {
    SpanKind.INTERNAL: "internal",
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
}


def make_spans(provider: TracerProvider, traces: int) -> None:
    """Traces of a server span, two client children (one failing) and a grandchild."""
    tracer = provider.get_tracer("tests", "1.0")
    for t in range(traces):
        with tracer.start_as_current_span(
            "GET /orders/{id}",
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "GET",
                "http.route": "/orders/{id}",
                "http.response.status_code": 200,
                "trace.no": t,
                "ratio": 0.25,
                "tags": ("a", "b"),
                "cached": True,
            },
        ):
            with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT) as db:
                db.set_attribute("db.system", "postgresql")
                db.set_attribute("peer.service", "postgres")
                with tracer.start_as_current_span("pool.acquire"):
                    pass
            with tracer.start_as_current_span("POST /pay", kind=SpanKind.CLIENT) as pay:
                pay.set_status(Status(StatusCode.ERROR, "card declined"))
                pay.set_attribute("http.response.status_code", 402)


def stored_spans(db: Path) -> dict[tuple[str, str], dict[str, object]]:
    """Every stored span by (trace_id, span_id), read from the stopped server's store."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.sql("SELECT * FROM spans").to_arrow_table().to_pylist()
    finally:
        con.close()
    return {(r["trace_id"], r["span_id"]): r for r in rows}


def check_span(row: dict[str, object], span: ReadableSpan, resource: dict[str, str]) -> None:
    """The stored row says what the SDK's span says."""
    ctx = span.get_span_context()
    assert row["trace_id"] == format_trace_id(ctx.trace_id)
    assert row["span_id"] == format_span_id(ctx.span_id)
    expected_parent = format_span_id(span.parent.span_id) if span.parent else None
    assert row["parent_id"] == expected_parent
    assert row["service"] == resource["service.name"]
    assert row["instance"] == resource["service.instance.id"]
    assert row["version"] == resource["service.version"]
    assert row["host"] == resource["host.name"]
    assert row["operation"] == span.name
    assert row["kind"] == _KIND[span.kind]
    assert row["start_ns"] == span.start_time
    assert row["duration_ns"] == span.end_time - span.start_time
    assert row["status"] == _STATUS[span.status.status_code]
    assert row["status_message"] == (span.status.description or None)
    attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in span.attributes.items()}
    assert json.loads(str(row["attributes"])) == attrs
    assert row["http_route"] == attrs.get("http.route")
    assert row["http_method"] == attrs.get("http.request.method")
    assert row["http_status_code"] == attrs.get("http.response.status_code")
    assert row["peer_service"] == attrs.get("peer.service")


@pytest.mark.parametrize(
    "compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate]
)
def test_span_exporter_delivers_every_span(serve: StartServer, compression: Compression) -> None:
    server = serve()
    resource = {
        "service.name": f"orders-{compression.value}",
        "service.instance.id": "orders-7f9c",
        "service.version": "2.3.1",
        "host.name": "node-4",
    }
    provider = TracerProvider(resource=Resource.create(resource))
    memory = InMemorySpanExporter()
    exporter = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces", compression=compression)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=64))
    make_spans(provider, traces=40)
    provider.shutdown()  # flushes the batch processor: every export answered
    sent = memory.get_finished_spans()
    assert len(sent) == 160
    assert server.stats()["spans"] == 160  # answered only after the commit
    assert server.stop(signal.SIGTERM) == 0
    stored = stored_spans(server.db)
    assert len(stored) == 160
    for span in sent:
        ctx = span.get_span_context()
        check_span(
            stored[format_trace_id(ctx.trace_id), format_span_id(ctx.span_id)], span, resource
        )


def test_metric_exporter_delivers_gauges_sums_and_histograms(serve: StartServer) -> None:
    server = serve()
    resource = Resource.create(
        {"service.name": "cart", "service.instance.id": "cart-1", "host.name": "node-2"}
    )
    exporter = OTLPMetricExporter(endpoint=f"{server.url}/v1/metrics", compression=Compression.Gzip)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("tests")
    requests = meter.create_counter("http.server.requests", unit="{request}")
    requests.add(5, {"route": "/cart"})
    requests.add(2, {"route": "/cart"})
    requests.add(1, {"route": "/checkout"})
    latency = meter.create_histogram("http.server.duration", unit="ms")
    for value in (3.0, 20.0, 700.0):
        latency.record(value, {"route": "/cart"})

    def cpu(options: CallbackOptions) -> list[Observation]:
        return [Observation(0.75, {"cpu": "0"})]

    meter.create_observable_gauge("process.cpu.utilization", callbacks=[cpu], unit="1")
    provider.shutdown()  # collects and exports once
    assert server.stats()["metrics"] == 4
    assert server.stop() == 0

    con = duckdb.connect(str(server.db), read_only=True)
    try:
        rows = con.execute("SELECT * FROM metrics ORDER BY name, attributes").fetchall()
        names = [d[0] for d in con.description]
    finally:
        con.close()
    points = [dict(zip(names, r, strict=True)) for r in rows]
    by = {(p["name"], json.loads(p["attributes"]).get("route")): p for p in points}
    assert {(p["service"], p["instance"], p["host"]) for p in points} == {
        ("cart", "cart-1", "node-2")
    }
    cart = by["http.server.requests", "/cart"]
    assert (cart["kind"], cart["value"], cart["unit"]) == ("sum", 7.0, "{request}")
    assert by["http.server.requests", "/checkout"]["value"] == 1.0
    hist = by["http.server.duration", "/cart"]
    assert (hist["kind"], hist["count"], hist["sum"], hist["unit"]) == ("histogram", 3, 723.0, "ms")
    assert hist["value"] == pytest.approx(241.0)
    assert hist["bounds"][:4] == [0.0, 5.0, 10.0, 25.0]
    assert len(hist["bucket_counts"]) == len(hist["bounds"]) + 1
    assert sum(hist["bucket_counts"]) == 3
    assert hist["bucket_counts"][1] == 1 and hist["bucket_counts"][3] == 1
    gauge = by["process.cpu.utilization", None]
    assert (gauge["kind"], gauge["value"]) == ("gauge", 0.75)
    assert json.loads(gauge["attributes"]) == {"cpu": "0"}


def test_exporter_with_a_token(serve: StartServer) -> None:
    server: Server = serve("--token", "s3cret")
    provider = TracerProvider(resource=Resource.create({"service.name": "auth"}))
    wrong = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces", headers={"Authorization": "x"})
    right = OTLPSpanExporter(
        endpoint=f"{server.url}/v1/traces", headers={"Authorization": "Bearer s3cret"}
    )
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    make_spans(provider, traces=2)
    spans = memory.get_finished_spans()
    assert wrong.export(spans).name == "FAILURE"
    assert right.export(spans).name == "SUCCESS"
    provider.shutdown()
    assert server.stats(headers={"Authorization": "Bearer s3cret"})["spans"] == 8
