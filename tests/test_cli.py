"""The CLI as a user runs it: exit codes, one-line errors, --json documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ingest.test_csv import GOOD, NEZHA_HEADER


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPANOMALY_DB": str(cwd / "s.duckdb")}
    return subprocess.run(
        [sys.executable, "-m", "spanomaly", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def csv_dir(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "11_00_trace.csv").write_text(NEZHA_HEADER + "".join(GOOD))
    return d


def test_ingest_stats_export_json(tmp_path: Path, csv_dir: Path) -> None:
    out = run("ingest", str(csv_dir), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {
        "spans",
        "metrics",
        "logs",
        "faults",
        "duplicates",
        "rejected",
        "files",
        "errors",
    } <= set(doc)
    assert doc["spans"] == 3 and doc["files"] == 1
    stats = json.loads(run("stats", "--json", cwd=tmp_path).stdout)
    assert stats["spans"] == 3 and stats["traces"] == 2
    assert stats["services"] == ["ts-basic-service", "ts-gateway-service"]
    assert stats["from"].startswith("2001-09-09T01:46:40")
    exported = run("export", "--parquet", str(tmp_path / "pq"), "--json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["rows"]["spans"] == 3
    human = run("stats", cwd=tmp_path)
    assert "spans      3" in human.stdout


def test_glob_and_many_paths(tmp_path: Path, csv_dir: Path) -> None:
    out = run("ingest", str(csv_dir / "**" / "*.csv"), str(csv_dir), "--json", cwd=tmp_path)
    assert json.loads(out.stdout)["files"] == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ingest", "nope/missing.csv"], "nope/missing.csv: no such file or folder"),
        (["ingest", "x", "--format", "xml"], "--format: 'xml' is not one of"),
        (["ingest", "x", "--map", "bogus"], "--map: 'bogus' is not field=column"),
        (["ingest", "x", "--time-unit", "h"], "--time-unit: 'h' is not one of"),
        (["stats", "--db", "absent.duckdb"], "absent.duckdb: no store here"),
    ],
)
def test_errors_are_one_line_with_exit_2_or_1(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "x").write_text("")
    out = run(*args, cwd=tmp_path)
    assert out.returncode in (1, 2)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_a_file_with_only_bad_records_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceSpans": [')
    out = run("ingest", str(bad), "--json", cwd=tmp_path)
    assert out.returncode == 2
    doc = json.loads(out.stdout)
    assert doc["rejected"] == 1 and "bad.json" in doc["errors"][0]


def test_importing_a_file_again_exits_as_its_first_import_did(tmp_path: Path) -> None:
    """Good and bad records: 0 both times (the second yields only duplicates and the same
    rejects); only bad records: 2 both times."""
    mixed = tmp_path / "11_00_trace.csv"
    mixed.write_text(NEZHA_HEADER + "".join(GOOD) + "not,a,span\n")
    for n in range(2):
        out = run("ingest", str(mixed), "--json", cwd=tmp_path)
        doc = json.loads(out.stdout)
        assert out.returncode == 0 and doc["rejected"] == 1, (n, out.stderr)
        assert doc["duplicates" if n else "spans"] == len(GOOD)
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceSpans": [')
    assert [run("ingest", str(bad), cwd=tmp_path).returncode for _ in range(2)] == [2, 2]


def test_testbed_run_says_where_its_run_folder_is(tmp_path: Path) -> None:
    """The run folder (process logs, ground truth) is the --out given, and it is printed."""
    (tmp_path / "none.toml").write_text("")
    out = tmp_path / "run"
    r = run("testbed", "run", "--minutes", "0.1", "--rate", "5", "--faults", "none.toml",
            "--out", str(out), "--db", str(tmp_path / "s.duckdb"), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"run folder {out} " in r.stdout
    assert (out / "logs").is_dir() and (out / "truth").is_dir()
