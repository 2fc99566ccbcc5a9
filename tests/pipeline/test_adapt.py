"""`spanomaly adapt`: a model learns a new deployment's normal from a short period and keeps
what it knew."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from spanomaly import pipeline
from spanomaly.errors import InputError
from spanomaly.ingest.base import Chunk
from spanomaly.pipeline.model_dir import load_templates
from spanomaly.schema import LOGS
from spanomaly.store.duckdb import DuckDBStore
from tests.synthetic import T0
from tests.test_cli import run
from tests.test_logs_pipeline import scenario  # noqa: F401  (the fixture)

NS = 1_000_000_000
NEW_LINE = "connection pool {n} exhausted, retrying on another node"


def _redeployed(scenario: dict, tmp_path: Path) -> Path:  # noqa: F811
    """The scenario's store where, from T0 + 3600 s, every order handler also logs an
    error line of a new kind: normal in that deployment."""
    db = tmp_path / "s.duckdb"
    db.write_bytes(scenario["db"].read_bytes())
    with DuckDBStore(db) as store:
        rows = store.sql(
            "SELECT * FROM logs WHERE service = 'order-service' AND time_ns BETWEEN ? AND ?",
            [T0 + 3600 * NS, T0 + 3690 * NS],
        ).to_pylist()
        extra = [
            {**r, "time_ns": r["time_ns"] + 1000, "severity": "ERROR",
             "body": "12:00:01.000 ERROR " + NEW_LINE.format(n=i)}
            for i, r in enumerate(rows)
        ]  # fmt: skip
        store.write(Chunk("logs", pa.Table.from_pylist(extra, schema=LOGS)))
    return db


def _flagged(db: Path, lo: int, hi: int) -> set[str]:
    with DuckDBStore(db, read_only=True) as s:
        rows = s.sql(
            "SELECT trace_id FROM findings WHERE entity = 'trace' AND time_ns BETWEEN ? AND ?",
            [lo, hi],
        )
    return set(rows.column("trace_id").to_pylist())


def test_adapt_learns_the_new_normal_and_keeps_the_old(scenario: dict, tmp_path: Path) -> None:  # noqa: F811
    db = _redeployed(scenario, tmp_path)
    model = tmp_path / "m"
    later = (T0 + 3603 * NS, T0 + 3606 * NS)
    with DuckDBStore(db) as store:
        pipeline.train(store, model, None, T0 + 3000 * NS, [(T0 + 100 * NS, T0 + 103 * NS)],
                       options=pipeline.TrainOptions(sequence="ngram", logs=True),
                       point=pipeline.PointOptions(window_s=1.0))  # fmt: skip
        known = load_templates(model).to_json()["templates"]
        pipeline.detect(store, model, *later, confirm_gap_s=0)
    assert len(_flagged(db, *later)) >= 10  # the new error lines: unknown events
    out = run("adapt", "--model", str(model), "--db", str(db), "--from", str(T0 / NS + 3600),
              "--to", str(T0 / NS + 3603), "--json", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["new_templates"] == 1 and doc["traces"]["traces"] == 30
    assert doc["traces"]["flagged_before"] >= 10 and doc["traces"]["flagged_after"] == 0
    templates = load_templates(model).to_json()["templates"]
    assert templates[: len(known)] == known  # known templates stay as they were
    cfg = json.loads((model / "config.json").read_text())
    assert [a["traces"]["traces"] for a in cfg["trained_on"]["adapted"]] == [30]
    with DuckDBStore(db) as store:
        store.sql("DELETE FROM findings")
        pipeline.detect(store, model, later[0], T0 + 3702 * NS, confirm_gap_s=0)
    assert not _flagged(db, *later)  # the new deployment's normal passes
    assert scenario["faulty"]["code_error"] in _flagged(db, later[0], T0 + 3702 * NS)


def test_adapt_needs_traces_in_its_period(scenario: dict, tmp_path: Path) -> None:  # noqa: F811
    db = tmp_path / "s.duckdb"
    db.write_bytes(scenario["db"].read_bytes())
    with DuckDBStore(db) as store:
        pipeline.train(store, tmp_path / "m", None, T0 + 3000 * NS,
                       options=pipeline.TrainOptions(sequence="ngram", logs=True))  # fmt: skip
        with pytest.raises(InputError, match="no traces start in the period"):
            pipeline.adapt(store, tmp_path / "m", T0 + 9000 * NS, T0 + 9001 * NS)
        with pytest.raises(InputError, match="--from must be before --to"):
            pipeline.adapt(store, tmp_path / "m", T0 + 9001 * NS, T0 + 9000 * NS)
