"""TrainTicket: root-cause ranking of the 17 faults from traces only, metrics only and both,
beside the fifty-line baseline, in one run.

Trains on the fault-free hours 14:15 to 23:00 UTC of 2023-01-30 (n-gram sequence and
robust duration detectors for the traces, ECOD on instance windows), scores the whole day,
then evaluates over the fault period (first span to 14:15): AS@1/3/5 for services and
instances, overall and per fault type, fault recall, time to detect, false alarms per
hour. Every setting is the default or chosen on principle; nothing is tuned on the 17
labels.

    .venv/bin/python bench/trainticket_rca.py [--db STORE] [--data ../shared/data]
        [--append bench/RESULTS.md] [--logs]

Without --db the archive is unpacked and ingested into a temporary store; with --db the
store is copied first (detect writes findings).

With --logs: the log lines of the fault period (trainticket-2023-01-30-logs) are ingested
too, and two models are trained on the whole day minus the 17 fault windows (each
[start, end + 60 s]; the logs exist only between 11:50 and 14:10, so a model learns them
from the gaps between faults), one with log lines as trace events, one without; both
score the fault period and are evaluated per fault type.
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

DAY = datetime(2023, 1, 30, tzinfo=UTC)
NS = 1_000_000_000


def at(hh: int, mm: int = 0) -> int:
    """ns of hh:mm UTC on the TrainTicket day."""
    return int((DAY.timestamp() + hh * 3600 + mm * 60) * NS)


TRAIN = (at(14, 15), at(23))
FAULT_END = at(14, 15)
RUNS = [
    ("spanomaly, traces only", "traces", "ranked"),
    ("spanomaly, metrics only", "metrics", "ranked"),
    ("spanomaly, traces + metrics", "both", "ranked"),
    ("baseline (self-time z, gap to callee)", "both", "baseline"),
]


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--db")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--append")
    ap.add_argument("--logs", action="store_true", help="with and without log lines")
    ap.add_argument("--keep", action="store_true", help="keep the stores, models and documents")
    ap.add_argument(
        "--dump", help="write the findings and the evaluate documents here (to compare runs)"
    )
    args = ap.parse_args()
    if args.logs:
        main_logs(args)
        return

    from spanomaly import pipeline
    from spanomaly.store.duckdb import DuckDBStore

    tmp = Path(tempfile.mkdtemp(prefix="spanomaly-rca-"))
    db = tmp / "tt.duckdb"
    if args.db:
        shutil.copy(args.db, db)
    else:
        from tests.conftest import unpack_zst_tar

        unpack_zst_tar(Path(args.data) / "trainticket-2023-01-30.tar.zst", tmp)
        with DuckDBStore(db) as store:
            pipeline.ingest([tmp / "trainticket-2023-01-30"], store)
    model = tmp / "model"
    timings = {}
    with DuckDBStore(db) as store:
        store.sql("SELECT 1")
        t0 = time.perf_counter()
        pipeline.train(
            store, model, *TRAIN, options=pipeline.TrainOptions(sequence="ngram", duration="robust")
        )
        point = pipeline.train_points(store, model, *TRAIN)
        timings["train_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        detected = pipeline.detect(store, model)
        timings["detect_s"] = round(time.perf_counter() - t0, 1)
        results = []
        for label, evidence, method in RUNS:
            t0 = time.perf_counter()
            doc = pipeline.evaluate(store, None, FAULT_END, evidence, method, model)
            results.append((label, evidence, method, doc, round(time.perf_counter() - t0, 1)))
        if args.dump:
            _dump(store, Path(args.dump), {f"{e}-{m}": d for _, e, m, d, _ in results})
    print(json.dumps({"point": point, "detect": detected, **timings}))
    lines = [
        f"## Root cause on TrainTicket ({datetime.now(UTC):%Y-%m-%d})",
        "",
        f"`.venv/bin/python bench/trainticket_rca.py` ({platform.machine()}, Python "
        f"{platform.python_version()}, 2 cores). Trained on 14:15-23:00 UTC (trace model: "
        "n-gram + robust duration; instance windows: 60 s, ECOD, target FPR 1e-3), whole day "
        f"scored ({detected['traces_scored']} traces, {detected['instances_scored']} instance "
        f"windows, of which {detected['anomalous_windows']} anomalous), evaluated over the "
        f"fault period (17 faults). Train {timings['train_s']} s, detect "
        f"{timings['detect_s']} s. AS@k in %: share of faults whose root-cause service "
        "(instance) is in the top k of the suspects ranked from the findings of "
        "[start, end + 60 s]. Settings are defaults, none tuned on the labels.",
        "",
        "| method | evidence | service AS@1 | AS@3 | AS@5 | instance AS@1 | AS@3 | AS@5 "
        "| network_delay (14) service AS@1 / 3 | cpu_contention (3) service AS@1 / 3 "
        "| detected | time to detect (s, delay / cpu) | false alarms / h |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, evidence, _method, doc, _ in results:
        s, i = doc["rca"]["service"], doc["rca"]["instance"]
        pt = doc["per_type"]
        nd, cpu = pt["network_delay"], pt["cpu_contention"]
        lines.append(
            f"| {label} | {evidence} | {pct(s['top1'])} | {pct(s['top3'])} | {pct(s['top5'])} "
            f"| {pct(i['top1'])} | {pct(i['top3'])} | {pct(i['top5'])} "
            f"| {pct(nd['rca']['service']['top1'])} / {pct(nd['rca']['service']['top3'])} "
            f"| {pct(cpu['rca']['service']['top1'])} / {pct(cpu['rca']['service']['top3'])} "
            f"| {doc['detected']} / {doc['faults']} "
            f"| {nd['time_to_detect_s']} / {cpu['time_to_detect_s']} "
            f"| {doc['false_alarms_per_hour']} |"
        )
    lines += [
        "",
        "Published on this system (service top-1 / 3 / 5): Nezha 86.67 / 97.78 / 97.78 "
        "(traces, logs, metrics), MicroRank 15.56 / 24.44 / 35.56, TraceAnomaly "
        "13.33 / 28.89 / 33.33. Each TrainTicket service runs one pod here, so instance and "
        "service figures coincide. The baseline ranks instances by the median robust z of "
        "the self time of their worst operation (a client span's own time charged to the "
        "callee).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    shutil.rmtree(tmp, ignore_errors=True)


def _dump(store: object, out: Path, docs: dict[str, dict]) -> None:
    """Findings (sorted, every column but the wall-clock ones) and evaluate documents, as
    JSON, so that two runs of different code can be compared with diff."""
    out.mkdir(parents=True, exist_ok=True)
    rows = store.sql("SELECT * FROM findings ORDER BY finding_id").to_pylist()  # type: ignore[attr-defined]
    with open(out / "findings.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True, default=str) + "\n")
    for name, doc in docs.items():
        (out / f"evaluate-{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=True))


def _prepare(args: argparse.Namespace, tmp: Path, logs: bool) -> Path:
    """The store of the day (with the logs when asked) at tmp/tt.duckdb."""
    from spanomaly import pipeline
    from spanomaly.store.duckdb import DuckDBStore

    db = tmp / "tt.duckdb"
    if args.db:
        shutil.copy(args.db, db)
        return db
    from tests.conftest import unpack_zst_tar

    unpack_zst_tar(Path(args.data) / "trainticket-2023-01-30.tar.zst", tmp)
    paths = [tmp / "trainticket-2023-01-30"]
    if logs:
        unpack_zst_tar(Path(args.data) / "trainticket-2023-01-30-logs.tar.zst", tmp)
        paths.append(tmp / "trainticket-2023-01-30-logs" / "log")
    with DuckDBStore(db) as store:
        pipeline.ingest(paths, store)
    return db


def _row(label: str, evidence: str, doc: dict) -> str:
    s, i = doc["rca"]["service"], doc["rca"]["instance"]
    cells = [label, evidence, f"{doc['detected']} / {doc['faults']}"]
    cells += [f"{pct(s[k])}" for k in ("top1", "top3", "top5")]
    cells += [f"{pct(i[k])}" for k in ("top1", "top3", "top5")]
    for kind in ("network_delay", "cpu_contention"):
        t = doc["per_type"][kind]
        r = t["rca"]["service"]
        cells.append(
            f"{t['detected']}/{t['faults']}: {pct(r['top1'])} / {pct(r['top3'])} / {pct(r['top5'])}"
        )
    cells.append(str(doc["false_alarms_per_hour"]))
    return "| " + " | ".join(cells) + " |"


def main_logs(args: argparse.Namespace) -> None:
    """With and without logs, trained on the day minus the fault windows."""
    from spanomaly import pipeline
    from spanomaly.store.duckdb import DuckDBStore

    tmp = Path(tempfile.mkdtemp(prefix="spanomaly-rca-logs-"))
    base = _prepare(args, tmp, logs=True)
    with DuckDBStore(base, read_only=True) as store:
        faults = store.table("faults").to_pylist()
        lo, hi = pipeline.span_range(store)
        lines = store.sql("SELECT count(*) AS n FROM logs").to_pylist()[0]["n"]
    slack = 60 * NS
    exclude = [(f["start_ns"], f["end_ns"] + slack) for f in faults]
    variants = [("with logs", True), ("without logs", False)]
    results = []
    timings: dict[str, dict[str, float]] = {}
    for label, logs in variants:
        db = tmp / f"{label.replace(' ', '-')}.duckdb"
        shutil.copy(base, db)
        model = tmp / f"model-{label.replace(' ', '-')}"
        with DuckDBStore(db) as store:
            t0 = time.perf_counter()
            options = pipeline.TrainOptions(sequence="ngram", duration="robust", logs=logs)
            trained = pipeline.train(store, model, lo, hi + 1, exclude, options=options)
            pipeline.train_points(store, model, lo, hi + 1, exclude)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            detected = pipeline.detect(store, model, lo, FAULT_END)
            detect_s = time.perf_counter() - t0
            timings[label] = {"train_s": round(train_s, 1), "detect_s": round(detect_s, 1)}
            for evidence in ("traces", "both"):
                doc = pipeline.evaluate(store, None, FAULT_END, evidence, "ranked", model)
                results.append((label, evidence, doc))
                name = f"evaluate-{label.replace(' ', '-')}-{evidence}.json"
                (tmp / name).write_text(json.dumps(doc, default=str))
            if args.dump:
                docs = {e: d for v, e, d in results if v == label}
                _dump(store, Path(args.dump) / label.replace(" ", "-"), docs)
        print(json.dumps({"variant": label, "trained": trained, "detect": detected}, default=str))
    lines_md = [
        f"## Logs as trace events on TrainTicket ({datetime.now(UTC):%Y-%m-%d})",
        "",
        f"`nice -n 5 .venv/bin/python bench/trainticket_rca.py --logs` ({platform.machine()}, "
        f"Python {platform.python_version()}, 2 cores shared with other work). Traces, "
        f"metrics and the {lines} log lines of 11:50-14:10 UTC; both models trained on the "
        "whole day minus the 17 fault windows (each [start, end + 60 s]): n-gram + robust "
        "duration, ECOD on 60 s instance windows, target FPR 1e-3; the logs model adds log "
        "lines as trace events (key: service, severity, Drain3 template; a line after its "
        "span's event). Fault period (first span to 14:15) scored and evaluated. "
        + "; ".join(
            f"{k}: train {v['train_s']} s, detect {v['detect_s']} s" for k, v in timings.items()
        )
        + ". AS@k in %.",
        "",
        "| model | evidence | detected | service AS@1 | AS@3 | AS@5 | instance AS@1 | AS@3 "
        "| AS@5 | network_delay: detected, service AS@1 / 3 / 5 | cpu_contention: detected, "
        "service AS@1 / 3 / 5 | false alarms / h |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines_md += [_row(label, evidence, doc) for label, evidence, doc in results]
    lines_md += ["", *_rank_changes(results), ""]
    text = "\n".join(lines_md)
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def _rank_changes(results: list[tuple[str, str, dict]]) -> list[str]:
    """One line per fault whose service rank differs with and without logs."""
    docs = {(label, evidence): doc for label, evidence, doc in results}
    out = []
    for evidence in ("traces", "both"):
        pairs = zip(
            docs[("with logs", evidence)]["per_fault"],
            docs[("without logs", evidence)]["per_fault"],
            strict=True,
        )
        changed = [
            f"{a['kind']} {a['service']}: {b['rank']['service']} -> {a['rank']['service']}"
            for a, b in pairs
            if a["rank"]["service"] != b["rank"]["service"]
        ]
        out.append(
            f"Service rank without -> with logs ({evidence}): " + ("; ".join(changed) or "none")
        )
    return out


if __name__ == "__main__":
    main()
