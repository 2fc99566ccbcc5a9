"""System-call recordings of chosen instances: `strace -f -ttt -T` attached to each one.

Each chosen instance gets one tracer, started (under the run's supervisor) once the instance
listens and attached to all its threads (``-p PID -f``), writing
``RUN/syscalls/SERVICE@INSTANCE.strace``: one line per call, ``TID EPOCH.USEC name(args) =
ret <seconds>``. A tracer ends by itself when its instance exits (the run stops instances
first), which flushes the file; one still running then gets SIGTERM (strace detaches and
flushes) before anything is killed. The run's ``faults.jsonl`` labels the recordings.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from spanomaly.errors import InputError, SpanomalyError

log = logging.getLogger(__name__)
TRACER_PREFIX = "strace-"
ATTACH_TIMEOUT_S = 10.0


def strace_path() -> str:
    """The strace binary; a one-line error where there is none."""
    path = shutil.which("strace")
    if path is None:
        raise InputError("--syscalls: strace is not installed (apt-get install strace)")
    return path


def chosen(specs: list[str], instances: dict[str, str]) -> list[str]:
    """The instances named by --syscalls values (comma lists, repeatable, `all`), in run
    order; a one-line error for a name the run does not have."""
    names = [n.strip() for spec in specs for n in spec.split(",") if n.strip()]
    if "all" in names:
        return list(instances)
    unknown = [n for n in names if n not in instances]
    if unknown:
        raise InputError(
            f"--syscalls: no instance {unknown[0]!r} (this run has {', '.join(instances)}, or all)"
        )
    return [n for n in instances if n in names]


def recording_path(out_dir: Path, service: str, instance: str) -> Path:
    """Where an instance's recording goes: OUT/syscalls/SERVICE@INSTANCE.strace."""
    return out_dir / "syscalls" / f"{service}@{instance}.strace"


def strace_argv(strace: str, pid: int, path: Path) -> list[str]:
    """The tracer's command line: every thread of pid, wall-clock times and durations."""
    return [strace, "-f", "-ttt", "-T", "-o", str(path), "-p", str(pid)]


def start_tracers(
    sup: Any, pids: dict[str, int], instances: dict[str, str], names: list[str], out_dir: Path
) -> dict[str, Path]:
    """Attach one supervised tracer per named instance; wait until each says it has attached
    (so the recording covers the load); the files by instance."""
    if not names:
        return {}
    strace = strace_path()
    files = {}
    for name in names:
        path = recording_path(out_dir, instances[name], name)
        path.parent.mkdir(parents=True, exist_ok=True)
        sup.spawn(TRACER_PREFIX + name, strace_argv(strace, pids[name], path))
        files[name] = path
    deadline = time.monotonic() + ATTACH_TIMEOUT_S
    for name in files:
        proc, said = sup.procs[TRACER_PREFIX + name], sup.log_dir / f"{TRACER_PREFIX}{name}.log"
        while b"attached" not in said.read_bytes():  # strace's stderr, unbuffered
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SpanomalyError(
                    f"strace did not attach to {name}: {said.read_text()[-200:]!r}"
                )
            time.sleep(0.05)
    log.info("tracing system calls of %s", ", ".join(names))
    return files


def tracers(sup: Any) -> list[str]:
    """The supervisor's names of the run's tracers."""
    return [n for n in sup.procs if n.startswith(TRACER_PREFIX)]
