"""Shared fixtures: the real data sets of ../shared/data (skipped where absent), stores."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPANOMALY_SHARED_DATA", REPO.parent / "shared" / "data"))
TT_ARCHIVE = SHARED_DATA / "trainticket-2023-01-30.tar.zst"


def unpack_zst_tar(archive: Path, dest: Path) -> None:
    """Unpack a .tar.zst with the zstandard module (no zstd binary needed)."""
    import zstandard

    with (
        open(archive, "rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        tar.extractall(dest, filter="data")


@pytest.fixture(scope="session")
def trainticket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked TrainTicket folder, or a skip saying why."""
    if not TT_ARCHIVE.exists():
        pytest.skip(f"TrainTicket data not found at {TT_ARCHIVE} (set SPANOMALY_SHARED_DATA)")
    dest = tmp_path_factory.mktemp("tt")
    unpack_zst_tar(TT_ARCHIVE, dest)
    return dest / "trainticket-2023-01-30"


@pytest.fixture(scope="session")
def trainticket_store(trainticket: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DuckDB store with the whole TrainTicket folder ingested, built once per session.

    Open it read-only (`DuckDBStore(path, read_only=True)`): tests share it.
    """
    from spanomaly import pipeline
    from spanomaly.store.duckdb import DuckDBStore

    path = tmp_path_factory.mktemp("tt-store") / "tt.duckdb"
    with DuckDBStore(path) as store:
        report = pipeline.ingest([trainticket], store)
    assert report.rejected == 0, report.errors
    return path


@pytest.fixture
def checked_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per SQL source the DuckDB store wrote by its checked (staged) path."""
    from spanomaly.store.duckdb import DuckDBStore

    calls: list[int] = []
    checked = DuckDBStore._write_checked

    def counting(self: DuckDBStore, *args: object) -> None:
        calls.append(1)
        checked(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(DuckDBStore, "_write_checked", counting)
    return calls
