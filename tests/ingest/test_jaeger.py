"""Jaeger JSON decoder: field mapping on a hand-written fixture, document shapes, bad input."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from spanomaly import schema
from spanomaly.errors import FormatError
from spanomaly.ingest import files, jaeger
from spanomaly.ingest.base import Chunk, DecodeOptions

FIXTURE = Path(__file__).parent.parent / "fixtures" / "jaeger" / "traces.json"
T1 = "0000000000000000a3ce929d0e0e4736"
T2 = "abcdef0123456789abcdef0123456789"


def _row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(schema.SPANS.names)
    row.update(kind="unspecified", status="unset", attributes="{}")
    row.update(fields)
    return row


FRONTEND = {
    "service": "frontend",
    "instance": "frontend-7d9f-abc",
    "version": "1.4.2",
    "host": "node-1",
}
CHECKOUT = {"service": "checkout", "instance": "checkout-0", "version": "2.0.0", "host": "node-2"}
PAYMENT = {"service": "payment", "instance": "10.1.0.9"}

EXPECTED = [
    _row(
        trace_id=T1,
        span_id="a3ce929d0e0e4736",
        parent_id=None,
        **FRONTEND,
        operation="GET /cart",
        kind="server",
        start_ns=1_700_000_000_000_000_000,
        duration_ns=25_000_000,
        http_method="GET",
        http_route="/cart",
        http_status_code=200,
        http_url="http://frontend/cart?id=1",
        attributes='{"span.kind":"server","http.method":"GET","http.route":"/cart",'
        '"http.url":"http://frontend/cart?id=1","http.status_code":200,"component":"net/http"}',
    ),
    _row(
        trace_id=T1,
        span_id="0001f2e3d4c5b6a7",
        parent_id="a3ce929d0e0e4736",
        **FRONTEND,
        operation="POST /checkout",
        kind="client",
        start_ns=1_700_000_000_001_000_000,
        duration_ns=20_000_000,
        status="error",
        status_message="upstream unavailable",
        http_status_code=503,
        peer_service="checkout",
        attributes='{"span.kind":"client","peer.service":"checkout","error":true,'
        '"http.status_code":"503","otel.status_description":"upstream unavailable"}',
    ),
    _row(
        trace_id=T1,
        span_id="b7ad6b7169203331",
        parent_id="0001f2e3d4c5b6a7",
        **CHECKOUT,
        operation="PlaceOrder",
        kind="server",
        start_ns=1_700_000_000_002_500_000,
        duration_ns=15_500_000,
        status="error",
        http_method="POST",
        http_status_code=503,
        http_url="http://checkout:8080/checkout",
        attributes='{"span.kind":"server","http.request.method":"POST",'
        '"url.full":"http://checkout:8080/checkout","http.response.status_code":503}',
    ),
    _row(
        trace_id=T1,
        span_id="00000000005c2d1a",
        parent_id="b7ad6b7169203331",
        **CHECKOUT,
        operation="publish order",
        kind="producer",
        start_ns=1_700_000_000_017_000_000,
        duration_ns=0,
        status="error",
        status_message="queue full",
        attributes='{"span.kind":"producer","error":"true","error.message":"queue full",'
        '"queue.fill":0.97,"retry":false,"attempt":3,"payload":"AQID"}',
    ),
    _row(
        trace_id=T2,
        span_id="00000000000000b2",
        parent_id=None,
        **PAYMENT,
        operation="handle payment",
        kind="internal",
        start_ns=1_700_000_001_000_000_000,
        duration_ns=3_000_000,
        status="error",
        status_message="boom",
        attributes='{"span.kind":"internal","otel.status_code":"ERROR",'
        '"otel.status_description":"boom"}',
    ),
    _row(
        trace_id=T2,
        span_id="00000000000000c1",
        parent_id="00000000000000b2",
        **PAYMENT,
        operation="consume refund",
        kind="consumer",
        start_ns=1_700_000_001_000_500_000,
        duration_ns=1_200_000,
        status="ok",
        http_status_code=502,
        attributes='{"span.kind":"consumer","otel.status_code":"OK","http.status_code":502}',
    ),
    _row(
        trace_id=T2,
        span_id="00000000000000d4",
        parent_id="00000000000000c1",
        service="ledger",
        instance="ledger-host",
        host="ledger-host",
        operation="ledger write",
        start_ns=1_700_000_001_000_700_000,
        duration_ns=400_000,
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
        "traceID": "1234abcd",
        "spanID": span_id,
        "operationName": "op",
        "startTime": 1_700_000_000_000_000,
        "duration": 10,
        "processID": "p1",
        "tags": [],
    }
    span.update(fields)
    return span


def _trace(spans: list[Any]) -> dict[str, Any]:
    return {
        "traceID": "1234abcd",
        "spans": spans,
        "processes": {"p1": {"serviceName": "svc", "tags": []}},
    }


def test_fixture_decodes_exactly() -> None:
    chunks = list(jaeger.decode_file(FIXTURE, DecodeOptions()))
    assert files.sniff(FIXTURE) == "jaeger"
    assert _rows(chunks) == EXPECTED
    assert _rejects(chunks) == []
    assert sum(c.records or 0 for c in chunks) == 7


def test_chunks_respect_batch_rows() -> None:
    chunks = list(jaeger.decode_file(FIXTURE, DecodeOptions(batch_rows=3)))
    assert [c.data.num_rows for c in chunks] == [3, 3, 1]
    assert [c.records for c in chunks] == [3, 3, 1]
    assert _rows(chunks) == EXPECTED


def test_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "traces.json.gz"
    path.write_bytes(gzip.compress(FIXTURE.read_bytes()))
    assert _rows(list(jaeger.decode_file(path, DecodeOptions()))) == EXPECTED


def test_document_shapes() -> None:
    doc = orjson.loads(FIXTURE.read_bytes())
    traces = doc["data"]
    from_list = jaeger.decode_document(traces, "mem")
    from_single = jaeger.decode_document(traces[1], "mem")
    assert _rows(from_list) == EXPECTED
    assert _rows(from_single) == EXPECTED[4:]
    assert _rows(jaeger.decode_document({"data": None, "errors": None}, "mem")) == []


def test_query_errors_are_reported() -> None:
    doc = {"data": [], "errors": [{"code": 404, "msg": "trace not found", "traceID": "ab"}]}
    chunks = jaeger.decode_document(doc, "api")
    assert _rows(chunks) == []
    assert _rejects(chunks) == [
        ("errors[0]", "Jaeger reported an error: trace not found (traceID='ab')")
    ]


def test_bad_spans_are_rejected_and_good_ones_kept() -> None:
    spans: list[Any] = [
        _span("aa"),
        _span("0123456789abcdef0"),  # 17 hex
        _span("zz"),  # not hex
        "not a span",
        _span("bb", duration=-5),
        _span("cc", startTime=None),
        _span("dd", processID="p9"),
        _span("ee", traceID="0123456789abcdef0123456789abcdef0"),  # 33 hex
        _span("ff", references=[{"refType": "CHILD_OF", "traceID": "1234abcd", "spanID": "x"}]),
        _span("0"),
    ]
    chunks = jaeger.decode_document({"data": [_trace(spans), 42]}, "f.json")
    assert [r["span_id"] for r in _rows(chunks)] == ["00000000000000aa"]
    assert sorted(_rejects(chunks)) == sorted(
        [
            ("data[1]", "trace is not a JSON object (got number)"),
            ("data[0].spans[3]", "span is not a JSON object (got string)"),
            ("data[0].spans[5] (spanID='cc')", "missing startTime"),
            ("data[0].spans[6] (spanID='dd')", "processID 'p9' is not among the trace's processes"),
            ("data[0].spans[1] (spanID='0123456789abcdef0')", "span_id must be 16 hex characters"),
            ("data[0].spans[2] (spanID='zz')", "span_id must be 16 hex characters"),
            ("data[0].spans[4] (spanID='bb')", "duration is negative or missing"),
            ("data[0].spans[7] (spanID='ee')", "trace_id must be 32 hex characters"),
            ("data[0].spans[8] (spanID='ff')", "parent_id must be 16 hex characters"),
            ("data[0].spans[9] (spanID='0')", "span_id is all zeros"),
        ]
    )
    assert all(r.source == "f.json" for c in chunks for r in c.rejects)
    assert sum(c.records or 0 for c in chunks) == len(spans)


def test_span_without_spans_list_is_rejected() -> None:
    chunks = jaeger.decode_document([{"traceID": "ab"}], "f.json")
    assert _rejects(chunks) == [("[0]", 'trace has no "spans" list')]


def test_wrong_document_shape_is_format_error() -> None:
    with pytest.raises(FormatError, match=r"^mem: not Jaeger JSON"):
        jaeger.decode_document({"foo": 1}, "mem")
    with pytest.raises(FormatError, match=r"\"data\" is not a list of traces \(got string\)"):
        jaeger.decode_document({"data": "x"}, "mem")


def test_malformed_json_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"data": [\n  {"traceID": "ab",, }\n]}')
    with pytest.raises(FormatError) as info:
        list(jaeger.decode_file(path, DecodeOptions()))
    message = str(info.value)
    assert message.startswith(f"{path}: not valid JSON")
    assert "line 2 column" in message
    assert "\n" not in message


def test_truncated_gzip_is_format_error(tmp_path: Path) -> None:
    path = tmp_path / "traces.json.gz"
    path.write_bytes(gzip.compress(FIXTURE.read_bytes())[:200])
    with pytest.raises(FormatError, match=re.escape(str(path))):
        list(jaeger.decode_file(path, DecodeOptions()))


def test_invalid_utf8_is_format_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"data": [{"traceID": "ab", "spans": [], "x": "caf\xe9"}]}')
    with pytest.raises(FormatError, match=f"^{re.escape(str(path))}: not valid JSON: .*UTF-8"):
        list(jaeger.decode_file(path, DecodeOptions()))


def test_tag_values_follow_their_declared_type() -> None:
    tags = [
        {"key": "n", "type": "int64", "value": "42"},
        {"key": "big", "type": "int64", "value": "99999999999999999999"},
        {"key": "f", "type": "float64", "value": "0.5"},
        {"key": "b", "type": "bool", "value": "TRUE"},
        {"key": "s", "type": "string", "value": "7"},
        {"key": "http.status_code", "type": "float64", "value": 404.0},
        {"type": "string", "value": "no key"},
        "not a tag",
    ]
    rows = _rows(jaeger.decode_document(_trace([_span("aa", tags=tags)]), "mem"))
    assert rows[0]["attributes"] == (
        '{"n":42,"big":"99999999999999999999","f":0.5,"b":true,"s":"7","http.status_code":404.0}'
    )
    assert rows[0]["http_status_code"] == 404
    assert rows[0]["status"] == "unset"
