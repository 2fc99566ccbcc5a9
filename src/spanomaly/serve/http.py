"""uvicorn's HTTP protocol with a deadline for each request's headers.

uvicorn arms no timer until a connection's first answer, so a client that sends its
headers a byte a second holds its connection for as long as it likes; and it counts such
connections against `limit_concurrency`, so enough of them turn every answer, the health
check's too, into 503. Here a connection gets `header_timeout_s` for each request's
headers (then it is closed), and it counts against the limit only from its first complete
headers on. Connections still sending headers are bounded apart (`max_waiting`): past it a
new connection is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


def protocol(header_timeout_s: float, max_waiting: int) -> type[asyncio.Protocol]:
    """The protocol class uvicorn is given (`uvicorn.Config(http=...)`)."""

    class Deadline(HeaderDeadline):
        timeout_s = header_timeout_s
        waiting: set[HeaderDeadline] = set()  # noqa: RUF012 (shared by the server's connections)
        limit = max_waiting

    return Deadline


class HeaderDeadline(HttpToolsProtocol):
    timeout_s: float
    waiting: set[HeaderDeadline]
    limit: int
    closed_slow = 0  # connections closed for slow headers (all servers of the process)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock on the first request's headers."""
        super().connection_made(transport)
        self.connections.discard(self)  # counted once its headers are in
        if len(self.waiting) >= self.limit:
            log.warning("%d connections are still sending headers: closing a new one", self.limit)
            transport.close()
            return
        self._arm()

    def on_message_begin(self) -> None:
        """A request starts (on a kept-alive connection too): its headers have a deadline."""
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        """Headers in time: stop the clock and count the connection."""
        self._disarm()
        self.connections.add(self)
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self.waiting.add(self)
        self._deadline = self.loop.call_later(self.timeout_s, self._too_slow)

    def _disarm(self) -> None:
        self.waiting.discard(self)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.waiting.discard(self)
        HeaderDeadline.closed_slow += 1
        if not self.transport.is_closing():
            self.transport.close()
