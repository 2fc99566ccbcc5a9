"""Train, detect and rank from metrics alone: the window follows the data, too few normal
windows is a one-line error, and the root cause of planted faults is ranked first."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanomaly import pipeline
from spanomaly.errors import InputError
from spanomaly.pipeline.rank import why_empty
from spanomaly.store.duckdb import DuckDBStore
from tests.pipeline.metric_cases import planted, write_case

NS = 1_000_000_000


def _rank(case: Path, work: Path, period: tuple[int, int]) -> list[str]:
    with DuckDBStore(work / "s.duckdb") as store:
        pipeline.ingest([case / "normal.csv"], store)
        doc = pipeline.train(store, work / "model", point=pipeline.PointOptions())
        assert doc["detectors"] == {} and doc["point"]["window_s"] == 1.0  # the data's step
        pipeline.ingest([case / "anomalous.csv"], store)
        lo, hi = period[0] * NS, (period[1] + 1) * NS
        found = pipeline.detect(store, work / "model", lo)
        assert found["traces_scored"] == 0 and found["anomalous_windows"] > 0
        rows = pipeline.rca(store, lo, hi, model_dir=work / "model", top=None)
    return list(dict.fromkeys(r["service"] for r in rows))


def test_planted_faults_rank_their_service_first(tmp_path: Path) -> None:
    ranks: dict[str, list[int]] = {"cpu": [], "mem": []}
    for n, (case, root, kind, period) in enumerate(planted(tmp_path / "cases")):
        work = tmp_path / f"w{n}"
        work.mkdir()
        services = _rank(case, work, period)
        ranks[kind].append(services.index(root) + 1 if root in services else 99)
    for kind, got in ranks.items():  # the quality floor, per fault type
        assert sum(r == 1 for r in got) / len(got) >= 0.8, (kind, got)
        assert all(r <= 3 for r in got), (kind, got)


def test_too_few_normal_windows_is_one_line_saying_what_to_set(tmp_path: Path) -> None:
    write_case(tmp_path / "c", 1, "svc-a", "cpu", normal_s=120)
    with DuckDBStore(tmp_path / "s.duckdb") as store:
        pipeline.ingest([tmp_path / "c" / "normal.csv"], store)
        with pytest.raises(InputError) as caught:
            pipeline.train(
                store, tmp_path / "m", options=None, point=pipeline.PointOptions(window_s=60)
            )
    message = str(caught.value)
    assert "\n" not in message and "has 3 metric windows of 60 s" in message
    assert "--point-window 11.9 or less" in message


def test_an_empty_ranking_says_why(tmp_path: Path) -> None:
    write_case(tmp_path / "c", 2, "svc-b", "cpu")
    with DuckDBStore(tmp_path / "s.duckdb") as store:
        pipeline.ingest([tmp_path / "c" / "normal.csv"], store)
        assert pipeline.rca(store, model_dir=tmp_path / "none") == []
        assert "run spanomaly detect first" in why_empty(store, None, None)


def test_imported_call_edges_are_the_graph_of_metrics(tmp_path: Path) -> None:
    from spanomaly.pipeline.rank import window_context

    (tmp_path / "calls.csv").write_text("caller,callee\nsvc-a,svc-d\nsvc-b,svc-d\n")
    with DuckDBStore(tmp_path / "s.duckdb") as store:
        pipeline.ingest([tmp_path / "calls.csv"], store)
        graph = window_context(store, 0, 2**62).graph
    assert sorted(zip(graph.column("caller").to_pylist(), graph.column("callee").to_pylist(), strict=True)) == [
        ("svc-a", "svc-d"), ("svc-b", "svc-d")
    ]  # fmt: skip
