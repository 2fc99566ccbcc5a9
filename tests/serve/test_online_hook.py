"""The collector with an online detector: attached to its store, told of completed traces,
stopped after the writer committed; the model routes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

import httpx
import pyarrow as pa

from spanomaly.errors import InputError
from spanomaly.ingest.base import Chunk
from spanomaly.schema import FINDINGS
from spanomaly.serve.app import AlertSettings, ServeSettings, create_app
from spanomaly.store.base import Store
from spanomaly.store.duckdb import DuckDBStore
from tests.serve.conftest import PROTOBUF
from tests.serve.stack import hook_server
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


def _finding(service: str, instance: str, t_ns: int) -> pa.Table:
    row = {"finding_id": f"{instance}-{t_ns}", "time_ns": t_ns, "detector": "ecod",
           "entity": "instance", "trace_id": None, "span_id": None, "service": service,
           "instance": instance, "operation": None, "score": 5.0, "threshold": 2.0,
           "reason": "cpu far above normal", "details": None, "feedback": None}  # fmt: skip
    return pa.Table.from_pylist([row], schema=FINDINGS)


def test_findings_become_incidents_on_metrics_and_the_webhook() -> None:
    """Findings the online detector stores open an incident (with its suspects) that the
    webhook hears firing and then resolved; /metrics shows scores, findings and incidents."""
    online = FakeOnline()
    store = DuckDBStore(":memory:")
    with hook_server() as hook:
        alerts = AlertSettings(webhook=hook.url, webhook_secret="k", gap_s=1.0)
        settings = ServeSettings(decode_processes=0, alerts=alerts)
        app = create_app(settings, store, online=online)
        app.state.collector.alerting.interval_s = 0.2

        async def test() -> None:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as c,
            ):
                store.write(Chunk("findings", _finding("a", "a-1", time.time_ns())))  # type: ignore[arg-type]
                for _ in range(200):
                    if len(hook.got) >= 2:
                        break
                    await asyncio.sleep(0.05)
                text = (await c.get("/metrics")).text
                assert (
                    'spanomaly_anomaly_score{instance="a-1",service="a",source="metrics"} 3.0'
                    in text
                )
                assert 'spanomaly_service_anomaly_ratio{service="a"} 1.5' in text
                assert 'spanomaly_findings_total{detector="ecod",service="a"} 1.0' in text
                assert "spanomaly_incidents_opened_total 1.0" in text
                doc = (await c.get("/api/incidents")).json()
                assert doc["opened"] == 1 and doc["receivers"]["webhook"]["sent"] >= 1

        asyncio.run(asyncio.wait_for(test(), 60))
    sent = [json.loads(body)["incidents"][0] for _, body in hook.got]
    assert [i["status"] for i in sent] == ["firing", "resolved"]
    assert sent[0]["service"] == "a" and sent[0]["suspects"][0]["instance"] == "a-1"
    assert sent[0]["severity"] == "critical" and sent[0]["reasons"] == ["cpu far above normal"]
