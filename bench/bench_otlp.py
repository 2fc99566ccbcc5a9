"""Benchmark of the OTLP protobuf trace decoder: ceiling, decode, decode + store, peak RSS.

Generates (once, or reuses with --out) an OTLP ExportTraceServiceRequest file of realistic
spans, then measures in one run:

1. the bare ceiling: ``ExportTraceServiceRequest().ParseFromString(data)``,
2. spanomaly's decoder alone (``otlp.decode_file``), in a fresh subprocess,
3. decode + store (``DuckDBStore.write``) into a new DuckDB file, in a fresh subprocess,
   with its peak RSS; and the same with decoding in a second thread (pipelined).

Prints one JSON line with the figures. Usage::

    .venv/bin/python bench/bench_otlp.py --spans 1000000 --out /tmp/spans.pb
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SERVICES = [
    ("frontend", "/", "GET"),
    ("cart", "/cart/{user_id}", "GET"),
    ("checkout", "/checkout/{order_id}", "POST"),
    ("currency", "/convert", "POST"),
    ("email", "/send/{order_id}", "POST"),
    ("payment", "/charge", "POST"),
    ("product-catalog", "/products/{product_id}", "GET"),
    ("recommendation", "/recommendations", "GET"),
    ("shipping", "/quote/{order_id}", "POST"),
    ("ad", "/ads/{context}", "GET"),
]
INSTANCES = 3
CALLS = {  # caller -> callees per request
    "frontend": ["cart", "product-catalog", "recommendation", "ad", "checkout"],
    "checkout": ["cart", "currency", "payment", "shipping", "email"],
    "recommendation": ["product-catalog"],
}


def generate(path: Path, n_spans: int, seed: int = 7) -> int:
    """Write an ExportTraceServiceRequest with at least n_spans spans; returns the count."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    rng = random.Random(seed)
    routes = {name: (route, method) for name, route, method in SERVICES}
    req = ExportTraceServiceRequest()
    scopes: dict[tuple[str, int], list] = {}
    for name, _, _ in SERVICES:
        for i in range(INSTANCES):
            rs = req.resource_spans.add()
            for key, val in (
                ("service.name", name),
                ("service.instance.id", f"{name}-{i}-{rng.getrandbits(24):06x}"),
                ("service.version", f"1.{i}.0"),
                ("host.name", f"node-{(hash(name) + i) % 5}"),
                ("telemetry.sdk.language", "python"),
            ):
                rs.resource.attributes.add(key=key, value=AnyValue(string_value=val))
            server = rs.scope_spans.add()
            server.scope.name = "opentelemetry.instrumentation.flask"
            server.scope.version = "0.48b0"
            client = rs.scope_spans.add()
            client.scope.name = "opentelemetry.instrumentation.requests"
            client.scope.version = "0.48b0"
            scopes[(name, i)] = [server.spans, client.spans]

    def kv(key: str, **value: object) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(**value))

    count = 0

    def serve(name: str, parent: bytes, start: int, depth: int, trace: bytes, user: int) -> int:
        """Add the server span of `name` and its client calls; returns its end time."""
        nonlocal count
        inst = rng.randrange(INSTANCES)
        route, method = routes[name]
        span_id = rng.getrandbits(64).to_bytes(8, "big")
        t = start + 50_000
        for callee in CALLS.get(name, []) if depth < 3 else []:
            if rng.random() >= 0.8:
                continue
            cid = rng.getrandbits(64).to_bytes(8, "big")
            end = serve(callee, cid, t + 20_000, depth + 1, trace, user) + 30_000
            failed = rng.random() < 0.02
            target = routes[callee][0].replace("{", "").replace("}", "")
            scopes[(name, inst)][1].append(
                Span(
                    trace_id=trace,
                    span_id=cid,
                    parent_span_id=span_id,
                    name=f"{routes[callee][1]} {routes[callee][0]}",
                    kind=Span.SPAN_KIND_CLIENT,
                    start_time_unix_nano=t,
                    end_time_unix_nano=end,
                    attributes=[
                        kv("http.request.method", string_value=routes[callee][1]),
                        kv(
                            "url.full",
                            string_value=f"http://{callee}:8080{target}/{user}"
                            f"?req={rng.getrandbits(40):x}",
                        ),
                        kv("server.address", string_value=callee),
                        kv("server.port", int_value=8080),
                        kv("peer.service", string_value=callee),
                        kv("http.response.status_code", int_value=503 if failed else 200),
                    ],
                    status=Status(code=Status.STATUS_CODE_ERROR, message="HTTP 503")
                    if failed
                    else None,
                )
            )
            count += 1
            t = end + 10_000
        end = t + rng.randrange(100_000, 5_000_000)
        failed = rng.random() < 0.01
        scopes[(name, inst)][0].append(
            Span(
                trace_id=trace,
                span_id=span_id,
                parent_span_id=parent,
                name=f"{method} {route}",
                kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=start,
                end_time_unix_nano=end,
                attributes=[
                    kv("http.request.method", string_value=method),
                    kv("http.route", string_value=route),
                    kv("url.path", string_value=route.replace("{", "").replace("}", "")),
                    kv("http.response.status_code", int_value=500 if failed else 200),
                    kv("network.protocol.version", string_value="1.1"),
                    kv("user_agent.original", string_value="python-requests/2.32"),
                    kv("client.address", string_value=f"10.0.{user % 250}.{user % 199}"),
                ],
                status=Status(code=Status.STATUS_CODE_ERROR, message="internal error")
                if failed
                else Status(code=Status.STATUS_CODE_UNSET),
            )
        )
        count += 1
        return end

    t0 = 1_700_000_000_000_000_000
    while count < n_spans:
        trace = rng.getrandbits(128).to_bytes(16, "big")
        serve("frontend", b"", t0 + count * 1_000_000, 0, trace, rng.randrange(1, 10_000_000))
    path.write_bytes(req.SerializeToString())
    return count


def _peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM where Linux has it: ru_maxrss of a
    process started by a big parent reports the parent's peak (exec keeps it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def decode_run(path: Path) -> dict[str, Any]:
    """Decode path without storing (run in a fresh process); timing and peak RSS."""
    from spanomaly.ingest import otlp
    from spanomaly.ingest.base import DecodeOptions

    t = time.perf_counter()
    decoded = 0
    for chunk in otlp.decode_file(path, "otlp-pb", DecodeOptions()):
        decoded += chunk.data.num_rows if chunk.table == "spans" else 0  # type: ignore[union-attr]
    return {"seconds": time.perf_counter() - t, "decoded": decoded, "peak_rss_mb": _peak_rss_mb()}


def store_run(path: Path, db: Path, pipelined: bool) -> dict[str, Any]:
    """Decode and store path into a new DuckDB store (run in a fresh process).

    pipelined: decode in a second thread while the main thread stores (numpy, Arrow and
    DuckDB release the GIL), instead of one chunk after the other.
    """
    from spanomaly.ingest import otlp
    from spanomaly.ingest.base import DecodeOptions
    from spanomaly.store.duckdb import DuckDBStore

    t = time.perf_counter()
    stored = rejected = 0
    store = DuckDBStore(db)
    chunks = otlp.decode_file(path, "otlp-pb", DecodeOptions())
    if pipelined:
        handoff: queue.Queue[Any] = queue.Queue(maxsize=2)

        def produce() -> None:
            try:
                for chunk in chunks:
                    handoff.put(chunk)
            finally:
                handoff.put(None)

        thread = threading.Thread(target=produce)
        thread.start()
        chunks = iter(handoff.get, None)
    for chunk in chunks:
        result = store.write(chunk)
        stored += result.inserted
        rejected += result.rejected
    if pipelined:
        thread.join()
    store.close()
    return {
        "seconds": time.perf_counter() - t,
        "stored": stored,
        "rejected": rejected,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _in_fresh_process(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _store_in_fresh_process(path: Path, db: Path, pipelined: bool) -> dict[str, Any]:
    for stale in (db, db.with_name(db.name + ".wal")):
        stale.unlink(missing_ok=True)
    extra = ["--_pipelined"] if pipelined else []
    return _in_fresh_process("--_store", str(path), str(db), *extra)


def main() -> None:
    """Generate (or reuse) the file, run the measurements, print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, help="protobuf file to write (reused if present)")
    ap.add_argument("--regen", action="store_true", help="regenerate --out even if present")
    ap.add_argument("--_store", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_pipelined", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_decode", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._decode:
        print(json.dumps(decode_run(args._decode)))
        return
    if args._store:
        print(json.dumps(store_run(Path(args._store[0]), Path(args._store[1]), args._pipelined)))
        return

    tmp = tempfile.TemporaryDirectory(prefix="bench_otlp_")
    path = args.out or Path(tmp.name) / "spans.pb"
    if args.regen or not path.exists():
        t = time.perf_counter()
        n = generate(path, args.spans)
        print(f"generated {n} spans in {time.perf_counter() - t:.1f}s", file=sys.stderr)

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    data = path.read_bytes()
    t = time.perf_counter()
    req = ExportTraceServiceRequest()
    req.ParseFromString(data)
    parse_s = time.perf_counter() - t
    n = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
    del req, data

    decoded = _in_fresh_process("--_decode", str(path))
    db = Path(tmp.name) / "bench.duckdb"
    stored = _store_in_fresh_process(path, db, pipelined=False)
    piped = _store_in_fresh_process(path, db, pipelined=True)
    result = {
        "bench": "otlp-pb",
        "spans": n,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "parse_ceiling_spans_per_s": round(n / parse_s),
        "decode_spans_per_s": round(decoded["decoded"] / decoded["seconds"]),
        "decode_s": round(decoded["seconds"], 2),
        "decode_peak_rss_mb": round(decoded["peak_rss_mb"]),
        "decode_store_spans_per_s": round(stored["stored"] / stored["seconds"]),
        "decode_store_s": round(stored["seconds"], 2),
        "peak_rss_mb": round(stored["peak_rss_mb"]),
        "decode_store_pipelined_spans_per_s": round(piped["stored"] / piped["seconds"]),
        "pipelined_peak_rss_mb": round(piped["peak_rss_mb"]),
        "stored": stored["stored"],
        "rejected": stored["rejected"],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    tmp.cleanup()


if __name__ == "__main__":
    main()
