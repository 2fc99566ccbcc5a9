"""CSV spans (column map, nezha preset), metric CSVs and label files, good and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import zstandard

from spanomaly import pipeline
from spanomaly.errors import InputError
from spanomaly.ingest.base import DecodeOptions
from spanomaly.ingest.csv import parse_map
from spanomaly.store.duckdb import DuckDBStore

NEZHA_HEADER = (
    "TraceID,SpanID,ParentID,PodName,OperationName,StartTimeUnixNano,EndTimeUnixNano,Duration\n"
)
T1 = "04b0385e1feaf140061fb1ec80a57a73"
T2 = "0aa85e62a8bf2bf31c4b4d2e2c4c1a9b"


def row(trace: str, span: str, parent: str, pod: str, op: str, start: int, dur_us: int) -> str:
    return f"{trace},{span},{parent},{pod},{op},{start},{start + dur_us * 1000},{dur_us}\n"


GOOD = [
    row(T1, "ed5bfe495229b1cf", "root", "ts-gateway-service-6f6cfc45b-d9pnv", "/*", 10**18, 700),
    row(
        T1,
        "452238fab821f767",
        "ed5bfe495229b1cf",
        "ts-basic-service-5dc8d4f9fd-llznp",
        "GET /a",
        10**18 + 1000,
        300,
    ),
    row(
        T2,
        "1111111111111111",
        "root",
        "ts-basic-service-5dc8d4f9fd-llznp",
        "GET /b",
        10**18 + 5000,
        50,
    ),
]


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def ingest(paths: list[Path], **kw: object) -> tuple[pipeline.IngestReport, DuckDBStore]:
    store = DuckDBStore()
    return pipeline.ingest(paths, store, **kw), store  # type: ignore[arg-type]


def test_nezha_spans_decode_with_service_from_pod_and_root_parent(tmp_path: Path) -> None:
    report, store = ingest([write(tmp_path / "11_00_trace.csv", NEZHA_HEADER + "".join(GOOD))])
    assert report.spans == 3 and report.rejected == 0 and report.duplicates == 0
    spans = {r["span_id"]: r for r in store.spans().to_pylist()}
    root = spans["ed5bfe495229b1cf"]
    assert root["parent_id"] is None
    assert root["service"] == "ts-gateway-service"
    assert root["instance"] == "ts-gateway-service-6f6cfc45b-d9pnv"
    assert root["duration_ns"] == 700_000 and root["start_ns"] == 10**18
    assert root["status"] == "unset" and root["operation"] == "/*"
    assert spans["452238fab821f767"]["parent_id"] == "ed5bfe495229b1cf"
    assert store.stats().traces == 2


def test_generic_csv_with_a_column_map_and_units(tmp_path: Path) -> None:
    text = (
        "tid,sid,pid,svc,name,begin_ms,end_ms,err\n"
        f"{T1.upper()},AAAAAAAAAAAAAAAA,,api,GET /x,1000.5,1002,true\n"
        f"{T1},bbbbbbbbbbbbbbbb,aaaaaaaaaaaaaaaa,db,SELECT,1001,1001.25,\n"
    )
    mapping = parse_map(
        "trace_id=tid,span_id=sid,parent_id=pid,service=svc,operation=name,start=begin_ms,"
        "end=end_ms,error=err"
    )
    opts = DecodeOptions(column_map=mapping, time_unit="ms")
    report, store = ingest([write(tmp_path / "s.csv", text)], fmt="csv", options=opts)
    assert report.spans == 2, report.errors
    rows = {r["span_id"]: r for r in store.spans().to_pylist()}
    api = rows["aaaaaaaaaaaaaaaa"]
    assert api["trace_id"] == T1 and api["parent_id"] is None and api["status"] == "error"
    assert api["start_ns"] == 1_000_500_000 and api["duration_ns"] == 1_500_000
    assert rows["bbbbbbbbbbbbbbbb"]["duration_ns"] == 250_000


def test_decimal_seconds_are_exact_nanoseconds(tmp_path: Path) -> None:
    text = (
        "tid,sid,svc,name,start,dur\n"
        f"{T1},aaaaaaaaaaaaaaaa,api,GET,1700000000.501,0.000000001\n"
        f"{T1},bbbbbbbbbbbbbbbb,api,GET,1.7e9,2\n"
    )
    mapping = parse_map(
        "trace_id=tid,span_id=sid,service=svc,operation=name,start=start,duration=dur"
    )
    opts = DecodeOptions(column_map=mapping, time_unit="s", duration_unit="s")
    report, store = ingest([write(tmp_path / "s.csv", text)], fmt="csv", options=opts)
    assert report.spans == 2, report.errors
    rows = {r["span_id"]: r for r in store.spans().to_pylist()}
    assert rows["aaaaaaaaaaaaaaaa"]["start_ns"] == 1_700_000_000_501_000_000  # not ...500999936
    assert rows["aaaaaaaaaaaaaaaa"]["duration_ns"] == 1
    assert rows["bbbbbbbbbbbbbbbb"]["start_ns"] == 1_700_000_000_000_000_000
    assert rows["bbbbbbbbbbbbbbbb"]["duration_ns"] == 2_000_000_000


def test_bad_map_and_missing_columns_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown field 'trace'"):
        parse_map("trace=TraceID")
    f = write(tmp_path / "x.csv", "a,b\n1,2\n")
    opts = DecodeOptions(
        column_map={
            "trace_id": "a",
            "span_id": "b",
            "operation": "op",
            "start": "a",
            "duration": "b",
            "service": "a",
        }
    )
    report, _ = ingest([f], fmt="csv", options=opts)
    assert report.spans == 0 and report.rejected == 1
    assert "x.csv: line 1: missing column op (for operation)" in report.errors[0]


def test_unknown_csv_layout_is_rejected_with_a_hint(tmp_path: Path) -> None:
    report, _ = ingest([write(tmp_path / "odd.csv", "foo,bar\n1,2\n")])
    assert report.rejected == 1 and "--map" in report.errors[0] and "odd.csv" in report.errors[0]


def test_bad_rows_are_rejected_one_by_one_and_good_rows_kept(tmp_path: Path) -> None:
    bad = [
        row("abc", "2222222222222222", "root", "ts-a-service-5dc8d4f9fd-llznp", "op", 10**18, 5),
        row(T1, "33333333", "root", "ts-a-service-5dc8d4f9fd-llznp", "op", 10**18, 5),
        row(T1, "4444444444444444", "root", "ts-a-service-5dc8d4f9fd-llznp", "op", 10**18, -5),
        row(T1, "0000000000000000", "root", "ts-a-service-5dc8d4f9fd-llznp", "op", 10**18, 5),
        f"{T1},5555555555555555,root,ts-a,op,notanumber,1,1\n",
        f"{T1},6666666666666666,root,ts-a\n",  # too few columns: DuckDB's reader rejects the line
    ]
    report, _ = ingest([write(tmp_path / "t.csv", NEZHA_HEADER + "".join(GOOD + bad))])
    assert report.spans == 3
    assert report.rejected == 6
    text = "\n".join(report.errors)
    assert "trace_id must be 32 hex characters" in text and "trace_id='abc'" not in text
    assert "trace_id=abc, span_id=2222222222222222" in text
    assert "span_id must be 16 hex characters" in text
    assert "duration is negative" in text
    assert "span_id is all zeros" in text
    assert "start time is missing or not a number" in text
    assert "t.csv: line 10" in text  # the short line, named by its line number


def test_non_utf8_line_is_rejected_by_line(tmp_path: Path) -> None:
    bad = f"{T1},7777777777777777,root,ts-\xff-x,op,1,2,3\n".encode("latin-1")
    f = write(tmp_path / "u.csv", (NEZHA_HEADER + "".join(GOOD)).encode() + bad)
    report, _ = ingest([f])
    assert report.spans == 3 and report.rejected == 1
    assert "u.csv: line 5" in report.errors[0]


def test_duplicates_across_files_are_stored_once_and_ingest_is_idempotent(tmp_path: Path) -> None:
    a = write(tmp_path / "11_00_trace.csv", NEZHA_HEADER + "".join(GOOD[:2]))
    b = write(tmp_path / "11_01_trace.csv", NEZHA_HEADER + "".join(GOOD[1:]))
    store = DuckDBStore()
    first = pipeline.ingest([tmp_path], store)
    assert (first.spans, first.duplicates) == (3, 1)
    again = pipeline.ingest([a, b], store)
    assert (again.spans, again.duplicates, store.stats().spans) == (0, 4, 3)


def test_orphans_are_kept_and_reported(tmp_path: Path) -> None:
    orphan = row(
        T1, "9999999999999999", "abababababababab", "ts-a-service-5dc8d4f9fd-llznp", "op", 10**18, 5
    )
    report, _ = ingest([write(tmp_path / "o.csv", NEZHA_HEADER + "".join(GOOD) + orphan)])
    assert report.spans == 4 and report.orphans == 1 and report.rejected == 0
    assert any("parent abababababababab never arrived" in e for e in report.errors)


def test_compressed_csv_and_truncated_gzip(tmp_path: Path) -> None:
    text = (NEZHA_HEADER + "".join(GOOD)).encode()
    gz = write(tmp_path / "a.csv.gz", gzip.compress(text))
    zst_text = (
        NEZHA_HEADER
        + row(T2, "8888888888888888", "root", "ts-b-service-5dc8d4f9fd-llznp", "op", 10**18, 5)
    ).encode()
    zst = write(tmp_path / "b.csv.zst", zstandard.ZstdCompressor().compress(zst_text))
    truncated = write(tmp_path / "c.csv.gz", gzip.compress(text.replace(b"GET", b"PUT"))[:-30])
    report, store = ingest([gz, zst, truncated])
    assert report.spans == 4
    assert report.rejected >= 1 and any("c.csv.gz" in e for e in report.errors)
    assert store.stats().spans == 4


def test_a_failing_chunk_leaves_the_store_unchanged(tmp_path: Path) -> None:
    store = DuckDBStore()
    pipeline.ingest([write(tmp_path / "g.csv", NEZHA_HEADER + "".join(GOOD))], store)
    before = store.spans()
    truncated = write(
        tmp_path / "t.csv.gz", gzip.compress((NEZHA_HEADER + "".join(GOOD) * 50).encode())[:-40]
    )
    report = pipeline.ingest([truncated], store)
    assert report.rejected == 1
    assert store.spans().equals(before)


def test_nezha_metrics_become_long_points(tmp_path: Path) -> None:
    text = (
        "Time,TimeStamp,PodName,CpuUsage(m),MemoryUsage(Mi),PodWorkload(Ops)\n"
        "2023-01-30 11:39:52 +0000 UTC,1675078792,ts-basic-service-5dc8d4f9fd-llznp,6.9,403.75,0.66\n"
        "2023-01-30 11:40:52 +0000 UTC,1675078852,ts-basic-service-5dc8d4f9fd-llznp,6.0,403.9,0.2\n"
    )
    front = (
        "Time,TimeStamp,ServiceName,SuccessRate(%),LatencyP50(s)\n"
        "2023-01-30 11:39:52 +0000 UTC,1675078792,Frontend,0,0.12\n"
    )
    report, store = ingest(
        [write(tmp_path / "p_metric.csv", text), write(tmp_path / "front_service.csv", front)]
    )
    assert report.metrics == 8 and report.rejected == 0
    m = store.metrics().to_pylist()
    cpu = [r for r in m if r["name"] == "CpuUsage"]
    assert [r["value"] for r in cpu] == [6.9, 6.0]
    assert cpu[0]["unit"] == "m" and cpu[0]["time_ns"] == 1675078792 * 10**9
    assert cpu[0]["service"] == "ts-basic-service" and cpu[0]["instance"].endswith("llznp")
    front_rows = [r for r in m if r["service"] == "frontend"]
    assert {r["name"] for r in front_rows} == {"SuccessRate", "LatencyP50"}
    again = pipeline.ingest([tmp_path], store)
    assert again.metrics == 0 and again.duplicates == 8


def test_nezha_labels_become_faults(tmp_path: Path) -> None:
    labels = {
        "11": [
            {
                "inject_time": "2023-01-30 11:51:46",
                "inject_timestamp": "1675079506",
                "inject_pod": "ts-contacts-service-866bd68c97-dzqgd",
                "inject_type": "network_delay",
            },
            {"inject_pod": "x"},
        ]
    }
    f = write(tmp_path / "label.json", json.dumps(labels))
    store = DuckDBStore()
    report = pipeline.ingest([f], store, options=DecodeOptions(fault_duration_s=120))
    assert report.faults == 1 and report.rejected == 1
    assert "label.json: ['11'][1]" in report.errors[0]
    fault = store.table("faults").to_pylist()[0]
    assert fault["service"] == "ts-contacts-service" and fault["kind"] == "network_delay"
    assert fault["end_ns"] - fault["start_ns"] == 120 * 10**9
    assert pipeline.ingest([f], store).faults == 0  # idempotent


def test_a_good_row_never_loses_to_a_bad_twin(tmp_path: Path) -> None:
    good = row(T1, "abcdefabcdefabcd", "root", "ts-a-service-5dc8d4f9fd-llznp", "op", 10**18, 5)
    twin = row(T1, "abcdefabcdefabcd", "root", "ts-a-service-5dc8d4f9fd-llznp", "op", 10**18, -5)
    for order in ([twin, good], [good, twin]):
        report, store = ingest([write(tmp_path / "t.csv", NEZHA_HEADER + "".join(order))])
        assert (report.spans, report.rejected) == (1, 1)
        assert store.spans().column("duration_ns").to_pylist() == [5000]


def test_clean_csv_is_read_once_and_unusual_ids_take_the_checked_path(
    tmp_path: Path, checked_writes: list[int]
) -> None:
    calls = checked_writes
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    a = write(tmp_path / "a" / "11_00_trace.csv", NEZHA_HEADER + "".join(GOOD[:2]))
    write(tmp_path / "a" / "11_01_trace.csv", NEZHA_HEADER + "".join(GOOD[1:]))
    report, store = ingest([a.parent])
    assert (report.spans, report.duplicates, report.rejected, calls) == (3, 1, 0, [])
    clean = store.spans().sort_by("span_id")
    # the same spans with ids in capitals and padded: stored alike, by the checked path
    odd = NEZHA_HEADER + "".join(GOOD).replace(T1, f" {T1.upper()}").replace(",root,", ",ROOT,")
    report, store = ingest([write(tmp_path / "b" / "11_00_trace.csv", odd)])
    assert (report.spans, report.duplicates, report.rejected, calls) == (3, 0, 0, [1])
    assert store.spans().sort_by("span_id").equals(clean)


def test_a_time_that_is_not_a_number_is_refused_by_row_not_by_file(tmp_path: Path) -> None:
    # the optimistic read parses nanosecond times as it reads: a bad one stops it and the
    # checked read names the row (also when the bad time is the file's only problem)
    bad = f"{T1},5555555555555555,root,ts-a-service-5dc8d4f9fd-llznp,op,12:00,1,1\n"
    report, _ = ingest([write(tmp_path / "t.csv", NEZHA_HEADER + "".join(GOOD) + bad)])
    assert (report.spans, report.rejected) == (len(GOOD), 1)
    assert "start time is missing or not a number" in report.errors[0]
