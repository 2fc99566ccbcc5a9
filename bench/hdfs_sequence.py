"""HDFS (DeepLog's sessions): next-event LSTM and n-gram, recall and false positives.

Trains on `hdfs_train` minus 20 % of its normal sessions, held out (the models hold out a
further 20 % of what they get, to fit their threshold at the target false-positive rate);
reports recall on `hdfs_test_abnormal` and the false-positive rate on the held-out normal
sessions (the normal test set is not available here). DeepLog published recall 0.96.

    .venv/bin/python bench/hdfs_sequence.py [--data ../shared/data] [--append bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path


def load(path: Path, n_special: int) -> list[list[int]]:
    """Sessions of log keys 1..28 as ids after the special tokens."""
    return [
        [int(x) + n_special - 1 for x in line.split()] for line in path.read_text().splitlines()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SPANOMALY_SHARED_DATA", "../shared/data"))
    parser.add_argument("--append", help="append the results section to this markdown file")
    args = parser.parse_args()

    from spanomaly.detect.base import split_rows
    from spanomaly.detect.sequence import LSTMSequence, NGramSequence
    from spanomaly.features.traces import N_SPECIAL, Sequences

    folder = Path(args.data) / "hdfs-deeplog"
    normal = load(folder / "hdfs_train", N_SPECIAL)
    abnormal = load(folder / "hdfs_test_abnormal", N_SPECIAL)
    n_keys = max(max(s) for s in normal + abnormal if s) + 1
    train_all = Sequences.from_lists(normal, n_keys)
    test_abnormal = Sequences.from_lists(abnormal, n_keys)
    rows, held_rows = split_rows(train_all.n_traces, 0.2, random_state=0)
    train, held = train_all.subset(rows), train_all.subset(held_rows)

    configs = [
        ("LSTM (2 x 64)", lambda f: LSTMSequence(target_fpr=f)),
        ("LSTM (2 x 64), top-9 rule", lambda f: LSTMSequence(target_fpr=f, top_k=9)),
        ("2-gram", lambda f: NGramSequence(n=2, target_fpr=f)),
        ("3-gram", lambda f: NGramSequence(n=3, target_fpr=f)),
    ]
    rows = []
    for target in (0.01, 0.005):
        for label, make in configs:
            det = make(target)
            t0 = time.perf_counter()
            det.fit(train)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            flagged = det.predict(test_abnormal)
            score_s = time.perf_counter() - t0
            row = {
                "model": label,
                "target_fpr": target,
                "recall": float(flagged.mean()),
                "held_out_fpr": float(det.predict(held).mean()),
                "validation_fpr": det.validation_fpr_,
                "fit_s": round(fit_s, 1),
                "events_per_s": round(test_abnormal.n_events / score_s),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    lines = [
        f"## Next-event models on HDFS ({datetime.now(UTC):%Y-%m-%d})",
        "",
        f"`.venv/bin/python bench/hdfs_sequence.py` on {os.cpu_count()} cores "
        f"({platform.machine()}, Python {platform.python_version()}): trained on "
        f"{train.n_traces} of the {train_all.n_traces} normal sessions of `hdfs_train` "
        f"({held.n_traces} held out), each model holding out 20 % of those for its threshold; "
        f"recall on the {test_abnormal.n_traces} sessions of `hdfs_test_abnormal`. "
        "Whole sessions in one pass (no windows). DeepLog: recall 0.96.",
        "",
        "| model | target FPR | recall (abnormal) | FPR (held-out normal) | validation FPR "
        "| fit s | scoring events/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['target_fpr']:g} | {r['recall']:.4f} | "
            f"{100 * r['held_out_fpr']:.2f} % | {100 * r['validation_fpr']:.2f} % | "
            f"{r['fit_s']} | {r['events_per_s']:,} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
