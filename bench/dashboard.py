"""Dashboard responsiveness with a large store: 100,000 traces over 50 services.

Builds a DuckDB store (vectorised numpy/Arrow, no per-span Python) of TRACES traces of 8
spans (a binary call tree over four layers of services: 5 entry services, then 15, 15 and
15), 2-3 instances per service, spread over two hours, with 2,000 trace findings and 500
instance findings; serves it with `spanomaly.serve` in this process and measures:

- the API: median wall time of each dashboard route;
- ingestion beside the reads: OTLP export latency alone and while a client reads the
  overview without pause (reads run on a cursor of their own, not in the writer thread);
- the browser (Playwright + /usr/bin/chromium): time to first render of the overview (page
  load until all 50 service nodes are drawn) and time to open a trace (click on a finding
  in the list until the waterfall shows the deviating span), median of several runs.

    python bench/dashboard.py [--traces 100000] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from tests.serve.dashboard_data import running  # noqa: E402

from spanomaly.ingest.base import Chunk  # noqa: E402
from spanomaly.schema import FINDINGS, SPANS  # noqa: E402
from spanomaly.store.duckdb import DuckDBStore  # noqa: E402

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
SPANS_PER_TRACE = 8  # a binary tree: span i's parent is (i - 1) // 2
LAYERS = [(0, 5), (5, 20), (20, 35), (35, 50)]  # service ids by depth in the tree
DEPTH = np.array([0, 1, 1, 2, 2, 2, 2, 3])


def _hex(values: np.ndarray, width: int) -> pa.Array:
    """Lower-case hex ids of integers (vectorised through numpy's string formatting)."""
    return pa.array(np.char.zfill(np.char.mod("%x", values), width))


def make_spans(traces: int, seed: int = 0) -> pa.Table:
    """traces x 8 spans in the SPANS schema over two hours."""
    rng = np.random.default_rng(seed)
    n = traces * SPANS_PER_TRACE
    t = np.repeat(np.arange(traces, dtype=np.int64), SPANS_PER_TRACE)
    pos = np.tile(np.arange(SPANS_PER_TRACE), traces)
    lo = np.array([LAYERS[d][0] for d in DEPTH])[pos]
    hi = np.array([LAYERS[d][1] for d in DEPTH])[pos]
    service = lo + (rng.random(n) * (hi - lo)).astype(np.int64)
    instance = rng.integers(0, 2 + service % 2, n)
    start_trace = T0 + (t * (7200 * NS // traces))
    duration = (rng.lognormal(np.log(2e6), 0.4, n) / (1 + DEPTH[pos])).astype(np.int64)
    start = start_trace + DEPTH[pos] * 100_000 + pos * 10_000
    duration[pos == 0] = duration[pos == 0] * 4 + 2_000_000
    trace_id = _hex(t + 1, 32)
    span_num = t * SPANS_PER_TRACE + pos + 1
    parent_num = np.where(pos == 0, 0, t * SPANS_PER_TRACE + (pos - 1) // 2 + 1)
    names = np.array([f"svc-{i:02d}" for i in range(50)])
    inst = np.char.add(np.char.add(names[service], "-"), instance.astype(str))
    status = np.where(rng.random(n) < 0.002, "error", "ok")
    cols = {
        "trace_id": trace_id,
        "span_id": _hex(span_num, 16),
        "parent_id": pa.array(np.char.zfill(np.char.mod("%x", parent_num), 16), mask=pos == 0),
        "service": pa.array(names[service]),
        "instance": pa.array(inst),
        "operation": pa.array(np.char.add("GET /api/op", (pos % 4).astype(str))),
        "kind": pa.array(np.where(pos == 0, "server", "internal")),
        "start_ns": pa.array(start),
        "duration_ns": pa.array(duration),
        "status": pa.array(status),
    }
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in SPANS}, schema=SPANS)


def make_findings(spans: pa.Table, traces: int, n_trace: int, n_instance: int) -> pa.Table:
    """Trace findings on random traces (the deepest span blamed) and instance findings."""
    rng = np.random.default_rng(1)
    picked = np.sort(rng.choice(traces, n_trace, replace=False))
    rows = picked * SPANS_PER_TRACE + SPANS_PER_TRACE - 1
    sp = spans.take(pa.array(rows))
    details = [
        json.dumps(
            {
                "event": {"index": 7, "key": "k", "service": s, "operation": "GET /api/op3"},
                "duration": {
                    "span_id": sid,
                    "duration_ms": 50.0,
                    "normal_duration_ms": 2.0,
                    "upper_duration_ms": 4.0,
                    "self_ms": 50.0,
                    "normal_self_ms": 2.0,
                    "upper_self_ms": 4.0,
                },
            }
        )
        for s, sid in zip(
            sp.column("service").to_pylist(), sp.column("span_id").to_pylist(), strict=True
        )
    ]  # a few thousand rows of setup, outside the measured path
    trace_rows = {
        "finding_id": _hex(np.arange(n_trace) + 1, 16),
        "time_ns": sp.column("start_ns"),
        "detector": pa.array(["duration:robust"] * n_trace),
        "entity": pa.array(["trace"] * n_trace),
        "trace_id": sp.column("trace_id"),
        "span_id": sp.column("span_id"),
        "service": sp.column("service"),
        "instance": sp.column("instance"),
        "operation": sp.column("operation"),
        "score": pa.array(rng.uniform(1, 10, n_trace)),
        "threshold": pa.array(np.ones(n_trace)),
        "reason": pa.array(["slow span"] * n_trace),
        "details": pa.array(details),
    }
    inst = spans.column("instance").take(pa.array(rng.integers(0, spans.num_rows, n_instance)))
    svc = pa.array([i.rsplit("-", 1)[0] for i in inst.to_pylist()])
    instance_rows = {
        "finding_id": _hex(np.arange(n_instance) + 10**9, 16),
        "time_ns": pa.array(T0 + rng.integers(0, 7200 * NS, n_instance)),
        "detector": pa.array(["point:ecod:metrics"] * n_instance),
        "entity": pa.array(["instance"] * n_instance),
        "service": svc,
        "instance": inst,
        "score": pa.array(rng.uniform(1, 10, n_instance)),
        "threshold": pa.array(np.ones(n_instance)),
        "reason": pa.array(["cpu high"] * n_instance),
    }
    parts = [
        pa.table({f.name: r.get(f.name, pa.nulls(len(r["score"]), f.type)) for f in FINDINGS},
                 schema=FINDINGS)
        for r in (trace_rows, instance_rows)
    ]  # fmt: skip
    return pa.concat_tables(parts)


class _WithoutCursor:
    """The store without `cursor`: the dashboard then reads in the writer thread."""

    def __init__(self, store: DuckDBStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        if name == "cursor":
            raise AttributeError(name)
        return getattr(self._store, name)


def timed(fn: object, runs: int) -> float:
    """Median wall time of fn() in ms."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t) * 1e3)
    return round(statistics.median(times), 1)


def main() -> None:
    """Build, serve, measure; print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--reads-in-writer",
        action="store_true",
        help="read in the writer thread (the fallback for stores without cursors), to compare",
    )
    args = ap.parse_args()
    from spanomaly.serve import api
    from spanomaly.serve.app import ServeSettings, create_app

    api.OVERVIEW_TTL_S = 0.0  # measure every overview, not the 2-second cache

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        t = time.perf_counter()
        spans = make_spans(args.traces)
        found = make_findings(spans, args.traces, 2000, 500)
        with DuckDBStore(db) as store:
            store.write(Chunk("spans", spans))
            store.write(Chunk("findings", found))  # type: ignore[arg-type]
        build_s = time.perf_counter() - t
        app = create_app(ServeSettings(db=db, decode_processes=0), DuckDBStore(db))
        if args.reads_in_writer:
            writer = app.state.collector.writer
            writer.store = _WithoutCursor(writer.store)
        doc: dict[str, object] = {
            "traces": args.traces,
            "spans": spans.num_rows,
            "services": 50,
            "findings": found.num_rows,
            "reads": "writer thread" if args.reads_in_writer else "own cursor",
            "build_s": round(build_s, 1),
        }
        with running(app) as url, httpx.Client(base_url=url, timeout=120) as c:
            first = c.get("/api/findings", params={"kind": "trace", "limit": 1}).json()["items"][0]
            inst = first["instance"]
            routes = {
                "overview": "/api/overview",
                "overview_2h": f"/api/overview?from={T0 / NS}&to={T0 / NS + 7200}",
                "findings": "/api/findings?limit=100",
                "findings_service": "/api/findings?service=svc-40&limit=100",
                "trace": f"/api/traces/{first['trace_id']}",
                "instances": "/api/instances",
                "instance_series": f"/api/instances/{inst}/series",
            }
            api_ms = {}
            for name, path in routes.items():
                assert c.get(path).status_code == 200, path
                api_ms[name] = timed(lambda p=path: c.get(p).raise_for_status(), args.runs)
            doc["api_median_ms"] = api_ms
            assert len(c.get("/api/overview").json()["graph"]["nodes"]) == 50
            doc["ingest_ms"] = ingest_figures(url, c)
            doc["browser"] = browser_figures(url, first, args.runs)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for k, v in doc.items():
            print(f"{k}: {v}")


def ingest_figures(url: str, c: httpx.Client, requests: int = 40) -> dict[str, object]:
    """OTLP export latency (500 spans a request) alone and while a client reads the
    overview without pause: do the dashboard's reads hold up ingestion?"""
    from tests.serve.conftest import spans_request

    headers = {"Content-Type": "application/x-protobuf"}

    def send(first: int) -> list[float]:
        times = []
        for i in range(requests):
            body = spans_request(first + i * 500, 500).SerializeToString()
            t = time.perf_counter()
            assert c.post("/v1/traces", content=body, headers=headers).status_code == 200
            times.append((time.perf_counter() - t) * 1e3)
        return times

    alone = send(10**9)
    stop = threading.Event()
    reads = [0]

    def reader() -> None:
        with httpx.Client(base_url=url, timeout=120) as r:
            while not stop.is_set():
                r.get(f"/api/overview?to={T0 / NS + 7200 + reads[0] * 1e-3}").raise_for_status()
                reads[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        busy = send(2 * 10**9)
    finally:
        stop.set()
        thread.join()
    return {
        "alone_p50": round(statistics.median(alone), 1),
        "alone_max": round(max(alone), 1),
        "with_reads_p50": round(statistics.median(busy), 1),
        "with_reads_max": round(max(busy), 1),
        "overviews_read_meanwhile": reads[0],
        "requests": requests,
    }


def browser_figures(url: str, first: dict[str, object], runs: int) -> dict[str, object]:
    """Time to first render of the overview and to open a trace from the findings list."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        return {"skipped": "no /usr/bin/chromium"}
    from playwright.sync_api import sync_playwright

    render, open_trace = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(chromium), args=["--no-sandbox", "--headless"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        for _ in range(runs):
            page.goto("about:blank")
            t = time.perf_counter()
            page.goto(f"{url}/#/overview")
            page.locator("svg#graph g.node").nth(49).wait_for()
            render.append((time.perf_counter() - t) * 1e3)
            page.goto(f"{url}/#/anomalies")
            row = page.locator(f'tr[data-finding="{first["finding_id"]}"]')
            if not row.count():
                page.goto(
                    f"{url}/#/anomalies?kind=trace&to={float(str(first['time_ms'])) / 1e3 + 1}"
                )
            row.wait_for()
            t = time.perf_counter()
            row.click()
            page.locator(".span-row.deviating").wait_for()
            open_trace.append((time.perf_counter() - t) * 1e3)
        browser.close()
    return {
        "first_render_ms": round(statistics.median(render), 1),
        "first_render_max_ms": round(max(render), 1),
        "open_trace_ms": round(statistics.median(open_trace), 1),
        "open_trace_max_ms": round(max(open_trace), 1),
        "runs": runs,
    }


if __name__ == "__main__":
    main()
