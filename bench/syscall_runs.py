"""Labelled system-call recordings from the testbed: N runs of one fault schedule under strace.

Each run goes through the documented command only, one seed per run:

    spanomaly testbed run --syscalls TARGET,PEER --faults SCHEDULE --minutes M --seed K
                          --out OUT/run-K --db OUT/run-K/spanomaly.duckdb --json

(default schedule `src/spanomaly/testbed/syscall_faults.toml`: eight fault kinds on
movies-1; movies-2, its peer, stays normal). A run folder holds
`syscalls/SERVICE@INSTANCE.strace` (`strace -f -ttt -T`), `faults.jsonl` (the injector's
windows, the labels), `summary.json` (the command's answer), the store and the logs.

Then every run is checked: its recordings and labels go through `spanomaly ingest
RUN/syscalls RUN/faults.jsonl --db RUN/syscalls.duckdb` (the strace reader), and per
recording come its size, lines, stored calls, threads and calls left without a duration
(unfinished at the end); per fault window (from the store's `faults`) the target's calls per second, its p50 / p99 duration of non-waiting
calls and the syscall whose rate moved most, each against the run's normal seconds (outside
every window and 5 s after it), beside the peer in the same seconds. `--overhead` also
times one cheap call with and without strace attached and runs the load 45 s three ways
(no tracing, TARGET+PEER, every instance) to compare answered requests and latency.

    .venv/bin/python bench/syscall_runs.py [--runs 3] [--out /work/tt/syscall-runs]
        [--target movies-1] [--peer movies-2] [--faults FILE] [--rate 20] [--check-only]
        [--overhead] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCHEDULE = REPO / "src/spanomaly/testbed/syscall_faults.toml"
# calls that wait for something (their -T is the wait, not the cost of the call)
WAITS = {"epoll_pwait", "epoll_wait", "futex", "poll", "ppoll", "select", "pselect6",
         "clock_nanosleep", "nanosleep", "restart_syscall", "accept4", "io_uring_enter"}  # fmt: skip
MARGIN_S = 5


def spanomaly(*args: str) -> str:
    """Run one spanomaly command as a user would; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "spanomaly", *args], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"spanomaly {' '.join(args)}: {done.stderr.strip()[-400:]}")
    return done.stdout


def schedule_minutes(path: Path, tail_s: float = 15.0) -> float:
    """Minutes of load that cover every fault of a schedule and a normal tail."""
    faults = tomllib.loads(path.read_text()).get("fault", [])
    end = max((float(f.get("at", 0)) + float(f.get("duration", 30)) for f in faults), default=0)
    return round((end + tail_s) / 60, 3)


def record(out: Path, k: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run into out/run-K through the documented command; its summary."""
    run_dir = out / f"run-{k}"
    run_dir.mkdir(parents=True, exist_ok=True)
    minutes = schedule_minutes(args.faults)
    t0 = time.monotonic()
    doc = json.loads(spanomaly(
        "testbed", "run", "--syscalls", f"{args.target},{args.peer}", "--faults",
        str(args.faults), "--minutes", str(minutes), "--rate", str(args.rate), "--seed", str(k),
        "--out", str(run_dir), "--db", str(run_dir / "spanomaly.duckdb"), "--json",
    ))  # fmt: skip
    doc["wall_s"] = round(time.monotonic() - t0, 1)
    (run_dir / "summary.json").write_text(json.dumps(doc, indent=1))
    return doc


def ingest(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The run's recordings and labels into a store of their own, through `spanomaly ingest`
    (the strace reader); the store and the command's answer."""
    db = run_dir / "syscalls.duckdb"
    db.unlink(missing_ok=True)
    doc = json.loads(spanomaly("ingest", str(run_dir / "syscalls"), str(run_dir / "faults.jsonl"),
                               "--db", str(db), "--json"))  # fmt: skip
    return db, doc


def read_calls(con: Any, instance: str) -> pa.Table:
    """tid, entry time (s), name and duration (µs) of an instance's stored calls."""
    return con.sql(
        "SELECT tid, time_ns / 1e9 AS t, name, duration_ns / 1e3 AS dur FROM syscalls "
        "WHERE instance = $i ORDER BY time_ns", params={"i": instance}
    ).to_arrow_table()  # fmt: skip


def per_second(t: np.ndarray, t0: float, n: int) -> np.ndarray:
    """Calls in each second from t0."""
    idx = (t - t0).astype(np.int64)
    idx = idx[(idx >= 0) & (idx < n)]
    return np.bincount(idx, minlength=n).astype(float)


def _seconds(faults: list[dict[str, Any]], t0: float, n: int) -> tuple[np.ndarray, list]:
    """The normal seconds (a mask) and each fault's whole seconds."""
    normal = np.ones(n, bool)
    normal[:MARGIN_S] = normal[-MARGIN_S:] = False
    windows = []
    for f in faults:
        a, b = int(f["start_ns"] / 1e9 - t0), int(f["end_ns"] / 1e9 - t0)
        normal[max(0, a) : min(n, b + MARGIN_S)] = False
        windows.append((f, slice(max(0, a + 1), min(n, b))))
    return normal, windows


def _moved(names: dict[str, np.ndarray], normal: np.ndarray, win: slice) -> tuple[str, float]:
    """The syscall whose rate moved most in the window (log ratio, +0.5 calls/s smoothing)."""
    best, ratio = "", 1.0
    for name, counts in names.items():
        r = (counts[win].mean() + 0.5) / (counts[normal].mean() + 0.5)
        if abs(np.log(r)) > abs(np.log(ratio)):
            best, ratio = name, r
    return best, ratio


def _cost(tab: pa.Table, t0: float, normal: np.ndarray, win: slice) -> dict[str, float]:
    """p50 and p99 duration (µs) of non-waiting calls in the window and the normal seconds."""
    keep = pc.and_(pc.is_valid(tab["dur"]), pc.invert(pc.is_in(tab["name"], pa.array(WAITS))))
    sub = tab.filter(keep)
    sec = (sub["t"].to_numpy() - t0).astype(np.int64).clip(0, len(normal) - 1)
    dur = sub["dur"].to_numpy()
    inside = dur[(sec >= win.start) & (sec < win.stop)]
    if not inside.size:
        inside = np.array([np.nan])
    q = [50, 99]
    (p50, p99), (n50, n99) = np.percentile(inside, q), np.percentile(dur[normal[sec]], q)
    loop = tab.filter(pc.and_(pc.is_valid(tab["dur"]), pc.equal(tab["name"], "epoll_pwait")))
    lsec = (loop["t"].to_numpy() - t0).astype(np.int64).clip(0, len(normal) - 1)
    ldur = loop["dur"].to_numpy()
    lin = ldur[(lsec >= win.start) & (lsec < win.stop)]
    return {"p50_us": round(p50, 1), "p99_us": round(p99, 1),
            "normal_p50_us": round(n50, 1), "normal_p99_us": round(n99, 1),
            "loop_wait_p50_us": round(float(np.median(lin)), 1) if lin.size else None,
            "normal_loop_wait_p50_us": round(float(np.median(ldur[normal[lsec]])), 1)}  # fmt: skip


def _name_rates(calls: pa.Table, t0: float, n: int) -> dict[str, np.ndarray]:
    """Calls per second of every syscall name seen at least 50 times."""
    rates = {}
    for d in pc.value_counts(calls["name"]).to_pylist():
        if d["counts"] >= 50:
            t = calls.filter(pc.equal(calls["name"], d["values"]))["t"].to_numpy()
            rates[d["values"]] = per_second(t, t0, n)
    return rates


def file_stats(con: Any, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per recording: bytes, lines, stored calls, threads, calls without a duration."""
    stats = {}
    for path in sorted((run_dir / "syscalls").glob("*.strace")):
        instance = path.stem.split("@", 1)[1]
        ((calls, threads, open_),) = con.sql(
            "SELECT count(*), count(DISTINCT tid), count(*) - count(duration_ns) FROM syscalls "
            "WHERE instance = $i", params={"i": instance}
        ).fetchall()  # fmt: skip
        stats[path.name] = {"bytes": path.stat().st_size,
                            "lines": path.read_bytes().count(b"\n"), "calls": calls,
                            "threads": threads, "no_duration": open_}  # fmt: skip
    return stats


def check_run(run_dir: Path, target: str, peer: str) -> dict[str, Any]:
    """The run ingested; its files, and each fault window against the normal seconds."""
    import duckdb

    db, doc = ingest(run_dir)
    con = duckdb.connect(str(db), read_only=True)
    out: dict[str, Any] = {"run": run_dir.name, "rejected": doc["rejected"], "windows": []}
    out["files"] = file_stats(con, run_dir)
    faults = con.sql("SELECT * FROM faults WHERE instance = $i ORDER BY start_ns",
                     params={"i": target}).to_arrow_table().to_pylist()  # fmt: skip
    calls = {i: read_calls(con, i) for i in (target, peer)}
    con.close()
    t0 = max(float(pc.min(c["t"]).as_py()) for c in calls.values())
    n = int(min(float(pc.max(c["t"]).as_py()) for c in calls.values()) - t0)
    normal, windows = _seconds(faults, t0, n)
    mine, theirs = (per_second(calls[i]["t"].to_numpy(), t0, n) for i in (target, peer))
    names = _name_rates(calls[target], t0, n)
    for f, win in windows:
        moved, ratio = _moved(names, normal, win)
        out["windows"].append({
            "kind": f["kind"], "seconds": win.stop - win.start,
            "calls_per_s": round(mine[win].mean(), 1),
            "normal_calls_per_s": round(mine[normal].mean(), 1),
            "z": round((mine[win].mean() - mine[normal].mean()) / (mine[normal].std() or 1.0), 2),
            "peer_ratio": round(theirs[win].mean() / (theirs[normal].mean() or 1.0), 2),
            "moved": moved, "moved_ratio": round(ratio, 2),
        } | _cost(calls[target], t0, normal, win))  # fmt: skip
    return out


def overhead_micro(n: int = 200_000) -> dict[str, float]:
    """µs per os.stat call, plain and under strace -f -ttt -T (output to a temp file)."""
    code = (
        "import os,time\nt=time.perf_counter()\n"
        f"for _ in range({n}): os.stat('.')\nprint(time.perf_counter()-t)"
    )
    plain = float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                 text=True, check=True).stdout)  # fmt: skip
    out = Path(f"/tmp/syscall-overhead-{os.getpid()}.strace")
    traced = float(subprocess.run(["strace", "-f", "-ttt", "-T", "-o", str(out), sys.executable,
                                   "-c", code], capture_output=True, text=True,
                                  check=True).stdout)  # fmt: skip
    out.unlink(missing_ok=True)
    return {"plain_us": round(plain / n * 1e6, 2), "traced_us": round(traced / n * 1e6, 2)}


def overhead_load(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """45 s of load without tracing, with TARGET+PEER traced, with every instance traced."""
    empty = out / "no-faults.toml"
    empty.write_text("# no faults\n")
    res = {}
    for label, spec in (("none", None), ("target+peer", f"{args.target},{args.peer}"),
                        ("all", "all")):  # fmt: skip
        run_dir = out / f"overhead-{label}"
        extra = ["--syscalls", spec] if spec else []
        doc = json.loads(spanomaly(
            "testbed", "run", "--faults", str(empty), "--minutes", "0.75", "--rate",
            str(args.rate), "--out", str(run_dir), "--db", str(run_dir / "db.duckdb"), "--json",
            *extra,
        ))  # fmt: skip
        load = doc["load"]
        res[label] = {k: load[k] for k in ("sent", "ok", "errors", "dropped", "achieved_rate")}
        res[label]["latency_ms"] = load["latency_ms"]
    return res


def report(checks: list[dict[str, Any]]) -> str:
    """A markdown table of every run's windows and one of its files."""
    rows = [
        "| run | file | MB | lines | calls | threads | no duration |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        for name, f in c["files"].items():
            rows.append(f"| {c['run']} | {name} | {f['bytes'] / 1e6:.1f} | {f['lines']:,} | "
                        f"{f['calls']:,} | {f['threads']} | {f['no_duration']:,} |")  # fmt: skip
    rows += ["", "| run | kind | s | calls/s (normal) | z | peer ratio | p50 / p99 µs (normal) "
             "| epoll_pwait p50 µs (normal) | moved most |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in checks:
        for w in c["windows"]:
            rows.append(
                f"| {c['run']} | {w['kind']} | {w['seconds']} | {w['calls_per_s']} "
                f"({w['normal_calls_per_s']}) | {w['z']} | {w['peer_ratio']} | "
                f"{w['p50_us']} / {w['p99_us']} ({w['normal_p50_us']} / {w['normal_p99_us']}) | "
                f"{w['loop_wait_p50_us']} ({w['normal_loop_wait_p50_us']}) | "
                f"{w['moved']} x{w['moved_ratio']} |"
            )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("/work/tt/syscall-runs"))
    p.add_argument("--target", default="movies-1")
    p.add_argument("--peer", default="movies-2")
    p.add_argument("--faults", type=Path, default=SCHEDULE)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--check-only", action="store_true", help="check the runs already there")
    p.add_argument("--overhead", action="store_true", help="also measure strace's cost")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"runs": {}}
    for k in range(1, a.runs + 1):
        if not a.check_only:
            summary = record(a.out, k, a)
            doc["runs"][k] = {"wall_s": summary["wall_s"], "load": summary["load"],
                              "faults": summary["faults"], "crashed": summary["crashed"]}  # fmt: skip
            print(f"run-{k}: {summary['wall_s']} s, {summary['load']['sent']} requests, "
                  f"{summary['load']['errors']} errors, {summary['faults']} faults", flush=True)  # fmt: skip
    runs = sorted(a.out.glob("run-*"), key=lambda r: int(re.sub(r"\D", "", r.name) or 0))
    doc["checks"] = [check_run(r, a.target, a.peer) for r in runs[: a.runs]]
    print(report(doc["checks"]))
    if a.overhead:
        doc["overhead_micro"] = overhead_micro()
        doc["overhead_load"] = overhead_load(a.out, a)
        print(json.dumps({k: doc[k] for k in ("overhead_micro", "overhead_load")}, indent=1))
    if a.json:
        a.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
