"""Parent checks of `spanomaly.pipeline.ingest`: among the traces an import touched."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from spanomaly.pipeline.ingest import IngestReport, ingest, open_store

T0 = 1_700_000_000_000_000_000


def _span(trace: str, span: int, parent: int | None) -> dict[str, object]:
    out: dict[str, object] = {
        "traceId": trace * 32,
        "spanId": f"{span:016x}",
        "name": "op",
        "startTimeUnixNano": str(T0 + span),
        "endTimeUnixNano": str(T0 + span + 1000),
    }
    if parent is not None:
        out["parentSpanId"] = f"{parent:016x}"
    return out


def _import(
    store_path: str, tmp_path: Path, name: str, spans: list[dict[str, object]]
) -> IngestReport:
    doc = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]
                },
                "scopeSpans": [{"spans": spans}],
            }
        ]
    }
    path = tmp_path / f"{name}.json"
    path.write_bytes(orjson.dumps(doc))
    store = open_store(store_path)
    try:
        return ingest([path], store)
    finally:
        store.close()


@pytest.fixture(params=["duckdb", "parquet"])
def store_path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "duckdb":
        return str(tmp_path / "s.duckdb")
    return f"parquet:{tmp_path / 'ds'}"


def test_parents_stored_by_an_earlier_import_count(store_path: str, tmp_path: Path) -> None:
    first = _import(
        store_path, tmp_path, "a", [_span("a", 1, None), _span("b", 2, None), _span("b", 3, 99)]
    )
    assert (first.spans, first.orphans) == (3, 1)
    # children of a root stored before, one span of trace a and one of a new trace orphaned;
    # trace b (an orphan from the first import) is not touched and not counted again
    second = _import(
        store_path,
        tmp_path,
        "b",
        [_span("a", 4, 1), _span("a", 5, 4), _span("a", 6, 77), _span("c", 7, 88)],
    )
    assert (second.spans, second.orphans) == (4, 2)
    assert sorted(n.split()[3] for n in second.errors) == [f"{6:016x}", f"{7:016x}"]


def test_a_parent_arriving_later_resolves_its_orphan(store_path: str, tmp_path: Path) -> None:
    assert _import(store_path, tmp_path, "a", [_span("a", 2, 1)]).orphans == 1
    later = _import(store_path, tmp_path, "b", [_span("a", 1, None), _span("d", 3, None)])
    assert (later.spans, later.orphans) == (2, 0)


def test_a_parent_in_another_trace_does_not_count(store_path: str, tmp_path: Path) -> None:
    _import(store_path, tmp_path, "a", [_span("a", 1, None)])
    report = _import(store_path, tmp_path, "b", [_span("e", 2, 1)])
    assert report.orphans == 1


def test_a_csv_import_never_loads_arrow_or_numpy(tmp_path: Path) -> None:
    # DuckDB reads the CSV and checks it itself; loading Arrow would cost a CSV import 0.1 s
    import subprocess
    import sys

    csv = tmp_path / "spans.csv"
    csv.write_text(
        "TraceID,SpanID,ParentID,PodName,OperationName,StartTimeUnixNano,EndTimeUnixNano,Duration\n"
        f"{'a' * 32},{'1' * 16},root,ts-order-service-6f6cfc45b-d9pnv,/op,{T0},{T0 + 5000},5\n"
        f"{'a' * 32},{'2' * 16},{'9' * 16},ts-order-service-6f6cfc45b-d9pnv,/op,{T0},{T0 + 5},0\n"
    )
    code = (
        "import sys\n"
        "from spanomaly.pipeline.ingest import ingest, open_store\n"
        f"store = open_store({str(tmp_path / 's.duckdb')!r})\n"
        f"report = ingest([{str(csv)!r}], store)\n"
        "store.close()\n"
        "print(report.spans, report.orphans, [m for m in ('pyarrow', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "1", "[]"]
