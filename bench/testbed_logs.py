"""Testbed: what log lines add for the faults that leave their mark in logs.

Runs `spanomaly demo` with bench/schedules/logs_faults.toml (a caught error on books-1, a
wrong result on evaluation-2; the services log through the OpenTelemetry log handler to
the collector), then trains two models on the same normal period of that run, one with log
lines as trace events and one without, scores the period after the model was loaded with
each, and prints the per-fault ranks and detection figures side by side.

    .venv/bin/python bench/testbed_logs.py [--out DIR] [--append bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(HERE))

from run_copies import fresh_copy  # noqa: E402


def _score(db: Path, out: Path, training: dict, logs: bool) -> dict:
    """Train on the run's normal period (with or without logs), detect, evaluate."""
    from spanomaly import pipeline

    copy, model = fresh_copy(db, out, f"{'with' if logs else 'without'}-logs")
    store = pipeline.open_store(str(copy))
    try:
        pipeline.train(
            store, model, training["from_ns"], training["to_ns"],
            options=pipeline.TrainOptions(logs=logs),
            point=pipeline.PointOptions(window_s=5.0),
        )  # fmt: skip
        pipeline.detect(store, model, training["loaded_ns"], None)
        return pipeline.evaluate(store, training["loaded_ns"], None, "both", model_dir=model)
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="/tmp/spanomaly-testbed-logs")
    ap.add_argument("--append")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    run = subprocess.run(
        [sys.executable, "-m", "spanomaly", "demo", "--out", str(out / "run"), "--json",
         "--faults", str(HERE / "schedules" / "logs_faults.toml")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    demo = json.loads(run.stdout)
    training = demo["training"]
    db = out / "run" / "spanomaly.duckdb"
    docs = {logs: _score(db, out, training, logs) for logs in (True, False)}
    lines = [
        f"## Testbed: log evidence for error and wrong-result faults "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        "`.venv/bin/python bench/testbed_logs.py` (2 cores): `spanomaly demo --faults "
        "bench/schedules/logs_faults.toml`, then two models trained on the same normal period "
        f"of that run ({(training['to_ns'] - training['from_ns']) / 1e9:.0f} s), with and "
        "without log lines as trace events, each scoring the period after the model was "
        "loaded (evidence: both).",
        "",
        "| model | detected | trace P / R / F1 | false alarms / h | fault: service rank, "
        "instance rank (top suspect) |",
        "|---|---|---|---|---|",
    ]
    for logs, d in docs.items():
        t = d.get("trace") or {}
        prf = " / ".join(f"{t.get(k) or 0:.2f}" for k in ("precision", "recall", "f1"))
        faults = "; ".join(
            f"{f['kind']} {f['instance']}: {f['rank']['service']}, {f['rank']['instance']} "
            f"({(f['suspects'][0]['instance'] if f['suspects'] else '-')})"
            for f in d["per_fault"]
        )
        lines.append(
            f"| {'with' if logs else 'without'} logs | {d['detected']} / {d['faults']} | {prf} "
            f"| {d['false_alarms_per_hour']} | {faults} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
