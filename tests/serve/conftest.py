"""Collector servers as subprocesses (`python -m spanomaly serve --port 0`), always stopped,
their decode processes included, and OTLP requests to send them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import psutil
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

T0 = 1_700_000_000_000_000_000
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@dataclass
class Server:
    """A running collector."""

    proc: subprocess.Popen[bytes]
    url: str
    db: Path
    log: Path
    children: list[psutil.Process] = field(default_factory=list)

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        """GET a route."""
        return httpx.get(self.url + path, timeout=60, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST a body to a route."""
        return httpx.post(self.url + path, content=body, headers=headers, timeout=60)

    def stats(self, **kwargs: object) -> dict[str, object]:
        """GET /api/stats."""
        response = self.get("/api/stats", **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Stop the server with a signal and wait; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        reap(self.children)
        return code


def reap(processes: list[psutil.Process], timeout: float = 10) -> None:
    """Wait for processes to end (the server's decode processes die with it); kill leftovers."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    alive = [p for p in alive if _running(p)]
    for p in alive:
        p.kill()
    assert not alive, f"processes outlived the server: {[p.pid for p in alive]}"


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE  # a zombie has ended; its parent reaps it
    except psutil.NoSuchProcess:
        return False


def decode_workers(server: Server) -> list[psutil.Process]:
    """The server's decode processes (not multiprocessing's resource tracker)."""
    return [p for p in server.children if "spawn_main" in " ".join(p.cmdline())]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without a token a developer may have set."""
    env = {k: v for k, v in os.environ.items() if k not in ("SPANOMALY_TOKEN", "SPANOMALY_DB")}
    env.update(extra)
    return env


def start_server(
    tmp: Path, *args: str, db: Path | None = None, env: dict[str, str] | None = None
) -> Server:
    """Start `spanomaly serve` on a free port and wait until it listens."""
    db = db or tmp / "collector.duckdb"
    log = tmp / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spanomaly", "serve", "--port", "0", "--db", str(db), *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env or clean_env(),
        )
    deadline = time.monotonic() + 90
    try:
        while True:
            match = re.search(r"serving on (http://\S+) ", log.read_text())
            if match:
                break
            if proc.poll() is not None:
                raise AssertionError(f"the server exited ({proc.returncode}): {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not start: {log.read_text()}")
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    server = Server(proc, match.group(1), db, log)
    server.children = psutil.Process(proc.pid).children(recursive=True)
    return server


class StartServer(Protocol):
    def __call__(
        self, *args: str, db: Path | None = None, env: dict[str, str] | None = None
    ) -> Server: ...


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    """Start collectors for one test; every one is stopped (or killed) afterwards."""
    started: list[Server] = []

    def start(*args: str, db: Path | None = None, env: dict[str, str] | None = None) -> Server:
        server = start_server(tmp_path, *args, db=db, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL if server.proc.poll() is None else signal.SIGTERM)


def kv(key: str, value: str | int) -> KeyValue:
    """An OTLP attribute."""
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def spans_request(
    first: int, count: int, service: str = "svc", bad_ids: int = 0
) -> trace_pb.ExportTraceServiceRequest:
    """count spans with trace ids from `first` on (one span per trace, all roots); the
    last bad_ids of them get a 4-byte span id."""
    request = trace_pb.ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", service), kv("service.instance.id", "i-1")])
    scope = rs.scope_spans.add()
    for n in range(first, first + count):
        bad = n >= first + count - bad_ids
        scope.spans.append(
            Span(
                trace_id=n.to_bytes(16, "big"),
                span_id=n.to_bytes(4, "big") if bad else (n + 1).to_bytes(8, "big"),
                name="GET /items",
                kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=T0 + n * 1000,
                end_time_unix_nano=T0 + n * 1000 + 500,
                attributes=[kv("http.route", "/items"), kv("n", n)],
            )
        )
    return request
