"""Metric points in long form (CSV, JSON lines) with a column map: labels kept, bad rows
refused with their line."""

from __future__ import annotations

import json
from pathlib import Path

from spanomaly import pipeline
from spanomaly.ingest.base import DecodeOptions
from spanomaly.ingest.csv import parse_map
from spanomaly.store.duckdb import DuckDBStore

MAP = "time=ts,service=svc,instance=pod,name=metric,value=v"


def _ingest(tmp_path: Path, name: str, text: str, mapping: str = MAP) -> tuple[object, list]:
    path = tmp_path / name
    path.write_text(text)
    with DuckDBStore(tmp_path / "s.duckdb") as store:
        options = DecodeOptions(column_map=parse_map(mapping))
        report = pipeline.ingest([path], store, "auto", options)
        rows = store.sql(
            "SELECT time_ns, service, instance, name, value, attributes FROM metrics ORDER BY ALL"
        ).to_pylist()
    return report, rows


def test_long_csv_with_labels(tmp_path: Path) -> None:
    report, rows = _ingest(
        tmp_path,
        "p.csv",
        "ts,svc,pod,metric,v,zone\n"
        "1700000000,web,web-1,cpu,0.5,eu\n"
        "1700000000,web,web-1,cpu,0.7,us\n"  # another series: its label differs
        "2023-11-14T22:13:21Z,web,web-2,mem,1024,eu\n",
    )
    assert report.metrics == 3 and report.rejected == 0  # type: ignore[attr-defined]
    assert [(r["instance"], r["name"], r["value"]) for r in rows] == [
        ("web-1", "cpu", 0.5), ("web-1", "cpu", 0.7), ("web-2", "mem", 1024.0)
    ]  # fmt: skip
    assert json.loads(rows[0]["attributes"]) == {"zone": "eu"}
    assert rows[2]["time_ns"] == 1_700_000_001 * 10**9


def test_service_from_a_pod_name_and_the_value_column_as_name(tmp_path: Path) -> None:
    _, rows = _ingest(
        tmp_path, "p.csv", "ts,pod,cpu\n1700000000,cart-5d8f9c7b6-x2x4q,0.5\n",
        "time=ts,instance=pod,value=cpu",
    )  # fmt: skip
    assert [(r["service"], r["instance"], r["name"]) for r in rows] == [
        ("cart", "cart-5d8f9c7b6-x2x4q", "cpu")
    ]


def test_bad_rows_are_refused_with_their_line(tmp_path: Path) -> None:
    report, rows = _ingest(
        tmp_path,
        "p.csv",
        "ts,svc,pod,metric,v\n1700000000,web,web-1,cpu,0.5\n1700000001,web,web-1,cpu,high\n"
        "yesterday,web,web-1,cpu,1\n",
    )
    assert report.metrics == 1 and report.rejected == 2  # type: ignore[attr-defined]
    errors = " | ".join(report.errors)  # type: ignore[attr-defined]
    assert "line 3: value 'high' is not a number" in errors
    assert "line 4: time 'yesterday' is not unix time" in errors
    assert len(rows) == 1


def test_a_map_naming_a_missing_column_names_the_file_and_the_column(tmp_path: Path) -> None:
    report, rows = _ingest(tmp_path, "p.csv", "ts,svc,v\n1700000000,web,1\n")
    assert rows == [] and report.rejected == 1  # type: ignore[attr-defined]
    assert "missing column pod (for instance)" in report.errors[0]  # type: ignore[attr-defined]
    assert str(tmp_path / "p.csv") in report.errors[0]  # type: ignore[attr-defined]


def test_json_lines_with_labels_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        {"ts": 1700000000, "svc": "web", "pod": "web-1", "metric": "cpu", "v": 0.5, "zone": "eu"},
        {"ts": 1700000001, "svc": "web", "pod": "web-1", "metric": "cpu", "v": "n/a"},
        {"ts": 1700000002, "svc": "web", "pod": "web-1", "metric": "cpu", "v": 0.75},
    ]
    report, rows = _ingest(tmp_path, "p.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    assert report.metrics == 2 and report.rejected == 1  # type: ignore[attr-defined]
    assert "line 2: value 'n/a' is not a number" in report.errors[0]  # type: ignore[attr-defined]
    assert json.loads(rows[0]["attributes"]) == {"zone": "eu"}
