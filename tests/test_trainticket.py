"""The real TrainTicket data set of ../shared/data imports exactly (skipped where absent)."""

from __future__ import annotations

import csv
from pathlib import Path

from spanomaly import pipeline
from spanomaly.store.duckdb import DuckDBStore


def _metric_cells(folder: Path) -> int:
    """Non-empty measure cells of every metric CSV, counted independently of the importer."""
    cells = 0
    for f in folder.rglob("*.csv"):
        if "metric" not in str(f.relative_to(folder)):
            continue
        with open(f, newline="") as fh:
            rows = csv.reader(fh)
            header = next(rows)
            skip = {
                i
                for i, c in enumerate(header)
                if c in ("Time", "TimeStamp", "PodName", "ServiceName")
            }
            cells += sum(1 for r in rows for i, v in enumerate(r) if i not in skip and v != "")
    return cells


def test_trainticket_folder_imports_exactly(trainticket: Path, tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "tt.duckdb")
    report = pipeline.ingest([trainticket], store)
    assert report.rejected == 0, report.errors
    assert report.spans == 1_037_308
    # 1,044,580 rows: 7,272 repeat a span of a neighbouring minute file
    assert report.duplicates == 7_272
    assert report.faults == 17
    stats = store.stats()
    assert (stats.spans, stats.traces) == (1_037_308, 27_364)
    span_services = store.sql("SELECT count(DISTINCT service) AS n FROM spans").column("n")[0]
    assert span_services.as_py() == 28
    # stats counts services of spans and of metrics: 18 more have pod metrics but no spans
    assert len(stats.services) == 46
    # 46 pods a day over three days (the day and two warm-up days), plus the entry service
    pods = store.sql("SELECT count(DISTINCT instance) AS n FROM metrics").column("n")[0].as_py()
    assert pods == 3 * 46
    assert stats.metrics == report.metrics == _metric_cells(trainticket)
    faults = store.table("faults")
    assert sorted(set(faults.column("kind").to_pylist())) == ["cpu_contention", "network_delay"]
    root = (
        store.sql("SELECT count(*) AS n FROM spans WHERE parent_id IS NULL").column("n")[0].as_py()
    )
    assert root == 27_364
    store.close()
