"""`testbed run --syscalls`: strace records one instance's calls during a fault, then is gone."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import psutil
import pytest

from spanomaly.errors import InputError
from spanomaly.testbed import syscalls
from spanomaly.testbed.run import RunConfig, instance_names, run
from spanomaly.testbed.supervisor import processes_of

CALL = re.compile(
    rb"^(\d+) +(\d+\.\d{6}) ([a-z_0-9]+)\(.*\) += (-?\d+|0x[0-9a-f]+|\?).*<(\d+\.\d+)>$"
)
STAMP = re.compile(rb"^(\d+) +\d+\.\d{6} ")  # every line of -f -ttt: thread, time
FAULT = '[[fault]]\nkind = "code_error"\ntarget = "movies-1"\nat = 8\nduration = 10\np = 1.0\n'
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")


def test_instances_are_named_or_all() -> None:
    names = instance_names(2)
    assert syscalls.chosen(["books-1,movies-2", "movies-2"], names) == ["movies-2", "books-1"]
    assert syscalls.chosen(["all"], names) == list(names)
    with pytest.raises(InputError, match="--syscalls: no instance 'movies-9'"):
        syscalls.chosen(["movies-1,movies-9"], names)


def test_no_strace_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="strace is not installed") as err:
        run(RunConfig(minutes=0.1, syscalls=["movies-1"], run_dir=tmp_path))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "syscalls").exists()  # nothing was started


def _threads_at_start(seen: dict[str, Any]) -> Any:
    def on_start(run_id: str, summary: dict[str, Any]) -> None:
        pid = summary["instances"]["movies-1"]["pid"]
        seen["pid"], seen["threads"] = pid, {int(t) for t in os.listdir(f"/proc/{pid}/task")}

    return on_start


@needs_strace
def test_one_instance_recorded_during_a_fault(tmp_path: Path) -> None:
    (tmp_path / "f.toml").write_text(FAULT)
    seen: dict[str, Any] = {}
    cfg = RunConfig(minutes=0.45, rate=10, faults=tmp_path / "f.toml", db=tmp_path / "db.duckdb",
                    run_dir=tmp_path / "run", syscalls=["movies-1"])  # fmt: skip
    result = run(cfg, on_start=_threads_at_start(seen))
    path = tmp_path / "run" / "syscalls" / "movies@movies-1.strace"
    assert result.summary["syscalls"] == {"movies-1": str(path)}
    assert sorted(p.name for p in path.parent.iterdir()) == ["movies@movies-1.strace"]
    lines = path.read_bytes().splitlines()
    calls = [m for m in map(CALL.match, lines) if m]
    assert len(calls) > 1000  # 25 s of load at 10 requests/s
    tids = {int(m[1]) for m in map(STAMP.match, lines) if m}  # waiting ones: <unfinished ...>
    assert seen["pid"] in {int(m[1]) for m in calls}
    assert seen["threads"] <= tids  # every thread, from attach on
    names = {m[3] for m in calls}
    assert {b"epoll_pwait", b"sendto"} <= names or {b"epoll_wait", b"sendto"} <= names
    # the recording spans the fault's window, and ends with the instance's exit (flushed)
    (fault,) = result.faults.to_pylist()
    times = [float(m[2]) for m in calls]
    assert min(times) * 1e9 < fault["start_ns"] < fault["end_ns"] < max(times) * 1e9
    exit_line = re.compile(rb"^%d +[\d.]+ \+\+\+ (exited with|killed by)" % seen["pid"])
    assert any(exit_line.match(line) for line in lines[-20:])
    assert not processes_of(result.run_id)
    tracers = [
        p for p in psutil.process_iter(["cmdline"]) if str(path) in (p.info["cmdline"] or [])
    ]
    assert not tracers
