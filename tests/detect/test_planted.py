"""Planted anomalies: each is detected and explained with the right span.

wrong order, missing call, extra call, unknown operation (sequence detectors, LSTM and
n-gram), slow span and slow self time (duration detectors, robust and LSTM head); normal
traces of the same application stay quiet.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from spanomaly.detect.model import TraceModel
from spanomaly.features.traces import events
from tests.synthetic import PLANTS, T0, TraceBuilder, normal_traces, plant

SMALL_LSTM = {"hidden_size": 32, "num_layers": 1, "epochs": 40}
SMALL_LSTM_DURATION = {"hidden_size": 32, "epochs": 40}
SEQUENCE_PLANTS = ("wrong_order", "missing_call", "extra_call", "unknown_op")
DURATION_PLANTS = ("slow_span", "slow_self")


@pytest.fixture(scope="module")
def data() -> dict:
    train = TraceBuilder(seed=0)
    normal_traces(train, 600)
    test = TraceBuilder(seed=1)
    normal_traces(test, 200, start_ns=T0 + 10**12)
    planted = {}
    for i, kind in enumerate(PLANTS):
        planted[kind] = plant(test, kind, T0 + 2 * 10**12 + i * 10**9)
    return {"train": events(train.table()), "test": events(test.table()), "planted": planted}


def _fit(data: dict, sequence: str | None, duration: str | None) -> TraceModel:
    return TraceModel(
        sequence=sequence,
        duration=duration,
        sequence_params=SMALL_LSTM if sequence == "lstm" else {},
        duration_params=SMALL_LSTM_DURATION if duration == "lstm-duration" else {},
    ).fit(data["train"])


@pytest.fixture(scope="module", params=["lstm", "ngram"])
def sequence_model(request: pytest.FixtureRequest, data: dict) -> TraceModel:
    return _fit(data, request.param, None)


@pytest.fixture(scope="module", params=["robust", "lstm-duration"])
def duration_model(request: pytest.FixtureRequest, data: dict) -> TraceModel:
    return _fit(data, None, request.param)


def _findings_by_span(model: TraceModel, data: dict) -> tuple[dict, int]:
    result = model.detect(data["test"])
    rows = result.findings.to_pylist()
    planted_spans = set(data["planted"].values())
    planted_traces = {r["trace_id"] for r in rows if r["span_id"] in planted_spans}
    false_pos = sum(1 for r in rows if r["trace_id"] not in planted_traces)
    return {r["span_id"]: r for r in rows}, false_pos


@pytest.mark.parametrize("kind", SEQUENCE_PLANTS)
def test_sequence_anomalies_detected_and_explained(
    sequence_model: TraceModel, data: dict, kind: str
) -> None:
    by_span, _ = _findings_by_span(sequence_model, data)
    span = data["planted"][kind]
    assert span in by_span, f"{kind}: no finding names the planted span"
    f = by_span[span]
    details = json.loads(f["details"])
    assert f["entity"] == "trace" and f["detector"].startswith("sequence:")
    seq = details["sequence"]
    assert seq is not None and seq["expected"], details
    if kind == "unknown_op":
        assert details["reason"] == "unknown event"
        assert "SELECT secrets" in f["reason"]
        assert (f["service"], f["operation"]) == ("order-service", "SELECT secrets")
    else:
        assert details["reason"] in ("unexpected event", "impossible transition")
        assert seq["p"] < 0.05
    expected = [e["key"] for e in seq["expected"]]
    if kind == "missing_call":  # the missing call is what was expected instead
        assert "user-service" in expected[0], expected
    if kind == "wrong_order":
        assert f["service"] == "order-service"  # a client span blames its callee
        assert details["blame"]["instance"] == "order-service-7d9f8-abcde"
    if kind == "extra_call":
        assert "order-service" in expected[0], expected


def test_sequence_models_stay_quiet_on_normal_traces(
    sequence_model: TraceModel, data: dict
) -> None:
    by_span, false_pos = _findings_by_span(sequence_model, data)
    assert false_pos <= 2, false_pos  # 200 normal traces, target FPR 0.1 %
    # slowdowns do not change the sequence
    assert data["planted"]["slow_span"] not in by_span


@pytest.mark.parametrize("kind", DURATION_PLANTS)
def test_duration_anomalies_detected_and_explained(
    duration_model: TraceModel, data: dict, kind: str
) -> None:
    by_span, _ = _findings_by_span(duration_model, data)
    span = data["planted"][kind]
    assert span in by_span, f"{kind}: no finding names the planted span"
    f = by_span[span]
    details = json.loads(f["details"])
    dur = details["duration"]
    assert f["detector"].startswith("duration:")
    assert f["service"] == "order-service"
    if kind == "slow_span":
        assert details["reason"] == "slow span" and f["operation"] == "SELECT orders"
        assert dur["duration_ms"] > 2000 > 10 * dur["normal_duration_ms"]
    else:
        assert details["reason"] == "slow self time" and f["operation"] == "/api/v1/orders"
        assert dur["self_ms"] > 2000 > 10 * dur["normal_self_ms"]
    assert 1500 < dur["excess_ms"] <= dur["trace_excess_ms"]
    assert f["score"] > f["threshold"] == 1.0


def test_duration_models_stay_quiet_on_normal_traces(
    duration_model: TraceModel, data: dict
) -> None:
    by_span, false_pos = _findings_by_span(duration_model, data)
    assert false_pos <= 2, false_pos
    assert data["planted"]["wrong_order"] not in by_span


def test_both_detectors_together_catch_every_plant(data: dict) -> None:
    model = _fit(data, "ngram", "robust")
    result = model.detect(data["test"])
    named = set(result.findings.column("span_id").to_pylist())
    assert set(data["planted"].values()) <= named
    scores = result.score
    flagged = result.anomalous
    assert (scores[flagged] > 1.0).all() or result.findings.num_rows == flagged.sum()
    assert np.isfinite(scores).all()
