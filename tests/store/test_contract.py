"""The Store contract: every backend passes the same suite (in memory and on disk)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spanomaly.errors import FormatError, StoreError, StoreLockedError
from spanomaly.ingest.base import Chunk, SqlSource
from spanomaly.schema import FAULTS, METRICS, SPANS
from spanomaly.store.base import Store, TimeRange
from spanomaly.store.duckdb import DuckDBStore
from spanomaly.store.parquet import ParquetStore

HOUR = 3_600 * 10**9
T0 = 1_675_080_000 * 10**9  # 2023-01-30 12:00 UTC


def spans(n: int, start: int = T0, trace: str = "a" * 32, step: int = 10**9) -> pa.Table:
    """n spans of one trace: a root and its children, one per step."""
    ids = [f"{i + 1:016x}" for i in range(n)]
    cols = {name: [None] * n for name in SPANS.names}
    cols.update(
        trace_id=[trace] * n,
        span_id=ids,
        parent_id=[None] + [ids[0]] * (n - 1),
        service=[f"svc{i % 3}" for i in range(n)],
        instance=[f"svc{i % 3}-0" for i in range(n)],
        operation=["op"] * n,
        start_ns=[start + i * step for i in range(n)],
        duration_ns=[1000] * n,
        status=["unset"] * n,
    )
    return pa.table(cols, schema=SPANS)


@pytest.fixture(params=["memory", "file", "parquet"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store
    if request.param == "parquet":
        s = ParquetStore(tmp_path / "dataset")
    else:
        s = DuckDBStore(":memory:" if request.param == "memory" else tmp_path / "s.duckdb")
    yield s
    s.close()


def test_write_is_idempotent_on_trace_and_span_id(store: Store) -> None:
    first = store.write(Chunk("spans", spans(5)))
    assert (first.inserted, first.duplicates) == (5, 0)
    again = store.write(Chunk("spans", spans(7)))
    assert (again.inserted, again.duplicates) == (2, 5)
    doubled = pa.concat_tables([spans(9), spans(9)])
    assert store.write(Chunk("spans", doubled)).inserted == 2
    assert store.stats().spans == 9


def test_keys_repeated_inside_one_batch_are_stored_once(store: Store) -> None:
    # the same span id under two traces is two spans; the same (trace, span) twice is one
    other = spans(4, trace="b" * 32)
    batch = pa.concat_tables([spans(4), other, other.slice(1, 2)])
    result = store.write(Chunk("spans", batch))
    assert (result.inserted, result.duplicates) == (8, 2)
    assert store.stats().spans == 8
    assert store.stats().traces == 2


def test_a_failing_write_changes_nothing(store: Store) -> None:
    store.write(Chunk("spans", spans(3)))
    cols = {n: f"NULL AS {n}" for n in SPANS.names}
    cols |= {
        "trace_id": "lpad(i::VARCHAR, 32, '0') AS trace_id",
        "span_id": "lpad(i::VARCHAR, 16, '0') AS span_id",
        # rows stream in, then the source fails half way: nothing of it may stay
        "operation": "CASE WHEN i = 150000 THEN error('boom') ELSE 'op' END AS operation",
    }
    failing = SqlSource(
        f"SELECT {', '.join(cols.values())}, 'f' AS _source FROM range(1, 200000) t(i)"
    )
    with pytest.raises(FormatError, match="boom"):
        store.write(Chunk("spans", failing))
    assert store.stats().spans == 3


def test_a_sql_source_stores_each_key_once_and_refuses_bad_rows(store: Store) -> None:
    # keys (time_ns, instance, name, attributes) repeat within the source, nulls included
    rows = "(1, NULL, 1.0), (1, NULL, 2.0), (2, 'a', 1.0), (2, 'a', 3.0), (2, 'a', 4.0), (NULL, NULL, 5.0)"
    source = SqlSource(
        f"SELECT {T0} + i * 60000000000 AS time_ns, 'cpu' AS name, 'p-0' AS instance, "
        "a AS attributes, v AS value, 'm.csv' AS _source FROM (VALUES " + rows + ") t(i, a, v)",
        "CASE WHEN time_ns IS NULL THEN 'time is missing' END",
    )
    first = store.write(Chunk("metrics", source))
    assert (first.inserted, first.duplicates, first.rejected) == (2, 3, 1)
    assert [r.message() for r in first.rejects] == [
        "m.csv: time_ns=null, instance=p-0, name=cpu, attributes=null: time is missing"
    ]
    points = store.metrics()
    assert points.column("value").to_pylist() == [1.0, 1.0]  # the first row of each key
    assert points.column("attributes").to_pylist() == [None, "a"]
    again = store.write(Chunk("metrics", source))
    assert (again.inserted, again.duplicates, again.rejected) == (0, 5, 1)
    assert store.stats().metrics == 2


def test_queries_by_time_service_and_trace(store: Store) -> None:
    store.write(Chunk("spans", spans(6, step=HOUR)))
    store.write(Chunk("spans", spans(2, trace="b" * 32)))
    window = store.spans(TimeRange(T0 + HOUR, T0 + 3 * HOUR))
    assert window.column("start_ns").to_pylist() == [T0 + HOUR, T0 + 2 * HOUR]
    assert set(store.spans(services=["svc1"]).column("service").to_pylist()) == {"svc1"}
    assert store.traces(["b" * 32]).num_rows == 2
    assert store.services() == ["svc0", "svc1", "svc2"]


def test_stats_metrics_faults_and_orphans(store: Store) -> None:
    table = spans(3)
    orphan = spans(1, trace="c" * 32).set_column(2, "parent_id", pa.array(["f" * 16]))
    store.write(Chunk("spans", pa.concat_tables([table, orphan])))
    points = pa.table(
        {
            "time_ns": [T0, T0 + 60 * 10**9],
            "name": ["cpu", "cpu"],
            "instance": ["svc0-0", "svc0-0"],
            "value": [1.0, 2.0],
        }
    )
    full = {n: points[n] if n in points.column_names else pa.nulls(2) for n in METRICS.names}
    assert store.write(Chunk("metrics", pa.table(full).cast(METRICS))).inserted == 2
    assert store.write(Chunk("metrics", pa.table(full).cast(METRICS))).inserted == 0
    fault = {n: [None] for n in FAULTS.names} | {
        "fault_id": ["f1"],
        "kind": ["delay"],
        "start_ns": [T0],
        "end_ns": [T0 + 1],
    }
    store.write(Chunk("faults", pa.table(fault, schema=FAULTS)))
    s = store.stats()
    assert (s.spans, s.traces, s.instances, s.metrics, s.faults) == (4, 2, 3, 2, 1)
    assert s.start_ns == T0 and s.end_ns == T0 + 60 * 10**9
    orphans = store.orphans()
    assert orphans.count == 1 and [r["span_id"] for r in orphans.sample] == ["0000000000000001"]
    assert store.orphans(sample=0).count == 1 and not store.orphans(sample=0).sample
    assert store.orphans(pa.array(["c" * 32, "d" * 32])).count == 1  # among some traces
    assert store.orphans(pa.array([table["trace_id"][0].as_py()])).count == 0
    assert not store.is_empty("spans") and store.is_empty("logs")
    assert store.metrics(TimeRange(T0 + 1)).column("value").to_pylist() == [2.0]


def test_parquet_export_is_partitioned_by_first_span_hour_and_bucket(
    store: Store, tmp_path: Path
) -> None:
    store.write(Chunk("spans", spans(4, step=HOUR)))  # one trace over four hours
    store.write(Chunk("spans", spans(2, start=T0 + 2 * HOUR, trace="b" * 32)))
    counts = store.export_parquet(tmp_path / "out")
    assert counts["spans"] == 6
    hours = sorted(p.name for p in (tmp_path / "out" / "spans").iterdir())
    assert hours == ["hour=2023-01-30T12", "hour=2023-01-30T14"]  # a trace stays in one
    for hour in hours:
        assert [p.name.split("=")[0] for p in (tmp_path / "out" / "spans" / hour).iterdir()] == [
            "bucket"
        ]
    back = pq.read_table(tmp_path / "out" / "spans")
    assert back.num_rows == 6
    assert set(back.column("span_id").to_pylist()) == set(spans(4).column("span_id").to_pylist())
    with ParquetStore(tmp_path / "out", read_only=True) as exported:
        assert (exported.stats().spans, exported.stats().traces) == (6, 2)
    with pytest.raises(StoreError, match="not empty"):
        store.export_parquet(tmp_path / "out")


def test_a_store_open_in_another_process_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb,sys,time; c=duckdb.connect({str(path)!r}); print('ready', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "ready"
        with pytest.raises(
            StoreLockedError, match=r"open for writing by another process \(PID \d+\)"
        ):
            DuckDBStore(path)
    finally:
        holder.communicate("", timeout=30)


def test_a_transaction_keeps_all_of_its_writes_or_none(store: Store) -> None:
    with store.transaction():
        store.write(Chunk("spans", spans(2)))
        store.write(Chunk("spans", spans(2, trace="b" * 32)))
    assert store.stats().spans == 4
    with pytest.raises(RuntimeError), store.transaction():
        store.write(Chunk("spans", spans(3, trace="c" * 32)))
        raise RuntimeError("the input broke half way")
    assert store.stats().spans == 4
