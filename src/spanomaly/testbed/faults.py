"""Fault schedules (TOML) and their injection: in code, in the process, in the network.

A fault acts through one of four levers, never through anything a detector could read:
control files the instances poll (in-code faults and the leak), the proxies' control file
(network faults), stress-ng / cgroup CPU quota on the instance's process (CPU faults), or
the release the instance runs (version). Each fault's real window (when it was switched on
and off) becomes one `faults` row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CODE_KINDS = {"code_delay", "code_cpu", "code_error", "wrong_result", "memory_leak"}
NETWORK_KINDS = {"network_delay", "network_loss", "network_corrupt", "network_bandwidth"}
PROCESS_KINDS = {"cpu_contention", "cpu_throttle"}
KINDS = CODE_KINDS | NETWORK_KINDS | PROCESS_KINDS | {"version"}
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")


class ScheduleError(ValueError):
    """A schedule file that cannot be used."""


@dataclass
class Fault:
    fault_id: str
    kind: str
    service: str
    instance: str | None  # None: every instance of the service
    at_s: float
    duration_s: float
    params: dict[str, Any] = field(default_factory=dict)
    start_ns: int | None = None
    end_ns: int | None = None

    def targets(self, instances: dict[str, str]) -> list[str]:
        """Instance names hit, given instance -> service."""
        if self.instance is not None:
            return [self.instance]
        return [i for i, s in instances.items() if s == self.service]


def default_schedule() -> Path:
    return Path(str(resources.files("spanomaly.testbed") / "default_faults.toml"))


def load_schedule(
    path: Path | None, instances: dict[str, str], scale: float = 1.0, run_id: str = ""
) -> list[Fault]:
    """Faults from a TOML file (default: the shipped one), times multiplied by `scale`; their
    ids begin with run_id, so that runs of one schedule ingested into one store stay apart."""
    prefix = f"{run_id}-" if run_id else ""
    path = path or default_schedule()
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScheduleError(f"{path}: {exc}") from exc
    faults = []
    for n, entry in enumerate(doc.get("fault", []), 1):
        entry = dict(entry)
        kind = entry.pop("kind", None)
        if kind not in KINDS:
            raise ScheduleError(f"{path}: fault {n}: kind {kind!r} is not one of {sorted(KINDS)}")
        target = entry.pop("target", None)
        service = entry.pop("service", None)
        if target is not None:
            if target not in instances:
                raise ScheduleError(f"{path}: fault {n}: no instance {target!r}")
            service = instances[target]
        elif service not in set(instances.values()):
            raise ScheduleError(f"{path}: fault {n}: give a target instance or a service")
        at = float(entry.pop("at", 0)) * scale
        duration = float(entry.pop("duration", 0 if kind == "version" else 30)) * scale
        faults.append(
            Fault(
                f"{prefix}f{n:02d}-{kind}-{target or service}",
                kind,
                service,
                target,
                at,
                duration,
                entry,
            )
        )
    return faults


class Injector:
    """Switches faults on and off; remembers what to undo."""

    def __init__(self, control_dir: Path, pids: dict[str, int], services: dict[str, str]) -> None:
        self.control_dir = control_dir
        self.pids = pids
        self.services = services
        self.active: list[Fault] = []
        self.stressors: dict[str, str] = {}  # fault:instance -> the supervisor's stress-ng
        self.cgroups: dict[str, Path] = {}
        self.affinity: dict[int, list[int]] = {}
        self.spawn: Any = None  # Supervisor.spawn, for stress-ng under supervision
        self.halt: Any = None  # Supervisor.stop, to end it

    def instance_control(self, instance: str) -> Path:
        return self.control_dir / f"{instance}.json"

    @property
    def proxy_control(self) -> Path:
        return self.control_dir / "proxy.json"

    def _write(self, path: Path, doc: Any) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)

    def _publish(self) -> None:
        code: dict[str, list[dict[str, Any]]] = {i: [] for i in self.services}
        net: dict[str, list[dict[str, Any]]] = {}
        for fault in self.active:
            doc = {"fault_id": fault.fault_id, "kind": fault.kind} | fault.params
            for inst in fault.targets(self.services):
                if fault.kind in CODE_KINDS:
                    code[inst].append(doc)
                elif fault.kind in NETWORK_KINDS:
                    net.setdefault(inst, []).append(doc)
        for inst, docs in code.items():
            self._write(self.instance_control(inst), docs)
        self._write(self.proxy_control, net)

    def start(self, fault: Fault) -> bool:
        """Switch a fault on; False when it cannot act here (then it is not recorded)."""
        if fault.kind in PROCESS_KINDS:
            for inst in fault.targets(self.services):
                if fault.kind == "cpu_contention" and not self._contend(fault, inst):
                    return False
                if fault.kind == "cpu_throttle" and not self._throttle(fault, inst):
                    return False
        fault.start_ns = time.time_ns()
        self.active.append(fault)
        self._publish()
        log.info("fault on: %s", fault.fault_id)
        return True

    def stop(self, fault: Fault) -> None:
        if fault not in self.active:
            return
        self.active.remove(fault)
        self._publish()
        for inst in fault.targets(self.services):
            key = f"{fault.fault_id}:{inst}"
            if key in self.stressors and self.halt is not None:
                self.halt([self.stressors.pop(key)], 1.0)  # its group, not reported crashed
            pid = self.pids[inst]
            if fault.kind == "cpu_contention" and pid in self.affinity:
                cpus = self.affinity.pop(pid)
                for task in [pid, *_threads(pid)]:  # every thread was pinned
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(task, cpus)
            if key in self.cgroups:
                self._unthrottle(pid, self.cgroups.pop(key))
        fault.end_ns = time.time_ns()
        log.info("fault off: %s", fault.fault_id)

    def stop_all(self) -> None:
        for fault in list(self.active):
            self.stop(fault)

    # -- process level --------------------------------------------------------------------

    def _contend(self, fault: Fault, inst: str) -> bool:
        """Pin the instance to one CPU and run CPU burners on that same CPU."""
        pid = self.pids[inst]
        cpus = sorted(os.sched_getaffinity(0))
        cpu = cpus[-1]
        workers = int(fault.params.get("workers", 2))
        if shutil.which("stress-ng"):
            argv = [
                "stress-ng",
                "--cpu",
                str(workers),
                "--taskset",
                str(cpu),
                "--quiet",
                "--timeout",
                f"{int(fault.duration_s) + 30}s",
            ]
        else:  # burners in Python, pinned with taskset semantics through sched_setaffinity
            code = (
                f"import os,multiprocessing as m\nos.sched_setaffinity(0,{{{cpu}}})\n"
                "def b():\n    while True: pass\n"
                f"[m.Process(target=b).start() for _ in range({workers})]\nb()"
            )
            argv = [sys.executable, "-c", code]
        try:
            self.affinity[pid] = sorted(os.sched_getaffinity(pid))
            os.sched_setaffinity(pid, {cpu})
            for thread in _threads(pid):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread, {cpu})
        except OSError as exc:
            log.warning("%s: cannot pin %s: %s", fault.fault_id, inst, exc)
            return False
        name = f"stress-{fault.fault_id}-{inst}"
        self.spawn(name, argv)
        self.stressors[f"{fault.fault_id}:{inst}"] = name
        return True

    def _throttle(self, fault: Fault, inst: str) -> bool:
        """A cgroup v1 CPU quota on the instance (root only)."""
        if os.geteuid() != 0 or not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
            log.warning("%s: needs root and cgroup v1 cpu; skipped", fault.fault_id)
            return False
        group = CGROUP_CPU / f"spanomaly-{os.getpid()}-{inst}"
        try:
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text("100000")
            quota = max(1000, int(float(fault.params.get("quota", 0.05)) * 100000))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
            (group / "cgroup.procs").write_text(str(self.pids[inst]))
        except OSError as exc:
            log.warning("%s: cgroup: %s; skipped", fault.fault_id, exc)
            return False
        self.cgroups[f"{fault.fault_id}:{inst}"] = group
        return True

    def _unthrottle(self, pid: int, group: Path) -> None:
        with contextlib.suppress(OSError):
            (CGROUP_CPU / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            for task in (group / "tasks").read_text().split():
                with contextlib.suppress(OSError):
                    (CGROUP_CPU / "tasks").write_text(task)
            group.rmdir()


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []
