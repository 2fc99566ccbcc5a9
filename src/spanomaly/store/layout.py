"""The store's layout, shared by both backends: table DDL from the schema, and the Parquet
layout (partitions, file names, the dataset's marker file) that `ParquetStore` keeps and
`DuckDBStore.export_parquet` writes. See `store.parquet` for the layout drawn out."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from spanomaly.errors import StoreError
from spanomaly.schema import COLUMNS

if TYPE_CHECKING:
    import duckdb

# Long free text (JSON attributes, messages): zstd writes it faster and smaller than the
# dictionary/FSST analysis DuckDB runs by default (1 M OTLP spans: 4.8 s vs 6.5 s, 126 vs 210 MB)
_ZSTD_COLUMNS = {"attributes", "details", "params", "body", "status_message"}
# Span and parent ids are unique per row: the dictionary/FSST analysis finds nothing to share
# and costs more than zstd (1.04 M TrainTicket spans: about 0.6 CPU s less per import, file
# 49 MB instead of 45 MB, reads of the ids as fast); trace ids repeat and keep the default.
_ZSTD_BY_TABLE = {"spans": {"span_id", "parent_id"}}
_DUCK_TYPES = {
    "string": "VARCHAR",
    "int64": "BIGINT",
    "int32": "INTEGER",
    "float64": "DOUBLE",
    "bool": "BOOLEAN",
}


def duck_type(typ: str) -> str:
    """DuckDB's type for a schema Column type."""
    if typ.startswith("list<"):
        return duck_type(typ[5:-1]) + "[]"
    return _DUCK_TYPES[typ]


def ddl(name: str, as_name: str | None = None, columns: tuple[str, ...] | None = None) -> str:
    """CREATE TABLE statement of a store table (optionally under another name, optionally of
    some of its columns only), from its schema."""
    # No NOT NULL: rows are validated by the decoders and the reject checks; a refused row
    # may sit in the table for a moment inside the transaction that deletes it.
    cols = ", ".join(
        f'"{f.name}" {duck_type(f.type)}'
        + (
            " USING COMPRESSION zstd"
            if f.name in _ZSTD_COLUMNS or f.name in _ZSTD_BY_TABLE.get(name, ())
            else ""
        )
        for f in COLUMNS[name]
        if columns is None or f.name in columns
    )
    return f"CREATE TABLE IF NOT EXISTS {as_name or name} ({cols})"


# -- the Parquet layout -----------------------------------------------------------------------

FORMAT = "spanomaly-parquet"
DEFAULT_BUCKETS = 16
META_FILE = "_spanomaly.json"
HOUR_NS = 3_600_000_000_000
# partition columns of each table (hour of the trace's first span, for spans)
PARTITIONS: dict[str, tuple[str, ...]] = {
    "spans": ("hour", "bucket"),
    "metrics": ("hour",),
    "logs": ("hour",),
    "syscalls": ("hour",),
}
_TIME_COLUMNS = {"metrics": "time_ns", "logs": "time_ns", "syscalls": "time_ns"}


def hour_sql(ns: str) -> str:
    """SQL of the hour partition value ('2023-01-30T14') of a time in ns."""
    return f"strftime(make_timestamp(({ns} // {HOUR_NS}) * 3600000000), '%Y-%m-%dT%H')"


def bucket_sql(trace_id: str, buckets: int) -> str:
    """SQL of the bucket of a trace id: the first 32 bits of its MD5, modulo buckets."""
    return f"CAST(CAST(('0x' || left(md5({trace_id}), 8)) AS UBIGINT) % {buckets} AS INTEGER)"


def hour_of(ns: int) -> str:
    """The hour partition value of a time in ns (as hour_sql computes it)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns // HOUR_NS * 3600, UTC).strftime("%Y-%m-%dT%H")


def partitioned_sql(table: str, source: str, buckets: int) -> str:
    """SELECT of a table's rows from source (a table or view name) with partition columns."""
    if table == "spans":
        return (
            f"SELECT s.*, {hour_sql('f.first_ns')} AS hour, {bucket_sql('s.trace_id', buckets)} "
            f"AS bucket FROM {source} s JOIN (SELECT trace_id, min(start_ns) AS first_ns "
            f"FROM {source} GROUP BY trace_id) f ON f.trace_id = s.trace_id"
        )
    if table in _TIME_COLUMNS:
        return f"SELECT *, {hour_sql(_TIME_COLUMNS[table])} AS hour FROM {source}"
    return f"SELECT * FROM {source}"


def copy_sql(table: str, select: str, target: Path) -> str:
    """COPY of a partitioned SELECT into a folder of Parquet files with unique names."""
    parts = PARTITIONS.get(table)
    target.mkdir(parents=True, exist_ok=True)
    if parts:
        return (
            f"COPY ({select}) TO '{quote(target)}' (FORMAT parquet, COMPRESSION zstd, "
            f"PARTITION_BY ({', '.join(parts)}), FILENAME_PATTERN 'part-{{uuid}}', "
            "OVERWRITE_OR_IGNORE)"
        )
    name = target / f"part-{uuid.uuid4()}.parquet"
    return f"COPY ({select}) TO '{quote(name)}' (FORMAT parquet, COMPRESSION zstd)"


def export_tables(
    con: duckdb.DuckDBPyConnection, out_dir: Path, buckets: int = DEFAULT_BUCKETS
) -> dict[str, int]:
    """Write every table `con` can query into out_dir in the Parquet store's layout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for name in COLUMNS:  # every table (the keys of TABLES, without building Arrow)
        target = out_dir / name
        if target.exists() and any(target.iterdir()):
            raise StoreError(
                f"{target}: folder exists and is not empty; choose another --parquet DIR"
            )
        counts[name] = con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
        target.mkdir(parents=True, exist_ok=True)
        if counts[name]:
            con.execute(copy_sql(name, partitioned_sql(name, name, buckets), target))
    write_meta(out_dir, buckets)
    return counts


def write_meta(root: Path, buckets: int) -> None:
    tmp = root / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "version": 1, "buckets": buckets}) + "\n")
    os.replace(tmp, root / META_FILE)


def quote(path: Path | str) -> str:
    return str(path).replace("'", "''")
