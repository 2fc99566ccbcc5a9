"""Monitoring agent: psutil readings of every instance and node, exported as OTLP metrics.

Run with ``python -m spanomaly.testbed.agent --targets JSON --collector URL``; targets map
an instance to ``{"pid", "service", "version", "node"}``. Each instance gets its own
MeterProvider (its resource names the service, instance, version and node, as an SDK inside
the instance would), each node one more; readings every ``--interval`` seconds.
Per instance: ``process.cpu.utilization`` (share of one core), ``process.memory.rss``,
``process.threads``, ``process.open_fds``, ``process.io.read_bytes``/``write_bytes``,
``process.context_switches`` (with ``--prometheus-port``, also served for Prometheus at
``/metrics``: `PROMETHEUS_GAUGES`, `PROMETHEUS_COUNTERS`). Per node: ``node.cpu.utilization`` and ``node.memory.rss`` of
the node's instances, and ``system.cpu.utilization`` (the machine's: it shows CPU taken by
processes outside the testbed, as the cpu_contention fault's). The machine's memory use is
not sent: the testbed's nodes share one machine, whose memory moves with everything on it.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from spanomaly.testbed import instrumentation


class _Reader:
    """Cached psutil readings of one process; missing values once it is gone."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.proc.cpu_percent(None)

    def read(self) -> dict[str, float] | None:
        try:
            with self.proc.oneshot():
                io = self.proc.io_counters()
                ctx = self.proc.num_ctx_switches()
                return {
                    "cpu": self.proc.cpu_percent(None) / 100.0,
                    "rss": float(self.proc.memory_info().rss),
                    "threads": float(self.proc.num_threads()),
                    "fds": float(self.proc.num_fds()),
                    "read": float(io.read_chars),
                    "write": float(io.write_chars),
                    "ctx": float(ctx.voluntary + ctx.involuntary),
                }
        except (psutil.Error, OSError):
            return None


def _observer(get: Callable[[], float | None]) -> Callable[[Any], Iterable[Any]]:
    from opentelemetry.metrics import Observation

    def callback(options: Any) -> Iterable[Any]:
        value = get()
        return [] if value is None else [Observation(value)]

    return callback


def start(
    targets: dict[str, dict[str, Any]], collector: str, interval_s: float, prometheus_port: int = 0
) -> list[Any]:
    """Meter providers for every instance and node; their readers export on their own. With
    prometheus_port, the same readings are also served at http://127.0.0.1:PORT/metrics."""
    providers = []
    readers = {name: _Reader(int(t["pid"])) for name, t in targets.items()}
    latest: dict[str, dict[str, float] | None] = {}
    if prometheus_port:
        _serve_prometheus(targets, latest, prometheus_port)

    lock = threading.Lock()

    def value(name: str, key: str) -> float | None:
        with lock:
            if key == "cpu" or name not in latest:  # cpu comes first in a collection round
                latest[name] = readers[name].read()
            row = latest.get(name)
        return None if row is None else row[key]

    gauges = [
        ("process.cpu.utilization", "cpu", "1"),
        ("process.memory.rss", "rss", "By"),
        ("process.threads", "threads", "{thread}"),
        ("process.open_fds", "fds", "{fd}"),
    ]
    counters = [
        ("process.io.read_bytes", "read", "By"),
        ("process.io.write_bytes", "write", "By"),
        ("process.context_switches", "ctx", "{switch}"),
    ]
    for name, t in targets.items():
        res = instrumentation.resource(t["service"], name, t.get("version", "v1"), t["node"])
        provider = instrumentation.meter_provider(res, collector, interval_s)
        meter = provider.get_meter("spanomaly.testbed.agent")
        for metric, key, unit in gauges:
            meter.create_observable_gauge(
                metric, [_observer(lambda n=name, k=key: value(n, k))], unit=unit
            )
        for metric, key, unit in counters:
            meter.create_observable_counter(
                metric, [_observer(lambda n=name, k=key: value(n, k))], unit=unit
            )
        providers.append(provider)
    nodes = sorted({t["node"] for t in targets.values()})
    for node in nodes:
        from opentelemetry.sdk.resources import Resource

        res = Resource.create(
            {"service.name": "node", "service.instance.id": node, "host.name": node}
        )
        provider = instrumentation.meter_provider(res, collector, interval_s)
        meter = provider.get_meter("spanomaly.testbed.agent")
        members = [n for n, t in targets.items() if t["node"] == node]

        def node_sum(key: str, members: list[str] = members) -> float:
            return sum((latest.get(m) or {}).get(key, 0.0) for m in members)

        meter.create_observable_gauge(
            "node.cpu.utilization", [_observer(lambda f=node_sum: f("cpu"))], unit="1"
        )
        meter.create_observable_gauge(
            "node.memory.rss", [_observer(lambda f=node_sum: f("rss"))], unit="By"
        )
        meter.create_observable_gauge(
            "system.cpu.utilization",
            [_observer(lambda: psutil.cpu_percent(None) / 100.0)],
            unit="1",
        )
        providers.append(provider)
    return providers


# Prometheus names of the readings (per instance); counters end in _total
PROMETHEUS_GAUGES = {"cpu": "process_cpu_utilization", "rss": "process_memory_rss_bytes",
                     "threads": "process_threads", "fds": "process_open_fds"}  # fmt: skip
PROMETHEUS_COUNTERS = {"read": "process_io_read_bytes", "write": "process_io_write_bytes",
                       "ctx": "process_context_switches"}  # fmt: skip


def _serve_prometheus(
    targets: dict[str, dict[str, Any]], latest: dict[str, dict[str, float] | None], port: int
) -> None:
    """Serve the latest readings (those the OTLP export took) at /metrics, labelled with
    service, instance, version and node (scrape with `honor_labels: true`)."""
    from prometheus_client import start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry

    keys = ["service", "instance", "version", "node"]

    class Readings(Collector):
        def collect(self) -> Iterable[Any]:
            families = [
                (k, GaugeMetricFamily(n, n, labels=keys)) for k, n in PROMETHEUS_GAUGES.items()
            ]
            families += [
                (k, CounterMetricFamily(n, n, labels=keys)) for k, n in PROMETHEUS_COUNTERS.items()
            ]
            for name, t in sorted(targets.items()):
                row = latest.get(name)
                if row is None:
                    continue
                labels = [t["service"], name, t.get("version", "v1"), t["node"]]
                for key, family in families:
                    family.add_metric(labels, row[key])
            return [f for _, f in families]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Readings())
    start_http_server(port, addr="127.0.0.1", registry=registry)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="monitoring agent")
    p.add_argument("--targets", required=True)
    p.add_argument("--collector", required=True)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--prometheus-port", type=int, default=0, help="serve /metrics too (0: no)")
    a = p.parse_args(argv)
    providers = start(json.loads(a.targets), a.collector, a.interval, a.prometheus_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    for provider in providers:
        provider.shutdown()


if __name__ == "__main__":
    main()
