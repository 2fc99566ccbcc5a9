"""Prometheus range-query answers (ingest.prometheus): files, bad points, and pulling from a
real Prometheus that scrapes the testbed's agent, then a fault ranked from those metrics
alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc

from spanomaly.ingest.base import DecodeOptions
from spanomaly.ingest.prometheus import decode_answer
from spanomaly.pipeline import ingest
from spanomaly.store.duckdb import DuckDBStore
from tests.serve.stack import free_port, needs_prometheus, prometheus

ANSWER = {
    "status": "success",
    "data": {
        "resultType": "matrix",
        "result": [
            {"metric": {"__name__": "process_cpu_utilization", "service": "cart", "instance": "cart-1",
                        "node": "n1"},
             "values": [[1700000000, "0.25"], [1700000015, "NaN"], [1700000030, "0.5"]]},
            {"metric": {"job": "db", "instance": "db-0:9100"},
             "values": [[1700000000.5, "12"], ["later", "13"], [1700000030, "x"]]},
            {"metric": {"__name__": "up"}, "values": [[1700000000, "1"]]},
        ],
    },
}  # fmt: skip


def test_an_answer_file_is_stored_with_service_instance_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "answer.json"
    path.write_text(json.dumps(ANSWER))
    store = DuckDBStore(tmp_path / "s.duckdb")
    report = ingest([path], store)
    rows = store.sql("SELECT * FROM metrics ORDER BY service, time_ns").to_pylist()
    store.close()
    assert report.metrics == 3 and report.rejected == 3
    cart = [r for r in rows if r["service"] == "cart"]
    assert [r["value"] for r in cart] == [0.25, 0.5]  # NaN is a gap, not a point
    assert cart[0]["instance"] == "cart-1" and cart[0]["name"] == "process_cpu_utilization"
    assert json.loads(cart[0]["attributes"]) == {"node": "n1"}
    db = [r for r in rows if r["service"] == "db"]
    assert db[0]["time_ns"] == 1700000000_500000000 and db[0]["instance"] == "db-0:9100"
    assert any("series 1" in e and "'later'" in e for e in report.errors)
    assert any("series 2 (up)" in e and "no service" in e for e in report.errors)


def test_labels_named_by_the_map_and_a_query_as_the_name() -> None:
    doc = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"app": "a", "pod": "a-7"}, "values": [[1, "2"]]}]}}  # fmt: skip
    options = DecodeOptions(column_map={"service": "pod", "instance": "pod"})
    (chunk,) = decode_answer(doc, "q", options, query="rate(x[1m])")
    row = chunk.data.to_pylist()[0]
    assert (row["service"], row["instance"], row["name"]) == ("a-7", "a-7", "rate(x[1m])")


def test_not_an_answer_is_one_line_naming_the_source(tmp_path: Path) -> None:
    path = tmp_path / "err.json"
    path.write_text('{"status": "error", "resultType": "matrix", "result": [], "error": "bad"}')
    store = DuckDBStore(":memory:")
    report = ingest([path], store)
    assert report.rejected == 1 and "err.json" in report.errors[0] and "bad" in report.errors[0]


FAULTS = """
[[fault]]
kind = "code_cpu"
target = "evaluation-1"
at = 100
duration = 40
p = 1.0
digits = 8000
"""
QUERIES = ("process_cpu_utilization", "process_memory_rss_bytes", "process_threads",
           "rate(process_context_switches_total[10s])")  # fmt: skip


def _cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPANOMALY_DB", "SPANOMALY_TOKEN")}
    r = subprocess.run([sys.executable, "-m", "spanomaly", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@needs_prometheus
def test_pulled_from_a_prometheus_scraping_the_testbed_a_fault_is_ranked_first(
    tmp_path: Path,
) -> None:
    """The agent serves /metrics, Prometheus scrapes it, spanomaly pulls the range and ranks
    the CPU fault's instance first from these metrics alone (no spans in the store)."""
    (tmp_path / "faults.toml").write_text(FAULTS)
    port = free_port()
    scrape = ("  - job_name: testbed\n    honor_labels: true\n    static_configs:\n"
              f"      - targets: ['127.0.0.1:{port}']\n")  # fmt: skip
    with prometheus(tmp_path, scrape) as prom:
        began = time.time()
        _cli("testbed", "run", "--minutes", "2.6", "--faults", "faults.toml", "--prometheus-port",
             str(port), "--db", str(tmp_path / "testbed.duckdb"), "--json", cwd=tmp_path)  # fmt: skip
        ended = time.time()
        db = str(tmp_path / "pulled.duckdb")
        queries = [a for q in QUERIES for a in ("--query", q)]
        url = "prometheus+" + prom.url
        _cli("ingest", url, *queries, "--from", str(began), "--to", str(ended), "--step", "2s", "--db", db, cwd=tmp_path)  # fmt: skip
    truth = DuckDBStore(tmp_path / "testbed.duckdb", read_only=True)
    fault = truth.sql("SELECT * FROM faults WHERE kind = 'code_cpu'").to_pylist()[0]
    truth.close()
    store = DuckDBStore(db, read_only=True)
    assert store.sql("SELECT count(*) AS n FROM spans").column("n")[0].as_py() == 0
    metrics = store.sql("SELECT DISTINCT service, instance FROM metrics")
    assert "evaluation-1" in pc.unique(metrics.column("instance")).to_pylist()
    store.close()
    start, end = fault["start_ns"] / 1e9, fault["end_ns"] / 1e9
    model = str(tmp_path / "model")
    _cli("train", "--db", db, "--model", model, "--from", str(began + 15), "--to", str(start - 5), cwd=tmp_path)  # fmt: skip
    _cli("detect", "--db", db, "--model", model, "--from", str(start - 30), cwd=tmp_path)
    ranked = json.loads(_cli("rca", "--db", db, "--model", model, "--from", str(start), "--to", str(end),
                             "--json", cwd=tmp_path).stdout)  # fmt: skip
    assert ranked, "no suspects"
    assert (ranked[0]["service"], ranked[0]["instance"]) == ("evaluation", "evaluation-1"), ranked[
        :3
    ]
