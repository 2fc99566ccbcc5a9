"""Log template mining speed: the 94,703 TrainTicket log lines through `TemplateMiner`.

Fit (mask in DuckDB, deduplicate, Drain3 on each distinct masked text once) and transform
(mask, match each distinct text, parameters as JSON) are timed separately, best of
--runs, and reported as lines per second. With --copies N the lines are repeated N times
with their numbers changed (so the masked texts repeat but the raw lines do not), which is
what a longer period looks like.

    nice -n 5 .venv/bin/python bench/logs.py [--data ../shared/data] [--runs 3]
        [--copies 4] [--append bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
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


def best(fn: object, runs: int) -> tuple[float, object]:
    """The shortest of `runs` timings of fn() and its last result."""
    times = []
    out = None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--append")
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.compute as pc
    from tests.conftest import unpack_zst_tar

    from spanomaly import pipeline
    from spanomaly.features.logs import TemplateMiner
    from spanomaly.store.duckdb import DuckDBStore

    tmp = Path(tempfile.mkdtemp(prefix="spanomaly-logs-bench-"))
    try:
        unpack_zst_tar(Path(args.data) / "trainticket-2023-01-30-logs.tar.zst", tmp)
        with DuckDBStore(tmp / "l.duckdb") as store:
            pipeline.ingest([tmp / "trainticket-2023-01-30-logs" / "log"], store)
            bodies = store.sql("SELECT body FROM logs").column("body")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # copies with other numbers in them: the raw lines differ, their templates do not
    copies = [bodies] + [
        pc.replace_substring_regex(bodies, "([0-9])", f"\\1{k}") for k in range(1, args.copies)
    ]
    many = pa.chunked_array([c for arr in copies for c in arr.chunks])
    rows = []
    for label, data in (("TrainTicket lines", bodies), (f"x{args.copies}, renumbered", many)):
        fit_s, miner = best(lambda d=data: TemplateMiner().fit(d), args.runs)
        tr_s, out = best(lambda d=data, m=miner: m.transform(d), args.runs)  # type: ignore[misc]
        unseen = pc.sum(pc.equal(out.column("template_id"), -1)).as_py() or 0  # type: ignore[attr-defined]
        rows.append(
            {
                "data": label,
                "lines": len(data),
                "templates": miner.n_templates,  # type: ignore[attr-defined]
                "fit_s": round(fit_s, 3),
                "fit_lines_s": round(len(data) / fit_s),
                "transform_s": round(tr_s, 3),
                "transform_lines_s": round(len(data) / tr_s),
                "unseen": unseen,
            }
        )
    print(json.dumps(rows))
    load = os.getloadavg()[0]
    lines = [
        f"## Log template mining ({datetime.now(UTC):%Y-%m-%d})",
        "",
        f"`nice -n 5 .venv/bin/python bench/logs.py --runs {args.runs} --copies {args.copies}` "
        f"({platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} cores "
        f"shared with other work, load average {load:.1f} at the end). Best of {args.runs}. "
        "Fit: mask (one DuckDB regular-expression pass), deduplicate, Drain3 once per "
        "distinct masked text; transform: mask, match each distinct text, parameters as "
        "JSON lists.",
        "",
        "| data | lines | templates | fit s | fit lines/s | transform s | transform lines/s "
        "| unseen at transform |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['data']} | {r['lines']} | {r['templates']} | {r['fit_s']} | {r['fit_lines_s']:,} "
        f"| {r['transform_s']} | {r['transform_lines_s']:,} | {r['unseen']} |"
        for r in rows
    ]
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
