"""The injector's process faults: a cpu_contention fault ends cleanly when switched off."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spanomaly.testbed.faults import Fault, Injector
from spanomaly.testbed.supervisor import Supervisor

TWO_THREADS = (
    "import threading,time\nthreading.Thread(target=time.sleep,args=(60,)).start()\ntime.sleep(60)"
)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_contention_off_ends_its_burner_and_unpins_every_thread(tmp_path: Path) -> None:
    sup = Supervisor(f"faults-{os.getpid()}", tmp_path)
    target = subprocess.Popen([sys.executable, "-c", TWO_THREADS])
    try:
        tasks = f"/proc/{target.pid}/task"
        while len(os.listdir(tasks)) < 2:
            time.sleep(0.05)
        before = {int(t): os.sched_getaffinity(int(t)) for t in os.listdir(tasks)}
        injector = Injector(tmp_path, {"x": target.pid}, {"x": "svc"})
        injector.spawn, injector.halt = sup.spawn, sup.stop
        fault = Fault("f01-cpu_contention-x", "cpu_contention", "svc", "x", 0, 5, {"workers": 1})
        assert injector.start(fault)
        assert all(len(os.sched_getaffinity(t)) == 1 for t in before)
        (burner,) = sup.procs
        injector.stop(fault)  # used to raise (the supervisor hands back a pid, not a Popen)
        assert sup.procs[burner].poll() is not None
        assert sup.crashed() == []  # ended by the injector, not a crash
        assert {t: os.sched_getaffinity(t) for t in before} == before
        assert fault.end_ns is not None and injector.active == []
    finally:
        target.kill()
        target.wait()
        sup.stop_all()
