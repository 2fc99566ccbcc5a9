"""Benchmark of `spanomaly serve`: sustained spans/s stored from concurrent OTLP/HTTP senders.

Starts the collector as a subprocess on a fresh DuckDB file, then runs ``--senders`` sender
processes, each posting pre-built OTLP protobuf requests of ``--spans`` spans, gzip-encoded,
with ``--concurrency`` requests in flight, for ``--duration`` seconds. Every request carries
new trace ids, so every span is new to the store. Reports:

- spans/s accepted (200 answers) and stored (``/api/stats`` before and after, over the time
  from the start to the last answer: the collector answers only after COMMIT),
- p50 / p90 / p99 / max request latency, answers by status code,
- the collector's peak RSS: its process (VmHWM, or the highest RSS sampled every 0.2 s if
  higher) plus its decode process (VmHWM), and the CPU seconds each side used.

Prints one JSON document; with ``--record`` (default) appends the figures to
bench/RESULTS.md with the date, command and machine. Usage::

    .venv/bin/python bench/collector.py --duration 20 --senders 4
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import multiprocessing as mp
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

RESULTS = Path(__file__).with_name("RESULTS.md")
SERVICES = ["frontend", "cart", "checkout", "currency", "payment", "shipping", "email", "ad"]
TRACE_ID_TAG = b"\x0a\x10"  # Span field 1 (trace_id), 16 bytes
TIME_TAGS = (b"\x39", b"\x41")  # Span fields 7 and 8 (start, end), fixed64
T0 = 1_700_000_000_000_000_000


def template(spans: int, seed: int = 1) -> tuple[bytes, np.ndarray, np.ndarray, int, np.ndarray]:
    """A request of `spans` spans (traces of 8): the body, the offsets of every trace id in
    it, the trace each offset belongs to, the number of traces, and the offsets of every
    start and end time."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    rng = random.Random(seed)

    def kv(key: str, value: Any) -> KeyValue:
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        return KeyValue(key=key, value=AnyValue(string_value=str(value)))

    request = ExportTraceServiceRequest()
    per_trace = 8
    traces = max(1, spans // per_trace)
    ids = [rng.randbytes(16) for _ in range(traces)]
    by_service: dict[str, list[Span]] = {s: [] for s in SERVICES}
    t0 = T0
    times: list[int] = []
    made = 0
    for t, tid in enumerate(ids):
        root = rng.randbytes(8)
        for i in range(per_trace):
            if made == spans:
                break
            service = SERVICES[i % len(SERVICES)]
            start = t0 + t * 10_000_000 + i * 100_000
            span = Span(
                trace_id=tid,
                span_id=root if i == 0 else rng.randbytes(8),
                parent_span_id=b"" if i == 0 else root,
                name=f"GET /{service}/{{id}}",
                kind=Span.SPAN_KIND_SERVER if i == 0 else Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=start,
                end_time_unix_nano=start + rng.randint(50_000, 5_000_000),
                attributes=[
                    kv("http.request.method", "GET"),
                    kv("http.route", f"/{service}/{{id}}"),
                    kv("http.response.status_code", 200 if rng.random() > 0.02 else 500),
                    kv("net.peer.name", f"{service}.svc"),
                ],
                status=Status(code=Status.STATUS_CODE_OK),
            )
            by_service[service].append(span)
            times += [span.start_time_unix_nano, span.end_time_unix_nano]
            made += 1
    for service, group in by_service.items():
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(
            [kv("service.name", service), kv("service.instance.id", f"{service}-0")]
        )
        rs.scope_spans.add().spans.extend(group)
    body = request.SerializeToString()
    offsets, owner = [], []
    for t, tid in enumerate(ids):
        for m in re.finditer(re.escape(TRACE_ID_TAG + tid), body):
            offsets.append(m.start() + len(TRACE_ID_TAG))
            owner.append(t)
    assert len(offsets) == made, (len(offsets), made)
    at = []
    for k, value in enumerate(times):
        needle = TIME_TAGS[k % 2] + value.to_bytes(8, "little")
        at += [m.start() + 1 for m in re.finditer(re.escape(needle), body)]
    assert len(at) == len(times), (len(at), len(times))
    return body, np.array(offsets, np.int64), np.array(owner, np.int64), traces, np.array(at)


def bodies(count: int, spans: int, seed: int, every_ns: int = 0) -> list[bytes]:
    """`count` gzip-encoded requests of the template, each with fresh random trace ids, the
    first starting now and each next one every_ns later (spans arrive as time goes on)."""
    body, offsets, owner, traces, at = template(spans)
    rng = np.random.default_rng(seed)
    cols = offsets[:, None] + np.arange(16)
    tcols = at[:, None] + np.arange(8)
    base = np.frombuffer(body, np.uint8)[tcols].copy().view("<i8").ravel()
    now = time.time_ns()
    out = []
    for i in range(count):
        buf = np.frombuffer(body, np.uint8).copy()
        new = rng.integers(0, 256, (traces, 16), dtype=np.uint8)
        buf[cols] = new[owner]
        shifted = (base - T0 + now + i * every_ns).astype("<i8")
        buf[tcols] = shifted.view(np.uint8).reshape(-1, 8)
        out.append(gzip.compress(buf.tobytes(), compresslevel=6, mtime=0))
    return out


def sender(
    index: int,
    url: str,
    spans: int,
    count: int,
    concurrency: int,
    duration: float,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """One sender process: pre-build its requests, then post them until the time is up."""
    prepared = bodies(count, spans, seed=1000 + index, every_ns=int(duration * 1e9 / count))
    lock = threading.Lock()
    position = iter(range(10**9))
    records: list[tuple[float, float, int, int]] = []  # (start, latency, status, spans)
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    ready.set()
    go.wait()
    started = time.perf_counter()
    cpu0 = time.process_time()
    deadline = started + duration
    reused = 0

    def worker() -> None:
        nonlocal reused
        with httpx.Client(timeout=60.0) as client:
            while time.perf_counter() < deadline:
                with lock:
                    k = next(position)
                if k >= len(prepared):
                    reused += 1
                body = prepared[k % len(prepared)]
                t = time.perf_counter()
                try:
                    status = client.post(url, content=body, headers=headers).status_code
                except httpx.HTTPError:
                    status = 0
                done = time.perf_counter()
                with lock:
                    records.append((t - started, done - t, status, spans))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    cpu = time.process_time() - cpu0
    results.put({"index": index, "records": records, "reused": reused, "t0": started, "cpu": cpu})


def start_server(db: Path, log: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """The collector as a subprocess, and its URL once it listens."""
    err = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "spanomaly", "serve", "--port", "0", "--db", str(db), *extra],
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"serving on (http://\S+) ", log.read_text())
        if match:
            return proc, match.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"the collector exited: {log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the collector did not start within 60 s")


def vm_hwm(pid: int) -> int | None:
    """Peak resident set size of a process (Linux VmHWM), in bytes."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) * 1024 if match else None


def machine() -> str:
    """CPU model, cores and memory of this machine, in words."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()}"


def wait_until_idle(minutes: float, idle_pct: float = 90.0) -> float:
    """Wait (at most `minutes`) until the machine's CPUs are idle_pct idle; the idle share."""
    deadline = time.monotonic() + minutes * 60
    while True:
        idle = 100.0 - psutil.cpu_percent(interval=2)
        if idle >= idle_pct or time.monotonic() > deadline:
            return idle


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; the figures as a dict."""
    idle_before = wait_until_idle(args.wait_idle)
    tmp = Path(tempfile.mkdtemp(prefix="spanomaly-bench-"))
    db = tmp / "collector.duckdb"
    proc, url = start_server(db, tmp / "serve.log", args.serve_args)
    ps = psutil.Process(proc.pid)
    peak_rss = 0
    try:
        with httpx.Client(timeout=60.0) as client:
            before = client.get(f"{url}/api/stats").json()["spans"]
        ctx = mp.get_context("spawn")
        ready = [ctx.Event() for _ in range(args.senders)]
        go = ctx.Event()
        results = ctx.Queue()
        # enough distinct requests for `max_rate` spans/s; past that they repeat (counted)
        count = int(args.max_rate * args.duration / args.senders / args.spans) + 1
        procs = [
            ctx.Process(
                target=sender,
                args=(
                    i,
                    f"{url}/v1/traces",
                    args.spans,
                    count,
                    args.concurrency,
                    args.duration,
                    ready[i],
                    go,
                    results,
                ),
            )
            for i in range(args.senders)
        ]
        for p in procs:
            p.start()
        for e in ready:
            e.wait()
        scraper = Scraper(f"{url}/metrics", args.scrape) if args.scrape else None
        go.set()
        began = time.monotonic()
        collected = []
        rss_samples: list[tuple[float, int]] = []
        while len(collected) < args.senders:
            rss = ps.memory_info().rss
            peak_rss = max(peak_rss, rss)
            rss_samples.append((time.monotonic() - began, rss + _children_rss(ps)))
            try:
                collected.append(results.get(timeout=0.2))
            except Exception:  # queue.Empty
                continue
        for p in procs:
            p.join()
        scrapes = scraper.stop() if scraper else None
        hwm = vm_hwm(proc.pid)
        cpu = ps.cpu_times()
        server_cpu = cpu.user + cpu.system
        kids = ps.children(recursive=True)
        kids_cpu = sum(k.cpu_times().user + k.cpu_times().system for k in kids)
        kids_hwm = sum(vm_hwm(k.pid) or 0 for k in kids)
        with httpx.Client(timeout=120.0) as client:
            after = client.get(f"{url}/api/stats").json()["spans"]
            health = client.get(f"{url}/api/health").json()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    records = [r for c in collected for r in c["records"]]
    lat = np.array([r[1] for r in records]) * 1e3
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
    accepted = sum(r[3] for r in records if r[2] == 200)
    # the window: from the start signal to the last answer
    t_end = max(c["t0"] + r[0] + r[1] for c in collected for r in c["records"])
    t_start = min(c["t0"] for c in collected)
    elapsed = t_end - t_start
    stored = after - before
    # requests over 250 ms, by the second of the run they started in: a few seconds with
    # many slow requests are pauses (DuckDB checkpoints), not a slow path
    slow: dict[int, int] = {}
    for c in collected:
        for r in c["records"]:
            if r[1] > 0.25:
                second = int(c["t0"] - t_start + r[0])
                slow[second] = slow.get(second, 0) + 1
    return {
        "senders": args.senders,
        "concurrency_per_sender": args.concurrency,
        "spans_per_request": args.spans,
        "encoding": "protobuf+gzip",
        "duration_s": round(elapsed, 2),
        "requests": len(records),
        "statuses": statuses,
        "reused_requests": sum(c["reused"] for c in collected),
        "spans_accepted": accepted,
        "spans_stored": stored,
        "accepted_spans_per_s": round(accepted / elapsed),
        "stored_spans_per_s": round(stored / elapsed),
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1),
            "p90": round(float(np.percentile(lat, 90)), 1),
            "p99": round(float(np.percentile(lat, 99)), 1),
            "max": round(float(lat.max()), 1),
        },
        "requests_over_250ms_by_second": dict(sorted(slow.items())),
        "server_peak_rss_mb": round((max(hwm or 0, peak_rss) + kids_hwm) / 2**20),
        "server_cpu_s": round(server_cpu, 1),
        "server_children_cpu_s": round(kids_cpu, 1),
        "senders_cpu_s": round(sum(c["cpu"] for c in collected), 1),
        "server_writer": health["writer"],
        "server_decoder": health["decoder"],
        "rss_mb_by_quarter": _quarters(rss_samples),
        "scrapes": scrapes,
        "machine": machine(),
        "cpu_idle_before_pct": round(idle_before),
    }


def _children_rss(ps: psutil.Process) -> int:
    total = 0
    for k in ps.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += k.memory_info().rss
    return total


def _quarters(samples: list[tuple[float, int]]) -> list[int]:
    """Collector RSS (its process and children, MB) at the end of each quarter of the run:
    a plateau says memory is bounded."""
    if not samples:
        return []
    end = samples[-1][0]
    out = []
    for q in (0.25, 0.5, 0.75, 1.0):
        before = [rss for t, rss in samples if t <= q * end]
        out.append(round((before[-1] if before else samples[0][1]) / 2**20))
    return out


class Scraper:
    """GET /metrics every `every_s` seconds on a thread, as Prometheus would."""

    def __init__(self, url: str, every_s: float) -> None:
        self.url, self.every_s = url, every_s
        self.latency: list[float] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30.0) as client:
            while not self._stop.wait(self.every_s):
                t = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latency.append(time.perf_counter() - t)
                self.failed += not ok

    def stop(self) -> dict[str, Any]:
        """Stop; the scrapes made and their latency."""
        self._stop.set()
        self._thread.join()
        lat = np.array(self.latency or [0.0]) * 1e3
        return {"every_s": self.every_s, "scrapes": len(self.latency), "failed": self.failed,
                "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p99_ms": round(float(np.percentile(lat, 99)), 1)}  # fmt: skip


def record(doc: dict[str, Any], command: str) -> None:
    """Append the figures to bench/RESULTS.md (created with a header if missing)."""
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nFigures with date, machine and command.\n")
    lat = doc["latency_ms"]
    text = (
        f"\n## Collector (`spanomaly serve`), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"- command: `{command}`\n"
        f"- machine: {doc['machine']}; CPUs {doc['cpu_idle_before_pct']} % idle before the run\n"
        f"- load: {doc['senders']} sender processes x {doc['concurrency_per_sender']} requests "
        f"in flight, {doc['spans_per_request']} spans per request, {doc['encoding']}, "
        f"{doc['duration_s']} s\n\n"
        "| stored spans/s | accepted spans/s | p50 ms | p99 ms | max ms | peak RSS MB "
        "| CPU s: collector / senders | requests | answers |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {doc['stored_spans_per_s']:,} | {doc['accepted_spans_per_s']:,} | {lat['p50']} "
        f"| {lat['p99']} | {lat['max']} | {doc['server_peak_rss_mb']} "
        f"| {doc['server_cpu_s'] + doc['server_children_cpu_s']:.1f} / {doc['senders_cpu_s']} "
        f"| {doc['requests']} "
        f"| {', '.join(f'{k}: {v}' for k, v in sorted(doc['statuses'].items()))} |\n"
    )
    with RESULTS.open("a") as f:
        f.write(text)


def main() -> None:
    """Parse the options, run, print the JSON and record it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sending")
    parser.add_argument("--senders", type=int, default=4, help="sender processes")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight each")
    parser.add_argument("--spans", type=int, default=512, help="spans per request")
    parser.add_argument(
        "--max-rate", type=float, default=250_000, help="spans/s the pre-built requests cover"
    )
    parser.add_argument(
        "--serve-arg",
        dest="serve_args",
        action="append",
        default=[],
        help="extra option for spanomaly serve (repeatable)",
    )
    parser.add_argument(
        "--scrape", type=float, default=0.0, help="GET /metrics every this many seconds (0: none)"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="minutes to wait at most for an idle machine first (a shared machine)",
    )
    args = parser.parse_args()
    doc = run(args)
    print(json.dumps(doc, indent=2))
    if not args.no_record:
        record(doc, "python bench/collector.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
