"""LTTng syscall import speed: `spanomaly ingest TRACE` beside `babeltrace2 TRACE > /dev/null`.

Both are whole processes, as a user runs them, timed in turn (A B A B ...) after one
warm-up each: the ingest into a fresh DuckDB store each run (bt2 reading, pairing, the
store's writes and its duplicate check), babeltrace2's text output of every event thrown
away. Prints each run, the medians and the median of the pairwise ratios.

    nice -n 5 .venv/bin/python bench/syscall_import.py [--trace /work/tt/lttng-kernel/many-threads]
        [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_TRACE = Path("/work/tt/lttng-kernel/many-threads")


def timed(cmd: list[str], stdout: object = subprocess.DEVNULL) -> float:
    """Wall seconds of one run of cmd (which must succeed)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=stdout, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    """Time both commands in turn and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("babeltrace2") is None:
        sys.exit("babeltrace2 is not installed (Debian babeltrace2)")
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = (
        f"{REPO / 'src'}{os.pathsep}{env_path}" if env_path else str(REPO / "src")
    )
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs + 1):  # run 0: the warm-up, not counted
            db = Path(tmp) / f"s{run}.duckdb"
            a = timed(
                [sys.executable, "-m", "spanomaly", "ingest", str(args.trace), "--db", str(db)]
            )
            b = timed(["babeltrace2", str(args.trace)])
            db.unlink()
            if run:
                ours.append(a)
                theirs.append(b)
                print(f"run {run}: spanomaly ingest {a:.3f} s, babeltrace2 {b:.3f} s")
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    print(
        f"median: spanomaly ingest {statistics.median(ours):.3f} s, babeltrace2 "
        f"{statistics.median(theirs):.3f} s, ratio {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}) over {args.runs} pairs"
    )


if __name__ == "__main__":
    main()
