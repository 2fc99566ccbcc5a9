"""The dashboard's JSON API over a small store with planted anomalies and a trained model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spanomaly.pipeline.online import OnlineDetector
from tests.serve.dashboard_data import (
    INSTANCE,
    NS,
    SPIKE,
    XSS,
    Data,
    add_trace_logs,
    app_over,
    build,
    running,
)
from tests.synthetic import T0

SERVICES = {"gateway", "user-service", "order-service", "auth-service"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """The store and model, built once for the module."""
    return build(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture
def api(built: Data, tmp_path: Path) -> Iterator[tuple[httpx.Client, OnlineDetector, Data]]:
    """A client of the server on a private copy of the store, with the online detector."""
    data = built.copy_to(tmp_path)
    app, online = app_over(data)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, online, data


def test_overview_has_every_service_calls_alarms_and_suspects(api: tuple) -> None:
    client, _, _ = api
    doc = client.get("/api/overview").json()
    nodes = {n["service"]: n for n in doc["graph"]["nodes"]}
    assert set(nodes) == SERVICES | {XSS}
    edges = {(e["caller"], e["callee"]): e for e in doc["graph"]["edges"]}
    assert ("gateway", "order-service") in edges
    e = edges[("gateway", "order-service")]
    assert e["calls"] > 0 and e["rate"] > 0 and e["mean_ms"] > 0
    # findings in the last 15 min of data put colour on the blamed services
    assert doc["findings"] == 4  # 3 trace findings and the CPU spike
    assert nodes["order-service"]["findings"] == 3 and nodes["order-service"]["anomaly"] > 0
    assert nodes["gateway"]["anomaly"] == 0
    assert all(n["instances"] >= 1 for n in doc["graph"]["nodes"])
    # the spike ten minutes before the end is an alarm of its own, no longer active
    alarms = sorted((a["service"], a["active"], a["findings"]) for a in doc["alarms"])
    assert alarms == [(XSS, True, 1), ("order-service", False, 1), ("order-service", True, 2)]
    assert doc["suspects"] and doc["suspects"][0]["rank"] == 1
    assert doc["suspects"][0]["service"] in {"order-service", XSS}
    assert doc["suspects"][0]["evidence"]["reasons"]  # parsed, with the findings' reasons


def test_overview_window_is_bounded_by_from_and_to(api: tuple) -> None:
    client, _, _ = api
    doc = client.get("/api/overview", params={"from": T0 / NS, "to": T0 / NS + 600}).json()
    assert doc["findings"] == 0 and doc["alarms"] == [] and doc["suspects"] == []
    assert doc["window"]["from"].startswith("2023-11-14T22:13:20")
    assert client.get("/api/overview", params={"from": "yesterday"}).status_code == 400


def test_findings_filters_and_detail(api: tuple) -> None:
    client, _, data = api
    page = client.get("/api/findings").json()
    assert page["total"] == 4 and len(page["items"]) == 4
    times = [f["time_ms"] for f in page["items"]]
    assert times == sorted(times, reverse=True)
    only = client.get("/api/findings", params={"service": "order-service"}).json()
    assert only["total"] == 3 and {f["service"] for f in only["items"]} == {"order-service"}
    assert client.get("/api/findings", params={"kind": "instance"}).json()["total"] == 1
    assert client.get("/api/findings", params={"kind": "trace"}).json()["total"] == 3
    assert client.get("/api/findings", params={"to": T0 / NS + 3600}).json()["total"] == 1
    assert client.get("/api/findings", params={"limit": 1}).json()["items"][0] == page["items"][0]
    filters = client.get("/api/findings/filters").json()
    assert filters["kinds"] == ["instance", "trace"] and XSS in filters["services"]

    slow = next(f for f in page["items"] if f["span_id"] == data.planted["slow_span"])
    detail = client.get(f"/api/findings/{slow['finding_id']}").json()
    duration = detail["details"]["duration"]
    assert duration["span_id"] == data.planted["slow_span"]
    assert duration["duration_ms"] > 10 * duration["normal_duration_ms"]
    assert client.get("/api/findings/nope").status_code == 404


def test_trace_has_its_spans_and_the_deviating_one(api: tuple) -> None:
    client, _, data = api
    page = client.get("/api/findings", params={"service": "order-service"}).json()
    unknown = next(f for f in page["items"] if f["span_id"] == data.planted["unknown_op"])
    doc = client.get(f"/api/traces/{unknown['trace_id']}").json()
    ids = {s["span_id"] for s in doc["spans"]}
    assert data.planted["unknown_op"] in ids and len(ids) == len(doc["spans"]) > 5
    assert min(s["offset_ms"] for s in doc["spans"]) == 0
    roots = [s for s in doc["spans"] if s["parent_id"] is None]
    assert len(roots) == 1 and roots[0]["duration_ms"] >= max(
        s["duration_ms"] for s in doc["spans"]
    )
    assert [f["finding_id"] for f in doc["findings"]] == [unknown["finding_id"]]
    assert doc["findings"][0]["details"]["sequence"]["observed"].endswith("SELECT secrets |  | ok")
    assert client.get("/api/traces/0123").status_code == 404


def test_instance_series_with_anomaly_and_fault_windows(api: tuple) -> None:
    client, _, _ = api
    rows = client.get("/api/instances").json()
    by = {r["instance"]: r for r in rows}
    assert by[INSTANCE]["points"] == 240 and by[INSTANCE]["spans"] > 0
    assert by[INSTANCE]["findings"] == 3
    doc = client.get(f"/api/instances/{INSTANCE}/series").json()
    assert doc["service"] == "order-service"
    cpu = doc["series"]["cpu.utilization"]
    assert len(cpu["t_ms"]) == len(cpu["v"]) > 100 and max(cpu["v"]) > 0.9
    assert {"spans.rate_per_s", "spans.errors_per_s", "spans.mean_ms"} <= set(doc["series"])
    assert [f["fault_id"] for f in doc["faults"]] == ["f1"]
    assert len(doc["anomalies"]) == 3
    spike = next(a for a in doc["anomalies"] if a["finding_id"] == SPIKE)
    fault = doc["faults"][0]
    assert fault["from_ms"] <= spike["time_ms"] <= fault["to_ms"]
    assert client.get("/api/instances/nobody/series").status_code == 404


def test_feedback_updates_the_model_and_hides_the_finding(api: tuple) -> None:
    client, _, data = api
    before = client.get("/api/model").json()
    assert before["loaded"] is True and before["vocabulary"] > 5
    assert before["detectors"]["sequence"]["name"] == "ngram"
    page = client.get("/api/findings").json()
    unknown = next(f for f in page["items"] if f["span_id"] == data.planted["unknown_op"])
    answer = client.post(f"/api/findings/{unknown['finding_id']}/feedback")
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["model_updated"] is True and doc["new_keys"] >= 1
    assert doc["flagged_before"] == 1 and doc["flagged_after"] == 0
    after = client.get("/api/model").json()  # the detector serves the updated model
    vocabulary = json.loads((data.model / "vocabulary.json").read_text())["keys"]
    assert len(vocabulary) == before["vocabulary"] + doc["new_keys"]
    assert "order-service | order-service | SELECT secrets |  | ok" in vocabulary
    feedback_traces = before["trained_on"]["feedback_traces"] + 1
    assert after["trained_on"]["feedback_traces"] == feedback_traces
    shown = client.get("/api/findings", params={"include_normal": False}).json()
    assert unknown["finding_id"] not in {f["finding_id"] for f in shown["items"]}
    assert client.get("/api/overview").json()["findings"] == 3
    config = json.loads((data.model / "config.json").read_text())
    assert config["trained_on"]["feedback_traces"] == 1
    nope = client.post("/api/findings/nope/feedback")
    assert nope.status_code == 404 and "--finding" not in nope.text
    # a repeat is idempotent: the trace is not learnt twice
    again = client.post(f"/api/findings/{unknown['finding_id']}/feedback", json={"normal": True})
    assert again.status_code == 200 and again.json()["model_updated"] is False
    assert "already" in again.json()["changed"]
    assert client.get("/api/model").json()["trained_on"]["feedback_traces"] == feedback_traces
    # a body that asks for anything but normal is refused, and changes nothing
    for body in ({"normal": False}, {"normal": "yes"}, {"label": "x"}, [1]):
        bad = client.post(f"/api/findings/{unknown['finding_id']}/feedback", json=body)
        assert bad.status_code == 400, body
    assert client.post(f"/api/findings/{unknown['finding_id']}/feedback",
                       content=b"{not json").status_code == 400  # fmt: skip


def test_retrain_takes_iso_and_seconds_like_the_other_routes(api: tuple) -> None:
    client, _, _ = api
    from datetime import UTC, datetime

    iso = datetime.fromtimestamp(T0 / NS, UTC).isoformat()
    for lo, hi in ((iso, str(T0 / NS + 15)), (T0 / NS, T0 / NS + 15)):
        reply = client.post("/api/model/retrain", json={"from": lo, "to": hi})
        assert reply.status_code == 200, reply.text
        assert reply.json()["traces"] == 150
    bad = client.post("/api/model/retrain", json={"from": "yesterday"})
    assert bad.status_code == 400 and "from" in bad.text


def test_retrain_from_the_dashboard_fits_on_the_period_given(api: tuple) -> None:
    client, _, _ = api
    # what the Models view sends: whole minutes in ns, as JSON integers
    doc = client.post("/api/model/retrain", json={"from": T0, "to": T0 + 15 * NS}).json()
    assert doc["traces"] == 150 and doc["detectors"]["sequence"]["name"] == "ngram"
    assert client.get("/api/model").json()["trained_on"]["traces"] == 150
    # a period left out of the training (the demo's own training burst, say)
    body = {"from": T0, "to": T0 + 15 * NS, "exclude": [[T0 + 13 * NS, T0 + 15 * NS]]}
    reply = client.post("/api/model/retrain", json=body)
    assert reply.status_code == 200, reply.text
    assert 100 < reply.json()["traces"] < 150
    bad = client.post("/api/model/retrain", json={**body, "exclude": [[T0]]})
    assert bad.status_code == 400 and "exclude" in bad.text


def test_without_a_model_feedback_is_only_recorded(built: Data, tmp_path: Path) -> None:
    data = built.copy_to(tmp_path)
    app, online = app_over(data, online=False)
    assert online is None
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        model = client.get("/api/model")
        assert model.status_code == 404 and "no model is loaded" in model.text
        assert client.post("/api/model/retrain", json={}).status_code == 404
        fid = client.get("/api/findings").json()["items"][0]["finding_id"]
        doc = client.post(f"/api/findings/{fid}/feedback").json()
        assert doc["finding"] == fid and doc["feedback"] == "normal"
        assert doc["model_updated"] is False and "no model is loaded" in doc["changed"]
        again = client.post(f"/api/findings/{fid}/feedback").json()
        assert "already" in again["changed"]
        assert client.get(f"/api/findings/{fid}").json()["feedback"] == "normal"
        assert client.post("/api/findings/nope/feedback").status_code == 404
    config = json.loads((data.model / "config.json").read_text())
    assert config["trained_on"]["feedback_traces"] == 0  # the model files are untouched


def test_no_get_route_changes_state_and_openapi_documents_every_api_route(api: tuple) -> None:
    client, _, _ = api
    doc = client.get("/openapi.json").json()
    api_paths = {p for p in doc["paths"] if p.startswith("/api/")}
    assert {"/api/overview", "/api/findings", "/api/traces/{trace_id}", "/api/model"} <= api_paths
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("description") or op.get("summary"), (method, path)
    changing = {p for p, ops in doc["paths"].items() if "post" in ops}
    assert changing == {
        "/v1/traces", "/v1/metrics", "/v1/logs", "/api/findings/{finding_id}/feedback",
        "/api/model/retrain",
    }  # fmt: skip
    assert all(set(doc["paths"][p]) == {"post"} for p in changing)


def test_a_trace_carries_its_log_lines_under_their_spans(built: Data, tmp_path: Path) -> None:
    data = built.copy_to(tmp_path)
    written = add_trace_logs(data)
    app, _ = app_over(data, online=False)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        doc = client.get(f"/api/traces/{written['trace_id']}").json()
    lines = doc["logs"]
    assert [(x["span_id"], x["severity"]) for x in lines] == [
        (written["other"], "WARN"), (written["span"], "INFO"), (written["span"], "ERROR")
    ]  # fmt: skip
    assert all(x["offset_ms"] >= 0 and "body" in x and "template_id" in x for x in lines)
    assert [x["finding"] for x in lines] == [None, None, written["finding"]]  # the line it names
