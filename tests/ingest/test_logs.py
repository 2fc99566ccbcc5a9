"""Log files into the logs table: the Nezha CSV (container JSON in `Log`), CSV and JSON
lines with a column map or the usual key names, bad lines rejected with their reason, and
the TrainTicket lines attached to their spans."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from spanomaly import pipeline
from spanomaly.ingest.base import DecodeOptions
from spanomaly.ingest.csv import parse_map
from spanomaly.store.duckdb import DuckDBStore
from tests.conftest import SHARED_DATA, unpack_zst_tar

TID = "0ba878a42fd37cc4065426f7c6b0f58c"
SID = "3173c9909bb1af8a"
NEZHA_HEADER = "Timestamp,TimeUnixNano,Node,PodName,Container,TraceID,SpanID,Log\n"
LOGS_ARCHIVE = SHARED_DATA / "trainticket-2023-01-30-logs.tar.zst"


def _docker(text: str) -> str:
    doc = json.dumps({"log": text + "\n", "stream": "stdout", "time": "2023-01-30T11:52:40Z"})
    return '"' + doc.replace('"', '""') + '"'


def _ingest(tmp_path: Path, files: list[Path], **kw: object) -> tuple[object, list[dict]]:
    store = DuckDBStore(tmp_path / "s.duckdb")
    report = pipeline.ingest(files, store, **kw)  # type: ignore[arg-type]
    rows = store.sql("SELECT * FROM logs ORDER BY time_ns").to_pylist()
    store.close()
    return report, rows


def test_nezha_log_csv(tmp_path: Path) -> None:
    pod = "ts-travel-service-64469b5b48-5rjvb"
    lines = [
        f"x,1675079560412874502,n,{pod},server,{TID},{SID},"
        + _docker(f"19:52:40.412 INFO  t.s.TravelServiceImpl#532 TraceID: {TID} SpanID: {SID} ok"),
        f"x,1675079560412874503,n,{pod},server,,,"  # ids only in the text
        + _docker(f"19:52:40.413 WARNING t.s.X#1 TraceID: {TID.upper()} SpanID: {SID} low"),
        f"x,1675079560412874504,n,{pod},server,{TID},{SID},not json at all ERROR here",
        f"x,notanumber,n,{pod},server,{TID},{SID},no time anywhere",
        f"x,-6795364578871345152,n,{pod},server,{TID},{SID}," + _docker("INFO the runtime's time"),
    ]
    f = tmp_path / "11_52_log.csv"
    f.write_text(NEZHA_HEADER + "\n".join(lines) + "\n")
    report, rows = _ingest(tmp_path, [f])
    assert report.logs == 4 and report.rejected == 1  # type: ignore[attr-defined]
    assert any("time is missing" in e for e in report.errors)  # type: ignore[attr-defined]
    assert rows[0]["time_ns"] == 1675079560000000000  # 11:52:40Z, from the runtime's JSON
    rows = rows[1:]
    assert [r["severity"] for r in rows] == ["INFO", "WARN", "ERROR"]
    assert {r["service"] for r in rows} == {"ts-travel-service"}
    assert {r["instance"] for r in rows} == {pod}
    assert {(r["trace_id"], r["span_id"]) for r in rows} == {(TID, SID)}
    assert rows[0]["body"].endswith("SpanID: 3173c9909bb1af8a ok")  # newline gone
    assert rows[2]["body"] == "not json at all ERROR here"


def test_a_row_with_too_many_fields_is_rejected_alone(tmp_path: Path) -> None:
    """One row of ten fields among rows of eight: that row is refused, with its line; the
    file's other lines are stored (DuckDB would otherwise refuse to sniff the file)."""
    pod = "ts-travel-service-64469b5b48-5rjvb"
    good = [f"x,16750795604128745{i:02d},n,{pod},server,{TID},{SID}," + _docker(f"INFO line {i}")
            for i in range(40)]  # fmt: skip
    bad = f"x,1675079560412874599,n,{pod},server,{TID},{SID},a,b,c"
    f = tmp_path / "10_06_log.csv"
    f.write_text(NEZHA_HEADER + "\n".join([*good[:20], bad, *good[20:]]) + "\n")
    report, rows = _ingest(tmp_path, [f])
    assert report.logs == 40 and report.rejected == 1, report.errors  # type: ignore[attr-defined]
    errors = report.errors  # type: ignore[attr-defined]
    assert len(errors) == 1 and errors[0].startswith(f"{f}: line 22"), errors
    assert len(rows) == 40


def test_csv_logs_with_a_column_map(tmp_path: Path) -> None:
    f = tmp_path / "app.csv"
    f.write_text(
        "ts,lvl,msg,tid,sid,svc\n"
        f"1700000000000,warning,disk almost full,{TID},{SID},api\n"
        f"1700000000001.5,Error,fallback taken,{TID},,api\n"
        f"1700000000002,info,short trace id,abc,{SID},api\n"
    )
    opts = DecodeOptions(
        column_map=parse_map("time=ts,severity=lvl,body=msg,trace_id=tid,span_id=sid,service=svc"),
        time_unit="ms",
    )
    report, rows = _ingest(tmp_path, [f], fmt="csv", options=opts)
    assert report.logs == 2 and report.rejected == 1  # type: ignore[attr-defined]
    assert any("trace_id must be 32 hex" in e for e in report.errors)  # type: ignore[attr-defined]
    assert [r["time_ns"] for r in rows] == [1_700_000_000_000_000_000, 1_700_000_000_001_500_000]
    assert [r["severity"] for r in rows] == ["WARN", "ERROR"]
    assert rows[1]["span_id"] is None


def test_a_body_mapped_to_a_numeric_column_is_refused_saying_what_to_give(
    tmp_path: Path,
) -> None:
    f = tmp_path / "wide.csv"  # a metrics CSV taken for logs by a wrong --map
    f.write_text("time,carts_cpu,carts_mem\n1700000000,0.5,100\n1700000001,0.7,101\n")
    opts = DecodeOptions(column_map=parse_map("time=time,body=carts_cpu"))
    report, rows = _ingest(tmp_path, [f], fmt="csv", options=opts)
    assert report.logs == 0 and rows == []  # type: ignore[attr-defined]
    assert "holds numbers, not log lines" in report.errors[0]  # type: ignore[attr-defined]
    assert "--format metrics" in report.errors[0]  # type: ignore[attr-defined]


def test_json_lines_logs_by_their_usual_keys(tmp_path: Path) -> None:
    records = [
        {"timestamp": "2024-01-01T00:00:00.5Z", "level": "error", "message": "caught ValueError",
         "trace_id": TID, "span_id": SID, "service.name": "shop"},
        {"ts": 1704067201.25, "levelname": "INFO", "msg": "ok", "traceId": TID, "spanId": SID},
        {"time": 1704067202000, "severity": "WARN", "body": "no trace here"},
    ]  # fmt: skip
    f = tmp_path / "app.jsonl.gz"
    f.write_bytes(gzip.compress(("\n".join(json.dumps(r) for r in records) + "\n").encode()))
    report, rows = _ingest(tmp_path, [f])
    assert report.logs == 3 and report.rejected == 0, report.errors  # type: ignore[attr-defined]
    base = 1_704_067_200_000_000_000
    assert [r["time_ns"] for r in rows] == [
        base + 500_000_000,
        base + 1_250_000_000,
        base + 2 * 10**9,
    ]
    assert [r["severity"] for r in rows] == ["ERROR", "INFO", "WARN"]
    assert rows[0]["service"] == "shop" and rows[1]["trace_id"] == TID
    assert rows[2]["trace_id"] is None and rows[2]["body"] == "no trace here"


@pytest.fixture(scope="module")
def tt_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LOGS_ARCHIVE.exists():
        pytest.skip(f"TrainTicket logs not found at {LOGS_ARCHIVE} (set SPANOMALY_SHARED_DATA)")
    dest = tmp_path_factory.mktemp("tt-logs")
    unpack_zst_tar(LOGS_ARCHIVE, dest)
    return dest / "trainticket-2023-01-30-logs"


def test_trainticket_logs_all_read_and_attached_to_their_spans(
    tt_logs: Path, tmp_path: Path
) -> None:
    """All 94,703 lines are read with their ids and severity; the fault-free minute's lines
    each find their span among its traces (the whole day: bench/trainticket_rca.py --logs)."""
    with DuckDBStore(tmp_path / "all.duckdb") as store:
        report = pipeline.ingest([tt_logs / "log"], store)
        row = store.sql(
            "SELECT count(*) AS n, count(trace_id) AS t, count(span_id) AS s, "
            "count(severity) AS sev, min(time_ns) >= 1675079400000000000 - 600000000000 AS ok "
            "FROM logs"
        ).to_pylist()[0]
    assert report.rejected == 0 and report.logs == 94_703, report.errors
    assert row == {"n": 94_703, "t": 94_703, "s": 94_703, "sev": 94_703, "ok": True}
    with DuckDBStore(tmp_path / "minute.duckdb") as store:
        report = pipeline.ingest([tt_logs / "fault_free"], store)
        row = store.sql(
            "SELECT count(*) AS lines, count(s.span_id) AS attached "
            "FROM logs l LEFT JOIN spans s USING (trace_id, span_id)"
        ).to_pylist()[0]
    assert report.rejected == 0 and report.logs == 2485, report.errors
    assert row == {"lines": 2485, "attached": 2485}
