"""The contract of every registered input format, checked on the sample it registers."""

from __future__ import annotations

import gzip
from pathlib import Path

import duckdb
import pytest

from spanomaly.errors import InputError
from spanomaly.ingest.base import DecodeOptions, SqlSource
from spanomaly.ingest.formats import REGISTRY, InputFormat, Work, identify, plan
from spanomaly.schema import arrow_schema, names
from spanomaly.store.duckdb import DuckDBStore

# what a user names on the command line to read each layout that needs it
_POINTS = {"time": "ts", "service": "svc", "name": "metric", "value": "v"}
MAPS = {
    "csv-logs": {"time": "ts", "body": "message"},
    "long-metrics": _POINTS,
    "long-metrics-jsonl": _POINTS,
}


def _options(fmt: InputFormat) -> DecodeOptions:
    return DecodeOptions(column_map=MAPS.get(fmt.name, {}))


def _sample(tmp_path: Path, fmt: InputFormat) -> Path:
    path = tmp_path / f"sample-{fmt.name}"
    path.write_bytes(fmt.sample)
    return path


FILE_FORMATS = [name for name, f in REGISTRY.items() if not f.folder]  # lttng: test_lttng


@pytest.fixture(params=FILE_FORMATS, ids=FILE_FORMATS)
def fmt(request: pytest.FixtureRequest) -> InputFormat:
    return REGISTRY[request.param]


def test_the_sample_sniffs_as_its_own_format(fmt: InputFormat, tmp_path: Path) -> None:
    path = _sample(tmp_path, fmt)
    assert identify(path, "auto", _options(fmt), {}) is fmt
    if fmt.family is not None:
        assert identify(path, fmt.family, _options(fmt), {}) is fmt


def test_the_sample_decodes_to_its_tables_schema(fmt: InputFormat, tmp_path: Path) -> None:
    path = _sample(tmp_path, fmt)
    work, refused = plan([path], "auto", _options(fmt))
    assert refused == [] and [w.format for w in work] == [fmt]
    rows = 0
    for chunk in work[0].decode():
        assert chunk.table in fmt.tables
        assert chunk.rejects == []
        if isinstance(chunk.data, SqlSource):
            with duckdb.connect() as con:
                got = con.sql(chunk.data.sql).to_arrow_table()
            # table columns, _source, and private _columns its reject messages read
            public = {c for c in got.column_names if not c.startswith("_")}
            assert public <= set(names(chunk.table)) and "_source" in got.column_names
            assert got.column("_source").to_pylist() == [str(path)] * got.num_rows
        else:
            assert chunk.data is not None
            got = chunk.data
            assert got.schema.equals(arrow_schema(chunk.table))
        rows += got.num_rows
    assert rows > 0
    with DuckDBStore() as store:  # and the store takes every row
        with store.transaction():
            stored = sum(store.write(c).inserted for c in work[0].decode())
        assert stored > 0


def _store(work: list[Work]) -> None:
    with DuckDBStore() as store, store.transaction():
        for unit in work:
            for chunk in unit.decode():
                store.write(chunk)


@pytest.mark.parametrize("damage", ["truncated-gzip", "binary-garbage"])
def test_a_damaged_file_is_a_one_line_input_error_naming_it(
    fmt: InputFormat, tmp_path: Path, damage: str
) -> None:
    path = tmp_path / f"damaged-{fmt.name}"
    if damage == "truncated-gzip":
        packed = gzip.compress(fmt.sample)
        path.write_bytes(packed[: len(packed) // 2])
    else:
        path.write_bytes(fmt.sample[: len(fmt.sample) // 2] + b"\x00\xff\xfe" * 8)
    with pytest.raises(InputError) as caught:
        work, refused = plan([path], "auto", _options(fmt))
        for message in refused:
            raise InputError(message)
        _store(work)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


def test_a_csv_header_longer_than_the_sniffed_bytes_is_still_csv(tmp_path: Path) -> None:
    columns = ["time", *[f"service{i}_cpu_usage_seconds" for i in range(300)]]  # ~9 KiB
    path = tmp_path / "wide.csv"
    path.write_text(",".join(columns) + "\n" + ",".join(["1"] * len(columns)) + "\n")
    headers: dict[Path, list[str]] = {}
    with pytest.raises(InputError, match="CSV of unknown layout"):  # before: corrupt protobuf
        identify(path, "auto", DecodeOptions(), headers)
    assert headers[path] == columns


def test_an_explicit_format_wins_over_the_guess(tmp_path: Path) -> None:
    jaeger = _sample(tmp_path, REGISTRY["jaeger"])
    assert identify(jaeger, "zipkin", DecodeOptions(), {}).name == "zipkin"
    assert identify(jaeger, "otlp", DecodeOptions(), {}).name == "otlp-json"
    work, _ = plan([jaeger], "zipkin", DecodeOptions())
    with pytest.raises(InputError, match=str(jaeger)):  # the reader names the file
        for unit in work:
            list(unit.decode())


def test_a_list_of_trace_ids_is_skipped_and_a_one_column_csv_is_text(tmp_path: Path) -> None:
    ids = tmp_path / "08_43_traceid.csv"  # a Nezha layout's traceid/ file
    ids.write_text("3708ea2f230730c028e784d6304a9a8e\n37990f95f08ae37a1a8bc7dc8250af81\n")
    assert plan([ids], "auto", DecodeOptions()) == ([], [])
    one = tmp_path / "one.csv"
    one.write_text("colour\nred\n")
    work, refused = plan([one], "auto", DecodeOptions())
    assert work == [] and "CSV of unknown layout (columns colour)" in refused[0]
