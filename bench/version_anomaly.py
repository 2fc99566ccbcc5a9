"""Testbed: a version anomaly, which only the peers of an instance can tell.

Runs `spanomaly testbed run` with bench/schedules/version_faults.toml: books-2 runs the
slower, chattier v2 release for the whole run (training included), nothing else happens.
Trains on the first half of the load (instance windows of 5 s, as the demo), detects on the
second half, and prints per books instance its findings and its rank among the suspects of
`rca` over the second half; per point detector (`--points`, default: ecod and peer).

    .venv/bin/python bench/version_anomaly.py [--minutes 4] [--out DIR] [--points ecod,peer]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(HERE))

from run_copies import fresh_copy  # noqa: E402

SERVICE, ODD = "books", "books-2"


def _score(db: Path, out: Path, point: str, mid: int) -> dict:
    """Train on [start, mid) with this point detector, detect and rank [mid, end)."""
    from spanomaly import pipeline

    copy, model = fresh_copy(db, out, point)
    store = pipeline.open_store(str(copy))
    try:
        pipeline.train(store, model, None, mid,
                       point=pipeline.PointOptions(window_s=5.0, detector=point))  # fmt: skip
        pipeline.detect(store, model, mid, None)
        counts = store.sql(
            "SELECT instance, count(*) AS n FROM findings WHERE service = ? GROUP BY 1",
            [SERVICE],
        ).to_pylist()
        suspects = pipeline.rca(store, mid, None, model_dir=model, top=None)
    finally:
        store.close()
    ranks = [s["instance"] for s in suspects]
    return {
        "findings": {r["instance"]: r["n"] for r in counts},
        "rank": {i: (ranks.index(i) + 1 if i in ranks else None) for i in ("books-1", ODD)},
        "first": suspects[0]["instance"] if suspects else None,
        "suspects": len(suspects),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--out", default="/tmp/spanomaly-version")
    ap.add_argument("--points", default="ecod,peer")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    db = out / "run.duckdb"
    cmd = [
        sys.executable, "-m", "spanomaly", "testbed", "run", "--minutes", str(args.minutes),
        "--faults", str(HERE / "schedules" / "version_faults.toml"), "--db", str(db),
        "--out", str(out / "run"), "--json",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    lo, hi = con.execute("SELECT min(start_ns), max(start_ns) FROM spans").fetchone()
    versions = dict(con.execute("SELECT DISTINCT instance, version FROM spans").fetchall())
    con.close()
    mid = (lo + hi) // 2
    doc = {"minutes": args.minutes, "versions": {k: versions[k] for k in sorted(versions)}}
    for point in args.points.split(","):
        doc[point] = _score(db, out, point, mid)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
