"""Import speed and memory: TrainTicket CSV spans and a 1 M-span OTLP protobuf file.

Each figure stands beside its ceiling measured in the same run:
- CSV: spanomaly's import of the 1.04 M TrainTicket span rows (dedup, checks, store) versus
  a bare DuckDB `CREATE TABLE AS SELECT * FROM read_csv(...)` of the same files (also as
  `cpu_ratio`, from the CPU seconds of both processes, steadier where others share the machine);
- OTLP: spanomaly's decode + store of a >= 1 M-span ExportTraceServiceRequest versus the bare
  protobuf `ParseFromString` of the same bytes.
Every measurement runs in a fresh subprocess so that its peak RSS is its own.

    .venv/bin/python bench/ingest.py [--data ../shared/data] [--otlp-spans 1000000] [--repeat 3]
        [--only csv|otlp] [--otlp-file /tmp/bench1m.pb]

--otlp-file reuses that file (made first if it is missing) instead of generating one per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_otlp import _peak_rss_mb, generate  # noqa: E402


def _child(kind: str, arg: str, db: str) -> None:
    """Run one measurement in this (fresh) process and print its JSON line."""
    t0 = time.perf_counter()
    extra: dict[str, float] = {}
    if kind == "csv-bare":
        import duckdb

        con = duckdb.connect(db)
        con.execute(f"CREATE TABLE t AS SELECT * FROM read_csv('{arg}/*.csv')")
        rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
        con.close()
    elif kind == "csv-spanomaly":
        from spanomaly import pipeline
        from spanomaly.store.duckdb import DuckDBStore

        store = DuckDBStore(db)
        report = pipeline.ingest([arg], store)
        store.close()
        rows = report.spans + report.duplicates + report.rejected
    elif kind == "otlp-bare":
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        data = Path(arg).read_bytes()
        t0 = time.perf_counter()
        req = ExportTraceServiceRequest()
        req.ParseFromString(data)
        rows = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
    elif kind == "otlp-spanomaly":
        from spanomaly import pipeline
        from spanomaly.store.duckdb import DuckDBStore

        extra["import_s"] = time.perf_counter() - t0  # counted in seconds too
        store = DuckDBStore(db)
        report = pipeline.ingest([arg], store)
        store.close()
        rows = report.spans
    else:
        raise SystemExit(f"unknown measurement {kind}")
    seconds = time.perf_counter() - t0
    rss_mb = _peak_rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    line = {"rows": rows, "seconds": seconds, "rss_mb": rss_mb, **extra}
    line["cpu_s"] = usage.ru_utime + usage.ru_stime  # the whole process, imports included
    sys.stdout.write(json.dumps(line) + "\n")


def measure(kind: str, arg: str, repeat: int) -> dict[str, float]:
    """Best of `repeat` fresh-process runs (fresh store each time)."""
    best: dict[str, float] | None = None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            db = str(Path(tmp) / "b.duckdb")
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, arg, db],
                check=True,
                capture_output=True,
                text=True,
            )
        run = json.loads(out.stdout.strip().splitlines()[-1])
        if best is None or run["seconds"] < best["seconds"]:
            best = run
    assert best is not None
    best["rows_per_s"] = best["rows"] / best["seconds"]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--otlp-spans", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-otlp", action="store_true", help="the same as --only csv")
    parser.add_argument("--only", choices=("csv", "otlp"), help="run one of the two parts")
    parser.add_argument("--otlp-file", type=Path, help="OTLP file to reuse (made if missing)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "ARG", "DB"))
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(args.data) / "trainticket-2023-01-30.tar.zst"
        if args.only == "otlp":
            results["csv"] = "skipped: --only otlp"
        elif archive.exists():
            from conftest import unpack_zst_tar

            unpack_zst_tar(archive, Path(tmp))
            traces = str(Path(tmp) / "trainticket-2023-01-30" / "trace")
            bare = measure("csv-bare", traces, args.repeat)
            ours = measure("csv-spanomaly", traces, args.repeat)
            results["csv"] = {
                "bare_duckdb": bare,
                "spanomaly": ours,
                "ratio": ours["rows_per_s"] / bare["rows_per_s"],
                # whole-process CPU seconds (imports included): steadier on a shared machine
                "cpu_ratio": bare["cpu_s"] / ours["cpu_s"],
            }
        else:
            results["csv"] = f"skipped: {archive} not found"
        if not args.skip_otlp and args.only != "csv":
            pb = args.otlp_file or Path(tmp) / "spans.pb"
            if not pb.exists():
                generate(pb, args.otlp_spans)
            bare = measure("otlp-bare", str(pb), args.repeat)
            ours = measure("otlp-spanomaly", str(pb), args.repeat)
            results["otlp"] = {
                "file": str(pb),
                "file_mb": pb.stat().st_size / 2**20,
                "bare_parse": bare,
                "spanomaly": ours,
                "ratio": ours["rows_per_s"] / bare["rows_per_s"],
            }
    results["load_after"] = os.getloadavg()
    sys.stdout.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
