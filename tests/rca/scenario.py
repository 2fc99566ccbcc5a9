"""A small synthetic system with two faults, as a store: spans, per-instance metrics, labels.

40 minutes of normal traffic (orders and logins through a gateway), then 20 minutes in
which two faults are injected:

- CPU contention on auth-service (minutes 45 to 48): its CPU metric jumps; its spans do
  not change, so only metrics can name it;
- a network delay on order-service (minutes 52 to 55): every call to it waits 300 ms more
  between the gateway's client span and order-service's server span.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from spanomaly.ingest.base import Chunk
from spanomaly.schema import FAULTS, METRICS, SPANS
from spanomaly.store.duckdb import DuckDBStore
from tests.synthetic import T0, TraceBuilder, login_request, order_request

NS = 1_000_000_000
MIN = 60 * NS
TRAIN = (T0, T0 + 40 * MIN)
TEST = (T0 + 40 * MIN, T0 + 60 * MIN)
CPU_FAULT = (T0 + 45 * MIN, T0 + 48 * MIN)
NET_FAULT = (T0 + 52 * MIN, T0 + 55 * MIN)
SERVICES = ("gateway", "user-service", "order-service", "auth-service")


def instance(service: str) -> str:
    return f"{service}-7d9f8-abcde"


def _full(table: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = {
        f.name: table.column(f.name)
        if f.name in table.column_names
        else pa.nulls(len(table), f.type)
        for f in schema
    }
    return pa.table(cols, schema=schema)


def spans() -> pa.Table:
    b = TraceBuilder(seed=11)
    step = 400_000_000  # a request every 0.4 s
    for i, t in enumerate(range(T0, TEST[1], step)):
        root = order_request() if b.rng.random() < 0.6 else login_request()
        extra = {"order_call": 300.0} if NET_FAULT[0] <= t < NET_FAULT[1] else None
        b.add(root, t, extra)
        del i
    return _full(b.table(), SPANS)


def metrics() -> pa.Table:
    rng = np.random.default_rng(12)
    rows = []
    for t in range(T0, TEST[1], MIN):
        node = 20.0 + rng.normal(0, 2)  # one node for all: a host metric
        for s in SERVICES:
            cpu = 50.0 + rng.normal(0, 5)
            if s == "auth-service" and CPU_FAULT[0] <= t + 30 * NS < CPU_FAULT[1]:
                cpu = 480.0 + rng.normal(0, 5)
            mem = 300.0 + rng.normal(0, 10)
            for name, value in (("CpuUsage", cpu), ("MemoryUsage", mem), ("NodeCpu", node)):
                rows.append(
                    {"time_ns": t + 30 * NS, "service": s, "instance": instance(s),
                     "name": name, "kind": "gauge", "value": float(value)}
                )  # fmt: skip
    return _full(pa.Table.from_pylist(rows), METRICS)


def faults() -> pa.Table:
    rows = [
        {"fault_id": "cpu:auth", "kind": "cpu_contention", "service": "auth-service",
         "instance": instance("auth-service"), "start_ns": CPU_FAULT[0], "end_ns": CPU_FAULT[1]},
        {"fault_id": "net:order", "kind": "network_delay", "service": "order-service",
         "instance": instance("order-service"), "start_ns": NET_FAULT[0], "end_ns": NET_FAULT[1]},
    ]  # fmt: skip
    return _full(pa.Table.from_pylist(rows), FAULTS)


def build(path: str) -> None:
    """Write the scenario into a store at path."""
    with DuckDBStore(path) as store:
        store.write(Chunk("spans", spans()))
        store.write(Chunk("metrics", metrics()))
        store.write(Chunk("faults", faults()))
