"""Fault-injecting TCP proxies, one listening port per instance, all in one asyncio process.

Run with ``python -m spanomaly.testbed.proxy --routes JSON --control FILE``; routes map an
instance to ``[listen_port, upstream_port]``. The control file (JSON, polled) maps an
instance to its active network faults, each with a kind and parameters:

- ``network_delay``: ``ms`` and ``jitter_ms`` added before each chunk of a response;
- ``network_loss``: with probability ``p`` a request's connection is reset, and with
  ``p_timeout`` it is held without an answer (the caller times out);
- ``network_corrupt``: with probability ``p`` one byte of a response chunk is flipped;
- ``network_bandwidth``: responses trickle at ``bytes_per_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import struct
from pathlib import Path
from typing import Any


class Proxies:
    def __init__(self, routes: dict[str, list[int]], control: Path | None) -> None:
        self.routes = routes
        self.control = control
        self.faults: dict[str, list[dict[str, Any]]] = {}
        self._mtime = 0.0

    def poll(self) -> None:
        if self.control is None:
            return
        try:
            mtime = self.control.stat().st_mtime
        except FileNotFoundError:
            self.faults = {}
            return
        if mtime != self._mtime:
            self._mtime = mtime
            with contextlib.suppress(OSError, ValueError):
                self.faults = json.loads(self.control.read_text() or "{}")

    def active(self, instance: str, kind: str) -> dict[str, Any] | None:
        for fault in self.faults.get(instance, []):
            if fault["kind"] == kind:
                return fault
        return None

    async def handle(
        self,
        instance: str,
        upstream: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            _reset(writer)
            return
        tasks = [
            asyncio.create_task(self.requests(instance, reader, up_writer, writer)),
            asyncio.create_task(self.responses(instance, up_reader, writer)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def requests(
        self,
        instance: str,
        reader: asyncio.StreamReader,
        up: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
    ) -> None:
        while data := await reader.read(65536):
            loss = self.active(instance, "network_loss")
            if loss is not None:
                draw = random.random()
                if draw < float(loss.get("p", 0.2)):
                    _reset(client)
                    return
                if draw < float(loss.get("p", 0.2)) + float(loss.get("p_timeout", 0.0)):
                    await asyncio.sleep(3600)  # a black hole: the caller times out
            up.write(data)
            await up.drain()

    async def responses(
        self, instance: str, up: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        while data := await up.read(65536):
            delay = self.active(instance, "network_delay")
            if delay is not None:
                ms = float(delay.get("ms", 100)) + random.uniform(
                    0, float(delay.get("jitter_ms", 0))
                )
                await asyncio.sleep(ms / 1000)
            corrupt = self.active(instance, "network_corrupt")
            if corrupt is not None and random.random() < float(corrupt.get("p", 0.2)):
                buf = bytearray(data)
                pos = random.randrange(len(buf))
                buf[pos] ^= 0x5A
                data = bytes(buf)
            bandwidth = self.active(instance, "network_bandwidth")
            if bandwidth is not None:
                rate = float(bandwidth.get("bytes_per_s", 20_000))
                step = max(1, int(rate / 20))
                for i in range(0, len(data), step):
                    await asyncio.sleep(min(step, len(data) - i) / rate)
                    client.write(data[i : i + step])
                    await client.drain()
                continue
            client.write(data)
            await client.drain()

    async def serve(self, ready: Path | None) -> None:
        servers = []
        for instance, (listen, upstream) in self.routes.items():

            async def on_connect(r: Any, w: Any, i: str = instance, u: int = upstream) -> None:
                await self.handle(i, u, r, w)

            servers.append(await asyncio.start_server(on_connect, "127.0.0.1", listen))
        if ready is not None:
            ready.write_text("ready")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            self.poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        for server in servers:
            server.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dropped connection looks to the caller."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="fault-injecting TCP proxies")
    p.add_argument("--routes", required=True, help="JSON: instance -> [listen, upstream]")
    p.add_argument("--control", type=Path, default=None)
    p.add_argument("--ready", type=Path, default=None, help="file written once listening")
    a = p.parse_args(argv)
    asyncio.run(Proxies(json.loads(a.routes), a.control).serve(a.ready))


if __name__ == "__main__":
    main()
