"""No process outlives a run: after Ctrl-C, and after a service instance crashes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

VERSION_ONLY = '[[fault]]\nkind = "version"\ntarget = "books-2"\n'


def _start(tmp_path: Path, minutes: float) -> subprocess.Popen[bytes]:
    schedule = tmp_path / "s.toml"
    schedule.write_text(VERSION_ONLY)
    argv = [
        sys.executable,
        "-m",
        "spanomaly",
        "testbed",
        "run",
        "--minutes",
        str(minutes),
        "--rate",
        "5",
        "--faults",
        str(schedule),
        "--db",
        str(tmp_path / "db.duckdb"),
        "--json",
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _children_when_up(proc: subprocess.Popen[bytes], timeout_s: float = 90) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children(recursive=True)
        if any("spanomaly.testbed.agent" in " ".join(k.cmdline()) for k in kids):
            time.sleep(2)
            return psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.5)
    raise AssertionError("the testbed did not come up")


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    proc = _start(tmp_path, 2)
    try:
        kids = _children_when_up(proc)
        assert len(kids) >= 11  # collector, proxy, 8 instances, agent
        proc.send_signal(signal.SIGINT)
        # the run stops instances, agent and proxy (5 s each at most), then gives the
        # collector 30 s to commit what it accepted: about 50 s at worst by design
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and b"interrupted" in err
        time.sleep(0.5)
        assert _alive(kids) == []
    finally:
        proc.kill()
        proc.wait()


def test_a_crashed_instance_leaves_no_orphans(tmp_path: Path) -> None:
    proc = _start(tmp_path, 0.4)
    try:
        kids = _children_when_up(proc)
        victim = next(k for k in kids if "movies-1" in k.cmdline())
        victim.kill()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        doc = json.loads(out)
        assert doc["crashed"] == ["movies-1"]
        assert doc["store"]["spans"] > 0
        time.sleep(0.5)
        assert _alive(kids) == []
    finally:
        proc.kill()
        proc.wait()
