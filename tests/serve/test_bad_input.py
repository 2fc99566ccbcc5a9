"""Bad input gets its status code and message, and the collector keeps storing good
requests: truncated protobuf, invalid JSON, wrong content type, a 20 MiB body, a gzip bomb,
ids of the wrong length, empty requests; and the token, the routes and the limits."""

from __future__ import annotations

import gzip
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from tests.serve.conftest import (
    PROTOBUF,
    Server,
    StartServer,
    clean_env,
    spans_request,
    start_server,
)

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One collector for the module's requests, each of which leaves it healthy."""
    s = start_server(tmp_path_factory.mktemp("bad"))
    try:
        yield s
    finally:
        s.stop(signal.SIGKILL)


def still_accepts(server: Server) -> None:
    """A good request after a bad one is stored."""
    before = server.stats()["spans"]
    first = 10_000_000 + before
    response = server.post("/v1/traces", spans_request(first, 5).SerializeToString(), PROTOBUF)
    assert response.status_code == 200, response.text
    assert response.content == b""  # nothing rejected: an empty ExportTraceServiceResponse
    assert server.stats()["spans"] == before + 5


def pb_status(response: httpx.Response) -> status_pb2.Status:
    assert response.headers["content-type"] == "application/x-protobuf"
    return status_pb2.Status.FromString(response.content)


def test_truncated_protobuf(server: Server) -> None:
    body = spans_request(1, 20).SerializeToString()
    response = server.post("/v1/traces", body[:-9], PROTOBUF)
    assert response.status_code == 400
    status = pb_status(response)
    assert status.code == 3 and "not a valid OTLP protobuf request" in status.message
    still_accepts(server)


def test_invalid_json(server: Server) -> None:
    response = server.post("/v1/traces", b'{"resourceSpans": [{"resource": ', JSON)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert "invalid JSON" in response.json()["message"]
    still_accepts(server)


def test_wrong_content_type(server: Server) -> None:
    body = spans_request(1, 2).SerializeToString()
    for ctype in ("text/plain", "application/grpc", None):
        headers = {"Content-Type": ctype} if ctype else {}
        response = server.post("/v1/traces", body, headers)
        assert response.status_code == 415, ctype
        assert "application/x-protobuf or application/json" in response.json()["message"]
    still_accepts(server)


def test_unknown_content_encoding(server: Server) -> None:
    response = server.post("/v1/traces", b"x", {**PROTOBUF, "Content-Encoding": "br"})
    assert response.status_code == 415
    assert "Content-Encoding" in pb_status(response).message


def test_20_mib_body(server: Server) -> None:
    body = bytes(20 * 1024 * 1024)
    response = server.post("/v1/traces", body, PROTOBUF)
    assert response.status_code == 413
    assert "larger than 16777216 bytes" in pb_status(response).message
    # the same without Content-Length (chunked): refused while it streams in
    response = httpx.post(
        server.url + "/v1/traces",
        content=iter([body[i : i + (1 << 20)] for i in range(0, len(body), 1 << 20)]),
        headers=PROTOBUF,
        timeout=60,
    )
    assert response.status_code == 413
    still_accepts(server)


def test_gzip_bomb(server: Server) -> None:
    bomb = gzip.compress(bytes(200 * 1024 * 1024), compresslevel=9)  # 200 MiB of zeros
    response = server.post("/v1/traces", bomb, {**PROTOBUF, "Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed request body is larger than" in pb_status(response).message
    truncated = gzip.compress(spans_request(1, 50).SerializeToString())[:-20]
    response = server.post("/v1/traces", truncated, {**PROTOBUF, "Content-Encoding": "gzip"})
    assert response.status_code == 400 and "truncated gzip" in pb_status(response).message
    still_accepts(server)


def test_wrong_length_and_zero_ids_are_rejected_one_by_one(server: Server) -> None:
    before = server.stats()["spans"]
    request = spans_request(20_000_000, 10, bad_ids=2)  # two 4-byte span ids
    zero = request.resource_spans[0].scope_spans[0].spans[0]
    zero.trace_id = bytes(16)  # all zeros
    response = server.post("/v1/traces", request.SerializeToString(), PROTOBUF)
    assert response.status_code == 200
    answer = trace_pb.ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 3
    message = answer.partial_success.error_message
    assert message.startswith("3 of 10 spans rejected")
    assert "spans[0]: trace_id is all zeros" in message
    assert "spans[8]: span_id must be 16 hex characters" in message
    assert server.stats()["spans"] == before + 7
    # the same in JSON, answered in JSON
    doc = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "ab" * 16,
                                "spanId": span_id,
                                "name": "x",
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000000000000100",
                            }
                            for span_id in ("cd" * 8, "cd" * 4, "0" * 16)
                        ]
                    }
                ]
            }
        ]
    }
    response = server.post("/v1/traces", orjson.dumps(doc), JSON)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "span_id is all zeros" in partial["errorMessage"]
    assert server.stats()["spans"] == before + 8
    still_accepts(server)


def test_empty_requests(server: Server) -> None:
    response = server.post("/v1/traces", b"", PROTOBUF)  # a valid request with no spans
    assert response.status_code == 200 and response.content == b""
    response = server.post("/v1/metrics", b"", PROTOBUF)
    assert response.status_code == 200
    response = server.post("/v1/traces", b"{}", JSON)
    assert response.status_code == 200 and response.json() == {}
    response = server.post("/v1/traces", b"", JSON)
    assert response.status_code == 400
    assert "empty body" in response.json()["message"]
    response = server.post("/v1/traces", b"", {**PROTOBUF, "Content-Encoding": "gzip"})
    assert response.status_code == 400
    still_accepts(server)


def test_routes_and_methods(server: Server) -> None:
    assert server.get("/api/health").json()["status"] == "ok"
    assert server.get("/nowhere").status_code == 404
    assert server.get("/v1/traces").status_code == 405
    assert httpx.post(server.url + "/v1/logs", content=b"", timeout=10).status_code == 415
    assert httpx.post(server.url + "/v1/events", content=b"", timeout=10).status_code == 404
    docs = server.get("/docs")  # a local page: no scripts fetched from the web
    assert docs.status_code == 200 and '<script src="/static/docs.js"' in docs.text
    assert "http" not in docs.text.replace('href="/openapi.json"', "")


def test_health_counts_the_answers(server: Server) -> None:
    server.post("/v1/traces", b"\xff", PROTOBUF)
    server.post("/v1/traces", b"", {"Content-Type": "text/plain"})
    still_accepts(server)
    health = server.get("/api/health").json()
    assert health["requests"]["400"] >= 1 and health["requests"]["415"] >= 1
    assert health["requests"]["200"] >= 1
    assert health["writer"]["failed_requests"] == 0
    assert health["writer"]["pending_rows"] == 0


def test_token_on_every_route(serve: StartServer, tmp_path: Path) -> None:
    server = serve(env=clean_env(SPANOMALY_TOKEN="t0ken"))
    body = spans_request(1, 3).SerializeToString()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic t0ken"}):
        response = server.post("/v1/traces", body, {**PROTOBUF, **headers})
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "bearer token" in pb_status(response).message
        for path in ("/api/health", "/api/stats", "/nowhere"):
            assert server.get(path, headers=headers).status_code == 401
    auth = {"Authorization": "Bearer t0ken"}
    assert server.post("/v1/traces", body, {**PROTOBUF, **auth}).status_code == 200
    assert server.get("/api/health", headers=auth).status_code == 200
    assert server.stats(headers=auth)["spans"] == 3


def test_smaller_body_limit(serve: StartServer) -> None:
    server = serve("--max-body", "64KiB")
    big = spans_request(1, 2000).SerializeToString()
    assert len(big) > 64 * 1024
    assert server.post("/v1/traces", big, PROTOBUF).status_code == 413
    packed = gzip.compress(big)  # small as sent, but over 4 x 64 KiB once decompressed? no:
    assert len(big) < 4 * 64 * 1024
    assert (
        server.post("/v1/traces", packed, {**PROTOBUF, "Content-Encoding": "gzip"}).status_code
        == 200
    )
    assert server.stats()["spans"] == 2000


# -- /v1/logs under the same rules ------------------------------------------------------------


def logs_request(first: int, count: int, bad_ids: int = 0) -> bytes:
    """count log records with trace context; the last bad_ids get a 4-byte span id."""
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    request = logs_pb.ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="svc")))
    records = rl.scope_logs.add().log_records
    for i in range(count):
        bad = i >= count - bad_ids
        records.append(
            LogRecord(
                time_unix_nano=1_700_000_000_000_000_000 + first + i,
                severity_text="INFO",
                body=AnyValue(string_value=f"line {first + i}"),
                trace_id=(first + i + 1).to_bytes(16, "big"),
                span_id=b"\x01" * (4 if bad else 8),
            )
        )
    return request.SerializeToString()


def still_accepts_logs(server: Server) -> None:
    """A good logs request after a bad one is stored before it is answered."""
    before = server.stats()["logs"]
    response = server.post("/v1/logs", logs_request(30_000_000 + before, 4), PROTOBUF)
    assert response.status_code == 200 and response.content == b"", response.text
    assert server.stats()["logs"] == before + 4


@pytest.mark.parametrize(
    ("body", "headers", "status", "text"),
    [
        (logs_request(1, 20)[:-9], PROTOBUF, 400, "not a valid OTLP protobuf logs request"),
        (b'{"resourceLogs": [', JSON, 400, "invalid JSON"),
        (b'{"resourceSpans": []}', JSON, 400, "no resourceLogs in the request"),
        (b"", {"Content-Type": "text/plain"}, 415, "application/x-protobuf or application/json"),
        (b"x", {**PROTOBUF, "Content-Encoding": "br"}, 415, "Content-Encoding"),
        (bytes(20 * 1024 * 1024), PROTOBUF, 413, "larger than 16777216 bytes"),
        (
            gzip.compress(bytes(200 * 1024 * 1024), compresslevel=9),
            {**PROTOBUF, "Content-Encoding": "gzip"},
            413,
            "decompressed request body is larger than",
        ),
    ],
    ids=["truncated", "invalid-json", "wrong-signal", "media-type", "encoding", "20mib", "bomb"],
)
def test_logs_route_refuses_bad_bodies(
    server: Server, body: bytes, headers: dict[str, str], status: int, text: str
) -> None:
    response = server.post("/v1/logs", body, headers)
    assert response.status_code == status
    message = (
        pb_status(response).message
        if response.headers["content-type"] == "application/x-protobuf"
        else response.json()["message"]
    )
    assert text in message
    still_accepts_logs(server)


def test_logs_route_partial_success_gzip_and_json(server: Server) -> None:
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb

    before = server.stats()["logs"]
    body = gzip.compress(logs_request(40_000_000, 10, bad_ids=3))
    response = server.post("/v1/logs", body, {**PROTOBUF, "Content-Encoding": "gzip"})
    assert response.status_code == 200
    answer = logs_pb.ExportLogsServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_log_records == 3
    assert answer.partial_success.error_message.startswith("3 of 10 log records rejected")
    assert "logRecords[9]: spanId must be 16 hex characters" in answer.partial_success.error_message
    assert server.stats()["logs"] == before + 7
    doc = {"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"timeUnixNano": "1700000000000000000", "body": {"stringValue": "json line"}},
        {"body": {"stringValue": "no time"}}]}]}]}  # fmt: skip
    response = server.post("/v1/logs", orjson.dumps(doc), JSON)
    assert response.status_code == 200
    assert response.json()["partialSuccess"]["rejectedLogRecords"] == "1"
    assert server.stats()["logs"] == before + 8
    health = server.get("/api/health").json()
    assert health["accepted"]["logs"] >= 8 and health["rejected"]["logs"] >= 4


def test_deep_attribute_is_refused_alone_never_503(server: Server) -> None:
    """A span nested past upb's depth limit is refused in partial_success; good requests
    sent at the same moment (decoded in one batch with it) are all stored."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.ingest.test_receiver import with_deep_attribute

    before = server.stats()["spans"]
    deep = with_deep_attribute(spans_request(30_000_000, 3), span=1)
    goods = [spans_request(30_100_000 + 10 * i, 2).SerializeToString() for i in range(20)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: server.post("/v1/traces", b, PROTOBUF), [deep, *goods]))
    assert [a.status_code for a in answers] == [200] * 21
    partial = trace_pb.ExportTraceServiceResponse.FromString(answers[0].content).partial_success
    assert partial.rejected_spans == 1 and "spans[1]" in partial.error_message
    assert server.stats()["spans"] == before + 2 + 40
    still_accepts(server)
