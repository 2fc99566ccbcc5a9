"""The monitoring stack users run, for tests: Debian's `prometheus` and
`prometheus-alertmanager` as subprocesses, and an HTTP endpoint that records what it is
sent (what a webhook receiver of theirs would be)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian's prometheus is absent (.ci/run installs it)"
)
needs_alertmanager = pytest.mark.skipif(
    ALERTMANAGER is None, reason="Debian's prometheus-alertmanager is absent (.ci/run installs it)"
)


class Hook(ThreadingHTTPServer):
    """An endpoint that answers `fail` (status codes) first, then 200, and keeps what it got."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.fail: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = self.server.fail.pop(0) if self.server.fail else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def hook_server() -> Iterator[Hook]:
    """A running Hook, shut down afterwards."""
    server = Hook()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    """A started server: its URL and its log file."""

    url: str
    log: Path


@contextmanager
def _process(argv: list[str], url: str, log: Path) -> Iterator[Running]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, f"{argv[0]} exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{argv[0]} not ready: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        yield Running(url, log)
    finally:
        terminate(proc, 20)


def terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not ended within timeout_s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def prometheus(tmp: Path, scrape_configs: str) -> Iterator[Running]:
    """Prometheus scraping every second with the given `scrape_configs:` YAML list."""
    assert PROMETHEUS is not None
    config = tmp / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}"
    )
    port = free_port()
    argv = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    with _process(argv, f"http://127.0.0.1:{port}", tmp / "prometheus.log") as running:
        yield running


@contextmanager
def alertmanager(tmp: Path, webhook: str) -> Iterator[Running]:
    """Alertmanager notifying webhook of every group at once, resolved alerts too."""
    assert ALERTMANAGER is not None
    config = tmp / "alertmanager.yml"
    config.write_text(
        "route:\n  receiver: hook\n  group_by: ['alertname', 'service']\n  group_wait: 1s\n"
        "  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n"
        f"    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n"
    )
    port = free_port()
    argv = [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]  # fmt: skip
    with _process(argv, f"http://127.0.0.1:{port}", tmp / "alertmanager.log") as running:
        yield running
