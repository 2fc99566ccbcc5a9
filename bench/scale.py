"""Scoring throughput on Dask (1 and 2 workers) against the local engine, on TrainTicket
spans replicated to >= 10 M spans (a new trace id per copy) in the Parquet store's layout.

1. Unpack the TrainTicket archive to a temporary folder, ingest it into a DuckDB store with
   the nezha importer (skipped with --db).
2. Train a trace model on a short normal slice (default 14:15 to 15:15 UTC, LSTM with few
   epochs + robust durations: the detectors the demo uses, trained quicker).
3. Write `--copies` copies of the spans, trace ids replaced by md5(trace_id:copy), into a
   Parquet dataset (`store.parquet` layout); the other tables are copied as they are.
4. Score every trace of the dataset: with the local engine (`pipeline.detect`, hour by hour
   through DuckDB views over the dataset) and on LocalClusters of 1 and 2 workers
   (`scale.dask.score_partitions`, one task per partition); events/s (one event per span),
   peak memory of each worker process and the ratio to the local engine.

    nice -n 5 .venv/bin/python bench/scale.py [--copies 10] [--workers 1,2] [--work DIR]
        [--db TT.duckdb] [--append bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

NS = 1_000_000_000
DAY = datetime(2023, 1, 30, tzinfo=UTC)


def at(hh: int, mm: int = 0) -> int:
    """ns of hh:mm UTC on the TrainTicket day."""
    return int((DAY.timestamp() + hh * 3600 + mm * 60) * NS)


def ingest(work: Path) -> Path:
    """The TrainTicket day in a DuckDB store under work."""
    from tests.conftest import TT_ARCHIVE, unpack_zst_tar

    from spanomaly import pipeline
    from spanomaly.store.duckdb import DuckDBStore

    db = work / "tt.duckdb"
    if db.exists():
        return db
    unpack_zst_tar(TT_ARCHIVE, work)
    with DuckDBStore(db) as store:
        report = pipeline.ingest([work / "trainticket-2023-01-30" / "trace"], store)
    print(f"ingested {report.spans} spans", file=sys.stderr)
    return db


def replicate(db: Path, out: Path, copies: int) -> int:
    """copies of the spans with new trace ids, as a Parquet dataset at out; spans written."""
    import duckdb

    from spanomaly.schema import TABLES
    from spanomaly.store.parquet import export_tables

    if (out / "_spanomaly.json").exists():
        return duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/spans/**/*.parquet')").fetchall()[0][0]  # fmt: skip
    con = duckdb.connect(config={"memory_limit": "8GB", "threads": 2})
    con.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
    con.execute(
        "CREATE VIEW spans AS SELECT * REPLACE (CASE WHEN k = 0 THEN trace_id "
        "ELSE md5(trace_id || ':' || k) END AS trace_id) "
        f"FROM src.spans, range({copies}) r(k)"
    )
    for name in TABLES:
        if name != "spans":
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM src.{name}")
    counts = export_tables(con, out)
    con.close()
    return counts["spans"]


def train(db: Path, model: Path, lo: int, hi: int, epochs: int) -> dict:
    """The trace model of the slice [lo, hi)."""
    from spanomaly import pipeline
    from spanomaly.store.duckdb import DuckDBStore

    if (model / "config.json").exists():
        return json.loads((model / "config.json").read_text())["trained_on"]
    options = pipeline.TrainOptions(sequence="lstm", sequence_params={"epochs": epochs})
    with DuckDBStore(db, read_only=True) as store:
        return pipeline.train(store, model, lo, hi, options=options)


def score_local(dataset: Path, model: Path) -> dict:
    """pipeline.detect with the local engine over the dataset; seconds, peak RSS of this run."""
    from spanomaly import pipeline
    from spanomaly.store.parquet import ParquetStore

    t0 = time.perf_counter()
    with ParquetStore(dataset) as store:
        doc = pipeline.detect(store, model)
    return {"seconds": time.perf_counter() - t0, "doc": doc}


def score_dask(dataset: Path, model: Path, workers: int, memory: str) -> dict:
    """score_partitions on a LocalCluster of `workers` one-thread workers."""
    from spanomaly.pipeline.reads import trace_spans_query
    from spanomaly.pipeline.scaled import span_partitions
    from spanomaly.scale import dask as scale
    from spanomaly.store.parquet import ParquetStore

    with ParquetStore(dataset, read_only=True) as store:
        parts = span_partitions(store)
    sql, params = trace_spans_query()
    with scale.connect(f"local:{workers}", memory_limit=memory) as client:
        sampler = RssSampler(set(client.run(os.getpid).values()))
        t0 = time.perf_counter()
        scored, anomalous, findings = scale.score_partitions(client, parts, sql, params, model)
        seconds = time.perf_counter() - t0
        peaks = scale.worker_peak_memory(client)
        sampler.stop()
    return {
        "seconds": seconds,
        "traces": scored,
        "anomalous": anomalous,
        "findings": findings.num_rows,
        "partitions": len(parts),
        "worker_peak_mib": sorted(round(v / 2**20) for v in peaks.values()),
        "worker_peak_mib_sampled": sorted(round(v / 2**20) for v in sampler.peaks.values()),
    }


class RssSampler:
    """Peak resident memory of some processes, sampled every 0.2 s in a thread."""

    def __init__(self, pids: set[int]) -> None:
        import threading

        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.peaks: dict[int, int] = {p.pid: 0 for p in self.procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for p in self.procs:
                with contextlib.suppress(Exception):  # a worker that went away
                    self.peaks[p.pid] = max(self.peaks[p.pid], p.memory_info().rss)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--work", type=Path, default=None, help="keep the data here between runs")
    ap.add_argument("--db", type=Path, default=None, help="a store with the TrainTicket day")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--memory", default="6GiB", help="memory limit of each worker")
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--append", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="spanomaly-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    db = args.db or ingest(work)
    trained = train(db, work / "model", at(14, 15), at(15, 15), args.epochs)
    t0 = time.perf_counter()
    spans = replicate(db, work / "dataset", args.copies)
    print(f"{spans} spans in the dataset ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    runs: dict[str, dict] = {}
    for n in (int(w) for w in args.workers.split(",")):
        runs[f"dask-{n}"] = score_dask(work / "dataset", work / "model", n, args.memory)
        print(f"dask {n}: {runs[f'dask-{n}']}", file=sys.stderr)
    if not args.skip_local:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        runs["local"] = score_local(work / "dataset", work / "model")
        runs["local"]["bench_process_peak_mib"] = round(  # replication included
            max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
        )
        print(f"local: {runs['local']}", file=sys.stderr)
    for run in runs.values():
        run["events_per_s"] = round(spans / run["seconds"])
    if "local" in runs:
        for run in runs.values():
            run["vs_local"] = round(run["events_per_s"] / runs["local"]["events_per_s"], 2)
    doc = {
        "spans": spans,
        "copies": args.copies,
        "train": {k: trained.get(k) for k in ("from", "to", "traces", "events")},
        "runs": runs,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(doc, default=str, indent=1))
    if args.append:
        with args.append.open("a") as f:
            f.write(
                "\n<!-- bench/scale.py raw -->\n```json\n"
                + json.dumps(doc, default=str)
                + "\n```\n"
            )


if __name__ == "__main__":
    main()
