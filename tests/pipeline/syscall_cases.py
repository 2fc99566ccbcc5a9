"""Synthetic system-call runs: per-thread call streams whose mix, durations and errors
change with the fault that hits their instance (numpy; the schema of `syscalls`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from spanomaly.schema import arrow_schema

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
RUN_S = 60
INSTANCES = (("api", "api-1"), ("db", "db-1"))
THREADS = 2
GAP_MS = 20.0  # mean time between calls of a thread
NAMES = ("read", "write", "epoll_wait", "futex", "fsync", "pwrite64", "connect", "sendto")
# per class: call mix (over NAMES), duration factor, share of calls returning an error
MIX = {
    "normal": ([0.3, 0.2, 0.3, 0.2, 0, 0, 0, 0], 1.0, 0.01),
    "cpu": ([0.25, 0.15, 0.15, 0.45, 0, 0, 0, 0], 4.0, 0.01),
    "disk": ([0.2, 0.1, 0.2, 0.1, 0.2, 0.2, 0, 0], 1.5, 0.01),
    "network": ([0.25, 0.1, 0.2, 0.1, 0, 0, 0.2, 0.15], 1.0, 0.3),
}
BASE_US = np.array([20, 30, 800, 40, 3000, 500, 200, 60], dtype=np.float64)
# per run: (kind, instance, start s, end s)
FAULTS = (("cpu", "api-1", 8, 20), ("disk", "db-1", 24, 36), ("network", "api-1", 40, 52))


def _kind_at(t_s: np.ndarray, instance: str, shift: int) -> np.ndarray:
    kind = np.full(len(t_s), "normal", dtype=object)
    for k, inst, a, b in FAULTS:
        if inst == instance:
            kind[(t_s >= a + shift) & (t_s < b + shift)] = k
    return kind


def _thread(rng: np.random.Generator, instance: str, shift: int) -> dict[str, np.ndarray]:
    n = int(RUN_S * 1000 / GAP_MS * 1.2)
    t_s = np.cumsum(rng.exponential(GAP_MS / 1000, n))
    t_s = t_s[t_s < RUN_S]
    kind = _kind_at(t_s, instance, shift)
    name = np.zeros(len(t_s), dtype=np.int64)
    dur = np.zeros(len(t_s))
    ret = np.zeros(len(t_s), dtype=np.int64)
    for k, (mix, factor, err) in MIX.items():  # per class
        rows = np.flatnonzero(kind == k)
        name[rows] = rng.choice(len(NAMES), len(rows), p=np.asarray(mix) / np.sum(mix))
        dur[rows] = BASE_US[name[rows]] * factor * rng.lognormal(0, 0.3, len(rows))
        ret[rows] = np.where(rng.random(len(rows)) < err, -11, 1)
    return {"t": t_s, "name": name, "dur": dur, "ret": ret}


def run_table(run: int, root: str = "runs", seed: int = 0) -> pa.Table:
    """The calls of one run: every instance's threads, faults shifted a little per run."""
    rng = np.random.default_rng(seed * 1000 + run)
    t_run = T0 + run * 1000 * NS
    parts = []
    for pid, (service, instance) in enumerate(INSTANCES):
        for k in range(THREADS):
            c = _thread(rng, instance, shift=run % 3)
            n = len(c["t"])
            parts.append(pa.table({
                "time_ns": (t_run + c["t"] * NS).astype(np.int64),
                "duration_ns": (c["dur"] * 1000).astype(np.int64),
                "name": np.asarray(NAMES, dtype=object)[c["name"]],
                "ret": c["ret"],
                "pid": np.full(n, 100 + pid),
                "tid": np.full(n, 100 + pid * 10 + k),
                "process": np.full(n, service, dtype=object),
                "cpu": pa.nulls(n, pa.int32()),
                "service": np.full(n, service, dtype=object),
                "instance": np.full(n, instance, dtype=object),
                "source": np.full(n, f"{root}/run-{run}/syscalls/{service}@{instance}.strace",
                                  dtype=object),
            }, schema=arrow_schema("syscalls")))  # fmt: skip
    return pa.concat_tables(parts)


def faults_table(runs: int) -> pa.Table:
    """The fault labels of runs 0..runs-1."""
    rows = []
    for run in range(runs):
        t_run = T0 + run * 1000 * NS
        for i, (kind, instance, a, b) in enumerate(FAULTS):
            shift = run % 3
            rows.append({
                "fault_id": f"r{run}-f{i}", "kind": kind, "service": instance.split("-")[0],
                "instance": instance, "start_ns": t_run + (a + shift) * NS,
                "end_ns": t_run + (b + shift) * NS, "params": None,
            })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=arrow_schema("faults"))
