"""OTLP/HTTP request handling, without a server: media types, decompression, decoding,
batched decoding of protobuf traces, and the responses the specification asks for."""

from __future__ import annotations

import gzip
import zlib

import orjson
import pytest
import zstandard
from google.rpc import status_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from spanomaly.ingest import receiver
from spanomaly.ingest.receiver import JSON, PROTOBUF, Limits, RequestError, Signal

T0 = 1_700_000_000_000_000_000


def kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def traces_request(
    services: list[str], spans_each: int = 3, bad: dict[tuple[int, int], bytes] | None = None
) -> trace_pb.ExportTraceServiceRequest:
    """One resource per service, spans_each spans each; bad maps (resource, span) to a
    span id to use instead of a good one."""
    request = trace_pb.ExportTraceServiceRequest()
    for r, service in enumerate(services):
        rs = request.resource_spans.add()
        rs.resource.attributes.append(kv("service.name", service))
        scope = rs.scope_spans.add()
        for i in range(spans_each):
            span_id = (bad or {}).get((r, i), bytes([r + 1, i + 1]) + bytes(6))
            scope.spans.append(
                Span(
                    trace_id=bytes([r + 1]) * 16,
                    span_id=span_id,
                    name=f"op{i}",
                    start_time_unix_nano=T0 + i,
                    end_time_unix_nano=T0 + i + 1000,
                )
            )
    return request


# -- media types and encodings ------------------------------------------------------------


def test_media_types() -> None:
    assert receiver.media_type("application/x-protobuf") == PROTOBUF
    assert receiver.media_type("application/json; charset=utf-8") == JSON
    assert receiver.media_type("Application/JSON") == JSON
    for bad in (None, "", "text/plain", "application/grpc"):
        with pytest.raises(RequestError) as err:
            receiver.media_type(bad)
        assert err.value.status == 415
        assert "application/x-protobuf" in str(err.value)


def test_decompress_gzip_deflate_zstd_and_identity() -> None:
    data = b"spans " * 1000
    assert receiver.decompress(data, None, 10**6) == data
    assert receiver.decompress(data, "identity", 10**6) == data
    assert receiver.decompress(gzip.compress(data), "gzip", 10**6) == data
    # several gzip members, as concatenating gzip files gives
    two = gzip.compress(data[:3000]) + gzip.compress(data[3000:])
    assert receiver.decompress(two, "gzip", 10**6) == data
    assert receiver.decompress(zlib.compress(data), "deflate", 10**6) == data
    raw = zlib.compressobj(wbits=-15)
    assert receiver.decompress(raw.compress(data) + raw.flush(), "deflate", 10**6) == data
    assert receiver.decompress(zstandard.compress(data), "zstd", 10**6) == data


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd", None])
def test_decompressed_size_is_capped(encoding: str | None) -> None:
    data = bytes(4 * 1024 * 1024)
    body = {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "zstd": zstandard.compress,
        None: lambda d: d,
    }[encoding](data)
    with pytest.raises(RequestError) as err:
        receiver.decompress(body, encoding, 1024 * 1024)
    assert err.value.status == 413


def test_gzip_bomb_stops_at_the_cap() -> None:
    bomb = gzip.compress(bytes(256 * 1024 * 1024), compresslevel=9)  # 256 MiB of zeros
    assert len(bomb) < 300_000
    with pytest.raises(RequestError) as err:
        receiver.decompress(bomb, "gzip", 64 * 1024 * 1024)
    assert err.value.status == 413
    assert "decompressed" in str(err.value)


def test_corrupt_or_truncated_compression_is_400() -> None:
    body = gzip.compress(b"x" * 10_000)
    for bad, encoding in [
        (body[: len(body) // 2], "gzip"),
        (b"", "gzip"),
        (b"not gzip at all", "gzip"),
        (body + b"trailing junk", "gzip"),
        (b"\x28\xb5\x2f\xfdjunk", "zstd"),
    ]:
        with pytest.raises(RequestError) as err:
            receiver.decompress(bad, encoding, 10**6)
        assert err.value.status == 400, (bad[:20], encoding)
    # zero padding after the last member is tolerated, as gzip(1) does
    assert receiver.decompress(body + bytes(8), "gzip", 10**6) == b"x" * 10_000


def test_unknown_encoding_is_415() -> None:
    with pytest.raises(RequestError) as err:
        receiver.decompress(b"x", "br", 10)
    assert err.value.status == 415


def test_body_over_the_limit_is_413() -> None:
    with pytest.raises(RequestError) as err:
        receiver.prepare(Signal.TRACES, PROTOBUF, None, bytes(2048), Limits(1024), "t")
    assert err.value.status == 413
    assert Limits(1024).decompressed == 4096


# -- decoding ------------------------------------------------------------------------------


def test_protobuf_traces_decode_and_count_rejects() -> None:
    bad = {(0, 1): bytes(8), (1, 2): b"\x01\x02\x03"}  # all zeros; wrong length
    body = traces_request(["a", "b"], bad=bad).SerializeToString()
    decoded = receiver.decode(Signal.TRACES, PROTOBUF, body, "t")
    assert (decoded.records, decoded.rows, decoded.rejected) == (6, 4, 2)
    assert sum(c.data.num_rows for c in decoded.chunks) == 4
    message = decoded.message()
    assert message.startswith("2 of 6 spans rejected: ")
    assert "resourceSpans[0].scopeSpans[0].spans[1]: span_id is all zeros" in message
    assert "resourceSpans[1].scopeSpans[0].spans[2]: span_id must be 16 hex" in message


def test_truncated_protobuf_is_400() -> None:
    body = traces_request(["a"]).SerializeToString()
    with pytest.raises(RequestError) as err:
        receiver.prepare(Signal.TRACES, PROTOBUF, None, body[:-7], Limits(), "t")
    assert err.value.status == 400
    assert "not a valid OTLP protobuf request" in str(err.value)
    with pytest.raises(RequestError):
        receiver.decode(Signal.METRICS, PROTOBUF, b"\xff\xff\xff", "m")


def test_empty_requests() -> None:
    # an empty protobuf body is a valid request holding nothing
    raw = receiver.prepare(Signal.TRACES, PROTOBUF, None, b"", Limits(), "t")
    assert isinstance(raw, receiver.RawTraces) and raw.spans == 0
    assert receiver.decode(Signal.METRICS, PROTOBUF, b"", "m").records == 0
    assert receiver.decode(Signal.TRACES, JSON, b"{}", "t").records == 0
    # an empty JSON body is not JSON
    for body in (b"", b"  \n"):
        with pytest.raises(RequestError) as err:
            receiver.decode(Signal.TRACES, JSON, body, "t")
        assert err.value.status == 400


def test_json_errors() -> None:
    for body, words in [
        (b'{"resourceSpans": [', "invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"resourceMetrics": []}', "no resourceSpans"),
        (b"\xff\xfe", "invalid JSON"),
    ]:
        with pytest.raises(RequestError) as err:
            receiver.decode(Signal.TRACES, JSON, body, "t")
        assert err.value.status == 400 and words in str(err.value), body


def test_json_traces_with_a_bad_id() -> None:
    span = {
        "traceId": "0123456789abcdef0123456789abcdef",
        "name": "GET /",
        "startTimeUnixNano": str(T0),
        "endTimeUnixNano": str(T0 + 5),
    }
    doc = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "a"}}]},
                "scopeSpans": [{"spans": [{**span, "spanId": "0123456789abcdef"},
                                          {**span, "spanId": "01234567"}]}],
            }
        ]
    }  # fmt: skip
    decoded = receiver.decode(Signal.TRACES, JSON, orjson.dumps(doc), "t")
    assert (decoded.rows, decoded.rejected) == (1, 1)
    body = orjson.loads(receiver.export_response(decoded, JSON))
    assert body["partialSuccess"]["rejectedSpans"] == "1"
    assert "spans[1]" in body["partialSuccess"]["errorMessage"]


def test_protobuf_metrics_gauge_sum_histogram() -> None:
    request = metrics_pb.ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.extend([kv("service.name", "cart"), kv("service.instance.id", "c-1")])
    sm = rm.scope_metrics.add()
    gauge = sm.metrics.add(name="cpu", unit="1")
    gauge.gauge.data_points.add(time_unix_nano=T0, as_double=0.5)
    counter = sm.metrics.add(name="requests")
    counter.sum.data_points.add(time_unix_nano=T0, as_int=7)
    counter.sum.data_points.add(time_unix_nano=0, as_int=8)  # no time: rejected
    hist = sm.metrics.add(name="latency", unit="ms")
    hist.histogram.data_points.append(
        metrics_pb2.HistogramDataPoint(
            time_unix_nano=T0, count=4, sum=10.0, explicit_bounds=[1, 5], bucket_counts=[1, 2, 1]
        )
    )
    decoded = receiver.decode(Signal.METRICS, PROTOBUF, request.SerializeToString(), "m")
    assert (decoded.records, decoded.rows, decoded.rejected) == (4, 3, 1)
    rows = {r["name"]: r for r in decoded.chunks[0].data.to_pylist()}
    assert rows["cpu"]["value"] == 0.5 and rows["cpu"]["kind"] == "gauge"
    assert rows["requests"]["value"] == 7.0 and rows["requests"]["kind"] == "sum"
    h = rows["latency"]
    assert (h["count"], h["sum"], h["bounds"], h["bucket_counts"]) == (4, 10.0, [1, 5], [1, 2, 1])
    assert {r["instance"] for r in rows.values()} == {"c-1"}
    response = metrics_pb.ExportMetricsServiceResponse.FromString(
        receiver.export_response(decoded, PROTOBUF)
    )
    assert response.partial_success.rejected_data_points == 1
    assert "data point time is missing" in response.partial_success.error_message


# -- batched protobuf decoding -------------------------------------------------------------


def test_batch_decoding_hands_each_request_its_own_rejects() -> None:
    bodies = [
        traces_request(["a", "b"], bad={(1, 0): bytes(8)}).SerializeToString(),
        traces_request(["c"]).SerializeToString(),
        traces_request(["d", "e", "f"], bad={(2, 2): b"\x01"}).SerializeToString(),
    ]
    raws = [receiver.parse_traces(b) for b in bodies]
    chunks, decoded = receiver.decode_traces_batch(raws, "t")
    assert [(d.records, d.rows, d.rejected) for d in decoded] == [(6, 5, 1), (3, 3, 0), (9, 8, 1)]
    assert sum(c.data.num_rows for c in chunks) == 16
    # the labels are those of each request on its own
    assert decoded[0].rejects[0].record == "resourceSpans[1].scopeSpans[0].spans[0]"
    assert decoded[2].rejects[0].record == "resourceSpans[2].scopeSpans[0].spans[2]"
    alone = [receiver.decode(Signal.TRACES, PROTOBUF, b, "t") for b in bodies]
    assert [d.message() for d in decoded] == [d.message() for d in alone]
    services = sorted(set(chunks[0].data["service"].to_pylist()))
    assert services == ["a", "b", "c", "d", "e", "f"]


# -- responses -----------------------------------------------------------------------------


def test_responses_without_rejects_are_empty_messages() -> None:
    decoded = receiver.Decoded(Signal.TRACES, records=3, rows=3)
    assert receiver.export_response(decoded, PROTOBUF) == b""
    assert receiver.export_response(decoded, JSON) == b"{}"


def test_status_bodies_are_encoded_like_the_request() -> None:
    body, ctype = receiver.status_body(400, "bad", PROTOBUF)
    assert ctype == PROTOBUF
    status = status_pb2.Status.FromString(body)
    assert (status.code, status.message) == (3, "bad")
    body, ctype = receiver.status_body(503, "busy", JSON)
    assert ctype == JSON and orjson.loads(body) == {"code": 14, "message": "busy"}
    assert receiver.status_body(415, "x", None)[1] == JSON


def test_handle_a_mixed_batch() -> None:
    import pickle

    good = traces_request(["a"], bad={(0, 0): bytes(8)}).SerializeToString()
    bodies = [
        receiver.Body(Signal.TRACES, PROTOBUF, "gzip", gzip.compress(good)),
        receiver.Body(Signal.TRACES, PROTOBUF, None, good[:-3]),  # truncated
        receiver.Body(Signal.TRACES, JSON, None, b"{}"),
        receiver.Body(Signal.TRACES, PROTOBUF, None, b""),
        receiver.Body(Signal.METRICS, JSON, None, b"nope"),
        receiver.Body(Signal.TRACES, PROTOBUF, None, good),  # a re-send, in the same batch
    ]
    chunks, results = receiver.handle(bodies, Limits())
    first, truncated, empty_json, empty_pb, bad_json, again = results
    assert (first.records, first.rows, first.rejected) == (3, 2, 1)
    assert (again.records, again.rows, again.rejected) == (3, 2, 1)
    assert isinstance(truncated, RequestError) and truncated.status == 400
    assert isinstance(bad_json, RequestError) and "invalid JSON" in str(bad_json)
    assert empty_json.records == empty_pb.records == 0
    assert sum(c.data.num_rows for c in chunks) == 4  # the store keeps one of each twin
    copy = pickle.loads(pickle.dumps(truncated))  # answers travel between processes
    assert (copy.status, str(copy)) == (400, str(truncated))


# -- spans without a name, attributes nested past upb's depth limit ----------------------


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (tag byte, varint length, payload)."""
    n, size = len(payload), bytearray()
    while True:
        size.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes([tag]) + bytes(size) + payload


def deep_attribute(levels: int) -> bytes:
    """A KeyValue whose value is `levels` key-value lists inside each other, encoded by
    hand (upb itself refuses to build one past its depth limit)."""
    value = AnyValue(string_value="leaf").SerializeToString()
    for _ in range(levels):
        value = _field(0x32, _field(0x0A, _field(0x0A, b"k") + _field(0x12, value)))
    return _field(0x0A, b"deep") + _field(0x12, value)


def with_deep_attribute(request: trace_pb.ExportTraceServiceRequest, span: int) -> bytes:
    """The request's encoding with a 40-levels-deep attribute appended to one span."""
    rs = request.resource_spans[0]
    spans = rs.scope_spans[0].spans
    encoded = [s.SerializeToString() for s in spans]
    encoded[span] += _field(0x4A, deep_attribute(40))  # Span.attributes is field 9
    scope = b"".join(_field(0x12, e) for e in encoded)
    return _field(0x0A, _field(0x0A, rs.resource.SerializeToString()) + _field(0x12, scope))


def test_a_span_without_a_name_is_refused() -> None:
    request = traces_request(["a"], spans_each=4)
    request.resource_spans[0].scope_spans[0].spans[1].name = ""
    decoded = receiver.decode(Signal.TRACES, PROTOBUF, request.SerializeToString(), "t")
    assert (decoded.records, decoded.rows, decoded.rejected) == (4, 3, 1)
    assert "spans[1]: operation (span name) is missing" in decoded.message()
    assert "" not in decoded.chunks[0].data["operation"].to_pylist()
    # in a batch with other requests, too (the batch's own decoding path)
    raws = [receiver.parse_traces(request.SerializeToString())] * 2
    _, batch = receiver.decode_traces_batch(raws, "t")
    assert [(d.rows, d.rejected) for d in batch if isinstance(d, receiver.Decoded)] == [(3, 1)] * 2


def test_json_span_names_missing_empty_or_not_text_are_refused() -> None:
    names: list[object] = ["ok", "", {"x": 1}, 5, None]
    spans = [
        {
            "traceId": "ab" * 16,
            "spanId": f"{i + 1:016x}",
            "startTimeUnixNano": str(T0),
            "endTimeUnixNano": str(T0 + 10),
            **({"name": name} if name is not None else {}),
        }
        for i, name in enumerate(names)
    ]
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}
    decoded = receiver.decode(Signal.TRACES, JSON, orjson.dumps(doc), "t")
    assert (decoded.rows, decoded.rejected) == (1, 4)
    assert decoded.chunks[0].data["operation"].to_pylist() == ["ok"]
    assert decoded.message().count("operation (span name) is missing") == 4


def test_an_attribute_nested_past_the_depth_limit_refuses_its_span_alone() -> None:
    deep = with_deep_attribute(traces_request(["a"], spans_each=3), span=1)
    good = traces_request(["b"], spans_each=3).SerializeToString()
    bodies = [receiver.Body(Signal.TRACES, PROTOBUF, None, b) for b in (good, deep, good)]
    chunks, results = receiver.handle(bodies, Limits())
    assert all(isinstance(r, receiver.Decoded) for r in results)
    assert [(r.rows, r.rejected) for r in results] == [(3, 0), (2, 1), (3, 0)]
    assert "spans[1]: malformed protobuf span" in results[1].message()
    assert sum(c.data.num_rows for c in chunks) == 8
    # alone, too
    _, (alone,) = receiver.handle(bodies[1:2], Limits())
    assert (alone.rows, alone.rejected) == (2, 1)
