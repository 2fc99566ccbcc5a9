"""`spanomaly train`, `detect`, `rca` and `evaluate` as a user runs them (point detection of
instance windows and root cause)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.rca import scenario as sc
from tests.test_cli import run


def sec(ns: int) -> str:
    return str(ns / 1e9)


def test_train_detect_rca_evaluate(tmp_path: Path) -> None:
    sc.build(str(tmp_path / "s.duckdb"))
    model = str(tmp_path / "model")
    r = run("train", "--model", model, "--from", sec(sc.TRAIN[0]), "--to", sec(sc.TRAIN[1]),
            "--sequence", "ngram", "--json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["point"]["detector"] == "ecod" and doc["point"]["metrics"]["windows"] > 100
    r = run("detect", "--model", model, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    det = json.loads(r.stdout)
    assert det["instances_scored"] > 400 and det["anomalous_windows"] > 0

    lo, hi = sec(sc.CPU_FAULT[0]), sec(sc.CPU_FAULT[1] + 60 * sc.NS)
    r = run("rca", "--model", model, "--from", lo, "--to", hi, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert set(rows[0]) == {"rank", "service", "instance", "operation", "score", "evidence"}
    assert rows[0]["rank"] == 1 and rows[0]["service"] == "auth-service"
    r = run("rca", "--model", model, "--from", lo, "--to", hi, cwd=tmp_path)
    assert r.returncode == 0 and "auth-service" in r.stdout.splitlines()[0]

    r = run("evaluate", "--model", model, "--from", sec(sc.TEST[0]), "--to", sec(sc.TEST[1]),
            "--json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["rca"]["service"]["top1"] == 1.0 and ev["fault_recall"] == 1.0
    assert set(ev["per_type"]) == {"cpu_contention", "network_delay"}
    r = run("evaluate", "--model", model, "--method", "baseline", cwd=tmp_path)
    assert r.returncode == 0 and "AS@1" in r.stdout


def test_bad_usage_is_one_line(tmp_path: Path) -> None:
    sc.build(str(tmp_path / "s.duckdb"))
    r = run("rca", "--evidence", "logs", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--evidence" in r.stderr
    r = run("evaluate", "--method", "baseline", "--model", str(tmp_path / "none"), cwd=tmp_path)
    assert r.returncode == 1 and "self-time profile" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run("rca", "--from", "2023-01-30T12:00", "--to", "2023-01-30T11:00", cwd=tmp_path)
    assert r.returncode == 2 and "--from must be before --to" in r.stderr
