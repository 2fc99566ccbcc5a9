"""A model of one deployment on another: TrainTicket 2023-01-30 -> the 2023-01-29 half.

Trains on 2023-01-30 with its log lines (the whole day minus the 17 fault windows, each
[start, end + 60 s]), then scores the half of 2023-01-29 in `../shared/data` (another
deployment: every pod renamed; exception, wrong-return and CPU faults), after adapting a
copy of the model on the half's one fault-free minute (`spanomaly adapt`), and 2023-01-30's
own fault period and last hour, and evaluates each: service AS@1/3 overall and per fault
type, the share of traces outside the fault windows flagged, false alarms (incidents) an
hour. Settings are the defaults; nothing is tuned on the labels.

    .venv/bin/python bench/generalize.py [--data ../shared/data] [--day STORE]
        [--half STORE] [--json OUT]

--day: a store of 2023-01-30's traces, metrics and log lines; --half: a store of the
2023-01-29 half (both copied first: detect writes findings); without them the archives are
unpacked and ingested.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

NS = 1_000_000_000
SLACK_NS = 60 * NS
DAY = datetime(2023, 1, 30, tzinfo=UTC)
# the half's one fault-free minute (its README): all the normal data that deployment has
FAULT_FREE = (datetime(2023, 1, 29, 8, 50, tzinfo=UTC), datetime(2023, 1, 29, 8, 51, tzinfo=UTC))


def at(hh: int, mm: int = 0) -> int:
    """ns of hh:mm UTC on 2023-01-30."""
    return int((DAY.timestamp() + hh * 3600 + mm * 60) * NS)


def _stores(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    from tests.conftest import unpack_zst_tar

    from spanomaly import pipeline
    from spanomaly.store.duckdb import DuckDBStore

    day, half = tmp / "day.duckdb", tmp / "half.duckdb"
    if args.day:
        shutil.copy(args.day, day)
    else:
        for name in ("trainticket-2023-01-30", "trainticket-2023-01-30-logs"):
            unpack_zst_tar(Path(args.data) / f"{name}.tar.zst", tmp)
        with DuckDBStore(day) as store:
            paths = [tmp / "trainticket-2023-01-30", tmp / "trainticket-2023-01-30-logs" / "log"]
            pipeline.ingest(paths, store)
    if args.half:
        shutil.copy(args.half, half)
    else:
        unpack_zst_tar(Path(args.data) / "trainticket-2023-01-29-dev.tar.zst", tmp)
        with DuckDBStore(half) as store:
            report = pipeline.ingest([tmp / "trainticket-2023-01-29-dev"], store)
            print(json.dumps({"half_ingest": report.to_json()}), flush=True)
    return day, half


def _fault_windows(store: object) -> list[tuple[int, int]]:
    rows = store.sql("SELECT start_ns, end_ns FROM faults").to_pylist()  # type: ignore[attr-defined]
    return [(r["start_ns"], r["end_ns"] + SLACK_NS) for r in rows]


def _summary(doc: dict) -> dict:
    if not doc.get("faults"):  # a period without faults: its false alarms
        return {k: doc.get(k) for k in ("findings", "incidents")}  # every one a false alarm
    s = doc["rca"]["service"]
    per = {
        k: {
            "n": v.get("faults"),
            "AS@1": v["rca"]["service"]["top1"],
            "AS@3": v["rca"]["service"]["top3"],
        }
        for k, v in doc["per_type"].items()
    }
    keep = ("detected", "faults", "false_alarms_per_hour", "trace_fpr")
    return {"AS@1": s["top1"], "AS@3": s["top3"], "per_type": per, **{k: doc.get(k) for k in keep}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--day")
    ap.add_argument("--half")
    ap.add_argument("--json")
    ap.add_argument("--model", help="keep the trained model here (reused when it exists)")
    args = ap.parse_args()

    from spanomaly import pipeline
    from spanomaly.store.duckdb import DuckDBStore

    tmp = Path(tempfile.mkdtemp(prefix="spanomaly-generalize-"))
    out: dict = {"machine": f"{platform.machine()}, Python {platform.python_version()}"}
    try:
        day, half = _stores(args, tmp)
        model = Path(args.model) if args.model else tmp / "model"
        with DuckDBStore(day) as store:
            if not (model / "config.json").exists():
                exclude = _fault_windows(store)
                t0 = time.perf_counter()
                options = pipeline.TrainOptions(logs=True)
                out["trained"] = pipeline.train(
                    store, model, None, None, exclude, options=options,
                    point=pipeline.PointOptions(),
                )  # fmt: skip
                out["train_s"] = round(time.perf_counter() - t0, 1)
            pipeline.detect(store, model, at(11, 30))
            faults = store.sql(
                "SELECT min(start_ns) AS lo, max(end_ns) AS hi FROM faults"
            ).to_pylist()[0]
            out["day_faults"] = _summary(
                pipeline.evaluate(
                    store, faults["lo"] - SLACK_NS, faults["hi"] + SLACK_NS, model_dir=model
                )
            )
            out["day_last_hour"] = _summary(
                pipeline.evaluate(store, at(23), at(24), model_dir=model)
            )
        adapted = tmp / "adapted"  # the model itself stays as trained (it may be reused)
        shutil.copytree(model, adapted)
        with DuckDBStore(half) as store:
            t0 = time.perf_counter()
            lo, hi = (int(t.timestamp()) * NS for t in FAULT_FREE)
            out["adapt"] = pipeline.adapt(store, adapted, lo, hi)
            out["adapt_s"] = round(time.perf_counter() - t0, 1)
            model = adapted
            t0 = time.perf_counter()
            pipeline.detect(store, model)
            out["half_detect_s"] = round(time.perf_counter() - t0, 1)
            out["half"] = _summary(pipeline.evaluate(store, None, None, model_dir=model))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
