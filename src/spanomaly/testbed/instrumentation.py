"""OpenTelemetry SDK set-up: traces, metrics and logs exported as OTLP/HTTP to the collector."""

from __future__ import annotations

import logging
import warnings
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


def logger_provider(res: Any, endpoint: str) -> Any:
    """A LoggerProvider batching log records to `endpoint`/v1/logs every half second."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    provider = LoggerProvider(resource=res)
    exporter = OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", timeout=10)
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, schedule_delay_millis=500, max_export_batch_size=512)
    )
    return provider


def app_logger(name: str, provider: Any | None) -> logging.Logger:
    """A Python logger whose records go to the collector through the OpenTelemetry log
    handler, with the current span's trace context attached (none without a provider)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if provider is not None:
        from opentelemetry.sdk._logs import LoggingHandler

        # the SDK's handler is deprecated for opentelemetry-instrumentation-logging's, which
        # is not part of the pinned OpenTelemetry release family; it works the same
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
        logger.addHandler(handler)
    else:
        logger.addHandler(logging.NullHandler())
    return logger
