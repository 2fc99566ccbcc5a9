"""A real collector in between: the SDK sends to the rotel agent (from PyPI, `rotel`), which
batches and forwards over OTLP/HTTP to `spanomaly serve`; every span arrives."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

from tests.serve.conftest import StartServer
from tests.serve.stack import terminate
from tests.serve.test_otel_sdk import check_span, make_spans, stored_spans

rotel = pytest.importorskip(
    "rotel", reason="the rotel agent is not installed (pip install --pre rotel)"
)


def free_port() -> int:
    """A port free right now on the loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_binary() -> Path:
    """The rotel-agent executable shipped in the wheel."""
    path = Path(rotel.__file__).with_name("rotel-agent")
    if not path.exists():
        pytest.skip(f"no rotel-agent binary in {path.parent} (no wheel for this platform?)")
    return path


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Wait until something listens on the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"rotel exited ({proc.returncode}): {log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"rotel did not listen on {port}: {log.read_text()}")


def test_spans_through_the_rotel_agent(serve: StartServer, tmp_path: Path) -> None:
    server = serve()
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path / "rotel.out"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [
                str(agent_binary()),
                "start",  # in the foreground: no --daemon
                "--otlp-http-endpoint",
                f"127.0.0.1:{http_port}",
                "--otlp-grpc-endpoint",
                f"127.0.0.1:{grpc_port}",
                "--exporter",
                "otlp",
                "--otlp-exporter-protocol",
                "http",
                "--otlp-exporter-endpoint",
                server.url,  # rotel adds /v1/traces
                "--batch-timeout",
                "100ms",
                "--pid-file",
                str(tmp_path / "rotel.pid"),
                "--log-file",
                str(tmp_path / "rotel.log"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_for_port(http_port, agent, log)
        resource = {
            "service.name": "via-rotel",
            "service.instance.id": "r-1",
            "service.version": "1.0",
            "host.name": "h",
        }
        provider = TracerProvider(resource=Resource.create(resource))
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces"))
        )
        make_spans(provider, traces=100)
        provider.shutdown()
        sent = memory.get_finished_spans()
        deadline = time.monotonic() + 30
        while server.stats()["spans"] < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        terminate(agent, 10)
    assert server.stats()["spans"] == len(sent) == 400, log.read_text()[-2000:]
    assert server.stop() == 0
    stored = stored_spans(server.db)
    for span in sent:
        ctx = span.get_span_context()
        check_span(
            stored[format_trace_id(ctx.trace_id), format_span_id(ctx.span_id)], span, resource
        )
