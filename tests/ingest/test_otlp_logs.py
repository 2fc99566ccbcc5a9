"""OTLP log records (protobuf and JSON) into LOGS rows, and the receiver's /v1/logs rules:
partial success naming the refused records, 400 for a body that is no logs request."""

from __future__ import annotations

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from spanomaly.errors import FormatError
from spanomaly.ingest import otlp_logs, receiver
from spanomaly.ingest.receiver import Signal

TID = bytes.fromhex("0ba878a42fd37cc4065426f7c6b0f58c")
SID = bytes.fromhex("3173c9909bb1af8a")


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def logs_request() -> logs_pb.ExportLogsServiceRequest:
    request = logs_pb.ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.extend(
        [_kv("service.name", "shop"), _kv("service.instance.id", "shop-1")]
    )
    records = rl.scope_logs.add().log_records
    records.append(
        LogRecord(
            time_unix_nano=10,
            severity_number=17,  # ERROR
            body=AnyValue(string_value="price lookup failed, fallback taken"),
            attributes=[_kv("exception.type", "KeyError"), _kv("exception.message", "'p7'")],
            trace_id=TID,
            span_id=SID,
        )
    )
    records.append(
        LogRecord(time_unix_nano=11, body=AnyValue(string_value="x"), span_id=b"\x01" * 4)
    )
    records.append(LogRecord(body=AnyValue(string_value="no time")))
    records.append(
        LogRecord(observed_time_unix_nano=12, severity_text="warning", body=AnyValue(int_value=3))
    )
    return request


def test_protobuf_log_records() -> None:
    chunks = otlp_logs.decode_logs_request(logs_request().SerializeToString(), "body")
    rows = [r for c in chunks for r in c.data.to_pylist()]  # type: ignore[union-attr]
    rejects = [(r.record, r.reason) for c in chunks for r in c.rejects]
    assert rejects == [
        ("resourceLogs[0].scopeLogs[0].logRecords[1]", "spanId must be 16 hex characters"),
        (
            "resourceLogs[0].scopeLogs[0].logRecords[2]",
            "timeUnixNano and observedTimeUnixNano are both missing",
        ),
    ]
    assert [r["time_ns"] for r in rows] == [10, 12]
    first = rows[0]
    assert (first["service"], first["instance"], first["severity"]) == ("shop", "shop-1", "ERROR")
    assert (first["trace_id"], first["span_id"]) == (TID.hex(), SID.hex())
    assert first["body"] == "price lookup failed, fallback taken [KeyError: 'p7']"
    assert rows[1]["severity"] == "WARN" and rows[1]["body"] == "3"
    assert rows[1]["trace_id"] is None
    with pytest.raises(FormatError, match="not a valid OTLP protobuf logs request"):
        otlp_logs.decode_logs_request(b"\x0a\xff\xff", "body")


def test_json_log_records() -> None:
    doc = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "a"}}]},
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": "1700000000000000001",
                                "severityNumber": "SEVERITY_NUMBER_ERROR",
                                "body": {"kvlistValue": {"values": [
                                    {"key": "k", "value": {"intValue": "2"}}]}},
                                "traceId": TID.hex().upper(),
                                "spanId": SID.hex(),
                            },
                            {"observedTimeUnixNano": 5, "traceId": "zz", "body": {}},
                            "not an object",
                        ]
                    }
                ],
            }
        ]
    }  # fmt: skip
    chunks = list(otlp_logs.iter_json_chunks(doc, "body"))
    rows = [r for c in chunks for r in c.data.to_pylist()]  # type: ignore[union-attr]
    assert [(r["time_ns"], r["severity"], r["body"], r["trace_id"]) for r in rows] == [
        (1700000000000000001, "ERROR", '{"k":2}', TID.hex())
    ]
    assert [r.reason for c in chunks for r in c.rejects] == [
        "traceId must be 32 hex characters",
        "not a JSON object",
    ]
    assert sum(c.records or 0 for c in chunks) == 3


def test_receiver_answers_logs_with_partial_success() -> None:
    data = logs_request().SerializeToString()
    decoded = receiver.decode(Signal.LOGS, receiver.PROTOBUF, data, "/v1/logs")
    assert (decoded.rows, decoded.records, decoded.rejected) == (2, 4, 2)
    assert all(c.table == "logs" for c in decoded.chunks)
    answer = logs_pb.ExportLogsServiceResponse.FromString(
        receiver.export_response(decoded, receiver.PROTOBUF)
    )
    assert answer.partial_success.rejected_log_records == 2
    assert "2 of 4 log records rejected" in answer.partial_success.error_message
    body = orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {}}]}]}]})
    decoded = receiver.decode(Signal.LOGS, receiver.JSON, body, "/v1/logs")
    doc = orjson.loads(receiver.export_response(decoded, receiver.JSON))
    assert doc["partialSuccess"]["rejectedLogRecords"] == "1"
    with pytest.raises(receiver.RequestError, match="no resourceLogs"):
        receiver.decode(Signal.LOGS, receiver.JSON, b'{"resourceSpans": []}', "/v1/logs")
