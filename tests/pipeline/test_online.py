"""Online detection: completed traces and closed instance windows scored as they come, the
model swapped by a retrain, and feedback reaching the loaded model."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest

from spanomaly.ingest.base import Chunk
from spanomaly.pipeline import PointOptions, TrainOptions, train
from spanomaly.pipeline.online import OnlineDetector
from spanomaly.store.duckdb import DuckDBStore
from tests.rca import scenario as sc


def _wait(cond: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def scenario(tmp_path: Path) -> tuple[DuckDBStore, Path]:
    sc.build(str(tmp_path / "s.duckdb"))
    store = DuckDBStore(tmp_path / "s.duckdb")
    model = tmp_path / "model"
    train(store, model, *sc.TRAIN, options=TrainOptions(sequence="ngram"),
                 point=PointOptions(window_s=60.0))  # fmt: skip
    yield store, model
    store.close()


def _trace_ids(store: DuckDBStore, lo: int, hi: int) -> pa.Array:
    return store.sql(
        "SELECT trace_id FROM spans GROUP BY trace_id HAVING min(start_ns) >= ? "
        "AND min(start_ns) < ?",
        [lo, hi],
    ).column("trace_id")


def test_completed_traces_and_closed_windows_are_scored(
    scenario: tuple[DuckDBStore, Path],
) -> None:
    store, model = scenario
    now = [sc.TEST[0]]
    online = OnlineDetector(model, interval_s=0.02, grace_s=0, clock=lambda: now[0])
    online.attach(store)
    online.start()
    try:
        slow = _trace_ids(store, *sc.NET_FAULT)
        online.on_complete(pa.table({"trace_id": slow}))
        _wait(lambda: online.counts["traces_scored"] == len(slow))
        now[0] = sc.TEST[1]  # the test period's instance windows close
        _wait(lambda: online.counts["instances_scored"] > 0)
    finally:
        online.stop()
    found = store.sql("SELECT entity, service, time_ns FROM findings").to_pylist()
    traces = [f for f in found if f["entity"] == "trace"]
    orders = (
        store.sql(
            "SELECT count(DISTINCT trace_id) AS n FROM spans WHERE service = 'order-service' "
            "AND trace_id IN (SELECT trace_id FROM spans GROUP BY trace_id "
            "HAVING min(start_ns) >= ? AND min(start_ns) < ?)",
            list(sc.NET_FAULT),
        )
        .column("n")[0]
        .as_py()
    )
    assert len(traces) >= 0.9 * orders  # the network delay slows every order
    assert {f["service"] for f in traces} == {"order-service"}
    windows = [f for f in found if f["entity"] == "instance"]
    cpu = [f for f in windows if sc.CPU_FAULT[0] <= f["time_ns"] < sc.CPU_FAULT[1]]
    auth = [f for f in cpu if f["service"] == "auth-service"]
    assert len(auth) >= 2 and len(auth) > len(cpu) / 2  # the CPU-starved instance stands out
    status = online.status()
    assert status["loaded"] and status["vocabulary"] > 0
    assert status["scored"]["traces_scored"] == len(slow)
    assert status["point"]["window_s"] == 60.0


def _hold_back(store: DuckDBStore, spans_from: int, metrics_from: int) -> dict[str, pa.Table]:
    """Take the spans and metrics from these times out of the store: still on their way."""
    later = {
        "spans": store.sql("SELECT * FROM spans WHERE start_ns >= ?", [spans_from]),
        "metrics": store.sql("SELECT * FROM metrics WHERE time_ns >= ?", [metrics_from]),
    }
    store.delete("spans", "start_ns >= ?", [spans_from])
    store.delete("metrics", "time_ns >= ?", [metrics_from])
    return later


def _started_ahead(store: DuckDBStore, model: Path) -> OnlineDetector:
    """A detector whose clock is far ahead of the store (a collector busy training, its
    writer behind), once it has scored what it could."""
    online = OnlineDetector(model, interval_s=0.02, grace_s=0, clock=lambda: sc.TEST[1])
    online.attach(store)
    online.start()
    try:
        online._closed_ns = sc.TEST[0]
        _wait(lambda: online.counts["instances_scored"] > 0)
        time.sleep(0.3)
    except BaseException:
        online.stop()
        raise
    return online


def test_windows_wait_for_data_the_store_does_not_hold_yet(
    scenario: tuple[DuckDBStore, Path],
) -> None:
    store, model = scenario
    cut = sc.CPU_FAULT[0] - 2 * sc.MIN  # what came later is still on its way to the store
    later = _hold_back(store, cut, cut)
    online = _started_ahead(store, model)
    try:
        assert online._closed_ns is not None and online._closed_ns <= cut
        for table, rows in later.items():  # it arrives: its windows are scored whole
            store.write(Chunk(table, rows))  # type: ignore[arg-type]
        _wait(lambda: online._closed_ns is not None and online._closed_ns >= sc.CPU_FAULT[1])
    finally:
        online.stop()
    auth = store.sql(
        "SELECT count(*) AS n FROM findings WHERE entity = 'instance' "
        "AND service = 'auth-service' AND time_ns > ? AND time_ns <= ?",
        [sc.CPU_FAULT[0], sc.CPU_FAULT[1] + sc.MIN],
    )
    assert auth.column("n")[0].as_py() >= 2  # the CPU fault's windows, scored with their data


def test_windows_wait_for_spans_that_lag_behind_the_metrics(
    scenario: tuple[DuckDBStore, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from spanomaly.pipeline import online as online_module

    store, model = scenario
    cut = sc.CPU_FAULT[0] - 4 * sc.MIN  # the spans' writer is behind the metrics' by 3 min
    later = _hold_back(store, cut, cut + 3 * sc.MIN)
    monkeypatch.setattr(online_module, "SOURCE_STOPPED_S", 600.0)  # 3 min is a lag here
    online = _started_ahead(store, model)
    try:
        # the windows past the spans are not scored as windows without traffic
        assert online._closed_ns is not None and online._closed_ns <= cut
        # with spans stopped for good (over a minute behind the metrics, by default), the
        # windows go on without them
        monkeypatch.setattr(online_module, "SOURCE_STOPPED_S", 60.0)
        _wait(lambda: online._closed_ns is not None and online._closed_ns > cut)
    finally:
        online.stop()
        for table, rows in later.items():
            store.write(Chunk(table, rows))  # type: ignore[arg-type]


def test_normal_traces_raise_no_findings(scenario: tuple[DuckDBStore, Path]) -> None:
    store, model = scenario
    online = OnlineDetector(model, interval_s=0.02, clock=lambda: sc.TEST[0])
    online.attach(store)
    online.start()
    quiet = _trace_ids(store, sc.TEST[0], sc.CPU_FAULT[0])
    online.on_complete(pa.table({"trace_id": quiet}))
    _wait(lambda: online.counts["traces_scored"] == len(quiet))
    online.stop()
    assert online.counts["anomalous_traces"] <= 0.01 * len(quiet)


def test_retrain_swaps_the_model_and_feedback_updates_it(
    scenario: tuple[DuckDBStore, Path], tmp_path: Path
) -> None:
    store, _ = scenario
    fresh = tmp_path / "fresh-model"
    online = OnlineDetector(fresh, clock=lambda: sc.TEST[0],
                            train_options=TrainOptions(sequence="ngram"))  # fmt: skip
    online.attach(store)
    assert not online.status()["loaded"]  # no model yet: traces are not scored
    online.on_complete(pa.table({"trace_id": _trace_ids(store, *sc.NET_FAULT)}))
    online.start()
    doc = online.retrain(sc.TRAIN[0], sc.TRAIN[0] + 20 * sc.MIN, point_window_s=30.0)
    assert (fresh / "config.json").exists() and not list(tmp_path.glob(".train-*"))
    status = online.status()
    assert status["loaded"] and status["point"]["window_s"] == 30.0
    assert status["trained_on"]["traces"] == doc["traces"]
    slow = _trace_ids(store, *sc.NET_FAULT)
    online.on_complete(pa.table({"trace_id": slow}))
    _wait(lambda: online.counts["traces_scored"] == len(slow))
    finding = store.sql("SELECT finding_id FROM findings WHERE entity = 'trace' LIMIT 1")
    fid = finding.column("finding_id")[0].as_py()
    online.stop()
    before = online.status()["trained_on"]["feedback_traces"]
    answer = online.feedback(fid)
    assert answer["model_updated"] is True
    assert online.status()["trained_on"]["feedback_traces"] == before + 1
    feedback = store.sql("SELECT feedback FROM findings WHERE finding_id = ?", [fid])
    assert feedback.column("feedback")[0].as_py() == "normal"
