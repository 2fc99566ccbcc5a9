"""The collector and API: one ASGI app (FastAPI) served by uvicorn.

Routes:

- ``POST /v1/traces``, ``POST /v1/metrics``, ``POST /v1/logs``: OTLP/HTTP, protobuf or JSON,
  gzip/deflate/zstd or plain (`spanomaly.ingest.receiver` does the protocol). A request is
  answered 200 only once its rows are durable: fsynced in the spool next to the store file
  (`spanomaly.serve.spool`, loaded into the store right behind) or committed by the single
  writer (`spanomaly.serve.writer`); refused spans, points or log records are counted in
  ``partial_success``. 400 malformed, 401 without the token, 408 a
  body that takes too long, 413 too large, 415 media type or encoding, 429 too many bytes in
  flight and 503 writer queue full (both with Retry-After), 503 store failure.
- ``GET /api/health``: liveness and the collector's counters.
- ``GET /api/stats``: what ``spanomaly stats --json`` prints, read through the writer.
- ``GET /api/model``, ``POST /api/model/retrain``: the online detector's model (with one).
- ``/`` the dashboard, ``/api/...`` its JSON API, ``/docs`` and ``/openapi.json`` the API
  reference (`spanomaly.serve.dashboard`, `spanomaly.serve.api`).

With a token every route needs ``Authorization: Bearer <token>`` (or the dashboard's
session cookie). No route reads or writes a
file other than the store and its spool. Completed traces (`spanomaly.serve.completion`) go to the
callbacks given to `create_app`, or subscribed later through ``app.state.collector.tracker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from spanomaly import __version__, timeparse
from spanomaly.config import DEFAULT_DB
from spanomaly.errors import InputError, SpanomalyError, StoreError
from spanomaly.ingest import receiver
from spanomaly.ingest.receiver import Body, Limits, RequestError, Signal
from spanomaly.serve.alerting import DEFAULT_RESEND_S, Alerting
from spanomaly.serve.completion import DEFAULT_IDLE_S, DEFAULT_MAX_WAIT_S, TraceTracker
from spanomaly.serve.decoder import DEFAULT_BATCH_BYTES, Decoder
from spanomaly.serve.hooks import Online
from spanomaly.serve.http import protocol
from spanomaly.serve.incidents import DEFAULT_GAP_S
from spanomaly.serve.prom import CONTENT_TYPE as PROM_CONTENT_TYPE
from spanomaly.serve.prom import Metrics
from spanomaly.serve.receivers import Alertmanager, Receiver, Webhook
from spanomaly.serve.spool import Spool, spool_dir
from spanomaly.serve.writer import DEFAULT_BATCH_ROWS, DEFAULT_MAX_PENDING_ROWS, QueueFull, Writer
from spanomaly.store.base import Store

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4318
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@dataclass(frozen=True)
class AlertSettings:
    """Where incidents go, and how they are grouped."""

    alertmanager: str | None = None  # base URL of an Alertmanager (API v2)
    webhook: str | None = None  # URL that gets incidents as JSON
    webhook_secret: str | None = None  # HMAC-SHA256 key of the webhook's signature
    dashboard: str | None = None  # the dashboard's URL as receivers should link it
    gap_s: float = DEFAULT_GAP_S  # findings of a service at most this far apart: one incident
    resend_s: float = DEFAULT_RESEND_S  # active alerts are sent to Alertmanager this often

    def receivers(self) -> list[Receiver]:
        """The receivers configured."""
        out: list[Receiver] = []
        if self.alertmanager:
            out.append(Alertmanager(self.alertmanager, expire_s=max(300.0, 4 * self.resend_s)))
        if self.webhook:
            out.append(Webhook(self.webhook, secret=self.webhook_secret))
        return out


@dataclass(frozen=True)
class ServeSettings:
    """Everything `spanomaly serve` can be told."""

    db: Path = Path(DEFAULT_DB)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    max_body: int = receiver.DEFAULT_MAX_BODY  # bytes as sent
    max_decompressed: int | None = None  # bytes once decompressed; None: 4 × max_body
    trace_idle_s: float = DEFAULT_IDLE_S
    trace_max_wait_s: float = DEFAULT_MAX_WAIT_S
    max_open_traces: int = 200_000
    max_pending_rows: int = DEFAULT_MAX_PENDING_ROWS  # rows waiting for the writer (503 beyond)
    max_pending_bytes: int = 64 * 1024 * 1024  # bodies waiting to be decoded (503 beyond)
    batch_rows: int = DEFAULT_BATCH_ROWS  # rows per transaction at most (roughly)
    decode_batch_bytes: int = DEFAULT_BATCH_BYTES  # request bytes decoded in one pass
    max_inflight_bytes: int = 256 * 1024 * 1024  # bodies being received (429 beyond)
    # processes that decode requests (0: a thread of the server); with two, one decodes
    # while the other's batch is handed over and spooled (1.7x the spans/s on 2 cores)
    decode_processes: int = 2
    retry_after_s: int = 1
    read_timeout_s: float = 60.0  # to receive a whole body (408 beyond)
    max_connections: int = 1024  # with requests under way (those still sending headers apart)
    # DuckDB: one thread leaves the other cores to decoding (and is faster for the
    # collector's small transactions); a bigger WAL before a checkpoint means fewer
    # checkpoints, each a pause for every request waiting on a commit
    store_threads: int = 1
    checkpoint_threshold: str = "256MB"
    # acknowledge once the rows are in the spool (appended and fsynced next to a DuckDB
    # file), not once committed: requests then never wait for a commit or a checkpoint
    spool: bool = True
    # DuckDB's buffer pool (its default, 80 % of RAM, grows with the store): the
    # collector's memory is this plus the queues above (pending rows, bytes in flight)
    store_memory: str = "512MiB"
    header_timeout_s: float = 10.0  # to receive a request's headers (connection closed beyond)
    alerts: AlertSettings = field(default_factory=lambda: AlertSettings())

    @property
    def store_config(self) -> dict[str, str | int | bool]:
        """DuckDB settings of the collector's store connection."""
        return {
            "threads": self.store_threads,
            "checkpoint_threshold": self.checkpoint_threshold,
            "memory_limit": self.store_memory,
        }

    @property
    def limits(self) -> Limits:
        """The receiver's size limits."""
        return Limits(self.max_body, self.max_decompressed)


@dataclass
class Counters:
    """Requests and records the collector has answered."""

    requests: dict[str, int] = field(default_factory=dict)  # by status code
    accepted: dict[str, int] = field(default_factory=lambda: {"spans": 0, "metrics": 0, "logs": 0})
    rejected: dict[str, int] = field(default_factory=lambda: {"spans": 0, "metrics": 0, "logs": 0})

    def answered(self, status: int) -> None:
        """Count one answer."""
        key = str(status)
        self.requests[key] = self.requests.get(key, 0) + 1


class Collector:
    """The state behind the routes: settings, writer, tracker, decode threads, counters."""

    def __init__(
        self,
        settings: ServeSettings,
        store: Store,
        on_ready: Callable[[], None] | None = None,
        online: Online | None = None,
    ) -> None:
        self.settings = settings
        self.limits = settings.limits
        self.tracker = TraceTracker(
            settings.trace_idle_s, settings.trace_max_wait_s, settings.max_open_traces
        )
        self.writer = Writer(
            store,
            settings.max_pending_rows,
            settings.batch_rows,
            on_commit=self._committed,
            spool=_spool_for(store) if settings.spool else None,
        )
        self.decoder = Decoder(
            self.writer, self.limits, settings.decode_batch_bytes, settings.decode_processes
        )
        self.counters = Counters()
        self.inflight_bytes = 0  # changed on the event loop only
        self.started = time.monotonic()
        self.on_ready = on_ready
        self.online = online
        self.store = store
        if online is not None:
            online.attach(store)
            self.tracker.subscribe(online.on_complete)
        receivers = settings.alerts.receivers()
        self.alerting = (
            Alerting(
                online,
                receivers,
                settings.alerts.dashboard,
                settings.alerts.gap_s,
                late_s=online.lateness_s() if online is not None else 0.0,
                resend_s=settings.alerts.resend_s,
            )
            if online is not None or receivers
            else None
        )
        self.metrics = Metrics(self, online, self.alerting)
        self._memory_cursor: Store | None = None
        self._memory_lock = threading.Lock()

    def store_memory(self) -> dict[str, int]:
        """DuckDB's memory in use by tag (`duckdb_memory()`; {} for a store without it)."""
        with self._memory_lock:
            try:
                if self._memory_cursor is None:
                    self._memory_cursor = self.store.cursor()
                rows = self._memory_cursor.sql(
                    "SELECT tag, memory_usage_bytes AS b FROM duckdb_memory() WHERE b > 0"
                ).to_pylist()
            except Exception:  # a Parquet dataset, a closing store: no figure
                return {}
        return {r["tag"]: int(r["b"]) for r in rows}

    def _committed(self, table: str, data: pa.Table) -> None:
        if table == "spans":
            self.tracker.observe(data)

    def start(self) -> None:
        """Start the writer and the completion tracker."""
        self.writer.start()
        self.decoder.start()
        self.tracker.start()
        if self.online is not None:
            self.online.start()
        if self.alerting is not None:
            self.alerting.start(self.store)

    def stop(self) -> None:
        """Commit everything queued, deliver the open traces, close the store."""
        self.decoder.close()
        with contextlib.suppress(Exception):  # what is queued is committed (and observed)
            self.writer.call(lambda store: None).result(timeout=120)
        self.tracker.stop(flush=True)  # the open traces go to the subscribers
        if self.online is not None:
            self.online.stop()
        if self.alerting is not None:  # after the last findings are stored
            with contextlib.suppress(Exception):
                self.alerting.stop()
        with self._memory_lock:
            if self._memory_cursor is not None:
                self._memory_cursor.close()
                self._memory_cursor = None
        self.writer.close()

    def health(self) -> dict[str, Any]:
        """The document of GET /api/health."""
        w = self.writer.stats
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "requests": dict(sorted(self.counters.requests.items())),
            "accepted": self.counters.accepted,
            "rejected": self.counters.rejected,
            "writer": {
                "pending_rows": self.writer.pending_rows,
                "max_pending_rows": self.writer.max_pending_rows,
                "stored": w.rows,
                "duplicates": w.duplicates,
                "batches": w.batches,
                "requests": w.requests,
                "failed_requests": w.failed_requests,
                "refused_requests": w.refused_requests,
                "busy_s": round(w.busy_s, 3),
                "replayed": w.replayed,
                "cpu_s": {k: round(v, 3) for k, v in w.cpu_s.items()},
            },
            "decoder": {
                "pending_bytes": self.decoder.pending_bytes,
                "batches": self.decoder.batches,
                "busy_s": round(self.decoder.busy_s, 3),
            },
            "traces": {
                "open": self.tracker.open_traces,
                "delivered": dict(self.tracker.delivered),
            },
            "inflight_bytes": self.inflight_bytes,
        }

    # -- one export request ----------------------------------------------------------------

    async def export(self, request: Request, signal: Signal) -> Response:
        """Answer one OTLP/HTTP export request (its time observed for /metrics)."""
        began = time.perf_counter()
        try:
            return await self._export(request, signal)
        finally:
            self.metrics.latency.labels(signal.value).observe(time.perf_counter() - began)

    async def _export(self, request: Request, signal: Signal) -> Response:
        media: str | None = None
        try:
            media = receiver.media_type(request.headers.get("content-type"))
            if self.busy():
                self.writer.stats.refused_requests += 1
                await self._drain(request)
                raise RequestError(503, "the collector is busy writing; retry later")
            data = await self._receive(request)
            body = Body(signal, media, request.headers.get("content-encoding"), data)
            decoded = await asyncio.wrap_future(self.decoder.submit(body))
        except RequestError as exc:
            return self.error(exc.status, str(exc), media)
        except QueueFull as exc:
            return self.error(503, str(exc), media)
        except StoreError as exc:
            return self.error(503, f"cannot store the request: {exc}", media)
        except ClientDisconnect:
            self.counters.answered(499)  # nobody to answer
            return Response(status_code=400)
        except Exception as exc:  # a bug of ours: the sender gets a clear 500, we a traceback
            log.exception("failed to handle %s", request.url.path)
            return self.error(500, f"internal error: {type(exc).__name__}: {exc}", media)
        table = receiver.TABLES[signal]
        self.counters.accepted[table] += decoded.rows
        self.counters.rejected[table] += decoded.rejected
        self.counters.answered(200)
        return Response(receiver.export_response(decoded, media), media_type=media)

    def busy(self) -> bool:
        """Whether the rows waiting to be written or the bodies waiting to be decoded fill
        their queue."""
        return (
            self.writer.pending_rows >= self.settings.max_pending_rows
            or self.decoder.pending_bytes >= self.settings.max_pending_bytes
        )

    async def _receive(self, request: Request) -> bytes:
        """The body, read within the size limits and the bytes-in-flight budget."""
        declared = _content_length(request)
        if declared is not None and declared > self.limits.max_body:
            await self._drain(request)
            raise RequestError(413, f"request body is larger than {self.limits.max_body} bytes")
        reserved = declared or 0
        if (
            self.inflight_bytes
            and self.inflight_bytes + reserved > self.settings.max_inflight_bytes
        ):
            await self._drain(request)
            raise RequestError(429, "too many request bytes in flight; retry later")
        self.inflight_bytes += reserved
        try:
            return await self._read(request)
        finally:
            self.inflight_bytes -= reserved

    async def _read(self, request: Request) -> bytes:
        limit = self.limits.max_body
        parts: list[bytes] = []
        total = 0
        try:
            async with asyncio.timeout(self.settings.read_timeout_s):
                async for part in request.stream():
                    total += len(part)
                    if total > limit:
                        await self._drain(request)
                        raise RequestError(413, f"request body is larger than {limit} bytes")
                    parts.append(part)
        except TimeoutError as exc:
            raise RequestError(408, "the request body took too long to arrive") from exc
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _drain(self, request: Request) -> None:
        """Read and drop what is left of a refused body (up to a bound) so the sender sees
        the answer instead of a broken pipe; past the bound the connection is closed."""
        if request.headers.get("expect", "").lower() == "100-continue":
            return  # the body has not been sent and will not be
        left = self.limits.decompressed
        with contextlib.suppress(ClientDisconnect, TimeoutError, RuntimeError):
            async with asyncio.timeout(self.settings.read_timeout_s):
                async for part in request.stream():
                    left -= len(part)
                    if left < 0:
                        break

    def error(self, status: int, message: str, media: str | None) -> Response:
        """An error answer: google.rpc.Status like the request, Retry-After when retryable."""
        self.counters.answered(status)
        if status >= 500 or status == 429:
            log.warning("answered %d: %s", status, message)
        else:
            log.info("answered %d: %s", status, message)
        body, content_type = receiver.status_body(status, message, media)
        headers = {}
        if status in (429, 503):
            headers["Retry-After"] = str(self.settings.retry_after_s)
        return Response(body, status_code=status, media_type=content_type, headers=headers)


def _spool_for(store: Store) -> Spool | None:
    """The spool of a DuckDB store file (none for a store in memory or a Parquet dataset,
    whose writes are their own files)."""
    from spanomaly.store.duckdb import DuckDBStore
    from spanomaly.store.parquet import ParquetStore

    if not isinstance(store, DuckDBStore) or isinstance(store, ParquetStore):
        return None
    if store.path == ":memory:":
        return None
    return Spool(spool_dir(store.path))


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError as exc:
        raise RequestError(400, f"invalid Content-Length {value!r}") from exc
    if length < 0:
        raise RequestError(400, f"invalid Content-Length {value!r}")
    return length


def create_app(
    settings: ServeSettings,
    store: Store | None = None,
    on_complete: Callable[[pa.Table], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    online: Online | None = None,
) -> FastAPI:
    """The collector app over store (default: the DuckDB file of settings.db), with the
    dashboard and its API; with online, completed traces and closed instance windows are
    scored as they come (and the dashboard's Models view and feedback use it)."""
    if store is None:
        store = open_store(settings)
    collector = Collector(settings, store, on_ready, online)
    if on_complete is not None:
        collector.tracker.subscribe(on_complete)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        collector.start()
        if collector.on_ready is not None:
            collector.on_ready()
        try:
            yield
        finally:
            log.info("shutting down: committing what is queued")
            await asyncio.get_running_loop().run_in_executor(None, collector.stop)

    app = FastAPI(
        title="spanomaly",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.collector = collector

    @app.post("/v1/traces")
    async def traces(request: Request) -> Response:
        """OTLP/HTTP traces export."""
        return await collector.export(request, Signal.TRACES)

    @app.post("/v1/metrics")
    async def metrics(request: Request) -> Response:
        """OTLP/HTTP metrics export."""
        return await collector.export(request, Signal.METRICS)

    @app.post("/v1/logs")
    async def logs(request: Request) -> Response:
        """OTLP/HTTP logs export."""
        return await collector.export(request, Signal.LOGS)

    @app.get("/api/health")
    async def health() -> JSONResponse:
        """Liveness and the collector's counters."""
        return JSONResponse(collector.health())

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        """The collector's figures in Prometheus' text format (`serve.prom`)."""
        body = await asyncio.get_running_loop().run_in_executor(None, collector.metrics.render)
        return Response(body, media_type=PROM_CONTENT_TYPE)

    @app.get("/api/incidents")
    async def incidents() -> JSONResponse:
        """Open incidents and what each alert receiver did."""
        if collector.alerting is None:
            return JSONResponse({"detail": "no incidents without a model: serve --model DIR"}, 404)
        return JSONResponse(collector.alerting.status())

    @app.get("/api/stats")
    async def stats() -> Response:
        """What `spanomaly stats --json` prints, read through the writer."""
        try:
            doc = await asyncio.wrap_future(collector.writer.call(lambda s: s.stats().to_json()))
        except StoreError as exc:
            return collector.error(503, str(exc), None)
        return JSONResponse(doc)

    if online is not None:
        _model_routes(app, collector, online)
    else:

        @app.get("/api/model")
        async def no_model() -> JSONResponse:
            """Without online detection there is no model to show."""
            return JSONResponse(
                {"detail": "no model is loaded: start `spanomaly serve --model DIR`"}, 404
            )

    from spanomaly.serve import dashboard

    dashboard.install(app, collector.writer, settings.token, online)  # and its guard
    return app


def _model_routes(app: FastAPI, collector: Collector, online: Online) -> None:
    """GET /api/model (what is loaded) and POST /api/model/retrain {"from","to"} (ns)."""

    @app.get("/api/model")
    async def model_status() -> JSONResponse:
        """The loaded model: period, detectors, thresholds, vocabulary; online counters."""
        return JSONResponse(online.status())

    @app.post("/api/model/retrain")
    async def model_retrain(request: Request) -> Response:
        """Fit new models on stored data: {"from": T, "to": T} (ISO-8601 or unix seconds as
        text, or a number: seconds, or ns from 1e11 up) and optionally
        "exclude" ([[from, to], ...] ns: periods left out), "point_window_s" (seconds),
        "point_sources" (["traces", "metrics"]), "target_fpr" (of the trace and point
        detectors, in (0, 1)) and "point_target_fpr" (of the point detectors, if not that)."""
        try:
            body = await request.json()
            lo, hi, win = body.get("from"), body.get("to"), body.get("point_window_s")
            sources, fpr = body.get("point_sources"), body.get("target_fpr")
            point_fpr = body.get("point_target_fpr")
            exclude = body.get("exclude") or []
            if not isinstance(exclude, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p)
                for p in exclude
            ):
                raise ValueError("exclude must be a list of [from, to] pairs (ns)")
            for name, v in (("target_fpr", fpr), ("point_target_fpr", point_fpr)):
                if v is not None and not (isinstance(v, int | float) and 0 < v < 1):
                    raise ValueError(f"{name} must be a number in (0, 1)")
            lo, hi = _body_time(lo, "from"), _body_time(hi, "to")
            if win is not None and not isinstance(win, int | float):
                raise ValueError("point_window_s must be a number of seconds")
            if sources is not None and not (
                isinstance(sources, list) and all(isinstance(x, str) for x in sources)
            ):
                raise ValueError("point_sources must be a list of names")
        except (ValueError, AttributeError, InputError) as exc:
            return collector.error(400, f"retrain: {exc}", None)
        loop = asyncio.get_running_loop()
        try:
            doc = await loop.run_in_executor(
                None,
                online.retrain,
                lo,
                hi,
                [(int(a), int(b)) for a, b in exclude],
                win,
                None if sources is None else tuple(sources),
                fpr,
                point_fpr,
            )
        except SpanomalyError as exc:
            return collector.error(400, f"retrain: {exc}", None)
        return JSONResponse(doc)


def _body_time(value: object, name: str) -> int | None:
    """A time of a JSON body in ns: ISO-8601 or unix seconds as a string (as the routes'
    query parameters take them), or a number: seconds below 1e11 (before the year 5138),
    else nanoseconds."""
    if value is None or isinstance(value, str):
        return timeparse.parse_time(value, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: ISO-8601, unix seconds or ns since the epoch, or null")
    return int(value) if abs(value) >= 1e11 else timeparse.parse_time(repr(value), name)


def open_store(settings: ServeSettings) -> Store:
    """The collector's store: the DuckDB file, tuned for many small transactions.

    A re-sent span (an SDK retrying after a timeout) has the same ids and start time as
    the stored one; telling duplicates by the start time too keeps each write's duplicate
    check to the recent part of the store instead of every span ever stored.
    """
    from spanomaly.store.duckdb import DuckDBStore

    if str(settings.db).startswith("parquet:"):  # --store parquet:DIR[#WRITER]: Parquet dataset
        from spanomaly.store.parquet import open_dataset

        return open_dataset(str(settings.db)[len("parquet:") :])
    return DuckDBStore(settings.db, config=settings.store_config, span_key_with_start=True)


class _Server(uvicorn.Server):
    """uvicorn's server, exiting normally after a graceful stop on SIGTERM/SIGINT.

    uvicorn raises a caught signal again once it has shut down; everything is committed by
    then, so `spanomaly serve` exits with status 0 instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Handle SIGINT/SIGTERM as uvicorn does, without raising them again afterwards."""
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", None)
            if captured:
                log.info("stopped by signal %s", captured)
                captured.clear()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
            sock.listen(2048)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise SpanomalyError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The http:// URL a bound socket answers on."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    settings: ServeSettings,
    on_ready: Callable[[str], None] | None = None,
    on_complete: Callable[[pa.Table], None] | None = None,
    online: Online | None = None,
) -> None:
    """Run the collector until SIGTERM/SIGINT; commits everything before returning."""
    # a store locked by another process fails here, before the port is taken
    store = open_store(settings)
    try:
        sock = bind(settings.host, settings.port)
    except BaseException:
        store.close()
        raise
    url = url_of(sock)
    if settings.host not in LOOPBACK and not settings.token:
        log.warning("listening on %s without a token: anyone who can reach it may write", url)
    app = create_app(
        settings,
        store,
        on_complete,
        on_ready=(lambda: on_ready(url)) if on_ready else None,
        online=online,
    )
    config = uvicorn.Config(
        app,
        log_level=logging.getLogger("spanomaly").getEffectiveLevel(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=30,
        timeout_keep_alive=30,
        limit_concurrency=settings.max_connections,
        server_header=False,
        http=protocol(settings.header_timeout_s, max_waiting=4 * settings.max_connections),
    )
    server = _Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise SpanomalyError("the collector did not start (see the messages above)")
