"""`spanomaly report`: a self-contained HTML report with every plot, the figures of
`evaluate`, escaped names; rendered by headless Chromium (a screenshot test)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from spanomaly.ingest.base import Chunk
from spanomaly.pipeline import TrainOptions, evaluate
from spanomaly.pipeline.report import report
from spanomaly.schema import FINDINGS
from spanomaly.store.duckdb import DuckDBStore
from tests.rca import scenario as sc
from tests.test_cli import run

CHROMIUM = "/usr/bin/chromium"
FIGURES = ("fig-timelines", "fig-confusion-rca", "fig-graph", "fig-trace-1", "fig-metrics-1")
EVIL = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def detected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-fault scenario, trained on its normal period and scored."""
    from spanomaly import pipeline

    tmp = tmp_path_factory.mktemp("report")
    sc.build(str(tmp / "s.duckdb"))
    with DuckDBStore(tmp / "s.duckdb") as store:
        pipeline.train(store, tmp / "model", *sc.TRAIN, options=TrainOptions(sequence="ngram"),
                              point=pipeline.PointOptions())  # fmt: skip
        pipeline.detect(store, tmp / "model", *sc.TEST)
        evil = {c: None for c in FINDINGS.names} | {
            "finding_id": "evil", "time_ns": sc.TEST[0] + 10**9, "detector": "test",
            "entity": "instance", "service": EVIL, "instance": EVIL, "score": 9.0,
            "threshold": 1.0, "reason": EVIL,
        }  # fmt: skip
        store.write(Chunk("findings", pa.Table.from_pylist([evil], schema=FINDINGS)))  # type: ignore[arg-type]
    return tmp


def test_report_holds_every_plot_and_the_evaluation(detected: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    r = run("report", "--out", str(out), "--model", str(detected / "model"), "--from",
            str(sc.TEST[0] / 1e9), "--to", str(sc.TEST[1] / 1e9), "--json", cwd=detected)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    html = (out / "index.html").read_text()
    for fig in FIGURES:
        assert f'id="{fig}"' in html and html.count("<svg") >= len(FIGURES)
    # offline: nothing fetched from anywhere, no script at all
    assert not re.search(r"(src|href)=[\"']?https?:", html) and "<script" not in html
    assert EVIL not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    results = json.loads((out / "results.json").read_text())
    assert results == doc["evaluation"]
    with DuckDBStore(detected / "s.duckdb", read_only=True) as store:
        same = evaluate(store, sc.TEST[0], sc.TEST[1], model_dir=detected / "model")
    assert results == json.loads(json.dumps(same))  # the figures `evaluate` gives
    assert results["per_type"]["cpu_contention"]["detected"] == 1
    assert {f["kind"] for f in results["per_fault"]} == {"cpu_contention", "network_delay"}
    for kind in ("cpu_contention", "network_delay"):
        assert f">{kind}<" in html


def test_report_without_labels_or_findings_still_renders(tmp_path: Path) -> None:
    with DuckDBStore(tmp_path / "s.duckdb") as store:
        store.write(Chunk("spans", sc.spans().slice(0, 2000)))
        path, doc = report(store, tmp_path / "r")
    assert doc["faults"] == 0 and "fig-graph" in path.read_text()


def test_without_labels_the_report_and_evaluate_say_there_is_nothing_to_score(
    detected: Path, tmp_path: Path
) -> None:
    """Findings but no fault labels: no recall, accuracy or false-alarm figure, a plain
    statement why, and still the findings, timelines, ranking and graph."""
    db = tmp_path / "s.duckdb"
    shutil.copy(detected / "s.duckdb", db)
    with DuckDBStore(db) as store:
        store.delete("fault_traces")
        store.delete("faults")
    r = run("report", "--db", str(db), "--model", str(detected / "model"), "--out",
            str(tmp_path / "r"), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "r" / "index.html").read_text()
    assert "No fault labels in the store" in html and "false alarms / hour" not in html
    for part in ("id='ranking'", "fig-timelines", "fig-graph", "id='traces'"):
        assert part in html, part
    doc = json.loads((tmp_path / "r" / "results.json").read_text())
    assert doc["labels"] is False and doc["false_alarms_per_hour"] is None
    top3 = {s["service"] for s in doc["suspects"][:3]}
    assert doc["findings"] > 0 and {"auth-service", "order-service"} <= top3  # both faults
    text = run("evaluate", "--db", str(db), "--model", str(detected / "model"), cwd=tmp_path)
    assert text.returncode == 0 and "nothing to score against" in text.stdout
    assert "of 0 faults" not in text.stdout and "false alarms" not in text.stdout


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent (Debian chromium)")
def test_report_renders_in_headless_chromium(detected: Path, tmp_path: Path) -> None:
    pw = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is absent")
    out = tmp_path / "r"
    with DuckDBStore(detected / "s.duckdb", read_only=True) as store:
        report(store, out, sc.TEST[0], sc.TEST[1], detected / "model")
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto((out / "index.html").as_uri())
        for fig in FIGURES:
            box = page.locator(f"#{fig} svg").bounding_box()
            assert box and box["width"] > 200 and box["height"] > 100, fig
        assert page.locator("#per-kind tr").count() == 3  # header + two kinds
        assert page.get_by_text(EVIL).count() >= 1 and not dialogs  # shown as text, not run
        assert all(u.startswith("file:") for u in requests)
        shot = out / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 50_000
    artifacts = os.environ.get("SPANOMALY_TEST_ARTIFACTS")
    if artifacts:  # keep the screenshot where CI collects test artifacts
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "report.png")
