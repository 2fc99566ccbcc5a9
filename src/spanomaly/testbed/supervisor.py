"""Process groups of a run: spawn, watch, and stop them all, whatever happens.

Every child runs in its own session (so its whole group, stress-ng workers included, is
killed together), dies with its parent (PR_SET_PDEATHSIG, so even a `kill -9` of the run
leaves nothing behind) and carries ``SPANOMALY_TESTBED_RUN=<run id>`` in its environment,
which is how `processes_of` finds leftovers.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)
RUN_ENV = "SPANOMALY_TESTBED_RUN"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Supervisor:
    """The children of one run, by name."""

    def __init__(self, run_id: str, log_dir: Path) -> None:
        self.run_id = run_id
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._reported: set[str] = set()
        atexit.register(self.stop_all)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        out = (self.log_dir / f"{name}.log").open("ab")
        full_env = os.environ | (env or {}) | {RUN_ENV: self.run_id}
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        out.close()
        self.procs[name] = proc
        return proc.pid

    def crashed(self) -> list[str]:
        """Children that exited on their own since the last call (each reported once)."""
        new = []
        for name, proc in self.procs.items():
            if name not in self._reported and proc.poll() is not None:
                self._reported.add(name)
                new.append(name)
                log.warning("%s exited with status %s", name, proc.returncode)
        return new

    def stop(self, names: list[str], timeout_s: float = 5.0) -> None:
        """SIGTERM the groups, wait, then SIGKILL whatever is left."""
        procs = [self.procs[n] for n in names if n in self.procs]
        for proc in procs:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            _signal_group(proc.pid, signal.SIGKILL)  # stragglers and grandchildren
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
        for name in names:
            self._reported.add(name)

    def stop_all(self, timeout_s: float = 5.0) -> None:
        self.stop(list(self.procs), timeout_s)
        leftovers = processes_of(self.run_id)
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def processes_of(run_id: str) -> list[psutil.Process]:
    """Live processes that carry the run's id in their environment."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(RUN_ENV) == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found
