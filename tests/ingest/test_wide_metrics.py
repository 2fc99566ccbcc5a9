"""Wide metric CSVs: one column per series, names split into service and metric, multi-row
headers, times in any unit, bad cells refused with their line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanomaly import pipeline
from spanomaly.errors import InputError
from spanomaly.ingest.base import DecodeOptions
from spanomaly.ingest.formats import identify
from spanomaly.ingest.wide_metrics import compile_pattern, split_default, split_names
from spanomaly.store.duckdb import DuckDBStore
from tests.conftest import SHARED_DATA, unpack_zst_tar


def _ingest(tmp_path: Path, text: str, fmt: str = "auto", **kw: object) -> tuple[object, list]:
    path = tmp_path / "m.csv"
    path.write_text(text)
    with DuckDBStore(tmp_path / "s.duckdb") as store:
        report = pipeline.ingest([path], store, fmt, DecodeOptions(**kw))  # type: ignore[arg-type]
        rows = store.sql(
            "SELECT time_ns, service, instance, name, value FROM metrics ORDER BY ALL"
        ).to_pylist()
    return report, rows


def test_names_split_where_the_metric_recurs_or_is_known() -> None:
    names = ["shop_cpu", "shop-db_cpu", "shop_lat_90", "cart_lat_90", "cart_cpu", "solo_mem"]
    assert split_default(names) == [
        ("shop", "cpu"), ("shop-db", "cpu"), ("shop", "lat_90"), ("cart", "lat_90"),
        ("cart", "cpu"), ("solo", "mem"),
    ]  # fmt: skip
    assert split_default(["solo_weird"]) == [None]  # neither recurring nor known
    assert split_names(["solo_weird"], None, strict=False) == [("solo", "solo", "weird")]
    assert split_names(["pod-1.cpu"], "{instance}.{metric}") == [("pod-1", "pod-1", "cpu")]
    assert split_names(["a:b:cpu"], r"(?P<service>\w+):(?P<instance>\w+):(?P<metric>\w+)") == [
        ("a", "b", "cpu")
    ]


def test_a_wide_csv_is_detected_and_unpivoted(tmp_path: Path) -> None:
    report, rows = _ingest(
        tmp_path,
        "time,shop_cpu,shop_lat_90,cart_cpu,cart_lat_90\n"
        "1700000000,0.5,12,0.25,\n"
        "1700000001000,0.75,13,0.5,9\n",  # ms on the second line, an empty cell
    )
    assert report.metrics == 7 and report.rejected == 0  # type: ignore[attr-defined]
    first = [r for r in rows if r["time_ns"] == 1_700_000_000 * 10**9]
    assert {(r["service"], r["instance"], r["name"], r["value"]) for r in first} == {
        ("shop", "shop", "cpu", 0.5), ("shop", "shop", "lat_90", 12.0),
        ("cart", "cart", "cpu", 0.25),
    }  # fmt: skip
    assert {r["time_ns"] for r in rows} == {1_700_000_000 * 10**9, 1_700_000_001 * 10**9}


def test_iso_times_and_a_pattern_with_instances(tmp_path: Path) -> None:
    _, rows = _ingest(
        tmp_path,
        "timestamp,web.web-1.cpu,web.web-2.cpu\n2023-11-14T22:13:20Z,1,2\n",
        series="{service}.{instance}.{metric}",
    )
    assert [(r["service"], r["instance"], r["name"]) for r in rows] == [
        ("web", "web-1", "cpu"), ("web", "web-2", "cpu")
    ]  # fmt: skip
    assert rows[0]["time_ns"] == 1_700_000_000 * 10**9


def test_multi_row_headers_one_row_per_level(tmp_path: Path) -> None:
    _, rows = _ingest(
        tmp_path,
        "entity,PetSite,PetSite,Search\n"
        "metric,latency,latency,cpu\n"
        "statistic,p50,p99,avg\n"
        "time,,,\n"  # the index's name under a MultiIndex
        "1700000000,3,9,0.5\n",
    )
    assert {(r["service"], r["name"], r["value"]) for r in rows} == {
        ("PetSite", "latency.p50", 3.0), ("PetSite", "latency.p99", 9.0),
        ("Search", "cpu.avg", 0.5),
    }  # fmt: skip


def test_bad_cells_are_refused_with_line_and_column(tmp_path: Path) -> None:
    report, rows = _ingest(
        tmp_path,
        "time,shop_cpu,cart_cpu\n1700000000,0.5,0.25\n1700000001,oops,0.5\nnever,1,2\n",
    )
    assert report.metrics == 3 and report.rejected == 3  # type: ignore[attr-defined]
    errors = " | ".join(report.errors)  # type: ignore[attr-defined]
    assert "line 3, column shop_cpu: 'oops' is not a number" in errors
    assert "line 4: time 'never' is not unix time" in errors
    assert str(tmp_path / "m.csv") in errors
    assert len(rows) == 3


def test_an_ambiguous_csv_is_not_guessed_but_format_metrics_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("time,alpha,beta\n1700000000,1,2\n")
    with pytest.raises(InputError, match="--format metrics"):
        identify(path, "auto", DecodeOptions(), {})
    report, rows = _ingest(tmp_path, path.read_text(), fmt="metrics")
    assert report.metrics == 2  # type: ignore[attr-defined]
    assert {(r["service"], r["name"]) for r in rows} == {("alpha", "value"), ("beta", "value")}


def test_a_bad_series_pattern_is_a_one_line_error() -> None:
    with pytest.raises(InputError, match="must name"):
        compile_pattern("{service}")
    with pytest.raises(InputError, match="not a valid pattern"):
        compile_pattern("(?P<metric>")


def test_sock_shop_case_imports_every_cell(tmp_path: Path) -> None:
    archive = SHARED_DATA / "rcd-sock-shop.tar.zst"
    if not archive.exists():
        pytest.skip(f"{archive} is absent")
    unpack_zst_tar(archive, tmp_path / "data")
    case = sorted((tmp_path / "data").rglob("normal.csv"))[0]
    lines = case.read_text().splitlines()
    columns = len(lines[0].split(",")) - 1
    with DuckDBStore(tmp_path / "s.duckdb") as store:
        report = pipeline.ingest([case], store)
        stats = store.stats()
    assert report.rejected == 0 and report.metrics == columns * (len(lines) - 1)
    assert stats.instances == len(stats.services) >= 10
