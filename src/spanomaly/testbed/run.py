"""One testbed run: collector, proxies, services, agent, load and faults; then cleanup.

`run(RunConfig(...))` returns a `RunResult`: the summary plus the ground truth as Arrow
tables (FAULTS, FAULT_TRACES) for the caller (cli.py) to store once the collector is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from spanomaly.schema import FAULT_TRACES, FAULTS
from spanomaly.testbed import load, syscalls
from spanomaly.testbed.faults import Fault, Injector, load_schedule
from spanomaly.testbed.supervisor import Supervisor

log = logging.getLogger(__name__)
SERVICES = ("frontend", "movies", "books", "evaluation")


@dataclass
class RunConfig:
    minutes: float = 2.0
    rate: float = 20.0
    faults: Path | None = None  # schedule file; None: the shipped default
    time_scale: float = 1.0
    db: Path | None = None  # store the collector we start writes to
    collector: str | None = None  # an external collector's URL: start none
    replicas: int = 2
    profile: str = "constant"
    seed: int = 0
    run_dir: Path | None = None
    agent_interval_s: float = 2.0
    prometheus_port: int = 0  # the agent serves its readings for Prometheus here too (0: no)
    collector_args: list[str] = field(default_factory=list)  # more flags for `serve`
    # with a gate, fault times count from the moment it is set (not from the start of the
    # load), and the load ends `tail_s` after the last fault; `minutes` caps the load
    faults_gate: threading.Event | None = None
    tail_s: float = 6.0
    # instances whose system calls strace records (names, comma lists or "all")
    syscalls: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    summary: dict[str, Any]
    faults: pa.Table
    fault_traces: pa.Table
    run_dir: Path
    run_id: str
    timings: dict[str, float] = field(default_factory=dict)


def instance_names(replicas: int) -> dict[str, str]:
    """The testbed's instances (movies-1, movies-2, ...) and their services."""
    return {f"{svc}-{k}": svc for svc in SERVICES for k in range(1, replicas + 1)}


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, timeout_s: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if alive is not None and not alive():
            raise RuntimeError(f"process for port {port} exited while starting")
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s:.0f} s")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _versions(schedule: list[Fault], instances: dict[str, str]) -> set[str]:
    """The instances that run the v2 release for the whole run (`version` faults)."""
    return {i for f in schedule if f.kind == "version" for i in f.targets(instances)}


def _serve_argv(port: int, db: str, extra: list[str]) -> list[str]:
    """The command line of the collector a run starts."""
    return [sys.executable, "-m", "spanomaly", "serve", "--port", str(port), "--db", db,
            "--trace-idle", "5", *extra]  # fmt: skip


def _instance_argv(
    name: str, svc: str, version: str, node: str, port: int, peers: dict[str, list[str]],
    collector: str, run_dir: Path, control: Path,
) -> list[str]:  # fmt: skip
    """The command line of one service instance."""
    return [
        sys.executable, "-m", "spanomaly.testbed.services", "--service", svc, "--instance", name,
        "--version", version, "--node", node, "--port", str(port), "--peers", json.dumps(peers),
        "--collector", collector, "--data-dir", str(run_dir / "data"), "--control", str(control),
        "--truth", str(run_dir / "truth" / f"{name}.jsonl"),
    ]  # fmt: skip


def _node(k: int) -> str:
    """The simulated node of the k-th instance."""
    return f"node-{k % 2 + 1}"


@dataclass
class _Started:
    """What a run has started: the collector's URL, the frontends, the instances' pids."""

    collector: str
    frontends: list[str]
    pids: dict[str, int]


def _start(
    cfg: RunConfig,
    sup: Supervisor,
    injector: Injector,
    instances: dict[str, str],
    v2: set[str],
    run_dir: Path,
) -> _Started:
    """Start the collector (unless cfg names one), the proxy and the instances; wait for
    every instance to listen."""
    names = list(instances)
    ports = free_ports(2 * len(names) + 1)
    upstream = dict(zip(names, ports[: len(names)], strict=True))
    listen = dict(zip(names, ports[len(names) : 2 * len(names)], strict=True))
    collector = cfg.collector
    if collector is None:
        db = str(cfg.db or run_dir / "spanomaly.duckdb")
        sup.spawn("collector", _serve_argv(ports[-1], db, cfg.collector_args))
        collector = f"http://127.0.0.1:{ports[-1]}"
        _wait_port(ports[-1], 60, lambda: sup.procs["collector"].poll() is None)
    routes = {n: [listen[n], upstream[n]] for n in names}
    injector.spawn, injector.halt = sup.spawn, sup.stop
    injector._publish()
    sup.spawn("proxy", [sys.executable, "-m", "spanomaly.testbed.proxy", "--routes",
                        json.dumps(routes), "--control", str(injector.proxy_control)])  # fmt: skip
    peers = {
        svc: [f"http://127.0.0.1:{listen[n]}" for n, s in instances.items() if s == svc]
        for svc in SERVICES
    }
    pids = {}
    for k, (name, svc) in enumerate(instances.items()):
        version = "v2" if name in v2 else "v1"
        argv = _instance_argv(name, svc, version, _node(k), upstream[name], peers, collector,
                              run_dir, injector.instance_control(name))  # fmt: skip
        pids[name] = sup.spawn(name, argv)
    injector.pids = pids
    for name in names:
        _wait_port(upstream[name], 90, lambda n=name: sup.procs[n].poll() is None)
        _wait_port(listen[name], 30)
    return _Started(collector, peers["frontend"], pids)


def _start_agent(
    cfg: RunConfig, sup: Supervisor, instances: dict[str, str], v2: set[str], started: _Started
) -> dict[str, dict[str, Any]]:
    """Start the monitoring agent; the instances as the summary names them."""
    targets = {
        n: {"pid": started.pids[n], "service": s, "version": "v2" if n in v2 else "v1",
            "node": _node(k)}
        for k, (n, s) in enumerate(instances.items())
    }  # fmt: skip
    sup.spawn("agent", [sys.executable, "-m", "spanomaly.testbed.agent", "--targets",
                        json.dumps(targets), "--collector", started.collector, "--interval",
                        str(cfg.agent_interval_s), "--prometheus-port", str(cfg.prometheus_port)])  # fmt: skip
    return {
        n: {"service": s, "version": targets[n]["version"], "node": targets[n]["node"],
            "pid": started.pids[n]}
        for n, s in instances.items()
    }  # fmt: skip


def _stop(
    sup: Supervisor, injector: Injector | None, fault_log: list[Fault], instances: dict[str, str]
) -> int:
    """Switch every fault off and stop every process, the collector last (it commits what it
    accepted); the time the run ended."""
    t_end = time.time_ns()
    if injector is not None:
        injector.stop_all()
    for fault in fault_log:
        if fault.end_ns is None:
            fault.end_ns = t_end
    sup.stop([n for n in sup.procs if n in instances])  # instances flush their spans on SIGTERM
    sup.stop(syscalls.tracers(sup), timeout_s=10)  # each ends with its instance; flushed
    sup.stop(["agent"])
    sup.stop([n for n in sup.procs if n not in ("collector",)])
    time.sleep(0.5)
    sup.stop(["collector"], timeout_s=30)
    sup.stop_all()
    return t_end


def run(cfg: RunConfig, on_start: Any = None) -> RunResult:
    """Run the testbed for cfg.minutes; every process is stopped before this returns."""
    run_id = uuid.uuid4().hex[:12]
    run_dir = cfg.run_dir or Path(tempfile.mkdtemp(prefix=f"spanomaly-testbed-{run_id}-"))
    for sub in ("logs", "control", "truth", "data"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    instances = instance_names(cfg.replicas)
    schedule = load_schedule(cfg.faults, instances, cfg.time_scale, run_id[:8])
    v2 = _versions(schedule, instances)
    traced = syscalls.chosen(cfg.syscalls, instances)
    if traced:
        syscalls.strace_path()
    sup = Supervisor(run_id, run_dir / "logs")
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    # Ctrl-C stops the run even where it was started with SIGINT ignored (a background job
    # of a shell script inherits that)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    injector: Injector | None = None
    fault_log: list[Fault] = []
    summary: dict[str, Any] = {"run_id": run_id, "run_dir": str(run_dir), "crashed": []}
    t_start = time.time_ns()
    try:
        injector = Injector(run_dir / "control", {}, instances)
        started = _start(cfg, sup, injector, instances, v2, run_dir)
        summary["collector"] = started.collector
        summary["instances"] = _start_agent(cfg, sup, instances, v2, started)
        recordings = syscalls.start_tracers(sup, started.pids, instances, traced, run_dir)
        summary["syscalls"] = {n: str(p) for n, p in recordings.items()}
        if on_start is not None:
            on_start(run_id, summary)
        t_start = time.time_ns()
        for fault in schedule:
            if fault.kind == "version":
                fault.start_ns, fault.end_ns = t_start, None
                fault_log.append(fault)
        stats = asyncio.run(_drive(cfg, cfg.minutes * 60, started.frontends, schedule, injector,
                                   sup, fault_log, summary))  # fmt: skip
        summary["load"] = stats.summary(cfg.rate)
    finally:
        t_end = _stop(sup, injector, fault_log, instances)
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    summary["duration_s"] = round((t_end - t_start) / 1e9, 1)
    summary["faults"] = len(fault_log)
    faults_table = _faults_table(fault_log)
    traces_table = _fault_traces_table(run_dir / "truth", {f.fault_id for f in fault_log})
    summary["fault_traces"] = traces_table.num_rows
    return RunResult(summary, faults_table, traces_table, run_dir, run_id)


async def _drive(
    cfg: RunConfig,
    duration_s: float,
    frontends: list[str],
    schedule: list[Fault],
    injector: Injector,
    sup: Supervisor,
    fault_log: list[Fault],
    summary: dict[str, Any],
) -> load.LoadStats:
    stop = asyncio.Event()
    load_stop = asyncio.Event()
    gate = cfg.faults_gate

    async def scheduler() -> None:
        while gate is not None and not gate.is_set():
            await asyncio.sleep(0.2)
        t0 = time.monotonic()
        timed = sorted((f for f in schedule if f.kind != "version"), key=lambda f: f.at_s)
        events = [(f.at_s, True, f) for f in timed] + [
            (f.at_s + f.duration_s, False, f) for f in timed
        ]
        events.sort(key=lambda e: (e[0], e[1]))
        for at, on, fault in events:
            if gate is None and at >= duration_s:
                break
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
            if on:
                if injector.start(fault):
                    fault_log.append(fault)
            else:
                injector.stop(fault)
        if gate is not None:
            await asyncio.sleep(cfg.tail_s)
            load_stop.set()

    async def watchdog() -> None:
        while not stop.is_set():
            for name in sup.crashed():
                summary["crashed"].append(name)
            await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(scheduler()), asyncio.create_task(watchdog())]
    try:
        return await load.generate(
            frontends, cfg.rate, duration_s, cfg.profile, cfg.seed, stop=load_stop
        )
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _faults_table(faults: list[Fault]) -> pa.Table:
    rows = [f for f in faults if f.start_ns is not None and f.end_ns is not None]
    return pa.Table.from_pydict(
        {
            "fault_id": [f.fault_id for f in rows],
            "kind": [f.kind for f in rows],
            "service": [f.service for f in rows],
            "instance": [f.instance for f in rows],
            "start_ns": [f.start_ns for f in rows],
            "end_ns": [f.end_ns for f in rows],
            "params": [json.dumps(f.params, sort_keys=True) for f in rows],
        },
        schema=FAULTS,
    )


def _fault_traces_table(truth_dir: Path, known: set[str]) -> pa.Table:
    rows: dict[str, list[str]] = {"fault_id": [], "trace_id": [], "span_id": []}
    for path in sorted(truth_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                doc = json.loads(line)
                if doc["fault_id"] in known:
                    for key in rows:
                        rows[key].append(doc[key])
    return pa.Table.from_pydict(rows, schema=FAULT_TRACES)
