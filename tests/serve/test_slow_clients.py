"""Clients that trickle their headers (bug: no header timeout, and enough of them made every
answer a 503): each request's headers have a deadline, and such connections do not count
against the concurrency limit."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from tests.serve.conftest import Server, StartServer


@contextmanager
def _trickling(server: Server, n: int) -> Iterator[list[socket.socket]]:
    """n connections that have sent a request line and part of one header."""
    url = urlparse(server.url)
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection((url.hostname, url.port))
            s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nX-Slow: a")
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def _closed(s: socket.socket) -> bool:
    """Whether the server closed the connection (one more byte sent first)."""
    try:
        s.sendall(b"a")
        s.settimeout(0.05)
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset by the server
        return True


def test_headers_slower_than_the_deadline_lose_their_connection(serve: StartServer) -> None:
    server = serve("--header-timeout", "1")
    with _trickling(server, 20) as socks:
        deadline = time.monotonic() + 30  # a byte each 0.2 s: headers never complete
        while not all(_closed(s) for s in socks):
            assert time.monotonic() < deadline, "slow connections were kept open"
            time.sleep(0.2)
        assert server.get("/api/health").status_code == 200
    text = server.get("/metrics").text
    assert "spanomaly_connections_closed_slow_total 20.0" in text


def test_many_trickling_connections_do_not_turn_answers_into_503(serve: StartServer) -> None:
    server = serve("--header-timeout", "60")
    with _trickling(server, 1100) as socks:  # more than the 1,024 concurrent requests
        assert not any(_closed(s) for s in socks[:10])  # still within their deadline
        r = server.get("/api/health")
        assert r.status_code == 200, r.text
        assert server.get("/api/stats").status_code == 200
