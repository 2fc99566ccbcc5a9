"""The collector app in this process (in-memory store, decoding in a thread): backpressure,
answers only after the commit, completed traces handed to a callback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from spanomaly.ingest.base import Chunk
from spanomaly.serve.app import ServeSettings, create_app
from spanomaly.store.base import WriteResult
from spanomaly.store.duckdb import DuckDBStore
from tests.serve.conftest import PROTOBUF, T0, spans_request


class GatedStore(DuckDBStore):
    """An in-memory store whose writes wait for a gate, counting the writes."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.writes: list[int] = []

    def write(self, chunk: Chunk) -> WriteResult:
        """Wait for the gate, then write."""
        self.entered.set()
        self.gate.wait(timeout=30)
        result = super().write(chunk)
        self.writes.append(result.inserted)
        return result


@asynccontextmanager
async def client(
    store: DuckDBStore,
    on_complete: Callable[[pa.Table], None] | None = None,
    **settings: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client over the app in this process, inside the app's lifespan (writer
    started, then stopped with everything committed)."""
    app = create_app(ServeSettings(decode_processes=0, **settings), store, on_complete)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as c,
    ):
        yield c


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def body(first: int, count: int) -> bytes:
    return spans_request(first, count).SerializeToString()


async def wait_for(event: threading.Event) -> None:
    for _ in range(1000):
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_a_full_queue_answers_503_with_retry_after() -> None:
    async def test() -> None:
        store = GatedStore()
        store.gate.clear()  # the writer blocks in its first write
        async with client(store, max_pending_rows=100, retry_after_s=3) as c:
            first = asyncio.create_task(c.post("/v1/traces", content=body(1, 80), headers=PROTOBUF))
            await wait_for(store.entered)
            refused = await c.post("/v1/traces", content=body(1000, 80), headers=PROTOBUF)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "3"
            assert "retry later" in refused.text
            await asyncio.sleep(0.1)
            assert not first.done()  # not answered before its commit
            store.gate.set()
            assert (await first).status_code == 200
            assert (await c.get("/api/stats")).json()["spans"] == 80
            health = (await c.get("/api/health")).json()
            assert health["writer"]["refused_requests"] == 1
            assert health["requests"] == {"200": 1, "503": 1}

    run(test)


def test_concurrent_requests_share_transactions() -> None:
    async def test() -> None:
        store = GatedStore()
        store.gate.clear()
        async with client(store) as c:
            sends = [
                asyncio.create_task(
                    c.post("/v1/traces", content=body(1 + 100 * i, 100), headers=PROTOBUF)
                )
                for i in range(8)
            ]
            await wait_for(store.entered)
            await asyncio.sleep(0.5)  # the others queue up behind the blocked write
            store.gate.set()
            assert [(await s).status_code for s in sends] == [200] * 8
            assert sum(store.writes) == 800
            assert len(store.writes) < 8  # batched: fewer transactions than requests
            assert (await c.get("/api/stats")).json()["spans"] == 800

    run(test)


def test_a_failing_store_answers_503_and_keeps_going() -> None:
    class Flaky(DuckDBStore):
        fail = True

        def write(self, chunk: Chunk) -> WriteResult:
            if self.fail:
                from spanomaly.errors import StoreError

                raise StoreError("disk full")
            return super().write(chunk)

    async def test() -> None:
        store = Flaky(":memory:")
        async with client(store) as c:
            response = await c.post("/v1/traces", content=body(1, 5), headers=PROTOBUF)
            assert response.status_code == 503 and "disk full" in response.text
            assert "retry-after" in response.headers
            store.fail = False
            response = await c.post("/v1/traces", content=body(1, 5), headers=PROTOBUF)
            assert response.status_code == 200
            assert (await c.get("/api/stats")).json()["spans"] == 5

    run(test)


def test_completed_traces_reach_the_callback() -> None:
    done: list[pa.Table] = []
    trace = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    request = trace_pb.ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    ids = [bytes([i]) * 8 for i in range(1, 5)]
    for i, span_id in enumerate(ids):
        scope.spans.append(
            Span(
                trace_id=trace,
                span_id=span_id,
                parent_span_id=b"" if i == 0 else ids[0],
                name=f"op{i}",
                start_time_unix_nano=T0 + i,
                end_time_unix_nano=T0 + 100 - i,
            )
        )

    async def test() -> None:
        async with client(DuckDBStore(":memory:"), done.append, trace_idle_s=0.2) as c:
            response = await c.post(
                "/v1/traces", content=request.SerializeToString(), headers=PROTOBUF
            )
            assert response.status_code == 200
            deadline = time.monotonic() + 10
            while not done and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert done, "no completed trace within 10 s"
            row = pa.concat_tables(done).to_pylist()[0]
            assert row == {
                "trace_id": trace.hex(),
                "spans": 4,
                "root": True,
                "start_ns": T0,
                "end_ns": T0 + 100,
                "reason": "idle",
            }
            health = (await c.get("/api/health")).json()
            assert health["traces"]["delivered"]["idle"] == 1

    run(test)


def test_the_store_memory_is_bounded(tmp_path: Path) -> None:
    """DuckDB's buffer pool is capped (its own default, 80 % of RAM, grows with the store)."""
    from spanomaly.serve.app import open_store

    store = open_store(ServeSettings(db=tmp_path / "s.duckdb", store_memory="300MiB"))
    try:
        limit = store.sql("SELECT current_setting('memory_limit') AS m").column("m")[0].as_py()
    finally:
        store.close()
    assert limit == "300.0 MiB"
