"""Per-pod metric CSVs (the Nezha / TrainTicket layout): wide rows to long metric points."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from spanomaly.ingest.base import Chunk, SqlSource
from spanomaly.ingest.csv import POD_SUFFIX, _lit, _q

# columns that identify the row rather than measure something
ID_COLUMNS = ("Time", "TimeStamp", "PodName", "ServiceName")
REJECT = "CASE WHEN time_ns IS NULL THEN 'TimeStamp is not a number' END"


def is_nezha_metrics(columns: list[str]) -> bool:
    """Whether a header is a Nezha per-pod (PodName) or entry-service (ServiceName) metric CSV."""
    return "TimeStamp" in columns and ("PodName" in columns or "ServiceName" in columns)


def metric_select(files: list[Path], columns: list[str]) -> str:
    """The SELECT that unpivots the files into METRICS columns plus _source."""
    measures = [c for c in columns if c not in ID_COLUMNS]
    file_list = "[" + ", ".join(_lit(str(f)) for f in files) + "]"
    types = ", ".join(f"{_lit(c)}: 'DOUBLE'" for c in measures)
    reader = (
        f"read_csv({file_list}, header = true, all_varchar = false, delim = ',', quote = '\"', "
        f"types = {{{types}, 'TimeStamp': 'VARCHAR'}}, filename = '_file', store_rejects = true)"
    )
    if "PodName" in columns:
        who = (
            "PodName AS instance, regexp_replace(PodName, " + _lit(POD_SUFFIX) + ", '') AS service"
        )
    else:
        who = "NULL::VARCHAR AS instance, lower(ServiceName) AS service"
    unpivot = (
        f"UNPIVOT (SELECT TimeStamp, {who}, _file, {', '.join(map(_q, measures))} FROM {reader}) "
        f"ON {', '.join(map(_q, measures))} INTO NAME name VALUE value"
    )
    units = "CASE WHEN name LIKE '%(%)' THEN regexp_extract(name, '\\(([^)]*)\\)$', 1) END"
    return f"""SELECT
        CAST(round(TRY_CAST(TimeStamp AS DOUBLE) * 1e9) AS BIGINT) AS time_ns,
        service, instance, NULL::VARCHAR AS host,
        regexp_replace(name, '\\([^)]*\\)$', '') AS name,
        'gauge' AS kind, {units} AS unit, value,
        NULL::BIGINT AS count, NULL::DOUBLE AS sum, NULL::DOUBLE[] AS bounds,
        NULL::BIGINT[] AS bucket_counts, NULL::VARCHAR AS attributes,
        _file AS _source
      FROM ({unpivot})"""


def decode_files(files: list[Path], headers: dict[Path, list[str]]) -> Iterator[Chunk]:
    """Chunks of metric points: one SELECT per group of files that share a header."""
    groups: dict[tuple[str, ...], list[Path]] = {}
    for f in files:
        groups.setdefault(tuple(headers[f]), []).append(f)
    for columns, group in groups.items():
        sql = metric_select(group, list(columns))
        yield Chunk("metrics", SqlSource(sql, REJECT, reader_rejects=True))
