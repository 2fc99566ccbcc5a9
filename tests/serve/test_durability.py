"""What was acknowledged is stored: across `kill -9`, and through a graceful stop on
SIGTERM/SIGINT; one process holds the store, others get a clear error."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from spanomaly.serve.app import ServeSettings
from tests.serve.conftest import (
    PROTOBUF,
    StartServer,
    clean_env,
    decode_workers,
    reap,
    spans_request,
)

GZIP = {**PROTOBUF, "Content-Encoding": "gzip"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spanomaly", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )


def test_kill_9_after_the_acknowledgements_loses_nothing(serve: StartServer) -> None:
    server = serve()
    requests, per_request = 60, 500
    bodies = [
        spans_request(1 + i * per_request, per_request, service=f"s{i % 3}").SerializeToString()
        for i in range(requests)
    ]

    def send(body: bytes) -> int:
        with httpx.Client(timeout=60) as client:
            return client.post(
                server.url + "/v1/traces", content=body, headers=PROTOBUF
            ).status_code

    with ThreadPoolExecutor(8) as pool:  # concurrent senders: batched commits
        codes = list(pool.map(send, bodies))
    assert codes == [200] * requests
    children = server.children
    server.proc.send_signal(signal.SIGKILL)
    assert server.proc.wait(timeout=10) == -signal.SIGKILL
    reap(children)  # the decode process died with the server

    again = serve(db=server.db)
    stats = again.stats()
    assert stats["spans"] == stats["traces"] == requests * per_request
    assert stats["services"] == ["s0", "s1", "s2"]
    # re-sent spans (a sender retrying) are stored once
    assert again.post("/v1/traces", bodies[0], PROTOBUF).status_code == 200
    assert again.stats()["spans"] == requests * per_request
    assert again.get("/api/health").json()["writer"]["duplicates"] == per_request
    assert again.stop() == 0
    out = cli("stats", "--db", str(server.db), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["spans"] == requests * per_request


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_stop_commits_what_it_answered(serve: StartServer, sig: int) -> None:
    server = serve()
    acked = 0
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(10**6))

    def sender() -> None:
        nonlocal acked
        import gzip

        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                with lock:
                    n = next(counter)
                body = gzip.compress(spans_request(1 + n * 200, 200).SerializeToString())
                try:
                    response = client.post(server.url + "/v1/traces", content=body, headers=GZIP)
                except httpx.TransportError:
                    return  # the server has stopped listening
                if response.status_code == 200:
                    with lock:
                        acked += 200

    threads = [threading.Thread(target=sender) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while acked < 5000 and time.monotonic() < deadline:
        time.sleep(0.01)
    children = server.children
    server.proc.send_signal(sig)  # while requests are in flight
    code = server.proc.wait(timeout=60)
    stop.set()
    for t in threads:
        t.join()
    reap(children)
    assert code == 0, server.log.read_text()
    out = cli("stats", "--db", str(server.db), "--json")
    assert out.returncode == 0, out.stderr
    stored = json.loads(out.stdout)["spans"]
    assert acked >= 5000
    assert stored >= acked  # a request answered 200 is committed


def test_one_process_holds_the_store(serve: StartServer, tmp_path: Path) -> None:
    server = serve()
    assert server.post("/v1/traces", spans_request(1, 3).SerializeToString(), PROTOBUF).is_success
    out = cli("stats", "--db", str(server.db))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"open for writing by another process (PID {server.proc.pid})" in lines[0]
    assert "HTTP API" in lines[0]
    second = subprocess.run(
        [sys.executable, "-m", "spanomaly", "serve", "--port", "0", "--db", str(server.db)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert second.returncode == 1
    assert len(second.stderr.strip().splitlines()) == 1
    assert "open for writing by another process" in second.stderr
    assert server.stats()["spans"] == 3  # the API is the way in while it runs


def test_usage_errors(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = cli("serve", "--port", str(port), "--db", str(tmp_path / "a.duckdb"))
    assert out.returncode == 1
    assert out.stderr.startswith(f"spanomaly: error: cannot listen on 127.0.0.1:{port}")
    out = cli("serve", "--max-body", "lots", "--db", str(tmp_path / "b.duckdb"))
    assert out.returncode == 2 and "--max-body" in out.stderr
    out = cli("serve", "--trace-idle", "0", "--db", str(tmp_path / "b.duckdb"))
    assert out.returncode == 2 and "--trace-idle" in out.stderr


def test_a_killed_decode_process_is_replaced(serve: StartServer) -> None:
    server = serve()
    workers = decode_workers(server)
    assert len(workers) == ServeSettings().decode_processes, server.children
    assert server.post("/v1/traces", spans_request(1, 10).SerializeToString(), PROTOBUF).is_success
    workers[0].kill()  # the pool is broken: all of them are replaced
    reap(workers[:1])
    codes = []
    for i in range(5):  # the request caught by the dead process answers 503 (retryable)
        response = server.post(
            "/v1/traces", spans_request(100 + 10 * i, 10).SerializeToString(), PROTOBUF
        )
        codes.append(response.status_code)
        if response.status_code == 503:
            assert "retry-after" in response.headers
    assert codes[-1] == 200 and set(codes) <= {200, 503}
    assert server.stats()["spans"] == 10 + 10 * codes.count(200)
    server.children = psutil.Process(server.proc.pid).children(recursive=True)
    fresh = decode_workers(server)  # the new pool starts its processes as work needs them
    assert 1 <= len(fresh) <= ServeSettings().decode_processes
    assert not {p.pid for p in fresh} & {p.pid for p in workers}  # stopped with the server
