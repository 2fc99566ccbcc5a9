"""TrainTicket: collective (trace) anomaly detection, LSTM versus n-gram; sequence, duration, both.

Trains on the fault-free hours 14:15 to 23:00 UTC of 2023-01-30, then scores the whole day:
- the held-out normal hour 23:00 to 24:00: trace false-positive rate and false alarms;
- the fault period (first span to 14:15): fault recall over the 17 labelled faults (a fault
  is detected when a finding falls in [start, end + 60 s]), false alarms (alarms starting
  outside every fault window + 60 s) and the trace false-positive rate outside the windows.
Thresholds come from held-out normal training traces only (the models' target FPR); no
figure here is tuned on the fault period or the test hour.

    .venv/bin/python bench/trainticket_sequence.py [--db STORE] [--data ../shared/data]
        [--order start|tree] [--target-fpr 0.001] [--no-selection] [--append bench/RESULTS.md]

Without --db the TrainTicket archive is unpacked and ingested into a temporary store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

DAY = datetime(2023, 1, 30, tzinfo=UTC)
NS = 1_000_000_000


def at(hh: int, mm: int = 0) -> int:
    """ns of hh:mm UTC on the TrainTicket day."""
    return int((DAY.timestamp() + hh * 3600 + mm * 60) * NS)


TRAIN = (at(14, 15), at(23))
TEST = (at(23), at(24))
FAULT_END = at(14, 15)

CONFIGS = [
    ("LSTM", "sequence", "lstm", None),
    ("n-gram", "sequence", "ngram", None),
    ("—", "duration (robust)", None, "robust"),
    ("LSTM", "duration (LSTM head)", None, "lstm-duration"),
    ("LSTM", "both (robust duration)", "lstm", "robust"),
    ("n-gram", "both (robust duration)", "ngram", "robust"),
    ("LSTM", "both (LSTM duration)", "lstm", "lstm-duration"),
    ("n-gram", "both (LSTM duration)", "ngram", "lstm-duration"),
]


SELECT_TRAIN = (at(14, 15), at(21))
SELECT_EVAL = (at(21), at(23))
# planted slowdowns: (label, kind, size); kind net adds ms to the self time (gap) of every
# call to the service, cpu multiplies the self time of the service's own spans
PLANTS = [
    ("network +100 ms", "net", 100.0),
    ("network +300 ms", "net", 300.0),
    ("network +1 s", "net", 1000.0),
    ("CPU x3", "cpu", 3.0),
    ("CPU x10", "cpu", 10.0),
]


def plant(events, service: str, kind: str, size: float):
    """The events with one service slowed down, and the mask of the traces it touched."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    callee = events.column("callee").to_numpy(zero_copy_only=False).astype(str)
    blame = events.column("blame_service").to_numpy(zero_copy_only=False).astype(str)
    svc = events.column("service").to_numpy(zero_copy_only=False).astype(str)
    own = events.column("self_ns").to_numpy().astype(np.int64)
    dur = events.column("duration_ns").to_numpy().astype(np.int64)
    if kind == "net":
        hit = (callee != "") & (blame == service)
        add = np.where(hit, int(size * 1e6), 0)
    else:
        hit = (callee == "") & (svc == service)
        add = np.where(hit, (own * (size - 1)).astype(np.int64), 0)
    out = events.set_column(
        events.schema.get_field_index("self_ns"), "self_ns", pa.array(own + add)
    )
    out = out.set_column(
        out.schema.get_field_index("duration_ns"), "duration_ns", pa.array(dur + add)
    )
    traces = pc.unique(events.column("trace_id").filter(pa.array(hit)))
    return out, traces


def select_duration_model(store, config, target_fpr: float) -> list[dict]:
    """Robust baseline versus LSTM head, measured on training-period data only: fit on
    14:15-21:00, plant slowdowns into the normal traces of 21:00-23:00."""
    import numpy as np
    import pyarrow.compute as pc

    from spanomaly import pipeline
    from spanomaly.detect.model import TraceModel

    train = pipeline.trace_events(store, *SELECT_TRAIN, config=config)
    normal = pipeline.trace_events(store, *SELECT_EVAL, config=config)
    services = ["ts-basic-service", "ts-route-service", "ts-travel-service", "ts-auth-service",
                "ts-station-service", "ts-seat-service", "ts-order-service", "ts-config-service"]  # fmt: skip
    rows = []
    for name in ("robust", "lstm-duration"):
        t0 = time.perf_counter()
        model = TraceModel(features=config, sequence=None, duration=name, target_fpr=target_fpr)
        model.fit(train)
        fit_s = time.perf_counter() - t0
        base = model.score(normal)[0]
        row = {"duration": name, "fit_s": round(fit_s, 1), "fpr": float(base.anomalous.mean())}
        for label, kind, size in PLANTS:
            rates = []
            for service in services:
                planted, touched = plant(normal, service, kind, size)
                if len(touched) == 0:
                    continue
                res = model.score(planted)[0]
                mask = pc.is_in(pa_array(res.trace_ids), value_set=touched).to_numpy(
                    zero_copy_only=False
                )
                rates.append(float(res.anomalous[mask].mean()))
            row[label] = float(np.mean(rates))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def pa_array(values):
    import pyarrow as pa

    return pa.array(values.astype(str))


def open_store(args: argparse.Namespace, tmp: Path):
    from spanomaly import pipeline

    if args.db:
        return pipeline.open_store(args.db, read_only=True)
    from tests.conftest import unpack_zst_tar

    archive = Path(args.data) / "trainticket-2023-01-30.tar.zst"
    unpack_zst_tar(archive, tmp)
    store = pipeline.open_store(tmp / "tt.duckdb")
    pipeline.ingest([tmp / "trainticket-2023-01-30"], store)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a store holding the ingested TrainTicket folder")
    parser.add_argument("--data", default=os.environ.get("SPANOMALY_SHARED_DATA", "../shared/data"))
    parser.add_argument("--order", default="start", choices=["start", "tree"])
    parser.add_argument("--target-fpr", type=float, default=1e-3)
    parser.add_argument("--append", help="append the results section to this markdown file")
    parser.add_argument(
        "--no-selection", action="store_true", help="skip the duration-model selection runs"
    )
    args = parser.parse_args()

    import numpy as np
    import pyarrow as pa

    from spanomaly import pipeline
    from spanomaly.detect.model import TraceModel
    from spanomaly.evaluate import metrics
    from spanomaly.features.traces import FeatureConfig

    with tempfile.TemporaryDirectory() as tmpdir:
        store = open_store(args, Path(tmpdir))
        config = FeatureConfig(order=args.order)
        t0 = time.perf_counter()
        train_events = pipeline.trace_events(store, *TRAIN, config=config)
        all_events = pipeline.trace_events(store, None, None, config=config)
        features_s = time.perf_counter() - t0
        faults = store.table("faults")
        first = pipeline.span_range(store)[0]
        selection = (
            [] if args.no_selection else select_duration_model(store, config, args.target_fpr)
        )
        store.close()

    # fit each detector once (same vocabulary and split), then combine them
    fitted: dict[tuple[str, str], TraceModel] = {}
    fit_s: dict[tuple[str, str], float] = {}
    for role, name in [
        ("sequence", "lstm"),
        ("sequence", "ngram"),
        ("duration", "robust"),
        ("duration", "lstm-duration"),
    ]:
        kw = {"sequence": None, "duration": None, role: name}
        t0 = time.perf_counter()
        fitted[(role, name)] = TraceModel(features=config, target_fpr=args.target_fpr, **kw).fit(
            train_events
        )
        fit_s[(role, name)] = time.perf_counter() - t0

    rows = []
    for family, label, seq, dur in CONFIGS:
        model = TraceModel(features=config, sequence=seq, duration=dur, target_fpr=args.target_fpr)
        parts = [fitted[r] for r in (("sequence", seq), ("duration", dur)) if r[1]]
        model.vocabulary_ = parts[0].vocabulary_
        model.trained_on_ = parts[0].trained_on_
        model.detectors_ = {k: v for p in parts for k, v in p.detectors_.items()}
        t0 = time.perf_counter()
        result = model.detect(all_events)
        detect_s = time.perf_counter() - t0
        traces = pa.table({"trace_id": result.trace_ids.astype(str), "start_ns": result.start_ns})
        test = metrics.summarize(result.findings, faults, traces, *TEST)
        fault = metrics.summarize(result.findings, faults, traces, first, FAULT_END)
        train_s = sum(fit_s[r] for r in (("sequence", seq), ("duration", dur)) if r[1])
        rows.append(
            {
                "model": family,
                "detectors": label,
                "test_traces": test.traces,
                "test_flagged": test.flagged_traces,
                "test_fpr": test.trace_fpr,
                "test_false_alarms": test.false_alarms,
                "faults": fault.faults,
                "detected": fault.detected,
                "fault_recall": fault.fault_recall,
                "fault_false_alarms": fault.false_alarms,
                "fault_hours": fault.hours,
                "fault_trace_fpr": fault.trace_fpr,
                "train_s": round(train_s, 1),
                "detect_s": round(detect_s, 1),
                "thresholds": {r: round(d.threshold_, 3) for r, d in model.detectors_.items()},
                "validation_fpr": {
                    r: round(d.validation_fpr_, 4) for r, d in model.detectors_.items()
                },
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    n_train = int(np.unique(train_events.column("trace_id").to_numpy(zero_copy_only=False)).size)
    lines = [
        f"## Collective anomalies on TrainTicket ({datetime.now(UTC):%Y-%m-%d})",
        "",
        f"`.venv/bin/python bench/trainticket_sequence.py --order {args.order}"
        f" --target-fpr {args.target_fpr:g}` on {os.cpu_count()} cores "
        f"({platform.machine()}, Python {platform.python_version()}); training on "
        f"14:15-23:00 UTC ({n_train} traces, {train_events.num_rows} events), thresholds at "
        f"target FPR {args.target_fpr:g} on 20 % held-out training traces; features for the "
        f"whole day {features_s:.0f} s.",
        "",
        "| model | detectors | test hour: flagged / traces | trace FPR | false alarms "
        "| fault period: detected | fault recall | false alarms | trace FPR | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['detectors']} | {r['test_flagged']} / {r['test_traces']} "
            f"| {100 * r['test_fpr']:.2f} % | {r['test_false_alarms']} "
            f"| {r['detected']} / {r['faults']} | {100 * (r['fault_recall'] or 0):.0f} % "
            f"| {r['fault_false_alarms']} in {r['fault_hours']:.1f} h "
            f"| {100 * r['fault_trace_fpr']:.2f} % | {r['train_s']} |"
        )
    if selection:
        labels = [p[0] for p in PLANTS]
        lines += [
            "",
            "Duration model selection on training-period data only (fit on 14:15-21:00, "
            "slowdowns planted into one of eight services in the normal traces of "
            "21:00-23:00; share of the touched traces flagged, mean over the services):",
            "",
            "| duration model | fit s | FPR (unplanted) | " + " | ".join(labels) + " |",
            "|---|---|---|" + "---|" * len(labels),
        ]
        for r in selection:
            lines.append(
                f"| {r['duration']} | {r['fit_s']} | {100 * r['fpr']:.2f} % | "
                + " | ".join(f"{100 * r[label]:.0f} %" for label in labels)
                + " |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
