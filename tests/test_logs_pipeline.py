"""Log lines as trace events end to end: `spanomaly train --logs --exclude`, detect and rca
find a caught exception (answered 500 up to the root) and a wrong (empty) result that
change no timing, and blame the service that logged them; without logs the empty result
passes and the error is blamed on the root's service."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spanomaly import pipeline
from spanomaly.ingest.base import Chunk
from spanomaly.schema import LOGS, SPANS
from spanomaly.store.duckdb import DuckDBStore
from tests.synthetic import T0, TraceBuilder, normal_traces, order_request
from tests.test_cli import run
from tests.test_sequence_cli import spans_table

NS = 1_000_000_000
ERROR_LINE = "price lookup for item {n} failed, fallback price taken [KeyError: 'p{n}']"
EMPTY_LINE = "search for user {n} returned an empty result"


def _lines(spans: pa.Table, special: dict[str, tuple[str, str]]) -> pa.Table:
    """One line per order-service handler span and auth-service login span; the traces in
    `special` log (severity, text) instead in order-service."""
    rows = []
    for r in spans.to_pylist():
        if r["service"] == "order-service" and r["operation"] == "/api/v1/orders":
            severity, text = special.get(r["trace_id"], ("INFO", "order {n} stored for user {n}"))
        elif r["service"] == "auth-service" and r["operation"] == "/api/v1/auth/login":
            severity, text = "INFO", "login of user {n} accepted"
        else:
            continue
        n = int(r["trace_id"][:6], 16)
        rows.append(
            {"time_ns": r["start_ns"] + 300_000, "service": r["service"],
             "instance": r["instance"], "trace_id": r["trace_id"], "span_id": r["span_id"],
             "severity": severity, "body": f"12:00:00.{n % 1000:03d} {severity} "
             + text.format(n=n), "template_id": None, "params": None}
        )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=LOGS)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """400 normal traces (a 'fault window' of erroring ones in the middle), then 50 normal
    traces and a caught exception and an empty result, timing unchanged."""
    tmp = tmp_path_factory.mktemp("logs")
    b = TraceBuilder(seed=5)
    normal_traces(b, 400)
    for i in range(20):  # errors between T0+100 s and T0+102 s: to be excluded
        b.add(order_request(), T0 + 100 * NS + i * 100_000_000)
    normal_traces(b, 50, start_ns=T0 + 3600 * NS)
    faulty = {
        "code_error": b.add(order_request(), T0 + 3700 * NS),
        "wrong_result": b.add(order_request(), T0 + 3701 * NS),
    }
    spans = spans_table(b.table())
    ids, traces = spans.column("span_id").to_pylist(), spans.column("trace_id").to_pylist()
    trace_of = dict(zip(ids, traces, strict=True))
    starts = spans.column("start_ns").to_pylist()
    in_window = {
        t for t, s in zip(traces, starts, strict=True) if T0 + 100 * NS <= s < T0 + 103 * NS
    }
    special = {t: ("ERROR", ERROR_LINE) for t in in_window}
    special[trace_of[faulty["code_error"]["order_call"]]] = ("ERROR", ERROR_LINE)
    # the caught exception becomes a 500 that the root span reports too: the first deviating
    # event is the root, the error line is what names the culprit
    error_trace = trace_of[faulty["code_error"]["order_call"]]
    root = pc.and_(
        pc.equal(spans.column("trace_id"), error_trace), pc.is_null(spans.column("parent_id"))
    )
    status = pc.if_else(root, "error", spans.column("status"))
    spans = spans.set_column(spans.schema.get_field_index("status"), SPANS.field("status"), status)
    special[trace_of[faulty["wrong_result"]["order_call"]]] = ("WARN", EMPTY_LINE)
    db = tmp / "s.duckdb"
    with DuckDBStore(db) as s:
        s.write(Chunk("spans", spans))
        s.write(Chunk("logs", _lines(spans, special)))
    return {
        "db": db,
        "tmp": tmp,
        "faulty": {k: trace_of[v["order_call"]] for k, v in faulty.items()},
    }


def _flagged(db: Path) -> dict[str, dict]:
    with DuckDBStore(db, read_only=True) as s:
        rows = s.sql("SELECT * FROM findings WHERE entity = 'trace'").to_pylist()
    return {r["trace_id"]: r for r in rows}


def test_train_with_logs_and_excluded_window_then_detect(scenario: dict, tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    db.write_bytes(scenario["db"].read_bytes())
    hole = f"{(T0 + 100 * NS) / NS}/{(T0 + 103 * NS) / NS}"
    train = run(
        "train", "--db", str(db), "--model", str(tmp_path / "m"), "--to",
        str((T0 + 3000 * NS) / NS), "--exclude", hole, "--sequence", "ngram", "--logs",
        "--point", "none", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    doc = json.loads(train.stdout)
    assert doc["traces"] == 400  # the 20 traces of the hole are left out
    assert doc["logs"]["templates"] == 2  # order stored, login accepted: no error learned
    assert json.loads((tmp_path / "m" / "config.json").read_text())["features"]["logs"] is True
    # one planted trace per kind: no other finding confirms it (detect.confirm), so every
    # finding is stored here
    det = run("detect", "--db", str(db), "--model", str(tmp_path / "m"), "--from",
              str((T0 + 3500 * NS) / NS), "--confirm-gap", "0", "--json", cwd=tmp_path)  # fmt: skip
    assert det.returncode == 0, det.stderr
    flagged = _flagged(db)
    for kind, trace in scenario["faulty"].items():
        assert trace in flagged, kind
        finding = flagged[trace]
        assert finding["service"] == "order-service", kind
        details = json.loads(finding["details"])
        assert details["event"]["key"].startswith("log | order-service"), kind
    assert len(flagged) <= 3  # the 50 normal traces (with their lines) pass
    suspects = pipeline.rca(DuckDBStore(db, read_only=True), T0 + 3699 * NS, T0 + 3702 * NS)
    assert suspects[0]["service"] == "order-service"
    # detect stored each scored line's template: log lines can be grouped by template
    assert json.loads(det.stdout)["log_lines_templated"] > 0
    with DuckDBStore(db, read_only=True) as s:
        groups = s.sql(
            "SELECT template_id, any_value(params) AS params, count(*) AS n FROM logs "
            f"WHERE time_ns >= {T0 + 3500 * NS} GROUP BY 1 ORDER BY n DESC"
        ).to_pylist()
        before = s.sql(f"SELECT count(*) AS n FROM logs WHERE time_ns < {T0 + 3500 * NS} "
                       "AND template_id IS NOT NULL").to_pylist()[0]["n"]  # fmt: skip
    assert all(g["template_id"] is not None for g in groups) and len(groups) >= 2
    assert groups[0]["params"] is not None
    assert before == 0  # only the period detect scored


def test_without_logs_the_same_faults_pass(scenario: dict, tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    db.write_bytes(scenario["db"].read_bytes())
    with DuckDBStore(db) as store:
        options = pipeline.TrainOptions(sequence="ngram", logs=False)
        doc = pipeline.train(store, tmp_path / "m", None, T0 + 3000 * NS, options=options)
        assert doc["logs"] is None
        assert not (tmp_path / "m" / "templates.json").exists()
        pipeline.detect(store, tmp_path / "m", T0 + 3500 * NS, confirm_gap_s=0)
    flagged = _flagged(db)
    assert scenario["faulty"]["wrong_result"] not in flagged
    assert flagged[scenario["faulty"]["code_error"]]["service"] == "gateway"


def test_online_scoring_sees_the_log_lines_as_detect_does(scenario: dict, tmp_path: Path) -> None:
    import time

    from spanomaly.pipeline.online import OnlineDetector

    db = tmp_path / "s.duckdb"
    db.write_bytes(scenario["db"].read_bytes())
    model = tmp_path / "m"
    with DuckDBStore(db) as store:
        pipeline.train(store, model, None, T0 + 3000 * NS, [(T0 + 100 * NS, T0 + 103 * NS)],
                       options=pipeline.TrainOptions(sequence="ngram", logs=True))  # fmt: skip
        later = store.sql(
            "SELECT DISTINCT trace_id FROM spans WHERE start_ns >= ?", [T0 + 3500 * NS]
        ).column("trace_id")
        online = OnlineDetector(model, interval_s=0.02, clock=lambda: T0, confirm_gap_s=0)
        online.attach(store)
        online.start()
        online.on_complete(pa.table({"trace_id": later}))
        deadline = time.monotonic() + 60
        while online.counts["traces_scored"] < len(later) and time.monotonic() < deadline:
            time.sleep(0.05)
        online.stop()
    flagged = _flagged(db)
    assert set(scenario["faulty"].values()) <= set(flagged)  # named by their log lines
    assert len(flagged) <= 3  # normal traces with their lines pass, as in `detect`
    for trace in scenario["faulty"].values():
        assert json.loads(flagged[trace]["details"])["event"]["key"].startswith("log | order")


def test_an_ordinary_line_out_of_its_flow_is_no_root_cause(scenario: dict, tmp_path: Path) -> None:
    """A known INFO line written twice changes a trace's log flow only: weak evidence, so
    the trace is not flagged and names no suspect; the error line still does."""
    db = tmp_path / "s.duckdb"
    db.write_bytes(scenario["db"].read_bytes())
    with DuckDBStore(db) as store:
        line = store.sql(
            "SELECT l.* FROM logs l JOIN spans s USING (trace_id, span_id) WHERE s.start_ns "
            "BETWEEN ? AND ? AND l.service = 'order-service' AND l.severity = 'INFO' "
            "ORDER BY l.time_ns LIMIT 1",
            [T0 + 3600 * NS, T0 + 3606 * NS],
        )
        again = line.set_column(0, "time_ns", pc.add(line.column("time_ns"), 1000))
        store.write(Chunk("logs", again.cast(LOGS)))
        chatty = line.column("trace_id")[0].as_py()
        pipeline.train(store, tmp_path / "m", None, T0 + 3000 * NS, [(T0 + 100 * NS, T0 + 103 * NS)],
                       options=pipeline.TrainOptions(sequence="ngram", logs=True))  # fmt: skip
        pipeline.detect(store, tmp_path / "m", T0 + 3500 * NS, confirm_gap_s=0)
    flagged = _flagged(db)
    assert chatty not in flagged
    error = json.loads(flagged[scenario["faulty"]["code_error"]]["details"])
    assert error["log_flow_only"] is False
    with DuckDBStore(db, read_only=True) as store:
        assert pipeline.rca(store, T0 + 3600 * NS, T0 + 3606 * NS) == []
        suspects = pipeline.rca(store, T0 + 3600 * NS, T0 + 3702 * NS)
    assert [s["service"] for s in suspects] == ["order-service"]


def test_log_window_features_only_where_lines_cover_the_training(
    scenario: dict, tmp_path: Path
) -> None:
    """Shares of warning and error lines become window features where the instances wrote
    lines in the training windows, not where most of them have none (TrainTicket)."""
    db = tmp_path / "s.duckdb"
    db.write_bytes(scenario["db"].read_bytes())
    to = T0 + 3000 * NS
    with DuckDBStore(db) as store:
        options = pipeline.TrainOptions(sequence="ngram", logs=True)
        pipeline.train(store, tmp_path / "m", None, to, options=options)
        point = pipeline.PointOptions(window_s=10.0)
        hole = [(T0 + 100 * NS, T0 + 103 * NS)]
        doc = pipeline.train_points(store, tmp_path / "m", None, to, hole, options=point)
        assert doc["log_windows"] is True and doc["log_coverage"] >= 0.9
    con = duckdb.connect(str(db))
    con.execute(f"DELETE FROM logs WHERE time_ns > {T0 + 20 * NS}")  # half the period only
    con.close()
    with DuckDBStore(db) as store:
        doc = pipeline.train_points(store, tmp_path / "m", None, to, hole, options=point)
        assert doc["log_windows"] is False and doc["log_coverage"] < 0.9
        features = json.loads((tmp_path / "m" / "point" / "config.json").read_text())
        assert not any(
            f.startswith(("z.l.", "d.l.")) for f in features["sources"]["traces"]["features"]
        )
