"""OpenTelemetry SDK set-up: traces and metrics exported as OTLP/HTTP to the collector."""

from __future__ import annotations

from typing import Any


def resource(service: str, instance: str, version: str, node: str) -> Any:
    """The resource every span and metric of an instance carries."""
    from opentelemetry.sdk.resources import Resource

    return Resource.create(
        {
            "service.name": service,
            "service.instance.id": instance,
            "service.version": version,
            "host.name": node,
        }
    )


def tracer_provider(res: Any, endpoint: str) -> Any:
    """A TracerProvider batching spans to `endpoint`/v1/traces every half second."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=res)
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=10)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=500, max_export_batch_size=512)
    )
    return provider


def meter_provider(res: Any, endpoint: str, interval_s: float) -> Any:
    """A MeterProvider exporting to `endpoint`/v1/metrics every `interval_s` seconds."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=10),
        export_interval_millis=int(interval_s * 1000),
    )
    return MeterProvider(resource=res, metric_readers=[reader])
