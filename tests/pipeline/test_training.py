"""Training wiring: supervised window detectors learn from the store's fault labels, and
every point detector is reachable by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spanomaly import pipeline
from spanomaly.detect.base import detectors
from spanomaly.errors import InputError
from spanomaly.store.duckdb import DuckDBStore
from tests.rca import scenario as sc


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("sc") / "s.duckdb"
    sc.build(str(db))
    with DuckDBStore(db) as store:  # the fault the metric windows can show (CPU) only
        store.delete("faults", "kind = 'network_delay'")
    return db


def test_svm_learns_fault_types_from_the_labels(store_path: Path, tmp_path: Path) -> None:
    options = pipeline.PointOptions(detector="svm", labels=True, sources=("metrics",))
    with DuckDBStore(store_path) as store:
        doc = pipeline.train_points(store, tmp_path / "m", *sc.TEST, options=options)
        assert doc["metrics"]["windows"] > 0
        found = pipeline.detect_points(store, tmp_path / "m", *sc.TEST)
        rows = store.sql(
            "SELECT service, time_ns, details FROM findings WHERE detector = 'point:svm:metrics'"
        ).to_pylist()
    assert found is not None and found["anomalous_windows"] > 0
    services = {r["service"] for r in rows}
    assert services == {"auth-service"}  # the CPU fault shows in metrics; nothing else does
    assert {json.loads(r["details"])["fault_type"] for r in rows} == {"cpu_contention"}
    lo, hi = sc.CPU_FAULT
    assert all(lo < r["time_ns"] <= hi + 60 * sc.NS for r in rows)


def test_a_supervised_detector_needs_labels_and_only_it_takes_them() -> None:
    with pytest.raises(InputError, match="needs labels"):
        pipeline.PointOptions(detector="fisher-dbscan").check()
    with pytest.raises(InputError, match="--labels: only for"):
        pipeline.PointOptions(detector="ecod", labels=True).check()
    with pytest.raises(InputError, match="is not one of"):
        pipeline.PointOptions(detector="nope").check()


def test_every_point_detector_is_accepted_by_name() -> None:
    for name, cls in detectors("point").items():
        pipeline.PointOptions(detector=name, labels=cls.requires_labels).check()


def test_the_cli_lists_every_registered_detector_and_trains_a_supervised_one(
    store_path: Path, tmp_path: Path
) -> None:
    from tests.test_cli import run

    r = run("detectors", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    listed = {d["name"]: d for d in json.loads(r.stdout)}
    assert set(listed) == set(detectors())
    assert listed["svm"]["requires_labels"] and listed["svm"]["option"] == "--point"
    lo, hi = (str(t / 1e9) for t in sc.TEST)
    common = ["train", "--db", str(store_path), "--from", lo, "--to", hi, "--sequence", "ngram"]
    r = run(*common, "--point", "svm", "--model", str(tmp_path / "m"), cwd=tmp_path)
    assert r.returncode == 2 and "needs labels" in r.stderr
    r = run(*common, "--point", "svm", "--labels", "--model", str(tmp_path / "m"), "--json",
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["point"]["detector"] == "svm"


def test_a_source_with_too_few_windows_is_named_in_the_summary(
    store_path: Path, tmp_path: Path
) -> None:
    from tests.test_cli import run

    lo = str(sc.TEST[0] / 1e9)
    hi = str((sc.TEST[0] + 5 * 60 * sc.NS) / 1e9)  # five minutes: 5 windows an instance, 20 in all
    args = ["train", "--db", str(store_path), "--from", lo, "--to", hi, "--sequence", "ngram",
            "--point-window", "120", "--model", str(tmp_path / "m")]  # fmt: skip
    doc = json.loads(run(*args, "--json", cwd=tmp_path).stdout)
    skipped = doc["point"]["skipped"]
    assert skipped and all("fewer than 10" in why for why in skipped.values())
    text = run(*args, cwd=tmp_path).stdout
    assert "windows  " in text and "fewer than 10" in text
