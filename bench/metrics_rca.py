"""Root cause from metrics alone: the 50 Sock Shop cases of RCD, beside BARO and n-sigma.

Each case (`rcd-sock-shop/<service>-<kind>/<n>/`: `normal.csv`, `anomalous.csv`, wide
CSVs of one column per `<service>_<metric>`) goes through the documented commands only, in
a fresh store and model directory, with default settings:

    spanomaly ingest normal.csv
    spanomaly train
    spanomaly ingest anomalous.csv
    spanomaly detect --from <first time of anomalous.csv>
    spanomaly rca --from <first time> --to <last time + 1 s> --json

The root cause is the service in the case's folder name. In the same run BARO and the
n-sigma baseline of the `RCAEval` package (the `bench` extra) rank the columns of the two
files joined, the anomalous rows re-timed to follow the normal ones (some were recorded
before them), told where the anomalous part starts (their usual protocol); a column ranks
its service (the column name split as the wide reader splits it). Figures per fault type:
top-1, top-3, Avg@5 (the mean of top-1 ... top-5) of the service, and seconds per case.

    .venv/bin/python bench/metrics_rca.py [--data ../shared/data] [--cases DIR]
        [--limit N] [--json OUT] [--python PY]

The peers need the `bench` extra (RCAEval, pandas) in the interpreter that runs this
script; pandas there costs each spanomaly command about 0.25 s more (pyarrow and DuckDB
import it where it is installed), so `--python` can run the commands from an install of
spanomaly alone (`python -m venv v && v/bin/pip install -e .`), as a user has it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

ARCHIVE = "rcd-sock-shop.tar.zst"


PYTHON = [sys.executable]  # the interpreter that runs the spanomaly commands (--python)


def spanomaly(*args: str, cwd: Path) -> str:
    """Run one spanomaly command as a user would; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [*PYTHON, "-m", "spanomaly", *args], cwd=cwd, env=env, capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"spanomaly {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def first_last(path: Path) -> tuple[int, int]:
    """The first and last unix second of a wide CSV (its time column comes first)."""
    lines = path.read_text().splitlines()
    return int(float(lines[1].split(",")[0])), int(float(lines[-1].split(",")[0]))


def ours(case: Path, work: Path) -> tuple[list[str], float, float]:
    """Services ranked by spanomaly, and the seconds the five commands took (wall, CPU)."""
    t0, cpu0 = time.perf_counter(), _child_cpu()
    spanomaly("ingest", str(case / "normal.csv"), cwd=work)
    spanomaly("train", cwd=work)
    spanomaly("ingest", str(case / "anomalous.csv"), cwd=work)
    lo, hi = first_last(case / "anomalous.csv")
    spanomaly("detect", "--from", str(lo), cwd=work)
    out = spanomaly("rca", "--from", str(lo), "--to", str(hi + 1), "--top", "100", "--json", cwd=work)  # fmt: skip
    seconds = time.perf_counter() - t0
    services = list(dict.fromkeys(r["service"] for r in json.loads(out)))
    return services, seconds, _child_cpu() - cpu0


def _child_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    import resource

    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def peers(case: Path) -> dict[str, tuple[list[str], float]]:
    """Services ranked by BARO and n-sigma (RCAEval), and their seconds."""
    import pandas as pd
    from RCAEval.e2e import nsigma
    from RCAEval.e2e.baro import baro

    from spanomaly.ingest.wide_metrics import split_names

    normal = pd.read_csv(case / "normal.csv")
    anomalous = pd.read_csv(case / "anomalous.csv")
    # the two were recorded apart, some anomalous files before their normal one: the
    # anomalous rows follow the normal ones, as the peers' protocol expects
    anomalous["time"] = anomalous["time"] - anomalous["time"].iloc[0] + normal["time"].max() + 1
    data = pd.concat([normal, anomalous], ignore_index=True)
    inject = int(anomalous["time"].iloc[0])
    columns = [c for c in data.columns if c != "time"]
    owner = {c: p[0] for c, p in zip(columns, split_names(columns, None, False), strict=True) if p}  # fmt: skip
    out = {}
    for name, method in (("BARO", baro), ("n-sigma", nsigma)):
        t0 = time.perf_counter()
        # a named dataset makes RCAEval's preprocess drop the time column and the constant
        # ones (with dataset=None the re-timed time column would rank first every time)
        ranks = method(data.copy(), inject_time=inject, dataset="sock-shop")["ranks"]
        seconds = time.perf_counter() - t0
        out[name] = (list(dict.fromkeys(owner.get(c, c) for c in ranks)), seconds)
    return out


def figures(ranks: list[int | None]) -> dict[str, float]:
    """top-1, top-3 and Avg@5 of the true service's ranks (None: not ranked)."""

    def at(k: int) -> float:
        return sum(1 for r in ranks if r is not None and r <= k) / len(ranks)

    return {"top1": at(1), "top3": at(3), "avg5": sum(at(k) for k in range(1, 6)) / 5}


def cases_of(args: argparse.Namespace, tmp: Path) -> list[Path]:
    root = args.cases
    if root is None:
        from tests.conftest import unpack_zst_tar

        archive = args.data / ARCHIVE
        if not archive.exists():
            sys.exit(f"{archive} not found (give --data or --cases)")
        unpack_zst_tar(archive, tmp / "data")
        root = tmp / "data" / "rcd-sock-shop"
    found = sorted(p.parent for p in root.glob("*/*/anomalous.csv"))
    return found[: args.limit] if args.limit else found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cases", type=Path, help="an unpacked rcd-sock-shop folder")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the per-case results here")
    parser.add_argument(
        "--python", type=Path,
        help="run the spanomaly commands with this interpreter (default: this one), e.g. a venv "
        "without the bench extra: pyarrow and DuckDB import pandas where it is installed",
    )  # fmt: skip
    args = parser.parse_args()
    if args.python:
        PYTHON[0] = str(args.python)
    sys.path.insert(0, str(REPO))
    rows = []
    with tempfile.TemporaryDirectory(prefix="metrics-rca-") as tmp:
        for case in cases_of(args, Path(tmp)):
            truth, kind = case.parent.name.rsplit("-", 1)
            work = Path(tmp) / f"{case.parent.name}-{case.name}"
            work.mkdir()
            ranked, seconds, cpu = ours(case, work)
            row = {"case": f"{case.parent.name}/{case.name}", "kind": kind, "truth": truth,
                   "spanomaly": (ranked, seconds), "cpu_s": cpu, **peers(case)}  # fmt: skip
            rows.append(row)
            rank = ranked.index(truth) + 1 if truth in ranked else None
            print(f"{row['case']:20} spanomaly rank {rank} ({seconds:.2f} s, CPU {cpu:.2f} s)",
                  flush=True)  # fmt: skip
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def report(rows: list[dict]) -> None:
    """The table of figures per method and fault type, as RESULTS.md takes it."""
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    cpu = sorted(r["cpu_s"] for r in rows)
    print(
        f"spanomaly CPU s per case (5 commands): median {cpu[len(cpu) // 2]:.2f}, max {cpu[-1]:.2f}"
    )
    print("| method | faults | top-1 | top-3 | Avg@5 | s per case (median, max) |")
    print("|---|---|---|---|---|---|")
    for method in ("spanomaly", "BARO", "n-sigma"):
        for kind in [*sorted({r["kind"] for r in rows}), "all"]:
            mine = [r for r in rows if kind in ("all", r["kind"])]
            ranks = [
                r[method][0].index(r["truth"]) + 1 if r["truth"] in r[method][0] else None
                for r in mine
            ]
            f = figures(ranks)
            secs = sorted(r[method][1] for r in mine)
            print(
                f"| {method} | {kind} ({len(mine)}) | {f['top1']:.2f} | {f['top3']:.2f} | "
                f"{f['avg5']:.2f} | {secs[len(secs) // 2]:.2f}, {secs[-1]:.2f} |"
            )


if __name__ == "__main__":
    main()
