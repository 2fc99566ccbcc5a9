"""`spanomaly classify` on synthetic runs: the SVM names the fault type of system-call
windows cross-validated by run, Fisher+DBSCAN with a tenth of the labels comes close, ECOD
tells faults from normal; runs are never split across folds; train, run and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from spanomaly.errors import InputError
from spanomaly.ingest.base import Chunk
from spanomaly.pipeline import open_store
from spanomaly.pipeline.classify import (
    ClassifyOptions,
    Data,
    _folds,
    cover_labels,
    evaluate_classifiers,
    run_classifier,
    train_classifier,
)
from spanomaly.schema import arrow_schema
from spanomaly.store.base import Store
from tests.pipeline.syscall_cases import FAULTS, INSTANCES, NS, RUN_S, T0, faults_table, run_table

RUNS = 4
RAISES = {"cpu": "cpu", "disk": "io", "network": "errors"}  # the metric each fault raises


def _metrics(runs: int) -> pa.Table:
    """One point a second per instance: cpu, io and errors, each raised by its fault."""
    rng = np.random.default_rng(5)
    rows: dict[str, list] = {k: [] for k in ("time_ns", "service", "instance", "name", "value")}
    for r in range(runs):
        t = np.arange(RUN_S)
        for service, instance in INSTANCES:
            for name, level in {"cpu": 0.2, "io": 1.0, "errors": 0.1}.items():
                v = level * (1 + 0.1 * rng.standard_normal(len(t)))
                for kind, inst, a, b in FAULTS:
                    if inst == instance and RAISES[kind] == name:
                        v[(t >= a + r % 3) & (t < b + r % 3)] *= 5
                rows["time_ns"] += list(T0 + r * 1000 * NS + t * NS)
                rows["service"] += [service] * len(t)
                rows["instance"] += [instance] * len(t)
                rows["name"] += [name] * len(t)
                rows["value"] += v.tolist()
    n = len(rows["time_ns"])
    full = {f.name: rows.get(f.name, [None] * n) for f in arrow_schema("metrics")}
    full["kind"] = ["gauge"] * n
    return pa.table(full, schema=arrow_schema("metrics"))


def _write(path: Path, runs: int = RUNS, metrics: bool = False) -> None:
    store = open_store(path)
    try:
        for r in range(runs):
            store.write(Chunk("syscalls", run_table(r)))
        store.write(Chunk("faults", faults_table(runs)))
        if metrics:
            store.write(Chunk("metrics", _metrics(runs)))
    finally:
        store.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    path = tmp_path_factory.mktemp("classify") / "s.duckdb"
    _write(path, metrics=True)
    s = open_store(path, read_only=True)
    yield s
    s.close()


OPTIONS = ClassifyOptions(length="2s", stride="1s")


def test_svm_names_the_fault_type_and_fisher_dbscan_comes_close(store: Store) -> None:
    doc = evaluate_classifiers(store, OPTIONS, folds=RUNS)
    assert doc["runs"] == RUNS and doc["folds"] == RUNS
    assert set(doc["classes"]) == {"normal", "cpu", "disk", "network"}
    svm = doc["methods"]["svm"]
    assert min(v["f1"] for v in svm["per_class"].values()) >= 0.9, svm["per_class"]
    fisher = doc["methods"]["fisher-dbscan"]
    assert fisher["labelled"] == 0.1
    assert fisher["macro_f1"] >= svm["macro_f1"] - 0.1, fisher["per_class"]
    ecod = doc["methods"]["ecod"]
    assert ecod["f1"] >= 0.8 and ecod["matrix"]["classes"] == ["normal", "anomalous"]
    m = np.asarray(svm["confusion"])
    assert m.sum() == doc["windows"] == sum(doc["classes"].values())


def test_windows_by_calls_per_instance_classify_too(store: Store) -> None:
    options = ClassifyOptions(length="100", stride="100", by="instance")
    doc = evaluate_classifiers(store, options, ("svm",), folds=2)
    assert doc["spec"]["unit"] == "calls" and doc["folds"] == 2
    assert doc["methods"]["svm"]["macro_f1"] >= 0.9


def test_metric_windows_take_the_same_labels(store: Store) -> None:
    options = ClassifyOptions(on="metrics", length="2s")
    doc = evaluate_classifiers(store, options, ("svm", "ecod"), folds=2)
    assert doc["runs"] == RUNS  # each metric window in the system-call run of its time
    assert set(doc["classes"]) == {"normal", "cpu", "disk", "network"}
    assert doc["methods"]["svm"]["macro_f1"] >= 0.9


def test_runs_are_never_split_across_folds() -> None:
    groups = np.repeat(np.array(["a", "b", "c", "d", "e"], dtype=object), [5, 50, 7, 30, 2])
    splits = _folds(groups, 3)
    assert len(splits) == 3
    seen = np.zeros(len(groups), dtype=int)
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        seen[test] += 1
    assert (seen == 1).all()
    with pytest.raises(InputError, match="two at least"):
        _folds(np.array(["a"] * 9, dtype=object), 3)


def test_labels_cover_or_drop() -> None:
    w = 10 * NS
    keys = pa.table({
        "run": ["r"] * 5, "service": ["api", "api", "api", "db", "db"],
        "instance": ["api-1", "api-1", "api-2", "db-1", "db-2"], "thread": pa.nulls(5, pa.int64()),
        "start_ns": [0, 15 * NS, 20 * NS, 20 * NS, 20 * NS],
        "end_ns": [w, 15 * NS + w, 20 * NS + w, 20 * NS + w, 20 * NS + w],
    })  # fmt: skip
    faults = pa.Table.from_pylist([
        {"kind": "cpu", "service": "api", "instance": "api-1", "start_ns": 20 * NS, "end_ns": 60 * NS},
        {"kind": "disk", "service": "db", "instance": None, "start_ns": 20 * NS, "end_ns": 30 * NS},
    ])  # fmt: skip
    labels = cover_labels(Data(keys, None), faults)
    # api-1 before: normal; api-1 partly in the fault: dropped; api-2 not targeted: normal;
    # the db fault names no instance: both db windows are covered
    assert labels.tolist() == ["normal", None, "normal", "disk", "disk"]


def test_train_then_run_gives_a_class_and_probability_per_window(store: Store, tmp_path: Path) -> None:  # fmt: skip
    lo, hi = T0, T0 + (RUNS - 1) * 1000 * NS
    doc = train_classifier(store, tmp_path / "m", OPTIONS, lo, hi)
    assert doc["windows"] > 0 and len(doc["runs"]) == RUNS - 1
    assert not list((tmp_path / "m").glob("*.pkl"))
    rows = run_classifier(store, tmp_path / "m", hi, None)  # the run it did not see
    assert rows and all(0.0 <= r["probability"] <= 1.0 for r in rows)
    kind, inst, a, b = FAULTS[0]
    t_fault = T0 + (RUNS - 1) * 1000 * NS
    shift = (RUNS - 1) % 3
    inside = [r for r in rows if r["instance"] == inst
              and r["start_ns"] >= t_fault + (a + shift) * NS
              and r["end_ns"] <= t_fault + (b + shift) * NS]  # fmt: skip
    assert inside and np.mean([r["class"] == kind for r in inside]) >= 0.9
    assert set(rows[0]) >= {"run", "service", "instance", "thread", "start_ns", "end_ns", "class"}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*args: str, cwd: Path) -> Result:
    """The CLI in this process (as `spanomaly ARGS` in cwd, the store cwd/s.duckdb)."""
    from typer.testing import CliRunner

    from spanomaly.cli import app

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        r = CliRunner().invoke(app, list(args), env={"SPANOMALY_DB": str(cwd / "s.duckdb")})
    return Result(r.exit_code, r.stdout, r.stderr)


def test_the_cli_trains_runs_evaluates_and_fails_in_one_line(tmp_path: Path) -> None:
    open_store(tmp_path / "s.duckdb").close()  # a store without system calls
    r = run("classify", "train", "--model", "m", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no system calls" in r.stderr
    for args, what in ((["--method", "knn"], "--method"), (["--on", "metrics", "--length", "200"], "--on metrics"),
                       (["--length", "2s", "--stride", "10"], "--stride"), (["--labelled", "0"], "--labelled")):  # fmt: skip
        r = run("classify", "train", "--model", "m", *args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and what in r.stderr, r.stderr
    _write(tmp_path / "s.duckdb", runs=2)
    r = run("classify", "train", "--model", "m", "--length", "2s", "--stride", "2s", "--json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["classes"]["cpu"] > 0
    r = run("classify", "run", "--model", "m", "--json", cwd=tmp_path)
    rows = json.loads(r.stdout)
    assert r.returncode == 0 and {x["class"] for x in rows} >= {"normal", "cpu"}
    r = run("classify", "run", "--model", "nowhere", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "classify train" in r.stderr
    r = run("classify", "evaluate", "--length", "2s", "--stride", "2s", "--folds", "2",
            "--methods", "svm,ecod", "--html", "out/c.html", "--json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["methods"]) == {"svm", "ecod"} and doc["folds"] == 2
    page = (tmp_path / "out" / "c.html").read_text()
    assert "confusion-svm" in page and "prf-svm" in page and "macro F1" in page
    r = run("classify", "evaluate", "--methods", "svm,nb", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nb" in r.stderr
