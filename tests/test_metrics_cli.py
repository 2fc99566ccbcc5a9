"""Root cause from metrics alone as a user runs it, in a layout other than the wide one:
long CSV points (--map), plain fault labels and call edges, then train, detect, rca and
evaluate; too few windows and an empty ranking said in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.pipeline.metric_cases import write_case
from tests.test_cli import run

MAP = "time=ts,service=svc,name=metric,value=v"


def _long(wide: Path, out: Path) -> None:
    """The wide CSV as one row per point, with a label column."""
    with wide.open() as fh, out.open("w", newline="") as dst:
        rows = csv.reader(fh)
        header = next(rows)
        w = csv.writer(dst)
        w.writerow(["ts", "svc", "metric", "v", "env"])
        for row in rows:
            for name, value in zip(header[1:], row[1:], strict=True):
                svc, metric = name.split("_", 1)
                w.writerow([row[0], svc, metric, value, "prod"])


def test_long_points_labels_and_edges_through_the_cli(tmp_path: Path) -> None:
    lo, hi = write_case(tmp_path / "case", 7, "svc-e", "mem")
    for name in ("normal", "anomalous"):
        _long(tmp_path / "case" / f"{name}.csv", tmp_path / f"{name}-points.csv")
    (tmp_path / "faults.csv").write_text(f"start,end,service,instance,kind\n{lo},{hi},svc-e,,mem\n")
    (tmp_path / "calls.csv").write_text("caller,callee\nsvc-a,svc-e\nsvc-b,svc-e\n")

    r = run("ingest", "normal-points.csv", "--map", MAP, "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["metrics"] > 5000, r.stderr
    r = run("stats", "--json", cwd=tmp_path)
    assert json.loads(r.stdout)["instances"] == 8
    r = run("train", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["detectors"] == {} and doc["point"]["window_s"] == 1.0
    r = run("ingest", "anomalous-points.csv", "--map", MAP, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run("ingest", "faults.csv", "calls.csv", "--json", cwd=tmp_path)
    assert (json.loads(r.stdout)["faults"], json.loads(r.stdout)["calls"]) == (1, 2)
    r = run("detect", "--from", str(lo), "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["anomalous_windows"] > 0, r.stderr
    r = run("rca", "--from", str(lo), "--to", str(hi + 1), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["service"] == "svc-e"
    r = run("evaluate", "--from", str(lo), "--to", str(hi + 1), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fault = json.loads(r.stdout)["per_fault"][0]
    assert fault["rank"]["service"] == 1 and fault["detected"]


def test_too_few_windows_and_an_empty_ranking_are_one_line(tmp_path: Path) -> None:
    write_case(tmp_path / "case", 8, "svc-a", "cpu")
    r = run("ingest", "case/normal.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run("train", "--point-window", "120", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--point-window 29.9 or less" in r.stderr
    r = run("rca", "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    assert "nothing to rank: the store holds no findings" in r.stderr
