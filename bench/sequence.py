"""Training time and scoring throughput of the trace models on TrainTicket.

Training: each detector fitted on the fault-free hours 14:15 to 23:00 UTC (the events
already built; feature building is timed separately). Scoring: every trace of the day
(1.04 M events), per detector (`score_events`: the model alone) and for the whole trace
model (`detect`: both detectors, decisions and explanations), plus the LSTM without the
distinct-sequence shortcut (every trace run through the network, as when no two traces
share their key sequence). Each figure is the best of --repeat runs.

    .venv/bin/python bench/sequence.py [--db STORE] [--data ../shared/data] [--repeat 3]
        [--append bench/RESULTS.md]

Targets (issue 5): training at most 120 s on 2 cores, scoring at least 200,000 events/s.
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
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from trainticket_sequence import TRAIN, open_store  # noqa: E402


def best(fn, repeat: int) -> tuple[float, object]:
    """The shortest wall time of repeat calls, and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a store holding the ingested TrainTicket folder")
    parser.add_argument("--data", default=os.environ.get("SPANOMALY_SHARED_DATA", "../shared/data"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--append", help="append the results section to this markdown file")
    args = parser.parse_args()

    import torch

    from spanomaly import pipeline
    from spanomaly.detect import _lstm
    from spanomaly.detect.model import TraceModel
    from spanomaly.features.traces import FeatureConfig

    config = FeatureConfig()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(args, Path(tmp))
        feat_s, all_events = best(
            lambda: pipeline.trace_events(store, None, None, config=config), args.repeat
        )
        train_events = pipeline.trace_events(store, *TRAIN, config=config)
        store.close()
    n_all = all_events.num_rows
    rows = [
        {
            "what": "features (events, keys, self times) of the whole day",
            "seconds": feat_s,
            "events_per_s": n_all / feat_s,
        }
    ]
    models = {}
    for role, name in [
        ("sequence", "lstm"),
        ("sequence", "ngram"),
        ("duration", "robust"),
        ("duration", "lstm-duration"),
    ]:
        kw = {"sequence": None, "duration": None, role: name}
        fit_s, model = best(lambda kw=kw: TraceModel(features=config, **kw).fit(train_events), 1)
        models[name] = model
        data = model.sequences(all_events)
        det = model.detectors_[role]
        score_s, _ = best(lambda det=det, data=data: det.score_events(data), args.repeat)
        rows.append(
            {
                "what": f"{role} {name}",
                "train_s": fit_s,
                "train_events": train_events.num_rows,
                "seconds": score_s,
                "events_per_s": n_all / score_s,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    lstm = models["lstm"].detectors_["sequence"]
    data = models["lstm"].sequences(all_events)
    raw_s, _ = best(lambda: _lstm.next_logp(lstm.net_, data), args.repeat)
    rows.append(
        {"what": "sequence lstm, every trace through the network", "seconds": raw_s,
         "events_per_s": n_all / raw_s}
    )  # fmt: skip
    both = TraceModel(features=config)
    both.vocabulary_ = models["lstm"].vocabulary_
    both.trained_on_ = models["lstm"].trained_on_
    both.detectors_ = {
        "sequence": models["lstm"].detectors_["sequence"],
        "duration": models["robust"].detectors_["duration"],
    }
    det_s, _ = best(lambda: both.detect(all_events), args.repeat)
    rows.append(
        {"what": "trace model lstm + robust: detect with explanations", "seconds": det_s,
         "events_per_s": n_all / det_s}
    )  # fmt: skip
    for r in rows[-2:]:
        print(json.dumps(r), flush=True)

    lines = [
        f"## Trace models: training time and scoring throughput ({datetime.now(UTC):%Y-%m-%d})",
        "",
        f"`.venv/bin/python bench/sequence.py --repeat {args.repeat}` on {os.cpu_count()} cores "
        f"({platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads); training on the TrainTicket normal hours "
        f"14:15-23:00 ({train_events.num_rows:,} events), scoring the whole day "
        f"({n_all:,} events). Targets: training <= 120 s, scoring >= 200,000 events/s. "
        "The machine is shared with other work: times are the best of the repeats.",
        "",
        "| what | training s | scoring s | scoring events/s |",
        "|---|---|---|---|",
    ]
    for r in rows:
        train = f"{r['train_s']:.1f}" if "train_s" in r else ""
        lines.append(f"| {r['what']} | {train} | {r['seconds']:.2f} | {r['events_per_s']:,.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
