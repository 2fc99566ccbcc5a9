"""`spanomaly demo` as a user runs it, shortened: the testbed, training online, two faults
detected online, the evaluation and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_cli import run

SCHEDULE = """
[[fault]]
kind = "code_delay"
target = "movies-1"
at = 4
duration = 10
p = 0.8
ms = 300

[[fault]]
kind = "code_error"
target = "books-2"
at = 18
duration = 10
p = 0.5
"""


@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng is absent (.ci/run)")
def test_a_short_demo_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "faults.toml").write_text(SCHEDULE)
    out = tmp_path / "out"
    r = run("demo", "--out", str(out), "--train", "30", "--faults", "faults.toml", "--minutes",
            "4", "--json", cwd=tmp_path, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    ev = doc["evaluation"]
    assert ev["faults"] == 2 and ev["detected"] == 2
    assert {f["kind"] for f in ev["per_fault"]} == {"code_delay", "code_error"}
    delay = next(f for f in ev["per_fault"] if f["kind"] == "code_delay")
    assert delay["rank"]["service"] == 1
    assert ev["per_type"]["code_delay"]["trace"]["recall"] > 0.5  # per-request labels
    assert doc["training"]["traces"] > 150 and doc["training"]["loaded_ns"] > 0
    html = (out / "report" / "index.html").read_text()
    assert 'id="fig-timelines"' in html and 'id="fig-trace-1"' in html
    assert json.loads((out / "report" / "results.json").read_text()) == ev


def test_demo_bad_usage_is_one_line(tmp_path: Path) -> None:
    r = run("demo", "--train", "0", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run("demo", "--faults", "nope.toml", cwd=tmp_path)
    assert r.returncode == 2 and "nope.toml" in r.stderr
    (tmp_path / "bad.toml").write_text('[[fault]]\nkind = "meteor"\ntarget = "movies-1"\n')
    r = run("demo", "--faults", "bad.toml", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "meteor" in r.stderr and len(r.stderr.strip().splitlines()) == 1
