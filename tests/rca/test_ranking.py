"""Root-cause ranking on a small synthetic system with a CPU fault and a network delay:
metrics alone name the CPU-starved instance, traces alone the delayed one, both name both;
the baseline; the graph rule; and proof that no detector or ranker reads the fault tables."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import spanomaly
from spanomaly import pipeline
from spanomaly.rca import ranking
from spanomaly.schema import FINDINGS
from spanomaly.store.duckdb import DuckDBStore
from tests.rca import scenario as sc

SLACK = 60 * sc.NS


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The scenario's store, trained on its first 40 minutes and scored."""
    root = tmp_path_factory.mktemp("rca")
    db, model = root / "s.duckdb", root / "model"
    sc.build(str(db))
    with DuckDBStore(db) as store:
        pipeline.train(store, model, *sc.TRAIN, options=pipeline.TrainOptions(sequence="ngram"))
        pipeline.train_points(store, model, *sc.TRAIN)
        doc = pipeline.detect(store, model)
    assert doc["instances_scored"] > 400 and doc["anomalous_windows"] > 0
    return db, model


def top(db: Path, model: Path, window: tuple[int, int], evidence: str, method: str = "ranked"):
    with DuckDBStore(db, read_only=True) as store:
        return pipeline.rca(store, window[0], window[1] + SLACK, evidence, method, model)


def test_metrics_alone_name_the_cpu_starved_instance(trained: tuple[Path, Path]) -> None:
    rows = top(*trained, sc.CPU_FAULT, "metrics")
    assert rows[0]["instance"] == sc.instance("auth-service")
    assert "CpuUsage" in rows[0]["evidence"]["reasons"][0]


def test_traces_name_the_delayed_callee_and_its_operation(trained: tuple[Path, Path]) -> None:
    rows = top(*trained, sc.NET_FAULT, "traces")
    first = rows[0]
    assert first["service"] == "order-service" and first["instance"] == sc.instance("order-service")
    assert first["operation"] and first["evidence"]["trace_findings"] > 0
    # the gateway waits too, but it calls the culprit: the graph rule puts it below
    gateway = next(r for r in rows if r["service"] == "gateway")
    assert gateway["rank"] > 1 and "calls order-service" in (gateway["evidence"]["graph"] or "")
    json.dumps(rows, allow_nan=False)  # every score is finite JSON


def test_both_and_the_baseline(trained: tuple[Path, Path]) -> None:
    for window, service in ((sc.CPU_FAULT, "auth-service"), (sc.NET_FAULT, "order-service")):
        assert top(*trained, window, "both")[0]["service"] == service
    assert top(*trained, sc.NET_FAULT, "both", "baseline")[0]["service"] == "order-service"


def test_evaluate_document(trained: tuple[Path, Path]) -> None:
    db, model = trained
    with DuckDBStore(db, read_only=True) as store:
        doc = pipeline.evaluate(store, *sc.TEST, "both", "ranked", model)
        metrics_only = pipeline.evaluate(store, *sc.TEST, "metrics", "ranked", model)
    assert set(doc) == {
        "labels", "faults", "detected", "fault_recall", "false_alarms_per_hour", "trace_fpr", "trace",
        "rca", "per_type", "per_fault",
    }  # fmt: skip
    assert doc["trace"] is None  # no per-request labels here
    assert set(doc["rca"]) == {"service", "instance"}
    assert set(doc["rca"]["service"]) == {"top1", "top3", "top5"}
    assert doc["faults"] == 2 and doc["detected"] == 2
    assert doc["rca"]["service"]["top1"] == 1.0 and doc["rca"]["instance"]["top1"] == 1.0
    for t in doc["per_type"].values():
        assert set(t) == {"faults", "detected", "fault_recall", "time_to_detect_s", "trace", "rca"}
        assert t["time_to_detect_s"] is not None and t["time_to_detect_s"] >= 0
        assert t["trace"] is None  # no per-request labels
    for f in doc["per_fault"]:  # each fault: detection, ranks, the top suspects
        assert f["detected"] and f["rank"] == {"service": 1, "instance": 1}
        assert f["suspects"][0]["service"] == f["service"] and f["rca_end_ns"] > f["end_ns"]
    assert metrics_only["per_type"]["cpu_contention"]["rca"]["instance"]["top1"] == 1.0


# -- the ranker on its own --------------------------------------------------------------------


def _finding(detector: str, entity: str, service: str, instance: str, surprise: float = 0.0,
             trace: str | None = None) -> dict[str, object]:  # fmt: skip
    return {
        "finding_id": f"{detector}{service}{trace}{surprise}",
        "time_ns": 0,
        "detector": detector,
        "entity": entity,
        "trace_id": trace,
        "service": service,
        "instance": instance,
        "operation": "op",
        "score": 2.0,
        "threshold": 1.0,
        "reason": f"{service} is odd",
        "details": json.dumps({"surprise": surprise}),
    }


def test_rank_combines_sources_and_filters_evidence() -> None:
    rows = [
        _finding("point:ecod:metrics", "instance", "a", "a-1", 4.0),
        _finding("point:ecod:traces", "instance", "b", "b-1", 5.0),
        *[_finding("duration:robust", "trace", "b", "b-1", trace=f"t{i}") for i in range(3)],
    ]
    findings = pa.Table.from_pylist(rows, schema=FINDINGS)
    graph = pa.table({"caller": ["a"], "callee": ["c"], "callee_instance": ["c-1"], "calls": [1]})
    traffic = pa.table({"service": ["a", "b"], "instance": ["a-1", "b-1"], "requests": [100, 100]})
    both = ranking.rank(findings, graph, traffic, "both").to_pylist()
    # b: the stronger of its span evidence (5.0; 3 trace findings where 0.1 are expected:
    # 3.8), not their sum, as both come from the same spans
    assert [(r["service"], r["score"]) for r in both] == [("b", 5.0), ("a", 4.0)]
    assert [
        r["service"] for r in ranking.rank(findings, graph, traffic, "metrics").to_pylist()
    ] == ["a"]
    assert {r["service"] for r in ranking.rank(findings, graph, traffic, "traces").to_pylist()} == {
        "b"
    }
    # feedback: a finding marked normal is no evidence
    marked = findings.set_column(
        findings.schema.get_field_index("feedback"), "feedback",
        pa.array(["normal"] + [None] * 4, pa.string()),
    )  # fmt: skip
    assert [r["service"] for r in ranking.rank(marked, graph, traffic, "both").to_pylist()] == ["b"]
    with pytest.raises(spanomaly.errors.InputError):
        ranking.rank(findings, graph, traffic, "logs")


def test_persistent_windows_outweigh_a_blip_and_callers_of_a_slower_callee_drop() -> None:
    def window(service: str, source: str, surprise: float, t: int) -> dict[str, object]:
        row = _finding(f"point:ecod:{source}", "instance", service, f"{service}-1", surprise)
        return {**row, "finding_id": f"{service}{source}{t}", "time_ns": t}

    # a: three windows of a CPU fault; b: one window of a sparse metric far past its range
    rows = [window("a", "metrics", 8.0, t) for t in range(3)] + [window("b", "metrics", 20.0, 0)]
    # c calls d; c's spans and its own latency metrics show d's slowness, d's spans more so
    rows += [window("c", "traces", 10.0, 0), window("c", "metrics", 6.0, 0)]
    rows += [window("d", "traces", 12.0, 0)]
    findings = pa.Table.from_pylist(rows, schema=FINDINGS)
    graph = pa.table({"caller": ["c"], "callee": ["d"], "callee_instance": ["d-1"], "calls": [9]})
    services = ["a", "b", "c", "d"]
    traffic = pa.table({"service": services, "instance": [f"{s}-1" for s in services],
                        "requests": [100] * 4})  # fmt: skip
    ranked = ranking.rank(findings, graph, traffic, "both").to_pylist()
    assert [(r["service"], r["score"]) for r in ranked] == [
        ("a", 24.0),
        ("b", 20.0),
        ("d", 12.0),
        ("c", 8.0),
    ]
    assert "calls d" in json.loads(ranked[-1]["evidence"])["graph"]


def _gap(caller: str, callee: str, n: int) -> dict[str, object]:
    """A trace finding that charges a call's own time (caller -> callee) to the callee."""
    row = _finding("duration:robust", "trace", callee.split("-")[0], callee, trace=f"{caller}{n}")
    row["details"] = json.dumps(
        {"event": {"service": caller.split("-")[0], "instance": caller},
         "blame": {"service": callee.split("-")[0], "instance": callee}}
    )  # fmt: skip
    return row


def test_slow_calls_to_every_callee_are_the_callers() -> None:
    """A starved caller slows its calls to every callee; a slow callee the calls to it from
    every caller."""
    graph = pa.table(
        {"caller": ["books", "front"], "callee": ["eval", "books"],
         "callee_instance": ["eval-1", "books-1"], "calls": [1, 1]}
    )  # fmt: skip
    traffic = pa.table(
        {"service": ["books", "eval", "eval"], "instance": ["books-2", "eval-1", "eval-2"],
         "requests": [100, 100, 100]}
    )  # fmt: skip
    spread = [_gap("books-2", "eval-1", i) for i in range(3)]
    spread += [_gap("books-2", "eval-2", i + 3) for i in range(4)]
    ranked = ranking.rank(pa.Table.from_pylist(spread, schema=FINDINGS), graph, traffic)
    assert [r["instance"] for r in ranked.to_pylist()] == ["books-2"]
    focused = [_gap(c, "eval-1", i) for i, c in enumerate(["books-1", "books-2", "front-1"] * 2)]
    focused.append(_gap("books-2", "eval-2", 9))  # one stray slow call elsewhere
    ranked = ranking.rank(pa.Table.from_pylist(focused, schema=FINDINGS), graph, traffic)
    assert ranked.to_pylist()[0]["instance"] == "eval-1"


def test_unexpected_calls_charge_no_time_to_a_caller() -> None:
    """Sequence findings at a caller's calls to another callee (an unexpected call) do not
    make the slow calls to one callee the caller's: only duration findings charge time."""
    graph = pa.table(
        {"caller": ["books"], "callee": ["eval"], "callee_instance": ["eval-1"], "calls": [1]}
    )
    traffic = pa.table(
        {"service": ["books", "eval", "eval"], "instance": ["books-2", "eval-1", "eval-2"],
         "requests": [100, 100, 100]}
    )  # fmt: skip
    rows = [_gap("books-2", "eval-1", i) for i in range(3)]
    for i in range(3):
        row = _gap("books-2", "eval-2", i + 3)
        row["detector"] = "sequence:ngram"
        rows.append(row)
    ranked = ranking.rank(pa.Table.from_pylist(rows, schema=FINDINGS), graph, traffic)
    assert ranked.to_pylist()[0]["instance"] == "eval-1"
    assert "books-2" not in ranked.column("instance").to_pylist()


def test_poisson_surprise_is_finite_far_in_the_tail() -> None:
    s = ranking.poisson_surprise(np.array([0, 1, 3, 500]), np.array([0.1, 0.1, 0.1, 0.1]))
    assert s[0] == 0 and 0 < s[1] < s[2] < s[3] and np.isfinite(s).all()


# -- the fault tables are read by evaluate only -----------------------------------------------

PKG = Path(spanomaly.__file__).parent


def test_no_detector_or_ranker_names_the_fault_tables() -> None:
    """Statically: no module of features/, detect/ or rca/ mentions the label tables."""
    for folder in ("features", "detect", "rca"):
        for path in (PKG / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value.lower()
                    assert "fault_traces" not in text and "from faults" not in text, path
                    assert node.value not in ("faults", "fault_traces"), path


class NoLabels:
    """A store that refuses every access to the fault tables."""

    def __init__(self, store: DuckDBStore) -> None:
        self._store = store

    def table(self, name: str) -> pa.Table:
        assert name not in ("faults", "fault_traces"), f"read the label table {name}"
        return self._store.table(name)

    def sql(self, query: str, params: list[object] | None = None) -> pa.Table:
        low = query.lower()
        assert "faults" not in low and "fault_traces" not in low, query
        return self._store.sql(query, params)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_training_detection_and_ranking_never_read_labels(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    sc.build(str(db))
    with DuckDBStore(db) as raw:
        store = NoLabels(raw)
        pipeline.train_points(store, tmp_path / "m", *sc.TRAIN)  # type: ignore[arg-type]
        pipeline.detect_points(store, tmp_path / "m", *sc.TEST)  # type: ignore[arg-type]
        rows = pipeline.rca(store, sc.CPU_FAULT[0], sc.CPU_FAULT[1] + SLACK,  # type: ignore[arg-type]
                            "both", "ranked", tmp_path / "m")  # fmt: skip
        pipeline.rca(store, *sc.NET_FAULT, "both", "baseline", tmp_path / "m")  # type: ignore[arg-type]
        assert rows[0]["service"] == "auth-service"
        with pytest.raises(AssertionError, match="label table"):
            pipeline.evaluate(store, *sc.TEST, model_dir=tmp_path / "m")  # type: ignore[arg-type]


def test_windows_over_a_skipped_period_are_not_scored(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    db, model = trained
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(db.read_bytes())
    with DuckDBStore(copy) as store:
        found = pipeline.detect_points(store, model, *sc.CPU_FAULT)
        assert found is not None and found["anomalous_windows"] > 0
        skipped = pipeline.detect_points(store, model, *sc.CPU_FAULT, skip=[sc.CPU_FAULT])
    assert skipped is not None and skipped["anomalous_windows"] == 0
    assert skipped["instances_scored"] < found["instances_scored"]
