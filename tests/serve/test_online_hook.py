"""The collector with an online detector: attached to its store, told of completed traces,
stopped after the writer committed; the model routes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import httpx
import pyarrow as pa

from spanomaly.errors import InputError
from spanomaly.serve.app import ServeSettings, create_app
from spanomaly.store.base import Store
from spanomaly.store.duckdb import DuckDBStore
from tests.serve.conftest import PROTOBUF
from tests.serve.test_app import body

T5, T9 = 1_700_000_000_000_000_005, 1_700_000_009_000_000_000  # ns (an integer from 1e11 up)


class FakeOnline:
    """Records what the collector asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.completed = 0
        self.store: Store | None = None
        self.retrained: list[tuple[Any, ...]] = []

    def attach(self, store: Store) -> None:
        self.store = store
        self.calls.append("attach")

    def on_complete(self, completed: pa.Table) -> None:
        self.completed += completed.num_rows

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")

    def status(self) -> dict[str, Any]:
        return {"loaded": True, "completed": self.completed}

    def lateness_s(self) -> float:
        return 0.0

    def levels(self) -> list[dict[str, Any]]:
        return [
            {"service": "a", "instance": "a-1", "source": "metrics", "time_ns": 0,
             "score": 3.0, "threshold": 2.0},
        ]  # fmt: skip

    def suspects(self, start_ns: int, end_ns: int, top: int = 3) -> list[dict[str, Any]]:
        return [{"rank": 1, "service": "a", "instance": "a-1", "operation": None, "score": 1.0}]

    def retrain(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exclude: Iterable[tuple[int, int]] = (),
        point_window_s: float | None = None,
        point_sources: tuple[str, ...] | None = None,
        target_fpr: float | None = None,
        point_target_fpr: float | None = None,
    ) -> dict[str, Any]:
        if start_ns is not None and end_ns is not None and start_ns >= end_ns:
            raise InputError("--from must be before --to")
        self.retrained.append((start_ns, end_ns, point_window_s, point_sources))
        self.fpr = target_fpr
        self.point_fpr = point_target_fpr
        return {"traces": 3}

    def feedback(self, finding_id: str) -> dict[str, Any]:
        return {"finding": finding_id}


def test_online_detector_lifecycle_and_routes() -> None:
    online = FakeOnline()
    store = DuckDBStore(":memory:")
    app = create_app(ServeSettings(decode_processes=0, trace_idle_s=0.1), store, online=online)

    async def test() -> None:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as c,
        ):
            assert online.calls == ["attach", "start"] and online.store is store
            assert (
                await c.post("/v1/traces", content=body(0, 20), headers=PROTOBUF)
            ).status_code == 200
            for _ in range(200):
                if online.completed:
                    break
                await asyncio.sleep(0.05)
            assert online.completed > 0
            assert (await c.get("/api/model")).json()["loaded"] is True
            ok = await c.post("/api/model/retrain", json={"from": T5, "to": T9, "point_window_s": 10,
                                                          "point_sources": ["metrics"],
                                                          "target_fpr": 1e-4,
                                                          "point_target_fpr": 1e-3})  # fmt: skip
            assert ok.status_code == 200 and ok.json() == {"traces": 3}
            assert online.retrained == [(T5, T9, 10, ("metrics",))] and online.fpr == 1e-4
            assert online.point_fpr == 1e-3
            for bad in ({"from": "yesterday"}, {"point_window_s": "long"}, {"point_sources": "x"},
                        {"target_fpr": 2}, {"point_target_fpr": 0}):  # fmt: skip
                r = await c.post("/api/model/retrain", json=bad)
                assert r.status_code == 400 and "retrain" in r.text
            r = await c.post("/api/model/retrain", json={"from": T9, "to": T5})
            assert r.status_code == 400 and "--from must be before --to" in r.text
            assert (await c.get("/api/model/retrain")).status_code == 405  # no change on GET

    asyncio.run(asyncio.wait_for(test(), 60))
    assert online.calls == ["attach", "start", "stop"]
