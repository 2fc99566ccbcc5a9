"""Testbed at a given rate: peak RSS of testbed + collector, and the load's achieved rate.

Usage: .venv/bin/python bench/testbed_load.py [RATE] [MINUTES]
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from spanomaly.testbed.run import RunConfig, run
from spanomaly.testbed.supervisor import processes_of

rate = float(sys.argv[1]) if len(sys.argv) > 1 else 50.0
minutes = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
peak = {"rss": 0.0}
ids: dict[str, str] = {}


def sample() -> None:
    me = psutil.Process()
    while "done" not in ids:
        if "run" in ids:
            procs = [*processes_of(ids["run"]), me]
            total = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            peak["rss"] = max(peak["rss"], total)
        time.sleep(2)


with tempfile.TemporaryDirectory() as tmp:
    threading.Thread(target=sample, daemon=True).start()
    schedule = Path(tmp) / "none.toml"
    schedule.write_text("")
    cfg = RunConfig(minutes=minutes, rate=rate, faults=schedule, db=Path(tmp) / "b.duckdb")
    result = run(cfg, on_start=lambda run_id, _: ids.update(run=run_id))
    ids["done"] = "1"
    load = result.summary["load"]
    print(
        json.dumps(
            {
                "rate": rate,
                "minutes": minutes,
                "peak_rss_mb": round(peak["rss"] / 2**20),
                "achieved_rate": load["achieved_rate"],
                "sent": load["sent"],
                "errors": load["errors"],
                "latency_ms": load["latency_ms"],
            }
        )
    )
