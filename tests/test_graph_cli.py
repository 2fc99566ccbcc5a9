"""`spanomaly graph FILE... --out graph.html|graph.svg|graph.dot`: the service graph straight
from trace files (Jaeger, Zipkin, OTLP, CSV), no store; coloured by errors, or by the findings
of a model; bad input is one line on stderr naming the file, exit 2, and no output written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from spanomaly import pipeline
from spanomaly.pipeline import TrainOptions
from spanomaly.store.duckdb import DuckDBStore
from tests.features import graph_files
from tests.rca import scenario as sc
from tests.test_cli import run

_CSV_MAP = ("trace_id=trace_id,span_id=span_id,parent_id=parent_id,service=service,"
            "instance=instance,operation=operation,kind=kind,start=start_ns,"
            "duration=duration_ns,status=status")  # fmt: skip


def _doc(result: object) -> dict[str, object]:
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    return json.loads(result.stdout)  # type: ignore[attr-defined]


@pytest.mark.parametrize("fmt", sorted(graph_files.WRITERS))
def test_every_output_from_every_format(fmt: str, tmp_path: Path) -> None:
    src = graph_files.WRITERS[fmt](tmp_path / f"in-{fmt}.json")
    for suffix in (".html", ".svg", ".dot"):
        out = tmp_path / f"graph{suffix}"
        doc = _doc(run("graph", str(src), "--out", str(out), "--json", cwd=tmp_path))
        assert doc == {"graph": str(out), "services": 4, "edges": 3, "calls": 5,
                       "colour_by": "errors"}  # fmt: skip
        text = out.read_text()
        for svc in ("gateway", "orders", "users", "db"):
            assert svc in text
    assert not (tmp_path / "s.duckdb").exists()  # no store written
    dot = (tmp_path / "graph.dot").read_text()
    assert dot.startswith('digraph "service graph" {') and dot.rstrip().endswith("}")
    edge = re.search(r'"gateway" -> "orders" \[(.*)\];', dot)
    assert edge and 'color="#c62828"' in edge.group(1) and "calls=2, errors=1" in edge.group(1)
    assert re.search(r'"orders" -> "db" \[.*color="#98a2b3".*calls=2, errors=0', dot)
    svg = (tmp_path / "graph.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and "#d62828" in svg  # a red edge
    page = (tmp_path / "graph.html").read_text()
    assert "<script src" not in page and "<link" not in page and "http" not in page.split(
        "</style>")[0].replace("http://www.w3.org", "")  # fmt: skip
    data = json.loads(re.search(r'id="graph-data">(.*?)</script>', page).group(1))  # type: ignore[union-attr]
    assert {(e["caller"], e["callee"], e["calls"], e["errors"]) for e in data["edges"]} == {
        e[:4] for e in graph_files.EDGES}  # fmt: skip


def test_human_output_and_several_files(tmp_path: Path) -> None:
    a = graph_files.jaeger(tmp_path / "a.json")
    b = graph_files.zipkin(tmp_path / "b.json")  # the same traces again: stored once
    out = tmp_path / "sub" / "g.dot"
    result = run("graph", str(a), str(b), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"graph: {out} (4 services, 3 edges, 5 calls; colour = errors)"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"data": [{"traceID": "x", "spans": [', "bad.json"),  # truncated JSON
        ("", "bad.json: empty file"),
        ("not,a,known\nlayout,at,all\n", "bad.json: CSV of unknown layout"),
    ],
)
def test_bad_input_is_one_line_naming_the_file(content: str, expected: str, tmp_path: Path) -> None:
    good = graph_files.otlp(tmp_path / "good.json")
    (tmp_path / "bad.json").write_text(content)
    out = tmp_path / "g.html"
    result = run("graph", str(good), str(tmp_path / "bad.json"), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spanomaly: error: ") and expected in lines[0]
    assert "Traceback" not in result.stderr and not out.exists()


def test_bad_usage(tmp_path: Path) -> None:
    src = graph_files.otlp(tmp_path / "t.json")
    for args, expected in (
        ((str(src), "--out", str(tmp_path / "g.png")), "must end in .html, .svg, .dot"),
        ((str(tmp_path / "missing.json"), "--out", str(tmp_path / "g.svg")), "missing.json"),
        ((str(src), "--out", str(tmp_path / "g.svg"), "--format", "xml"), "--format"),
    ):
        result = run("graph", *args, cwd=tmp_path)
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_with_a_model_the_findings_colour_the_graph(tmp_path: Path) -> None:
    """A model trained on the normal period scores a CSV of the test period (a network delay
    on order-service): the graph is coloured by findings, order-service's calls are red."""
    sc.build(str(tmp_path / "s.duckdb"))
    with DuckDBStore(tmp_path / "s.duckdb") as store:
        pipeline.train(store, tmp_path / "model", *sc.TRAIN, options=TrainOptions(sequence="ngram"))
        store.sql(
            "COPY (SELECT trace_id, span_id, parent_id, service, instance, operation, kind, "
            "start_ns, duration_ns, status FROM spans WHERE start_ns >= ? AND start_ns < ?) "
            f"TO '{tmp_path / 'test.csv'}' (HEADER)",
            [sc.NET_FAULT[0], sc.NET_FAULT[1]],
        )
    (tmp_path / "s.duckdb").unlink()
    out = tmp_path / "g.html"
    args = ("graph", str(tmp_path / "test.csv"), "--format", "csv", "--map", _CSV_MAP,
            "--out", str(out), "--json")  # fmt: skip
    plain = _doc(run(*args, cwd=tmp_path))
    assert plain["colour_by"] == "errors"
    doc = _doc(run(*args, "--model", str(tmp_path / "model"), cwd=tmp_path))
    assert doc["colour_by"] == "findings" and doc["edges"] == plain["edges"]
    data = json.loads(re.search(r'id="graph-data">(.*?)</script>', out.read_text()).group(1))  # type: ignore[union-attr]
    nodes = {n["service"]: n for n in data["nodes"]}
    assert nodes["order-service"]["findings"] > 0 and nodes["order-service"]["anomaly"] > 0.5
    assert nodes["order-service"]["findings"] == max(n["findings"] for n in nodes.values())
    red = {(e["caller"], e["callee"]) for e in data["edges"] if e["findings"]}
    assert ("gateway", "order-service") in red
