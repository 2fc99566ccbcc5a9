"""Fault labels (start, end, service, instance, kind) and call edges (caller, callee) in
CSV, JSON and JSON lines; bad records refused with their line or index."""

from __future__ import annotations

import json
from pathlib import Path

from spanomaly import pipeline
from spanomaly.ingest.base import DecodeOptions
from spanomaly.store.duckdb import DuckDBStore

S = 1_700_000_000


def _ingest(tmp_path: Path, name: str, text: str, table: str) -> tuple[object, list]:
    path = tmp_path / name
    path.write_text(text)
    with DuckDBStore(tmp_path / "s.duckdb") as store:
        report = pipeline.ingest([path], store, "auto", DecodeOptions(fault_duration_s=60))
        rows = store.sql(f"SELECT * FROM {table} ORDER BY ALL").to_pylist()
    return report, rows


def test_fault_labels_csv(tmp_path: Path) -> None:
    report, rows = _ingest(
        tmp_path,
        "faults.csv",
        f"start,end,service,instance,kind\n{S},{S + 120},cart,cart-1,cpu\n"
        "2023-11-14T22:20:00Z,,shop,,memory\n"  # no end: --fault-duration; no instance
        f"{S},{S - 5},cart,,cpu\n"  # ends before it starts
        f"later,{S},cart,,cpu\n",
        "faults",
    )
    assert report.faults == 2 and report.rejected == 2  # type: ignore[attr-defined]
    first, second = sorted(rows, key=lambda r: r["start_ns"])
    assert (first["service"], first["instance"], first["kind"]) == ("cart", "cart-1", "cpu")
    assert first["end_ns"] - first["start_ns"] == 120 * 10**9
    assert second["instance"] is None and second["end_ns"] - second["start_ns"] == 60 * 10**9
    errors = " | ".join(report.errors)  # type: ignore[attr-defined]
    assert "line 4: end is not after start" in errors and "line 5:" in errors


def test_fault_labels_json_list_and_lines(tmp_path: Path) -> None:
    docs = [{"start": S, "end": S + 60, "service": "cart", "kind": "cpu"}, {"start": S}]
    report, rows = _ingest(tmp_path, "f.json", json.dumps({"faults": docs}), "faults")
    assert report.faults == 1 and report.rejected == 1  # type: ignore[attr-defined]
    assert "[1]" in report.errors[0]  # type: ignore[attr-defined]
    lines = "\n".join(json.dumps(d | {"instance": "shop-2"}) for d in docs)
    report, rows = _ingest(tmp_path, "f.jsonl", lines, "faults")
    assert report.rejected == 1 and "line 2" in report.errors[0]  # type: ignore[attr-defined]
    assert {r["instance"] for r in rows} >= {"shop-2"}


def test_call_edges_csv_and_json(tmp_path: Path) -> None:
    report, rows = _ingest(
        tmp_path, "calls.csv", "caller,callee,calls\nweb,cart,10\ncart,db,\nweb,,3\n", "calls"
    )
    assert report.calls == 2 and report.rejected == 1  # type: ignore[attr-defined]
    assert [(r["caller"], r["callee"], r["calls"]) for r in rows] == [
        ("cart", "db", None), ("web", "cart", 10)
    ]  # fmt: skip
    assert "line 4: needs caller and callee" in report.errors[0]  # type: ignore[attr-defined]
    report, rows = _ingest(
        tmp_path, "g.json", json.dumps([{"source": "web", "target": "shop"}]), "calls"
    )
    assert ("web", "shop") in {(r["caller"], r["callee"]) for r in rows}
