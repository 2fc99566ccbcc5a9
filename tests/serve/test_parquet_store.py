"""`spanomaly serve --store parquet:DIR`: the collector writes the partitioned dataset."""

from __future__ import annotations

from pathlib import Path

from spanomaly.store.parquet import ParquetStore
from tests.serve.conftest import PROTOBUF, StartServer, spans_request


def test_the_collector_writes_the_parquet_dataset(tmp_path: Path, serve: StartServer) -> None:
    dataset = tmp_path / "ds"
    server = serve(db=Path(f"parquet:{dataset}"))
    for first in (1, 201, 1):  # the third request repeats the first: stored once
        body = spans_request(first, 200, bad_ids=2 if first == 201 else 0).SerializeToString()
        assert server.post("/v1/traces", body, PROTOBUF).is_success
    assert server.stop() == 0
    with ParquetStore(dataset, read_only=True) as store:
        assert store.stats().spans == 398  # two spans with bad ids were refused
        assert {str(p["hour"]) for p in store.partitions("spans")} == {"2023-11-14T22"}
    assert list(dataset.glob("spans/hour=*/bucket=*/part-*.parquet"))
    assert not list(dataset.glob("_staging-*"))
