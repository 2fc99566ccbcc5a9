"""The collector's decoder: request bodies are decompressed, checked and decoded in batches,
in worker processes.

Handlers `submit` bodies as received (`receiver.Body`); a thread takes every body waiting
(up to ``batch_bytes``) and hands the batch to `receiver.handle`, which checks each request
alone and decodes the protobuf traces of all of them in one pass (decoding costs a fixed
part per call, which dominates for the small requests SDKs send). The rows go to the writer
in one piece; each request's future gets its own `Decoded` (its rejects included) once the
writer has committed them, or its `RequestError` (400, 413, 415) at once, or `QueueFull`
when the writer's queue cannot take the batch.

Decoding runs in ``processes`` worker processes (the collector uses 2), not in the server's process:
decoding is numpy and Python, DuckDB's client needs the interpreter lock for much of a
write, and in one process the two would take turns instead of using two cores. With
``processes=0`` the thread decodes itself (tests, a machine with one core). While the writer
commits one batch, the next is being decoded.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future, InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from spanomaly.errors import StoreError
from spanomaly.ingest import receiver
from spanomaly.ingest.base import Chunk
from spanomaly.ingest.receiver import Body, Decoded, Limits, RequestError
from spanomaly.serve.writer import Writer

log = logging.getLogger(__name__)

DEFAULT_BATCH_BYTES = 1 << 20  # a few thousand spans: decoding costs least per span there

Result = tuple[list[Chunk], list[Decoded | RequestError]]


@dataclass
class _Request:
    body: Body
    future: Future[Decoded] = field(default_factory=Future)


_STOP = object()


def _worker_init() -> None:
    """In a decode process: die with the server (Linux), leave group signals to the server."""
    # Ctrl-C, and a SIGTERM sent to the whole process group (a supervisor's stop), are for
    # the server, which drains and shuts the pool down; a worker that died of them would
    # leave the batch it was decoding unsettled and the server's drain waiting for it. So
    # the worker leaves the group, but still ends on a SIGTERM sent to it alone: that is
    # how the pool stops the survivors when one of its processes died.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)
    except OSError:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed when the server dies
        if os.getppid() == 1:  # the server died before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass


def _settle(future: Future[Decoded], result: Decoded | BaseException) -> None:
    """Complete a request's future, unless its handler gave up on it (cancelled)."""
    if future.done():
        return
    try:
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled meanwhile
        pass


def _warm_up() -> int:
    """Run once in each decode process at start: the first real request then finds the
    modules imported and the decoder's caches filled. Returns the process id."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    request = pb.ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(
        Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="warm-up", start_time_unix_nano=1)
    )
    body = Body(receiver.Signal.TRACES, receiver.PROTOBUF, None, request.SerializeToString())
    receiver.handle([body], Limits())
    return os.getpid()


class Decoder:
    """Decodes requests in batches (in worker processes) and feeds the writer."""

    def __init__(
        self,
        writer: Writer,
        limits: Limits,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        processes: int = 1,
    ) -> None:
        self.writer = writer
        self.limits = limits
        self.batch_bytes = batch_bytes
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._slot_count = max(processes, 1)
        self._slots = threading.Semaphore(self._slot_count)  # batches decoding at once
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._broken = False  # a worker died: start new ones before the next batch
        self.busy_s = 0.0  # time batches spent decoding (in the workers)
        self.batches = 0

    @property
    def pending_bytes(self) -> int:
        """Body bytes submitted and not yet decoded."""
        return self._pending

    def start(self) -> None:
        """Start the worker processes (call from the main thread) and the batching thread."""
        if self.processes > 0 and self._pool is None:
            try:
                self._pool = self._new_pool()
                pids = [self._pool.submit(_warm_up) for _ in range(self.processes)]
                log.info("decode processes: %s", [p.result(timeout=120) for p in pids])
            except Exception as exc:  # no processes here (a sandbox?): decode in a thread
                log.warning("cannot start decode processes (%s); decoding in a thread", exc)
                if self._pool is not None:
                    self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
                self.processes = 0
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spanomaly-decoder", daemon=True)
            self._thread.start()

    def submit(self, body: Body) -> Future[Decoded]:
        """Queue a request; its future completes once its rows are committed (or raises)."""
        item = _Request(body)
        with self._lock:
            if self._closed:
                raise StoreError("the collector is shutting down")
            self._pending += len(body.data)
        self._queue.put(item)
        return item.future

    def close(self) -> None:
        """Decode everything queued, hand it to the writer, stop the thread and workers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        for _ in range(self._slot_count):  # wait for the batches still decoding
            self._slots.acquire()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
        )

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            batch: list[_Request] = []
            size = 0
            while True:
                if item is _STOP:
                    stop = True
                    break
                assert isinstance(item, _Request)
                batch.append(item)
                size += len(item.body.data)
                if size >= self.batch_bytes:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._slots.acquire()
                self._dispatch(batch, size)

    def _dispatch(self, batch: list[_Request], size: int) -> None:
        bodies = [r.body for r in batch]
        started = time.perf_counter()
        future: Future[Result]
        if self._pool is None:
            future = Future()
            try:
                future.set_result(receiver.handle(bodies, self.limits))
            except Exception as exc:
                future.set_exception(exc)
        else:
            if self._broken:
                log.warning("a decode process died; starting new ones")
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                self._broken = False
            try:
                future = self._pool.submit(receiver.handle, bodies, self.limits)
            except BrokenProcessPool as exc:
                self._broken = True
                future = Future()
                future.set_exception(exc)
        future.add_done_callback(lambda f: self._decoded(batch, size, f, started))

    def _decoded(
        self, batch: list[_Request], size: int, future: Future[Result], started: float
    ) -> None:
        """A batch is decoded (in whichever thread completes the future): on to the writer."""
        self.busy_s += time.perf_counter() - started
        self.batches += 1
        try:
            try:
                chunks, results = future.result()
            except Exception as exc:
                log.error("decoding %d requests failed: %s", len(batch), exc)
                if isinstance(exc, BrokenProcessPool):
                    self._broken = True
                for r in batch:
                    _settle(r.future, StoreError(f"decoding failed: {exc}"))
                return
            waiting: list[tuple[_Request, Decoded]] = []
            for r, result in zip(batch, results, strict=True):
                if isinstance(result, RequestError) or not result.rows:
                    _settle(r.future, result)
                else:
                    waiting.append((r, result))
            if not waiting:
                return
            try:  # QueueFull when the writer is behind: the senders retry (503)
                committed = self.writer.submit(chunks)
            except Exception as exc:
                for r, _ in waiting:
                    _settle(r.future, exc)
                return

            def done(f: Future[None]) -> None:
                error = f.exception()
                for r, d in waiting:
                    _settle(r.future, d if error is None else error)

            committed.add_done_callback(done)
        finally:
            with self._lock:
                self._pending -= size
            self._slots.release()
