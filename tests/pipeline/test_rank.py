"""Which findings a root-cause ranking of a period sees."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from spanomaly.pipeline.rank import between as _between

S = 1_000_000_000


def test_a_window_mostly_before_the_period_is_not_its_evidence() -> None:
    findings = pa.table(
        {
            "time_ns": [100 * S, 100 * S, 130 * S, 200 * S],  # instance findings: window ends
            "entity": ["trace", "instance", "instance", "instance"],
        }
    )
    # the period starts at 90 s; windows of 60 s: [40, 100) lies mostly before it,
    # [70, 130) mostly after; a trace finding counts at its own time; 200 s is past the end
    kept = _between(findings, 90 * S, 150 * S, window_ns=60 * S)
    assert kept.column("time_ns").to_pylist() == [100 * S, 130 * S]
    assert kept.column("entity").to_pylist() == ["trace", "instance"]
    assert _between(findings, 90 * S, 150 * S).num_rows == 3  # no point model: by time only


def test_training_keeps_whole_windows_only(tmp_path: Path) -> None:
    from spanomaly import pipeline
    from spanomaly.store.duckdb import DuckDBStore
    from tests.rca import scenario as sc

    db = tmp_path / "s.duckdb"
    sc.build(str(db))
    w = 60 * S  # the default window
    lo, hi = -(-sc.TRAIN[0] // w) * w, sc.TRAIN[1] // w * w  # on the windows' grid
    with DuckDBStore(db) as store:
        whole = pipeline.train_points(store, tmp_path / "a", lo, hi)
        # the same period with a sliver of a window at either end (24 s of 60): a window
        # with a fraction of its requests reads as a collapse of traffic, so it is left out
        cut = pipeline.train_points(store, tmp_path / "b", lo - 24 * S, hi + 24 * S)
    for source in ("traces", "metrics"):
        assert cut[source]["windows"] == whole[source]["windows"]  # type: ignore[index]
