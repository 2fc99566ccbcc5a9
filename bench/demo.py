"""`spanomaly demo` as `make demo` runs it: wall time, peak RSS of the whole process tree
(the demo, the collector, the services, the proxy, the agent), and the demo's own table.

Usage: .venv/bin/python bench/demo.py [OUT_DIR]   (default: a temporary folder)
Prints one JSON document: wall_s, peak_rss_mb, the evaluation's headline figures and a
markdown table per fault, ready for bench/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def tree_rss(root: psutil.Process) -> float:
    """Bytes resident in root and every process below it."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    return total


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="demo-"))
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spanomaly", "demo", "--out", str(out), "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    peak = {"rss": 0.0}
    ps = psutil.Process(proc.pid)

    def sample() -> None:
        while proc.poll() is None:
            peak["rss"] = max(peak["rss"], tree_rss(ps))
            time.sleep(1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    wall = time.monotonic() - t0
    sampler.join(timeout=5)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed with status {proc.returncode}")
    doc = json.loads(stdout)
    ev = doc["evaluation"]
    rows = ["| fault kind | injected into | detected | time to detect (s) | trace P / R / F1 "
            "| rank of service | rank of instance |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for f in ev["per_fault"]:
        tr = ev["per_type"][f["kind"]].get("trace")
        prf = "–" if not tr else " / ".join(f"{tr[k]:.2f}" for k in ("precision", "recall", "f1"))
        ttd = f["time_to_detect_s"]
        rows.append(
            f"| {f['kind']} | {f['instance']} | {'yes' if f['detected'] else 'no'} | "
            f"{'–' if ttd is None else f'{ttd:.1f}'} | {prf} | {f['rank']['service'] or '–'} | "
            f"{f['rank']['instance'] or '–'} |"
        )
    print(
        json.dumps(
            {
                "wall_s": round(wall, 1),
                "peak_rss_mb": round(peak["rss"] / 2**20),
                "faults": ev["faults"],
                "detected": ev["detected"],
                "false_alarms_per_hour": ev["false_alarms_per_hour"],
                "service_as": ev["rca"]["service"],
                "instance_as": ev["rca"]["instance"],
                "trace": ev["trace"],
                "training": doc["training"],
                "timings": doc["timings"],
                "report": doc["paths"]["report"],
                "table": "\n".join(rows),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
