"""OTLP decoders: JSON fixtures decoded exactly, protobuf equal to JSON and to a reference
decoder built on the generated classes, odd encodings, bad input, compression, batching."""

from __future__ import annotations

import base64
import copy
import gzip
import math
import random
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
import zstandard
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from spanomaly import schema
from spanomaly.errors import FormatError
from spanomaly.ingest import files, otlp
from spanomaly.ingest.base import Chunk, DecodeOptions
from spanomaly.ingest.otlp_common import (
    SpanRows,
    attrs_py,
    dumps,
    kind_name,
    resource_info,
    span_attribute_columns,
    status_name,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "otlp"
TRACES_JSON = FIXTURES / "traces.json"
METRICS_JSON = FIXTURES / "metrics.json"
EXPORT_JSONL = FIXTURES / "export.jsonl"
T1 = "5b8efff798038103d269b633813fc60c"
T2 = "0af7651916cd43dd8448eb211c80319c"
FRONTEND = {
    "service": "frontend",
    "instance": "frontend-7d9f-1",
    "version": "1.4.2",
    "host": "node-a",
}
CART = {"service": "cart", "instance": "cart-5c9d", "version": None, "host": "node-b"}


def _row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(schema.SPANS.names)
    row.update(kind="unspecified", status="unset", attributes="{}")
    row.update(fields)
    return row


EXPECTED_SPANS = [
    _row(
        trace_id=T1,
        span_id="eee19b7ec3c1b174",
        **FRONTEND,
        operation="GET /cart/{user_id}",
        kind="server",
        start_ns=1_700_000_000_000_000_000,
        duration_ns=250_000_000,
        http_method="GET",
        http_route="/cart/{user_id}",
        http_status_code=200,
        http_url='http://shop/cart/42?q="x"',
        attributes=(
            '{"http.request.method":"GET","http.route":"/cart/{user_id}",'
            '"url.full":"http://shop/cart/42?q=\\"x\\"","http.response.status_code":200,'
            '"retry":false,"ratio":0.25,"tags":["a",1,true],"ctx":{"tenant":"acme"},'
            '"blob":"AAEC"}'
        ),
    ),
    _row(
        trace_id=T1,
        span_id="1a2b3c4d5e6f7081",
        parent_id="eee19b7ec3c1b174",
        **FRONTEND,
        operation="POST",
        kind="client",
        start_ns=1_700_000_000_010_000_000,
        duration_ns=190_000_000,
        status="error",
        status_message="upstream unavailable",
        http_method="POST",
        http_status_code=503,
        http_url="http://cart:8080/cart/42",
        peer_service="cart",
        attributes=(
            '{"http.method":"POST","http.url":"http://cart:8080/cart/42",'
            '"peer.service":"cart","http.status_code":503,"net.peer.port":-8080}'
        ),
    ),
    _row(
        trace_id=T1,
        span_id="00000000000000a1",
        parent_id="eee19b7ec3c1b174",
        **FRONTEND,
        operation="render",
        kind="internal",
        start_ns=1_700_000_000_201_000_000,
        duration_ns=48_000_000,
        status="ok",
        attributes='{"template":"cart.html"}',
    ),
    _row(
        trace_id=T1,
        span_id="00000000000000a2",
        parent_id="00000000000000a1",
        **FRONTEND,
        operation="cache lookup",
        start_ns=1_700_000_000_202_000_000,
        duration_ns=0,
    ),
    _row(
        trace_id=T1,
        span_id="2b3c4d5e6f708192",
        parent_id="1a2b3c4d5e6f7081",
        **CART,
        operation="POST /cart/{user_id}",
        kind="server",
        start_ns=1_700_000_000_020_000_000,
        duration_ns=170_000_000,
        status="error",
        status_message="redis: connection refused",
        http_method="POST",
        http_route="/cart/{user_id}",
        http_status_code=503,
        http_url="/cart/42",
        attributes=(
            '{"http.request.method":"POST","http.route":"/cart/{user_id}",'
            '"url.path":"/cart/42","http.response.status_code":503}'
        ),
    ),
    _row(
        trace_id=T2,
        span_id="b7ad6b7169203331",
        **CART,
        operation="orders publish",
        kind="producer",
        start_ns=1_700_000_001_000_000_000,
        duration_ns=5_000_000,
        attributes='{"messaging.system":"kafka"}',
    ),
    _row(
        trace_id=T2,
        span_id="c8be7c827a314442",
        parent_id="b7ad6b7169203331",
        **CART,
        operation="orders process",
        kind="consumer",
        start_ns=1_700_000_001_010_000_000,
        duration_ns=20_000_000,
        attributes='{"messaging.system":"kafka"}',
    ),
    _row(
        trace_id=T2,
        span_id="d9cf8d938b425553",
        parent_id="c8be7c827a314442",
        service="unknown_service",
        instance="node-c:4242",
        host="node-c",
        operation="batch job",
        kind="internal",
        start_ns=1_700_000_001_011_000_000,
        duration_ns=1_000_000,
    ),
]

METRIC_BASE = {"service": "cart", "instance": "cart-1", "host": "node-b"}
EXPECTED_METRICS = [
    {
        "time_ns": 1_700_000_000_000_000_000,
        **METRIC_BASE,
        "name": "process.cpu.utilization",
        "kind": "gauge",
        "unit": "1",
        "value": 0.42,
        "count": None,
        "sum": None,
        "bounds": None,
        "bucket_counts": None,
        "attributes": '{"state":"user"}',
    },
    {
        "time_ns": 1_700_000_010_000_000_000,
        **METRIC_BASE,
        "name": "process.cpu.utilization",
        "kind": "gauge",
        "unit": "1",
        "value": 0.5,
        "count": None,
        "sum": None,
        "bounds": None,
        "bucket_counts": None,
        "attributes": "{}",
    },
    {
        "time_ns": 1_700_000_000_000_000_000,
        **METRIC_BASE,
        "name": "http.server.request.count",
        "kind": "sum",
        "unit": "{request}",
        "value": 1250.0,
        "count": None,
        "sum": None,
        "bounds": None,
        "bucket_counts": None,
        "attributes": '{"http.request.method":"GET","http.route":"/cart"}',
    },
    {
        "time_ns": 1_700_000_000_000_000_000,
        **METRIC_BASE,
        "name": "http.server.request.duration",
        "kind": "histogram",
        "unit": "s",
        "value": 0.25,
        "count": 10,
        "sum": 2.5,
        "bounds": [0.1, 0.25, 0.5],
        "bucket_counts": [2, 5, 3, 0],
        "attributes": '{"http.route":"/cart"}',
    },
    {
        "time_ns": 1_700_000_010_000_000_000,
        **METRIC_BASE,
        "name": "http.server.request.duration",
        "kind": "histogram",
        "unit": "s",
        "value": None,
        "count": 0,
        "sum": 0.0,
        "bounds": [0.1, 0.25, 0.5],
        "bucket_counts": [0, 0, 0, 0],
        "attributes": "{}",
    },
    {
        "time_ns": 1_700_000_000_000_000_000,
        **METRIC_BASE,
        "name": "jvm.gc.duration",
        "kind": "histogram",
        "unit": "s",
        "value": 0.05,
        "count": 4,
        "sum": 0.2,
        "bounds": None,
        "bucket_counts": None,
        "attributes": "{}",
    },
]
METRIC_REJECT = "resourceMetrics[0].scopeMetrics[0].metrics[4].gauge.dataPoints[0]"


# ---------------------------------------------------------------------------------------
# helpers


def _load(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def _hex_ids_to_base64(doc: Any) -> Any:
    """The proto3 JSON mapping wants bytes as base64: convert OTLP/JSON hex ids for it."""
    if isinstance(doc, list):
        return [_hex_ids_to_base64(x) for x in doc]
    if not isinstance(doc, dict):
        return doc
    out = {}
    for key, value in doc.items():
        if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
            value = base64.b64encode(bytes.fromhex(value)).decode()
        out[key] = _hex_ids_to_base64(value)
    return out


def _traces_pb(doc: dict[str, Any]) -> bytes:
    request = json_format.ParseDict(_hex_ids_to_base64(doc), ExportTraceServiceRequest())
    return request.SerializeToString()


def _rows(chunks: list[Chunk], table: str = "spans") -> list[dict[str, Any]]:
    return [r for c in chunks if c.table == table for r in c.data.to_pylist()]  # type: ignore[union-attr]


def _table(chunks: list[Chunk], table: str = "spans") -> pa.Table:
    schema_ = schema.SPANS if table == "spans" else schema.METRICS
    tables = [c.data for c in chunks if c.table == table]
    return pa.concat_tables(tables).cast(schema_) if tables else schema_.empty_table()


def _rejects(chunks: list[Chunk]) -> list[tuple[str, str]]:
    return [(r.record, r.reason) for c in chunks for r in c.rejects]


def _reference(data: bytes) -> pa.Table:
    """Spans decoded one by one with the generated classes: what otlp_wire must match."""
    request = ExportTraceServiceRequest.FromString(data)
    rows = SpanRows()
    for r, rs in enumerate(request.resource_spans):
        res = resource_info(attrs_py(rs.resource.attributes))
        for s, ss in enumerate(rs.scope_spans):
            for k, sp in enumerate(ss.spans):
                attrs = attrs_py(sp.attributes)
                start = sp.start_time_unix_nano or None
                end = sp.end_time_unix_nano
                rows.add(
                    f"resourceSpans[{r}].scopeSpans[{s}].spans[{k}]",
                    (
                        sp.trace_id.hex(),
                        sp.span_id.hex(),
                        sp.parent_span_id.hex() or None,
                        res.service,
                        res.instance,
                        res.version,
                        res.host,
                        sp.name or None,  # no name: refused (OTLP requires one)
                        kind_name(sp.kind),
                        None if start is None else start - (1 << 64 if start >= 1 << 63 else 0),
                        (end - (start or 0) + (1 << 63)) % (1 << 64) - (1 << 63),
                        status_name(sp.status.code),
                        sp.status.message or None,
                        *span_attribute_columns(attrs),
                        dumps(attrs),
                    ),
                )
    return rows.chunk("x").data  # type: ignore[return-value]


def _assert_same(actual: pa.Table, expected: pa.Table) -> None:
    assert actual.num_rows == expected.num_rows
    for name in schema.SPANS.names:
        a, e = actual[name].to_pylist(), expected[name].to_pylist()
        for i, (x, y) in enumerate(zip(a, e, strict=True)):
            assert x == y, f"{name} row {i}: {x!r} != {y!r}"


# ---------------------------------------------------------------------------------------
# JSON


def test_json_traces_fixture_decodes_exactly() -> None:
    assert files.sniff(TRACES_JSON) == "otlp-json"
    chunks = list(otlp.decode_file(TRACES_JSON, "otlp-json", DecodeOptions()))
    assert [c.table for c in chunks] == ["spans"]
    assert chunks[0].records == 8
    assert _rejects(chunks) == []
    assert _rows(chunks) == EXPECTED_SPANS
    assert chunks[0].data.schema.equals(schema.SPANS)  # type: ignore[union-attr]


def test_json_snake_case_keys_and_enum_names_are_accepted() -> None:
    def snake(doc: Any) -> Any:
        if isinstance(doc, list):
            return [snake(x) for x in doc]
        if not isinstance(doc, dict):
            return doc
        out = {}
        for key, value in doc.items():
            name = "".join("_" + c.lower() if c.isupper() else c for c in key)
            out[name] = snake(value)
        return out

    doc = snake(_load(TRACES_JSON))
    span = doc["resource_spans"][0]["scope_spans"][0]["spans"][1]
    span["kind"] = "SPAN_KIND_CLIENT"
    span["status"]["code"] = "STATUS_CODE_ERROR"
    assert _rows(otlp.decode_json_request(doc, "snake.json")) == EXPECTED_SPANS


def test_json_metrics_fixture_decodes_exactly() -> None:
    chunks = list(otlp.decode_file(METRICS_JSON, files.sniff(METRICS_JSON), DecodeOptions()))
    assert [c.table for c in chunks] == ["metrics"]
    assert _rows(chunks, "metrics") == EXPECTED_METRICS
    assert _rejects(chunks) == [(METRIC_REJECT, "data point time is missing")]
    assert chunks[0].records == 7


def test_jsonl_file_exporter_output() -> None:
    assert files.sniff(EXPORT_JSONL) == "otlp-jsonl"
    chunks = list(otlp.decode_file(EXPORT_JSONL, "otlp-jsonl", DecodeOptions()))
    spans, metrics = _rows(chunks, "spans"), _rows(chunks, "metrics")
    assert [s["span_id"] for s in spans] == [
        "00f067aa0ba902b7",
        "00f067aa0ba902b8",
        "00f067aa0ba902b9",
    ]
    assert spans[2]["service"] == "cart" and spans[2]["parent_id"] == "00f067aa0ba902b7"
    assert [(m["name"], m["value"], m["instance"]) for m in metrics] == [
        ("process.memory.usage", 73400320.0, "frontend-1")
    ]
    assert _rejects(chunks) == [
        ("line 4: resourceSpans[0].scopeSpans[0].spans[1]", "trace_id must be 32 hex characters")
    ]


def test_jsonl_bad_line_is_rejected_and_the_rest_kept(tmp_path: Path) -> None:
    lines = EXPORT_JSONL.read_bytes().splitlines()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([lines[0], b'{"resourceSpans": [', b"[1, 2]", lines[1]]) + b"\n")
    chunks = list(otlp.decode_file(path, "otlp-jsonl", DecodeOptions()))
    assert len(_rows(chunks, "spans")) == 2
    assert len(_rows(chunks, "metrics")) == 1
    rejects = _rejects(chunks)
    assert [r[0] for r in rejects] == ["line 2", "line 3"]
    assert rejects[0][1].startswith("invalid JSON")
    assert "not an object" in rejects[1][1]


def test_jsonl_batches_lines_into_chunks_of_batch_rows(tmp_path: Path) -> None:
    line = orjson.dumps(_load(TRACES_JSON))
    path = tmp_path / "many.jsonl"
    path.write_bytes(b"\n".join([line] * 5) + b"\n")
    chunks = list(otlp.decode_file(path, "otlp-jsonl", DecodeOptions(batch_rows=20)))
    sizes = [c.data.num_rows for c in chunks]  # type: ignore[union-attr]
    assert sizes == [16, 16, 8]
    assert sum(c.records or 0 for c in chunks) == 40


def test_invalid_json_file_is_a_format_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b'{"resourceSpans": [{"resource": ')
    with pytest.raises(FormatError, match=r"broken\.json: invalid JSON"):
        list(otlp.decode_file(path, "otlp-json", DecodeOptions()))


def test_json_request_that_is_not_an_object_is_a_format_error() -> None:
    with pytest.raises(FormatError, match=r"^body: "):
        otlp.decode_json_request([1, 2], "body")  # type: ignore[arg-type]
    with pytest.raises(FormatError, match="resourceSpans is not a list"):
        otlp.decode_json_request({"resourceSpans": {"a": 1}}, "body")


def test_empty_requests_give_no_rows_and_no_error() -> None:
    assert otlp.decode_json_request({}, "x") == []
    assert otlp.decode_json_request({"resourceSpans": []}, "x") == []
    assert otlp.decode_traces_request(b"", "x") == []
    assert otlp.decode_metrics_request(b"", "x") == []
    empty_scope = ExportTraceServiceRequest()
    empty_scope.resource_spans.add().scope_spans.add()
    assert otlp.decode_traces_request(empty_scope.SerializeToString(), "x") == []


def test_json_logs_request_is_skipped() -> None:
    assert otlp.decode_json_request({"resourceLogs": [{"scopeLogs": []}]}, "x") == []


# ---------------------------------------------------------------------------------------
# Protobuf


def test_protobuf_decodes_like_json() -> None:
    data = _traces_pb(_load(TRACES_JSON))
    chunks = otlp.decode_traces_request(data, "body")
    assert _rejects(chunks) == []
    assert _rows(chunks) == EXPECTED_SPANS
    assert _table(chunks).schema.equals(schema.SPANS)


def test_protobuf_file_and_compressed_copies(tmp_path: Path) -> None:
    data = _traces_pb(_load(TRACES_JSON))
    plain = tmp_path / "traces.pb"
    plain.write_bytes(data)
    gz = tmp_path / "traces.pb.gz"
    gz.write_bytes(gzip.compress(data))
    zst = tmp_path / "traces.binpb.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(data))
    json_zst = tmp_path / "traces.json.zst"
    json_zst.write_bytes(zstandard.ZstdCompressor().compress(TRACES_JSON.read_bytes()))
    json_gz = tmp_path / "traces.json.gz"
    json_gz.write_bytes(gzip.compress(TRACES_JSON.read_bytes()))
    for path in (plain, gz, zst, json_zst, json_gz):
        kind = files.sniff(path)
        assert kind == ("otlp-json" if ".json" in path.name else "otlp-pb")
        assert _rows(list(otlp.decode_file(path, kind, DecodeOptions()))) == EXPECTED_SPANS
    lines = tmp_path / "export.jsonl.zst"
    lines.write_bytes(zstandard.ZstdCompressor().compress(EXPORT_JSONL.read_bytes()))
    expected = list(otlp.decode_file(EXPORT_JSONL, "otlp-jsonl", DecodeOptions()))
    got = list(otlp.decode_file(lines, files.sniff(lines), DecodeOptions()))
    assert _rows(got) == _rows(expected) and _rows(got, "metrics") == _rows(expected, "metrics")


def test_truncated_protobuf_is_a_format_error_naming_the_file(tmp_path: Path) -> None:
    data = _traces_pb(_load(TRACES_JSON))
    path = tmp_path / "cut.pb"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=r"cut\.pb: not a valid OTLP protobuf request"):
        list(otlp.decode_file(path, "otlp-pb", DecodeOptions()))
    with pytest.raises(FormatError, match=r"^body: "):
        otlp.decode_traces_request(data[:-5], "body")
    with pytest.raises(FormatError, match=r"^body: "):
        otlp.decode_metrics_request(b"\x0a\xff\xff\x03junk", "body")


def test_protobuf_metrics_file_is_recognised(tmp_path: Path) -> None:
    request = json_format.ParseDict(_load(METRICS_JSON), ExportMetricsServiceRequest())
    path = tmp_path / "metrics.binpb"
    path.write_bytes(request.SerializeToString())
    assert files.sniff(path) == "otlp-pb"
    chunks = list(otlp.decode_file(path, "otlp-pb", DecodeOptions()))
    assert [c.table for c in chunks] == ["metrics"]
    assert _rows(chunks, "metrics") == EXPECTED_METRICS
    assert _rejects(chunks) == [(METRIC_REJECT, "data point time is missing")]
    direct = otlp.decode_metrics_request(request.SerializeToString(), "body")
    assert _rows(direct, "metrics") == EXPECTED_METRICS


def _span(i: int, **fields: Any) -> Span:
    values: dict[str, Any] = {
        "trace_id": bytes([1 + i % 200]) * 16,
        "span_id": (i + 1).to_bytes(8, "big"),
        "name": f"op{i}",
        "kind": Span.SPAN_KIND_SERVER,
        "start_time_unix_nano": 1_700_000_000_000_000_000 + i,
        "end_time_unix_nano": 1_700_000_000_000_001_000 + i,
    }
    values.update(fields)
    return Span(**values)


def test_bad_spans_are_rejected_one_by_one_and_the_rest_kept() -> None:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="svc"))
    good = rs.scope_spans.add()
    good.spans.extend([_span(0), _span(1)])
    bad = rs.scope_spans.add()
    bad.spans.extend(
        [
            _span(2, trace_id=b"\x01" * 8),
            _span(3, trace_id=b"\x00" * 16),
            _span(4, span_id=b"\x00" * 8),
            _span(5, end_time_unix_nano=1_600_000_000_000_000_000),
            _span(6, parent_span_id=b"\x05" * 4),
            _span(7),
            _span(8, start_time_unix_nano=0),
        ]
    )
    chunks = otlp.decode_traces_request(request.SerializeToString(), "body")
    assert [r["span_id"] for r in _rows(chunks)] == [
        "0000000000000001",
        "0000000000000002",
        "0000000000000008",
    ]
    assert _rejects(chunks) == [
        ("resourceSpans[0].scopeSpans[1].spans[0]", "trace_id must be 32 hex characters"),
        ("resourceSpans[0].scopeSpans[1].spans[1]", "trace_id is all zeros"),
        ("resourceSpans[0].scopeSpans[1].spans[2]", "span_id is all zeros"),
        ("resourceSpans[0].scopeSpans[1].spans[3]", "duration is negative or missing"),
        ("resourceSpans[0].scopeSpans[1].spans[4]", "parent_id must be 16 hex characters"),
        ("resourceSpans[0].scopeSpans[1].spans[6]", "start time is missing"),
    ]
    assert sum(c.records or 0 for c in chunks) == 9
    # the same through JSON
    doc = json_format.MessageToDict(request)
    for sp in doc["resourceSpans"][0]["scopeSpans"][1]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in sp:
                sp[key] = base64.b64decode(sp[key]).hex()
    for sp in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId"):
            sp[key] = base64.b64decode(sp[key]).hex()
    json_chunks = otlp.decode_json_request(doc, "body")
    assert _rows(json_chunks) == _rows(chunks)
    assert _rejects(json_chunks) == _rejects(chunks)


def test_labels_and_rows_survive_small_batches() -> None:
    data = _traces_pb(_load(TRACES_JSON))
    chunks = otlp.decode_traces_request(data, "body", batch_rows=3)
    assert [c.data.num_rows for c in chunks] == [3, 3, 2]  # type: ignore[union-attr]
    assert _rows(chunks) == EXPECTED_SPANS
    doc = _load(TRACES_JSON)
    doc["resourceSpans"][1]["scopeSpans"][0]["spans"][2]["spanId"] = "00"
    chunks = otlp.decode_traces_request(_traces_pb(doc), "body", batch_rows=3)
    assert _rejects(chunks) == [
        ("resourceSpans[1].scopeSpans[0].spans[2]", "span_id must be 16 hex characters")
    ]


# --- random spans of every shape, against the reference decoder ------------------------

KEYS = [
    "http.request.method",
    "http.method",
    "http.route",
    "url.full",
    "http.url",
    "http.target",
    "url.path",
    "http.response.status_code",
    "http.status_code",
    "peer.service",
    "server.port",
    "k",
    "",
    'we"ird\\key',
    "clé.unicode",
    "a" * 130,
]


FAST = [0, 1, 3, 5, 7, 11, 12, 12, 12]  # the shapes the vectorised path writes itself


def _value(rng: random.Random, depth: int = 0, fast: bool = False) -> AnyValue:
    choice = rng.choice(FAST) if fast else rng.randrange(14 if depth == 0 else 9)
    if choice == 0:
        return AnyValue(string_value=rng.choice(["GET", "POST", "", "ünï", "/a/b?c=d"]))
    if choice == 1:
        return AnyValue(string_value="x" * rng.choice([126, 127, 128, 300, 17000]))
    if choice == 2:
        return AnyValue(string_value=rng.choice(['say "hi"', "back\\slash", "line\nbreak", "\x01"]))
    if choice == 3:
        return AnyValue(int_value=rng.choice([0, 7, 200, 404, 8080, 65535, 1234567, -1]))
    if choice == 4:
        return AnyValue(int_value=rng.choice([2**62, -(2**63), 2**63 - 1, 10**15, -99999]))
    if choice == 5:
        return AnyValue(bool_value=rng.random() < 0.5)
    if choice == 6:
        return AnyValue(double_value=rng.choice([0.5, 1.0, -0.0, 1e20, 1e-7, math.nan, math.inf]))
    if choice == 7:
        return AnyValue()
    if choice == 8:
        return AnyValue(bytes_value=bytes(rng.randrange(256) for _ in range(rng.randrange(5))))
    if choice == 9:
        values = [_value(rng, depth + 1) for _ in range(rng.randrange(3))]
        return AnyValue(array_value=ArrayValue(values=values))
    if choice == 10:
        kvs = [KeyValue(key=rng.choice(KEYS[:4]), value=_value(rng, depth + 1)) for _ in range(2)]
        return AnyValue(kvlist_value=KeyValueList(values=kvs))
    if choice == 11:
        return AnyValue(string_value=str(rng.choice([200, 503, 99999999999])))
    return AnyValue(string_value=f"v{rng.randrange(1000)}")


def _random_request(
    rng: random.Random, n_spans: int, fast: bool = False
) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scopes = []
    for r in range(3):
        rs = request.resource_spans.add()
        if r < 2:
            rs.resource.attributes.add(key="service.name", value=AnyValue(string_value=f"s{r}"))
            rs.resource.attributes.add(key="host.name", value=AnyValue(string_value=f"h{r}"))
        for _ in range(2):
            scopes.append(rs.scope_spans.add())
    for i in range(n_spans):
        n_attrs = rng.choice([0, 1, 2, 5, 9, 70]) if rng.random() < 0.9 else 3
        keys = (
            [f"key{j}" for j in range(n_attrs)]
            if n_attrs == 70
            else rng.sample(KEYS[:12], min(n_attrs, 12))
            if fast
            else [rng.choice(KEYS) for _ in range(n_attrs)]
        )
        span = _span(
            i,
            kind=rng.randrange(6),
            parent_span_id=b"" if rng.random() < 0.3 else rng.randbytes(8),
            attributes=[KeyValue(key=k, value=_value(rng, fast=fast)) for k in keys],
        )
        if rng.random() < 0.2:
            span.trace_state = "a=b"
        if rng.random() < 0.3:
            span.status.CopyFrom(Status(code=rng.randrange(3), message=rng.choice(["", "boom"])))
        if rng.random() < 0.2:
            span.events.add(name="exception", time_unix_nano=5).attributes.add(
                key="exception.message", value=AnyValue(string_value="x")
            )
            span.links.add(trace_id=rng.randbytes(16), span_id=rng.randbytes(8))
            span.dropped_attributes_count = 3
            span.flags = 0x301
        if rng.random() < 0.05:
            span.name = rng.choice(["", "ünïcode op", "x" * 200])
        if rng.random() < 0.05:
            span.end_time_unix_nano = 0
        rng.choice(scopes).spans.append(span)
    return request


@pytest.mark.parametrize(("seed", "fast"), [(1, False), (2, False), (3, True), (4, True)])
def test_random_protobuf_spans_match_the_reference_decoder(seed: int, fast: bool) -> None:
    request = _random_request(random.Random(seed), 600, fast)
    data = request.SerializeToString()
    chunks = otlp.decode_traces_request(data, "body", batch_rows=250)
    assert all(c.data.num_rows <= 250 for c in chunks)  # type: ignore[union-attr]
    expected = _reference(data)
    _assert_same(_table(chunks), expected)
    for row in _table(chunks)["attributes"].to_pylist():
        assert isinstance(orjson.loads(row), dict)


def test_random_protobuf_spans_match_json(tmp_path: Path) -> None:
    request = _random_request(random.Random(9), 200)
    doc = json_format.MessageToDict(request)
    for rs in doc["resourceSpans"]:
        for ss in rs.get("scopeSpans", []):
            for sp in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in sp:
                        sp[key] = base64.b64decode(sp[key]).hex()
    from_json = otlp.decode_json_request(copy.deepcopy(doc), "body")
    from_pb = otlp.decode_traces_request(request.SerializeToString(), "body")
    _assert_same(_table(from_pb), _table(from_json))
    assert _rejects(from_pb) == _rejects(from_json)


# --- encodings the generated serializer never writes, but others may -------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    tag = _varint(number << 3 | wire)
    if wire == 0:
        return tag + _varint(int(payload))  # type: ignore[arg-type]
    if wire == 2:
        return tag + _varint(len(payload)) + payload  # type: ignore[arg-type]
    return tag + payload  # type: ignore[operator]


def _fixed(value: int) -> bytes:
    return value.to_bytes(8, "little")


def _request_of(*spans: bytes) -> bytes:
    resource = _field(
        1, 2, _field(1, 2, _field(1, 2, b"service.name") + _field(2, 2, _field(1, 2, b"svc")))
    )
    scope = _field(2, 2, b"".join(_field(2, 2, s) for s in spans))
    return _field(1, 2, resource + scope)


def test_unusual_but_valid_encodings_match_the_reference_decoder() -> None:
    kv_value_first = _field(2, 2, _field(1, 2, b"GET")) + _field(1, 2, b"http.request.method")
    kv_plain = _field(1, 2, b"http.route") + _field(2, 2, _field(1, 2, b"/a"))
    kv_two_values = _field(1, 2, b"k") + _field(2, 2, _field(1, 2, b"s") + _field(3, 0, 5))
    kv_no_value = _field(1, 2, b"nothing")
    kv_no_key = _field(2, 2, _field(3, 0, 1))
    reversed_span = b"".join(
        [
            _field(99, 0, 7),  # unknown field
            _field(15, 2, _field(3, 0, 2) + _field(2, 2, b"bad")),
            _field(9, 2, kv_value_first),
            _field(8, 1, _fixed(2_000)),
            _field(7, 1, _fixed(1_000)),
            _field(5, 2, b"first name"),
            _field(9, 2, kv_plain),
            _field(5, 2, b"second name"),
            _field(4, 2, b"\x02" * 8),
            _field(2, 2, b"\x03" * 8),
            _field(1, 2, b"\x04" * 16),
            _field(100, 5, b"\x00\x00\x00\x00"),
            _field(101, 1, _fixed(0)),
            _field(9, 2, kv_two_values),
            _field(9, 2, kv_no_value),
            _field(9, 2, kv_no_key),
        ]
    )
    long_lengths = b"".join(
        [
            _field(1, 2, b"\x05" * 16),
            _field(2, 2, b"\x06" * 8),
            _field(5, 2, b"n" * 300),
            _field(6, 0, 2),
            _field(7, 1, _fixed(1_000)),
            _field(8, 1, _fixed(3_000)),
            _field(9, 2, _field(1, 2, b"q" * 200) + _field(2, 2, _field(1, 2, b"v" * 20_000))),
            _field(9, 2, _field(1, 2, b"int") + _field(2, 2, _field(3, 0, 300))),
            _field(16, 5, b"\x01\x03\x00\x00"),
        ]
    )
    data = _request_of(reversed_span, long_lengths)
    chunks = otlp.decode_traces_request(data, "body")
    _assert_same(_table(chunks), _reference(data))
    first = _rows(chunks)[0]
    assert first["operation"] == "second name"
    assert first["http_method"] == "GET" and first["http_route"] == "/a"
    assert orjson.loads(first["attributes"]) == {
        "http.request.method": "GET",
        "http.route": "/a",
        "k": 5,
        "nothing": None,
        "": True,
    }


def test_a_malformed_span_is_rejected_and_its_neighbours_kept() -> None:
    good = _span(1).SerializeToString()
    broken = _field(1, 2, b"\x04" * 16) + b"\x2a\x40short"  # name claims 64 bytes, has 5
    bad_kv = _span(2).SerializeToString() + _field(9, 2, b"\x0a\x09k")  # key overruns the kv
    chunks = otlp.decode_traces_request(_request_of(good, broken, bad_kv, good), "body")
    assert [r["span_id"] for r in _rows(chunks)] == ["0000000000000002"] * 2
    assert _rejects(chunks) == [
        ("resourceSpans[0].scopeSpans[0].spans[1]", "malformed protobuf span"),
        ("resourceSpans[0].scopeSpans[0].spans[2]", "malformed protobuf span"),
    ]


def test_many_spans_in_several_sub_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    from spanomaly.ingest import otlp_wire

    monkeypatch.setattr(otlp_wire, "SUB_BATCH", 256)
    request = _random_request(random.Random(4), 3000, fast=True)
    data = request.SerializeToString()
    chunks = otlp.decode_traces_request(data, "body", batch_rows=1000)
    # the first chunk is one sub-batch, so the store starts early; then chunks of batch_rows;
    # the last sub-batch's worth of spans is a chunk of its own, so little is left to store
    # once decoding ends
    assert [c.records for c in chunks] == [256, 1000, 1000, 488, 256]
    assert all(c.data.num_rows <= 1000 for c in chunks)  # type: ignore[union-attr]
    _assert_same(_table(chunks), _reference(data))


def test_logs_files_are_read_as_logs(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    request = ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    scope.log_records.append(
        LogRecord(time_unix_nano=5, severity_text="INFO", body=AnyValue(string_value="hi"))
    )
    path = tmp_path / "logs.pb"
    path.write_bytes(request.SerializeToString())
    chunks = list(otlp.decode_file(path, "otlp-pb", DecodeOptions()))
    assert [(c.table, c.data.column("body").to_pylist()) for c in chunks] == [("logs", ["hi"])]  # type: ignore[union-attr]
    doc = {
        "resourceLogs": [
            {"scopeLogs": [{"logRecords": [{"timeUnixNano": "7", "body": {"stringValue": "x"}}]}]}
        ]
    }
    path = tmp_path / "logs.json"
    path.write_bytes(orjson.dumps(doc))
    chunks = list(otlp.decode_file(path, "otlp-json", DecodeOptions()))
    assert [c.table for c in chunks] == ["logs"]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(orjson.dumps(doc) + b"\n" + EXPORT_JSONL.read_bytes().splitlines()[0])
    chunks = list(otlp.decode_file(path, "otlp-jsonl", DecodeOptions()))
    assert len(_rows(chunks)) == 2
    assert sorted(c.table for c in chunks) == ["logs", "spans"]
    assert not _rejects(chunks)


def test_span_by_span_fallback_gives_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    from spanomaly.ingest import otlp_wire

    def unusual(*args: Any) -> None:
        raise otlp_wire._Unusual("forced")

    monkeypatch.setattr(otlp_wire, "_attributes_json", unusual)
    request = _random_request(random.Random(5), 300)
    request.resource_spans[0].scope_spans[0].spans.append(_span(1, span_id=b"\x00" * 8))
    data = request.SerializeToString()
    chunks = otlp.decode_traces_request(data, "body")
    _assert_same(_table(chunks), _reference(data))
    last = len(request.resource_spans[0].scope_spans[0].spans) - 1
    label = f"resourceSpans[0].scopeSpans[0].spans[{last}]"
    assert (label, "span_id is all zeros") in _rejects(chunks)
