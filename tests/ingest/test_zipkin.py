"""Zipkin v2 JSON decoder: field mapping on hand-written fixtures, document shapes, bad input."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest

from spanomaly import schema
from spanomaly.errors import FormatError
from spanomaly.ingest import files, zipkin
from spanomaly.ingest.base import Chunk, DecodeOptions

FIXTURES = Path(__file__).parent.parent / "fixtures" / "zipkin"
SPANS = FIXTURES / "spans.json"
TRACES = FIXTURES / "traces.json"
T1 = "0000000000000000463ac35c9f6413ad"
T2 = "5af7183fb1d4cf5f463ac35c9f6413ad"


def _row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(schema.SPANS.names)
    row.update(kind="unspecified", status="unset", attributes="{}")
    row.update(fields)
    return row


FRONTEND = {"service": "frontend", "instance": "172.17.0.13:8080"}

EXPECTED = [
    _row(
        trace_id=T1,
        span_id="463ac35c9f6413ad",
        **FRONTEND,
        operation="get /api",
        kind="server",
        start_ns=1_700_000_000_000_000_000,
        duration_ns=207_000_000,
        http_method="GET",
        http_route="/api",
        http_status_code=200,
        http_url="/api",
        attributes='{"http.method":"GET","http.path":"/api","http.route":"/api",'
        '"http.status_code":"200"}',
    ),
    _row(
        trace_id=T1,
        span_id="72485a3953bb6124",
        parent_id="463ac35c9f6413ad",
        **FRONTEND,
        operation="get",
        kind="client",
        start_ns=1_700_000_000_001_000_000,
        duration_ns=200_000_000,
        status="error",
        status_message="500 Internal Server Error",
        http_method="GET",
        http_status_code=500,
        http_url="http://backend:9000/api",
        peer_service="backend",
        attributes='{"http.method":"GET","http.url":"http://backend:9000/api",'
        '"http.status_code":"500","error":"500 Internal Server Error"}',
    ),
    # the shared server side of the same RPC: same span id, kept as a second row
    _row(
        trace_id=T1,
        span_id="72485a3953bb6124",
        parent_id="463ac35c9f6413ad",
        service="backend",
        instance="[2001:db8::c001]:9000",
        operation="get /api",
        kind="server",
        start_ns=1_700_000_000_002_000_000,
        duration_ns=195_500_000,
        status="error",
        http_method="GET",
        http_status_code=500,
        http_url="/api",
        attributes='{"http.method":"GET","http.path":"/api","http.status_code":"500"}',
    ),
    _row(
        trace_id=T1,
        span_id="e457b5a2e4d86bd1",
        parent_id="72485a3953bb6124",
        service="backend",
        instance="[2001:db8::c001]:9000",  # no port on this span: the backend's one port
        operation="db query",
        start_ns=1_700_000_000_003_000_000,
        duration_ns=0,
        peer_service="postgres",
        attributes='{"peer.service":"postgres","db.statement":"SELECT 1"}',
    ),
    _row(
        trace_id=T2,
        span_id="00f067aa0ba902b7",
        service="orders",
        instance="172.17.0.30",
        operation="unknown",
        kind="producer",
        start_ns=1_700_000_005_000_000_000,
        duration_ns=150_000,
        status="ok",
        peer_service="kafka",
        attributes='{"otel.status_code":"OK","messaging.system":"kafka"}',
    ),
    _row(
        trace_id=T2,
        span_id="b0c1d2e3f4a5b6c7",
        parent_id="00f067aa0ba902b7",
        service="billing",
        instance="172.17.0.31",
        operation="process order",
        kind="consumer",
        start_ns=1_700_000_005_010_000_000,
        duration_ns=4_000_000,
        status="error",
        attributes='{"error":""}',
    ),
]

EXPECTED_TRACES = [
    _row(
        trace_id="00000000000000000123456789abcdef",
        span_id="0123456789abcdef",
        service="web",
        instance="10.0.0.2:80",
        operation="get /",
        kind="server",
        start_ns=1_700_000_010_000_000_000,
        duration_ns=1_000_000,
    ),
    _row(
        trace_id="00000000000000000123456789abcdef",
        span_id="1111111111111111",
        parent_id="0123456789abcdef",
        service="web",
        instance="10.0.0.2:80",
        operation="select",
        kind="client",
        start_ns=1_700_000_010_000_100_000,
        duration_ns=500_000,
        peer_service="mysql",
    ),
    _row(
        trace_id="0000000000000000fedcba9876543210",
        span_id="2222222222222222",
        service="batch",
        operation="cron",
        start_ns=1_700_000_020_000_000_000,
        duration_ns=2_000_000,
    ),
]


def _rows(chunks: list[Chunk]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for chunk in chunks:
        assert chunk.table == "spans"
        assert chunk.data.schema == schema.SPANS
        rows.extend(chunk.data.to_pylist())
    return rows


def _rejects(chunks: list[Chunk]) -> list[tuple[str, str]]:
    return [(r.record, r.reason) for c in chunks for r in c.rejects]


def _span(span_id: str, **fields: Any) -> dict[str, Any]:
    span = {
        "traceId": "1234abcd1234abcd",
        "id": span_id,
        "name": "op",
        "timestamp": 1_700_000_000_000_000,
        "duration": 10,
        "localEndpoint": {"serviceName": "svc"},
    }
    span.update(fields)
    return span


def test_span_list_decodes_exactly() -> None:
    chunks = list(zipkin.decode_file(SPANS, DecodeOptions()))
    assert files.sniff(SPANS) == "zipkin"
    assert _rows(chunks) == EXPECTED
    assert _rejects(chunks) == []
    assert sum(c.records or 0 for c in chunks) == 6


def test_list_of_traces_decodes_exactly() -> None:
    chunks = list(zipkin.decode_file(TRACES, DecodeOptions()))
    assert files.sniff(TRACES) == "zipkin"
    assert _rows(chunks) == EXPECTED_TRACES


def test_chunks_respect_batch_rows() -> None:
    chunks = list(zipkin.decode_file(SPANS, DecodeOptions(batch_rows=4)))
    assert [c.data.num_rows for c in chunks] == [4, 2]
    assert [c.records for c in chunks] == [4, 2]
    assert _rows(chunks) == EXPECTED


def test_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "spans.json.gz"
    path.write_bytes(gzip.compress(SPANS.read_bytes()))
    assert _rows(list(zipkin.decode_file(path, DecodeOptions()))) == EXPECTED


def test_document_shapes() -> None:
    assert _rows(zipkin.decode_document(_span("aa"), "mem"))[0]["span_id"] == "00000000000000aa"
    assert _rows(zipkin.decode_document([], "mem")) == []
    with pytest.raises(FormatError, match=r"^mem: not Zipkin v2 JSON.*got object"):
        zipkin.decode_document({"data": []}, "mem")
    with pytest.raises(FormatError, match=r"got string"):
        zipkin.decode_document("spans", "mem")


def test_bad_spans_are_rejected_and_good_ones_kept() -> None:
    doc: list[Any] = [
        _span("aa"),
        _span("0123456789abcdef0"),  # 17 hex
        _span("not-hex!"),
        ["x", _span("bb", traceId="0123456789abcdef0123456789abcdef0")],  # 33 hex
        _span("cc", duration=-1),
        _span("dd", timestamp=None),
        _span("ee", localEndpoint={"ipv4": "10.0.0.1"}),
        _span("ff", parentId="12345678901234567"),
        _span("a1", duration="soon"),
        _span("a2"),
    ]
    chunks = zipkin.decode_document(doc, "f.json")
    assert [r["span_id"] for r in _rows(chunks)] == ["00000000000000aa", "00000000000000a2"]
    assert sorted(_rejects(chunks)) == sorted(
        [
            ("span[1] (id='0123456789abcdef0')", "span_id must be 16 hex characters"),
            ("span[2] (id='not-hex!')", "span_id must be 16 hex characters"),
            ("trace[3].span[0]", "span is not a JSON object (got string)"),
            ("trace[3].span[1] (id='bb')", "trace_id must be 32 hex characters"),
            ("span[4] (id='cc')", "duration is negative or missing"),
            ("span[5] (id='dd')", "missing timestamp"),
            ("span[6] (id='ee')", "service is missing"),
            ("span[7] (id='ff')", "parent_id must be 16 hex characters"),
            ("span[8] (id='a1')", "duration is negative or missing"),
        ]
    )
    assert sum(c.records or 0 for c in chunks) == 11


def test_non_object_span_is_rejected() -> None:
    chunks = zipkin.decode_document([_span("aa"), 7, None], "f.json")
    assert len(_rows(chunks)) == 1
    assert _rejects(chunks) == [
        ("span[1]", "span is not a JSON object (got number)"),
        ("span[2]", "span is not a JSON object (got null)"),
    ]


def test_malformed_json_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'[\n  {"traceId": "ab" "id": "cd"}\n]')
    with pytest.raises(FormatError) as info:
        list(zipkin.decode_file(path, DecodeOptions()))
    message = str(info.value)
    assert message.startswith(f"{path}: not valid JSON")
    assert "line 2 column" in message
    assert "\n" not in message


def test_truncated_gzip_is_format_error(tmp_path: Path) -> None:
    path = tmp_path / "spans.json.gz"
    path.write_bytes(gzip.compress(SPANS.read_bytes())[:150])
    with pytest.raises(FormatError, match=re.escape(str(path))):
        list(zipkin.decode_file(path, DecodeOptions()))


def test_invalid_utf8_is_format_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"traceId": "ab", "id": "cd", "name": "caf\xe9", "timestamp": 1}]')
    with pytest.raises(FormatError, match=f"^{re.escape(str(path))}: not valid JSON: .*UTF-8"):
        list(zipkin.decode_file(path, DecodeOptions()))


def test_an_endpoint_without_a_port_is_the_instance_with_the_one_port(tmp_path: Path) -> None:
    """A client span's local endpoint has no port; the server spans of the same process
    have its listening port: one instance, not two. Two ports at one address stay apart."""

    def span(sid: str, kind: str, ep: dict[str, object]) -> dict[str, object]:
        return {"traceId": "a" * 32, "id": sid, "name": "x", "kind": kind,
                "timestamp": 1_700_000_000_000_000, "duration": 10,
                "localEndpoint": {"serviceName": "frontend", **ep}}  # fmt: skip

    path = tmp_path / "z.json"
    path.write_text(json.dumps([
        span("1" * 16, "SERVER", {"ipv4": "10.0.0.1", "port": 8080}),
        span("2" * 16, "CLIENT", {"ipv4": "10.0.0.1"}),
        span("3" * 16, "SERVER", {"ipv4": "10.0.0.2", "port": 80}),
        span("4" * 16, "SERVER", {"ipv4": "10.0.0.2", "port": 81}),
        span("5" * 16, "CLIENT", {"ipv4": "10.0.0.2"}),
    ]))  # fmt: skip
    rows = _rows(list(zipkin.decode_file(path, DecodeOptions())))
    assert [r["instance"] for r in rows] == [
        "10.0.0.1:8080", "10.0.0.1:8080", "10.0.0.2:80", "10.0.0.2:81", "10.0.0.2"
    ]  # fmt: skip
