"""A small store and model for the dashboard tests: synthetic traces (tests.synthetic) with
planted anomalies, one of them in a span whose service and operation are an XSS payload,
an n-gram trace model trained on the normal hour, findings from `detect`, an instance's
metrics with a CPU spike inside a fault label and an instance finding on it; plus the
server (with the online detector) in a thread."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import uvicorn

from spanomaly import pipeline as trace_pipeline
from spanomaly.ingest.base import Chunk
from spanomaly.pipeline.online import OnlineDetector
from spanomaly.pipeline.training import TrainOptions
from spanomaly.schema import FAULTS, FINDINGS, METRICS, SPANS
from spanomaly.serve.app import ServeSettings, bind, create_app, url_of
from spanomaly.store.duckdb import DuckDBStore
from tests.synthetic import T0, TraceBuilder, _find, normal_traces, order_request, plant

NS = 1_000_000_000
XSS = "<img src=x onerror=alert(1)>"
INSTANCE = "order-service-7d9f8-abcde"
SPIKE = "cpu-spike-finding"  # the instance finding


@dataclass
class Data:
    """Where the built store and model are, and what was planted."""

    db: Path
    model: Path
    planted: dict[str, str]  # kind -> span id the finding must name
    xss_span: str

    def copy_to(self, directory: Path) -> Data:
        """A private copy (tests that change the store or the model use one)."""
        directory.mkdir(parents=True, exist_ok=True)
        db = directory / "s.duckdb"
        shutil.copy(self.db, db)
        model = directory / "model"
        shutil.copytree(self.model, model)
        return Data(db, model, dict(self.planted), self.xss_span)


def _full(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return pa.table(
        {
            f.name: table.column(f.name)
            if f.name in table.column_names
            else pa.nulls(len(table), f.type)
            for f in schema
        },
        schema=schema,
    )


def build(directory: Path) -> Data:
    """Write the store and train the model under directory."""
    b = TraceBuilder(seed=5)
    normal_traces(b, 300)
    later = T0 + 3600 * NS
    normal_traces(b, 40, start_ns=later)
    planted = {
        k: plant(b, k, later + (5 + i) * NS) for i, k in enumerate(["unknown_op", "slow_span"])
    }
    root = order_request()
    read = _find(root, "order_read")
    read.service, read.operation = XSS, XSS
    xss_span = b.add(root, later + 8 * NS)["order_read"]
    db, model = directory / "s.duckdb", directory / "model"
    with DuckDBStore(db) as store:
        store.write(Chunk("spans", _full(b.table(), SPANS)))
        n = 240  # an instance's CPU every 15 s over its last hour, one spike in a fault
        t = later - 3590 * NS + np.arange(n, dtype=np.int64) * 15 * NS
        cpu = 0.2 + 0.01 * np.sin(np.arange(n))
        cpu[200:204] = 0.95
        metrics = pa.table(
            {
                "time_ns": t,
                "service": ["order-service"] * n,
                "instance": [INSTANCE] * n,
                "name": ["cpu.utilization"] * n,
                "value": cpu,
            }
        )
        store.write(Chunk("metrics", _full(metrics, METRICS)))  # type: ignore[arg-type]
        fault = pa.table(
            {
                "fault_id": ["f1"],
                "kind": ["cpu_contention"],
                "service": ["order-service"],
                "instance": [INSTANCE],
                "start_ns": [int(t[199])],
                "end_ns": [int(t[205])],
            }
        )
        store.write(Chunk("faults", _full(fault, FAULTS)))  # type: ignore[arg-type]
        options = TrainOptions(sequence="ngram")
        trace_pipeline.train(store, model, T0, T0 + 3000 * NS, options=options)
        trace_pipeline.detect(store, model, later, None, confirm_gap_s=0)  # lone plants
        spike = {  # what a point detector says of the CPU spike (one instance window)
            "finding_id": "cpu-spike-finding",
            "time_ns": int(t[200]),
            "detector": "point:ecod:metrics",
            "entity": "instance",
            "service": "order-service",
            "instance": INSTANCE,
            "score": 7.5,
            "threshold": 1.0,
            "reason": f"{INSTANCE} (metrics): cpu.utilization 0.95 (z +60.0)",
            "details": json.dumps({"source": "metrics", "features": [{"feature": "m:cpu"}]}),
        }
        store.write(Chunk("findings", pa.Table.from_pylist([spike], schema=FINDINGS)))  # type: ignore[arg-type]
    return Data(db, model, planted, xss_span)


def app_over(
    data: Data, token: str | None = None, online: bool = True
) -> tuple[Any, OnlineDetector | None]:
    """The server app over a copy's store, with the online detector on its model (or none)."""
    detector = OnlineDetector(data.model, train_options=TrainOptions(sequence="ngram"))
    settings = ServeSettings(db=data.db, decode_processes=0, token=token)
    app = create_app(settings, DuckDBStore(data.db), online=detector if online else None)
    return app, detector if online else None


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve app with uvicorn in a thread on a free loopback port; its URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.05)
        assert server.started, "the server did not start"
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def add_trace_logs(data: Data) -> dict[str, Any]:
    """Log lines on the trace of the planted unknown operation (two under its deviating span,
    one under another span, one error) and a finding that names the error line as its
    deviating event; the store must not be open elsewhere. What was written."""
    from spanomaly.schema import LOGS
    from spanomaly.serve.queries import iso

    with DuckDBStore(data.db) as store:
        span = data.planted["unknown_op"]
        trace_id, start, svc, inst = (
            store.sql(
                "SELECT trace_id, start_ns, service, instance FROM spans WHERE span_id = ?", [span]
            )
            .to_pylist()[0]
            .values()
        )
        other = store.sql(
            "SELECT span_id FROM spans WHERE trace_id = ? AND span_id <> ? LIMIT 1",
            [trace_id, span],
        ).to_pylist()[0]["span_id"]
        lines = [
            (start + 1_000, span, "INFO", "reading the secrets table"),
            (start + 2_000, span, "ERROR", f"secrets denied for {XSS}"),
            (start + 500, other, "WARN", "slow upstream"),
        ]
        rows = [{"time_ns": t, "service": svc, "instance": inst, "trace_id": trace_id,
                 "span_id": s, "severity": sev, "body": body} for t, s, sev, body in lines]  # fmt: skip
        store.write(Chunk("logs", _full(pa.Table.from_pylist(rows), LOGS)))
        event = {"key": f"log | {svc} | ERROR | secrets denied for <*>", "span_id": span,
                 "start": iso(start + 2_000), "service": svc, "operation": "log", "index": 3}  # fmt: skip
        finding = {c: None for c in FINDINGS.names} | {
            "finding_id": "log-finding", "time_ns": start + 2_000, "detector": "sequence:ngram",
            "entity": "trace", "trace_id": trace_id, "span_id": span, "service": svc,
            "instance": inst, "score": 3.0, "threshold": 1.0,
            "reason": "unexpected event log | ERROR", "details": json.dumps({"event": event}),
        }  # fmt: skip
        store.write(Chunk("findings", pa.Table.from_pylist([finding], schema=FINDINGS)))
    return {"trace_id": trace_id, "span": span, "other": other, "finding": "log-finding"}
