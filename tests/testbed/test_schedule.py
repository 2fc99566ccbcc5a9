"""Fault schedules: ids that keep runs of one schedule apart in one store."""

from __future__ import annotations

from pathlib import Path

from spanomaly.testbed.faults import load_schedule

SCHEDULE = """
[[fault]]
kind = "code_delay"
target = "movies-1"
at = 10
"""


def test_fault_ids_begin_with_the_run_id(tmp_path: Path) -> None:
    path = tmp_path / "faults.toml"
    path.write_text(SCHEDULE)
    instances = {"movies-1": "movies"}
    (a,) = load_schedule(path, instances, run_id="3f2a91c0")
    (b,) = load_schedule(path, instances, run_id="77d0e4b2")
    assert a.fault_id == "3f2a91c0-f01-code_delay-movies-1" and a.fault_id != b.fault_id
    (plain,) = load_schedule(path, instances)
    assert plain.fault_id == "f01-code_delay-movies-1"
