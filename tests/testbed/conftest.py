"""One shared testbed run (session scope) with a compressed schedule of every fault kind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from spanomaly.testbed.run import RunConfig, RunResult, run
from spanomaly.testbed.supervisor import processes_of

SCHEDULE = Path(__file__).parent / "effects.toml"


@pytest.fixture(scope="session")
def testbed_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunResult, Path]]:
    from spanomaly.ingest.base import Chunk
    from spanomaly.store.duckdb import DuckDBStore

    base = tmp_path_factory.mktemp("testbed")
    db = base / "run.duckdb"
    cfg = RunConfig(minutes=52 / 60, rate=20, faults=SCHEDULE, db=db, run_dir=base / "run")
    result = run(cfg)
    try:
        store = DuckDBStore(db)
        store.write(Chunk("faults", result.faults))
        store.write(Chunk("fault_traces", result.fault_traces))
        store.close()
        yield result, db
    finally:
        for proc in processes_of(result.run_id):
            proc.kill()


@pytest.fixture(scope="session")
def con(testbed_run: tuple[RunResult, Path]) -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect(str(testbed_run[1]), read_only=True)
    yield c
    c.close()
