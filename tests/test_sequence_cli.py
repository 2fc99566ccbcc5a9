"""`spanomaly train`, `detect` and `feedback` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from spanomaly.ingest.base import Chunk
from spanomaly.schema import SPANS
from spanomaly.store.duckdb import DuckDBStore
from tests.synthetic import T0, TraceBuilder, normal_traces, plant
from tests.test_cli import run

NS = 1_000_000_000


def spans_table(table: pa.Table) -> pa.Table:
    """A builder's table with every SPANS column."""
    cols = {
        f.name: table.column(f.name)
        if f.name in table.column_names
        else pa.nulls(len(table), f.type)
        for f in SPANS
    }
    return pa.table(cols, schema=SPANS)


@pytest.fixture
def store(tmp_path: Path) -> dict:
    """A store with 400 normal traces from T0, then 50 normal and 3 planted ones."""
    b = TraceBuilder(seed=11)
    normal_traces(b, 400)
    normal_traces(b, 50, start_ns=T0 + 3600 * NS)
    planted = {k: plant(b, k, T0 + 3700 * NS + i * NS) for i, k in
               enumerate(["missing_call", "unknown_op", "slow_span"])}  # fmt: skip
    with DuckDBStore(tmp_path / "s.duckdb") as s:
        s.write(Chunk("spans", spans_table(b.table())))
    return {"planted": planted, "db": tmp_path / "s.duckdb"}


def test_train_detect_feedback(tmp_path: Path, store: dict) -> None:
    train = run(
        "train", "--model", "m", "--to", str((T0 + 3000 * NS) / NS), "--sequence", "ngram",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    doc = json.loads(train.stdout)
    assert doc["traces"] == 400 and doc["detectors"]["sequence"]["name"] == "ngram"
    assert doc["detectors"]["duration"]["name"] == "robust"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "duration.safetensors", "point", "sequence.safetensors", "vocabulary.json",
    ]  # fmt: skip
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["trained_on"]["period_to"].startswith("2023-11-14T23:03:20")

    # the planted anomalies are lone ones: by default nothing confirms them (detect.confirm)
    lone = run("detect", "--model", "m", "--from", "2023-11-14T23:00:00Z", "--json", cwd=tmp_path)
    assert lone.returncode == 0, lone.stderr
    assert json.loads(lone.stdout)["alarms"] == 0
    with DuckDBStore(store["db"], read_only=True) as s:
        stored = set(s.table("findings").column("span_id").to_pylist())
    assert not set(store["planted"].values()) & stored
    det = run("detect", "--model", "m", "--from", "2023-11-14T23:00:00Z", "--confirm-gap", "0",
              "--json", cwd=tmp_path)  # fmt: skip
    assert det.returncode == 0, det.stderr
    doc = json.loads(det.stdout)
    assert set(doc) == {
        "traces_scored", "anomalous_traces", "instances_scored", "anomalous_windows", "alarms",
    }  # fmt: skip
    assert doc["traces_scored"] == 53 and 3 <= doc["anomalous_traces"] <= 4
    assert 1 <= doc["alarms"] <= doc["anomalous_traces"]
    with DuckDBStore(store["db"], read_only=True) as s:
        findings = s.table("findings").to_pylist()
    by_span = {f["span_id"]: f for f in findings}
    assert set(store["planted"].values()) <= set(by_span)
    unknown = by_span[store["planted"]["unknown_op"]]

    # detect is idempotent: the same findings are stored once
    again = run("detect", "--model", "m", "--confirm-gap", "0", "--json", cwd=tmp_path)
    assert json.loads(again.stdout)["traces_scored"] == 453
    with DuckDBStore(store["db"], read_only=True) as s:
        assert s.table("findings").num_rows >= len(findings)
        ids = s.table("findings").column("finding_id").to_pylist()
        assert len(ids) == len(set(ids))

    fb = run("feedback", "--finding", unknown["finding_id"], "--normal", "--model", "m",
             "--json", cwd=tmp_path)  # fmt: skip
    assert fb.returncode == 0, fb.stderr
    doc = json.loads(fb.stdout)
    assert doc["model_updated"] and doc["flagged_before"] == 1 and doc["flagged_after"] == 0
    assert doc["new_keys"] == 1
    assert isinstance(doc["clears"], int) and f"{doc['clears']} other" in doc["changed"]
    with DuckDBStore(store["db"], read_only=True) as s:
        marked = s.sql(
            "SELECT feedback FROM findings WHERE finding_id = ?", [unknown["finding_id"]]
        ).to_pylist()
    assert marked == [{"feedback": "normal"}]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["trained_on"]["feedback_traces"] == 1
    human = run("feedback", "--finding", unknown["finding_id"], "--normal", "--model", "m",
                cwd=tmp_path)  # fmt: skip
    assert "marked normal already, nothing changed" in human.stdout  # a repeat: idempotent
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["trained_on"]["feedback_traces"] == 1  # not learnt twice


def test_train_window_exclude_and_lstm(tmp_path: Path, store: dict) -> None:
    out = run(
        "train", "--model", "w", "--window", "1h", "--to", str((T0 + 3600 * NS) / NS),
        "--exclude", f"{T0 / NS}/{(T0 + 10 * NS) / NS}", "--epochs", "3", "--duration", "none",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["traces"] == 300  # 400 in the hour, 100 excluded (one every 100 ms)
    assert list(doc["detectors"]) == ["sequence"] and doc["detectors"]["sequence"]["name"] == "lstm"
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["trained_on"]["window_s"] == 3600 and len(cfg["trained_on"]["excluded"]) == 1
    assert cfg["detectors"]["sequence"]["params"]["epochs"] == 3
    human = run("detect", "--model", "w", cwd=tmp_path)
    assert human.returncode == 0 and "scored 453 traces" in human.stdout


def test_train_window_from_a_start(tmp_path: Path, store: dict) -> None:
    """--window with --from: the window from then on (not the last one before the end)."""
    out = run("train", "--model", "f", "--window", "10m", "--from", str(T0 / NS), "--sequence",
              "ngram", "--point", "ecod", "--json", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["from_ns"] >= T0 and doc["to_ns"] < T0 + 600 * NS
    human = run("train", "--model", "g", "--window", "10m", "--from", str(T0 / NS), "--sequence",
                "ngram", cwd=tmp_path)  # fmt: skip
    assert "windows  ecod on traces" in human.stdout or "windows  traces:" in human.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["detect", "--model", "nope"], 1, "nope: no trained model there"),
        (["train", "--from", "yesterday"], 2, "--from: 'yesterday' is not ISO-8601"),
        (["train", "--window", "3 weeks"], 2, "--window: '3 weeks' is not a duration"),
        (["train", "--exclude", "5"], 2, "--exclude: '5' is not FROM/TO"),
        (["train", "--window", "1m", "--from", "1", "--to", "9"], 2, "not both"),
        (["train", "--sequence", "gru"], 2, "sequence detector: 'gru' is not one of"),
        (["train", "--key-fields", "service,colour"], 2, "--key-fields: colour"),
        (["train", "--from", "2030-01-01"], 1, "no traces or metric points to train on"),
        (["detect", "--engine", "spark"], 2, "--engine: 'spark' is not one of"),
        (["feedback", "--finding", "x"], 2, "--normal"),
        (["feedback", "--finding", "x", "--normal"], 2, "no finding 'x'"),
    ],
)
def test_errors_are_one_line(
    tmp_path: Path, store: dict, args: list[str], code: int, needle: str
) -> None:
    out = run(*args, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code, out.stderr
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_a_model_of_another_version_is_refused(tmp_path: Path, store: dict) -> None:
    assert run("train", "--model", "m", "--sequence", "ngram", cwd=tmp_path).returncode == 0
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["format_version"] = 99
    cfg_path.write_text(json.dumps(cfg))
    out = run("detect", "--model", "m", cwd=tmp_path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "model format version 99" in lines[0] and "retrain" in lines[0]
