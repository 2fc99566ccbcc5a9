"""`--engine dask` on a LocalCluster of 2 workers: the same findings as the local engine."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

from spanomaly import pipeline
from spanomaly.errors import InputError
from spanomaly.features.traces import FeatureConfig
from spanomaly.ingest.base import Chunk
from spanomaly.pipeline import scaled
from spanomaly.store.duckdb import DuckDBStore
from spanomaly.store.parquet import ParquetStore
from tests.synthetic import T0, TraceBuilder, normal_traces, plant
from tests.test_cli import run
from tests.test_sequence_cli import spans_table

NS = 1_000_000_000
HOUR_EDGE = T0 + 2800 * NS  # 23:00:00 UTC: traces started just before it end after it
PLANTS = ["missing_call", "unknown_op", "slow_span", "wrong_order"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A DuckDB store (300 normal traces, then 300 across 23:00 and 4 planted ones), its
    Parquet export, and an n-gram model trained on the first 300 traces."""
    tmp = tmp_path_factory.mktemp("scale")
    b = TraceBuilder(seed=5)
    normal_traces(b, 300)
    normal_traces(b, 300, start_ns=HOUR_EDGE - 15 * NS + 99_000_000)  # one starts 1 ms before
    for i, kind in enumerate(PLANTS):
        plant(b, kind, HOUR_EDGE - 2 * NS + i * NS)
    db = tmp / "s.duckdb"
    with DuckDBStore(db) as store:
        store.write(Chunk("spans", spans_table(b.table())))
        pipeline.train(
            store,
            tmp / "model",
            end_ns=T0 + 100 * NS,
            options=pipeline.TrainOptions(sequence="ngram"),
        )
        store.export_parquet(tmp / "dataset")
    return {"db": db, "dataset": tmp / "dataset", "model": tmp / "model", "tmp": tmp}


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a LocalCluster with 2 worker processes."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        memory_limit="1GiB",
        dashboard_address=":0",  # any free port: never a clash with another cluster
        local_directory=str(tmp_path_factory.mktemp("dask")),
    ) as cluster:
        yield cluster.scheduler_address


def _findings(table: pa.Table) -> dict[str, tuple[float, str, str]]:
    rows = table.select(["finding_id", "score", "span_id", "reason"]).to_pylist()
    return {r["finding_id"]: (r["score"], r["span_id"], r["reason"]) for r in rows}


def test_a_trace_is_never_split_across_partitions(data: dict) -> None:
    with ParquetStore(data["dataset"], read_only=True) as store:
        parts = store.partitions("spans")
        assert {p["hour"] for p in parts} == {"2023-11-14T22", "2023-11-14T23"}
        seen: dict[str, int] = {}
        for i, part in enumerate(parts):
            spans = store.sql(
                "SELECT DISTINCT trace_id FROM read_parquet(?)", [store.files("spans", part)]
            )
            for trace in spans.column("trace_id").to_pylist():
                assert seen.setdefault(trace, i) == i, f"trace {trace} in two partitions"
        crossing = store.sql(
            "SELECT count(*) AS n FROM (SELECT trace_id FROM spans GROUP BY trace_id "
            "HAVING min(start_ns) < ? AND max(start_ns) >= ?)",
            [HOUR_EDGE, HOUR_EDGE],
        ).to_pylist()[0]["n"]
        assert crossing > 0  # the data does have traces over the hour's edge
        assert len(seen) == store.stats().traces == 604


def test_detect_on_dask_finds_what_the_local_engine_finds(data: dict, scheduler: str) -> None:
    with DuckDBStore(data["db"]) as store:
        local = pipeline.detect(store, data["model"], T0 + 100 * NS)
        local_findings = _findings(store.table("findings"))
    with ParquetStore(data["dataset"]) as store:
        scaled_doc = pipeline.detect(
            store, data["model"], T0 + 100 * NS, engine="dask", scheduler=scheduler
        )
        dask_findings = _findings(store.table("findings"))  # written back into the dataset
    assert local["traces_scored"] == scaled_doc["traces_scored"] == 304
    assert local["anomalous_traces"] == scaled_doc["anomalous_traces"] >= len(PLANTS)
    assert local["alarms"] == scaled_doc["alarms"]
    assert dask_findings.keys() == local_findings.keys()
    for fid, (score, span, reason) in local_findings.items():
        assert np.isclose(dask_findings[fid][0], score, rtol=1e-9)
        assert dask_findings[fid][1:] == (span, reason)


def test_training_sequences_prepared_on_dask_equal_the_local_ones(
    data: dict, scheduler: str
) -> None:
    config = FeatureConfig()
    window = (T0, HOUR_EDGE + 10 * NS)
    exclude = [(T0 + 50 * NS, T0 + 60 * NS)]
    with DuckDBStore(data["db"], read_only=True) as store:
        local = pipeline.trace_events(store, *window, exclude, False, config)
    with ParquetStore(data["dataset"], read_only=True) as store:
        remote = scaled.trace_events(store, scheduler, *window, exclude, False, config)
    assert local.num_rows > 1000
    assert remote.equals(local)


def test_the_cli_runs_detect_and_train_on_a_cluster(data: dict, scheduler: str) -> None:
    dataset = data["tmp"] / "cli-dataset"
    exported = run(
        "export", "--parquet", str(dataset), "--db", str(data["db"]), "--json", cwd=data["tmp"]
    )
    assert exported.returncode == 0, exported.stderr
    store = f"parquet:{dataset}"
    common = ("--store", store, "--engine", "dask", "--scheduler", scheduler, "--json")
    train = run(
        "train", "--model", str(data["tmp"] / "m2"), "--to", str((T0 + 100 * NS) / NS),
        "--sequence", "ngram", "--point", "none", *common, cwd=data["tmp"],
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert json.loads(train.stdout)["traces"] == 300
    det = run("detect", "--model", str(data["tmp"] / "m2"), *common, cwd=data["tmp"])
    assert det.returncode == 0, det.stderr
    assert json.loads(det.stdout)["anomalous_traces"] >= len(PLANTS)
    stats = run("stats", "--store", store, "--json", cwd=data["tmp"])
    assert json.loads(stats.stdout)["traces"] == 604
    on_duckdb = run(
        "detect",
        "--db",
        str(data["db"]),
        "--model",
        str(data["model"]),
        *common[2:],
        cwd=data["tmp"],
    )
    assert on_duckdb.returncode == 2 and "needs a Parquet store" in on_duckdb.stderr
    assert len(on_duckdb.stderr.strip().splitlines()) == 1


def test_a_bad_local_cluster_size_is_an_input_error() -> None:
    from spanomaly.scale.dask import connect

    with pytest.raises(InputError, match="local:N needs N >= 1"), connect("local:zero"):
        pass


def test_worker_peak_memory_is_each_workers_own(scheduler: str) -> None:
    from distributed import Client

    from spanomaly.scale.dask import worker_peak_memory

    with Client(scheduler) as client:
        peaks = worker_peak_memory(client)
    assert len(peaks) == 2
    assert all(20 * 2**20 < v < 2**30 for v in peaks.values())  # under the 1 GiB limit
