"""CSV spans through DuckDB's CSV reader: a column map (or a preset) turned into one SELECT.

Users map our span fields to their columns: `--map trace_id=TraceID,span_id=SpanID,...`.
Time columns take a unit (`time_unit`, `duration_unit`: s, ms, us or ns). A span needs either
`duration` or `end`. The `nezha` preset reads the TrainTicket layout of the Nezha study:
service from the Kubernetes pod name, `root` as the parent of a root span, microsecond
durations. All files of one header are read in one query, which keeps CSV import close to
DuckDB's own speed; bad lines (wrong column count, invalid UTF-8) are collected by DuckDB's
reject tables with their line numbers, bad values are rejected row by row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from spanomaly.errors import InputError
from spanomaly.ingest.base import Chunk, DecodeOptions, SqlSource
from spanomaly.ingest.files import first_line
from spanomaly.ingest.validate import SPAN_REJECT_SQL, span_values_ok_sql
from spanomaly.schema import KIND_VALUES, names

UNITS_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
# our field -> meaning; every other SPANS column may be mapped as well
REQUIRED = ("trace_id", "span_id", "operation", "start")
TIME_FIELDS = ("start", "end", "duration")
# `status` takes error|ok|unset or OTLP codes (2|1|0, STATUS_CODE_*); `error` a boolean column
# log files (spanomaly.ingest.logs) map `time`, `body` and `severity` besides the ids
LOG_ONLY_FIELDS = ("time", "body", "severity")
# metric points in long form (spanomaly.ingest.long_metrics) map `time`, `name` and `value`
METRIC_ONLY_FIELDS = ("name", "value")
MAPPABLE = (
    tuple(n for n in names("spans") if n not in ("start_ns", "duration_ns"))
    + TIME_FIELDS
    + ("error",)
    + LOG_ONLY_FIELDS
    + METRIC_ONLY_FIELDS
)
NEZHA_TRACE_COLUMNS = ("TraceID", "SpanID", "ParentID", "PodName", "OperationName")
NEZHA_MAP = {
    "trace_id": "TraceID",
    "span_id": "SpanID",
    "parent_id": "ParentID",
    "instance": "PodName",
    "operation": "OperationName",
    "start": "StartTimeUnixNano",
    "duration": "Duration",
}
# Kubernetes pod names: <deployment>-<replica-set hash>-<pod hash>
POD_SUFFIX = r"-[0-9a-z]{5,10}-[0-9a-z]{5}$"
_ROOT_MARKERS = ("", "root", "0", "0000000000000000", "null", "none")


def parse_map(text: str) -> dict[str, str]:
    """`field=column,...` to a dict, checking the field names."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise InputError(f"--map: {part!r} is not field=column")
        key, col = (s.strip() for s in part.split("=", 1))
        if key not in MAPPABLE:
            raise InputError(f"--map: unknown field {key!r}; fields: {', '.join(MAPPABLE)}")
        out[key] = col
    return out


def header(path: Path, data: bytes | None = None) -> list[str]:
    """Column names of a CSV file (first line); data: its first bytes where read already
    (`head(path)`), used when they hold the whole first line."""
    end = -1 if data is None else data.find(b"\n")
    line = data[: end + 1] if data is not None and end >= 0 else first_line(path)
    first = line.decode("utf-8", "replace").strip("\r\n\ufeff")
    return next(csv.reader(io.StringIO(first)))


def is_nezha_traces(columns: list[str]) -> bool:
    """Whether a header is the Nezha / TrainTicket trace layout."""
    return all(c in columns for c in NEZHA_TRACE_COLUMNS) and "Duration" in columns


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _id(expr: str) -> str:
    return f"lower(trim({expr}))"


def _plain_id(column: str, length: int) -> str:
    # the optimistic read: an id already in its stored form (lower-case hex of the right
    # length, not all zeros) passes as it is, one regex and no copy; anything else stops the
    # statement and the checked read takes over (which trims, lowercases and names the row)
    return f"regexp_full_match({column}, '[0-9a-f]{{{length}}}') AND {column} <> '{'0' * length}'"


def _int(expr: str, unit: str) -> str:
    factor = UNITS_NS[unit]
    if factor == 1:  # nanoseconds: a decimal fraction rounds to the nearest ns
        return f"TRY_CAST({expr} AS BIGINT)"
    # coarser units may carry a fraction (1.5 ms, 1700000000.501 s), kept exactly through
    # DECIMAL (a DOUBLE would store 1700000000.501 s as ...500999936 ns)
    return (
        f"CASE WHEN contains({expr}, '.') OR contains({expr}, 'e') OR contains({expr}, 'E') "
        f"THEN CAST(round(TRY_CAST({expr} AS DECIMAL(38, 9)) * {factor}) AS BIGINT) "
        f"ELSE TRY_CAST({expr} AS BIGINT) * {factor} END"
    )


def fast_derived(mapping: dict[str, str]) -> dict[str, str]:
    """Columns the optimistic read leaves to the store to compute after deduplication, as SQL
    over that read's columns: a service from the pod name, a constant status."""
    out = {}
    if "service" not in mapping and "instance" in mapping:
        out["service"] = f"regexp_replace(instance, {_lit(POD_SUFFIX)}, '')"
    if "status" not in mapping and "error" not in mapping:
        out["status"] = "'unset'"
    return out


def _as_read(
    mapping: dict[str, str], options: DecodeOptions, columns: list[str] | None
) -> set[str]:
    """Columns the optimistic read parses as nanosecond integers as it reads them (the same
    parse as the checked read's TRY_CAST, without a text copy of each 19-digit time: 0.04 s
    per 1 M rows)."""
    units = {
        "start": options.time_unit,
        "end": options.time_unit,
        "duration": options.duration_unit,
    }
    return {
        mapping[f]
        for f, unit in units.items()
        if f in mapping
        and UNITS_NS[unit] == 1
        and list(mapping.values()).count(mapping[f]) == 1
        and columns
        and len(set(columns)) == len(columns)
    }


def _times(
    mapping: dict[str, str], m: dict[str, str], options: DecodeOptions, as_read: set[str]
) -> tuple[str, str]:
    """SQL of start_ns and duration_ns (a duration, or end minus start)."""
    units = {
        "start": options.time_unit,
        "end": options.time_unit,
        "duration": options.duration_unit,
    }

    def number(field: str) -> str:
        return m[field] if mapping[field] in as_read else _int(m[field], units[field])

    start = number("start")
    duration = number("duration") if "duration" in m else f"({number('end')} - {start})"
    return start, duration


def _parent(m: dict[str, str], strict: bool) -> str:
    """SQL of parent_id: NULL for a root marker."""
    markers = ", ".join(map(_lit, _ROOT_MARKERS))
    if "parent_id" not in m:
        return "NULL"
    p = m["parent_id"]
    if strict:  # a root marker as written, or a plain id (checked below)
        return f"CASE WHEN {p} IN ({markers}) THEN NULL ELSE {p} END"
    return f"CASE WHEN lower(trim({p})) IN ({markers}) THEN NULL ELSE {_id(p)} END"


def _service(m: dict[str, str]) -> str:
    """SQL of service: the mapped column, or the instance's pod name without its suffix."""
    if "service" in m:
        return f"nullif(trim({m['service']}), '')"
    if "instance" in m:
        return f"regexp_replace({m['instance']}, {_lit(POD_SUFFIX)}, '')"
    raise InputError("--map: map 'service' (or 'instance', to derive it from a pod name)")


def _status(m: dict[str, str]) -> str:
    """SQL of status from a status column and/or an error flag."""
    status = "'unset'"
    if "status" in m:
        status = (
            f"CASE WHEN lower({m['status']}) IN ('error', 'err', '2', 'status_code_error') "
            f"THEN 'error' WHEN lower({m['status']}) IN ('ok', '1', 'status_code_ok') "
            "THEN 'ok' ELSE 'unset' END"
        )
    if "error" in m:
        status = (
            f"CASE WHEN lower(trim({m['error']})) IN ('true', '1', 'yes', 'y', 't') "
            f"THEN 'error' ELSE {status} END"
        )
    return status


def _span_columns(
    mapping: dict[str, str], options: DecodeOptions, as_read: set[str], strict: bool
) -> dict[str, str]:
    """SQL expression of each SPANS column ("NULL" where nothing is mapped)."""
    m = {k: _q(v) for k, v in mapping.items()}
    start, duration = _times(mapping, m, options, as_read)
    kind = (
        f"CASE WHEN lower({m['kind']}) IN ({', '.join(map(_lit, KIND_VALUES))}) "
        f"THEN lower({m['kind']}) ELSE 'unspecified' END"
        if "kind" in m
        else "NULL"
    )
    code = m.get("http_status_code")
    return {
        "trace_id": m["trace_id"] if strict else _id(m["trace_id"]),
        "span_id": m["span_id"] if strict else _id(m["span_id"]),
        "parent_id": _parent(m, strict),
        "service": _service(m),
        "instance": m.get("instance", "NULL"),
        "version": m.get("version", "NULL"),
        "host": m.get("host", "NULL"),
        "operation": m["operation"],
        "kind": kind,
        "start_ns": start,
        "duration_ns": duration,
        "status": _status(m),
        "status_message": m.get("status_message", "NULL"),
        "http_method": m.get("http_method", "NULL"),
        "http_route": m.get("http_route", "NULL"),
        "http_status_code": f"TRY_CAST({code} AS INTEGER)" if code else "NULL",
        "http_url": m.get("http_url", "NULL"),
        "peer_service": m.get("peer_service", "NULL"),
        "attributes": m.get("attributes", "NULL"),
    }


def csv_reader(
    files: list[Path], columns: list[str] | None, as_read: set[str] | frozenset[str] = frozenset()
) -> str:
    """The read_csv call (without its closing parenthesis): every column as text but
    as_read; naming the columns (a shared header) spares DuckDB sniffing every file."""
    file_list = "[" + ", ".join(_lit(str(f)) for f in files) + "]"
    layout = (
        "auto_detect = false, columns = {"
        + ", ".join(f"{_lit(c)}: '{'BIGINT' if c in as_read else 'VARCHAR'}'" for c in columns)
        + "}"
        if columns and len(set(columns)) == len(columns)
        else "all_varchar = true"
    )
    return (
        f"read_csv({file_list}, header = true, {layout}, delim = ',', quote = '\"', escape = '\"'"
    )


def span_select(
    files: list[Path],
    mapping: dict[str, str],
    options: DecodeOptions,
    columns: list[str] | None = None,
    strict: bool = False,
) -> str:
    """The SELECT that reads the files (of one header, `columns` where known) and yields the
    mapped SPANS columns plus _source; strict: the optimistic variant (SqlSource.fast) without
    _source, which raises an error on any line or row the checked variant would refuse or
    rewrite."""
    if "duration" not in mapping and "end" not in mapping:
        raise InputError("--map: a span needs 'duration' or 'end' mapped")
    as_read = _as_read(mapping, options, columns) if strict else set()
    cols = _span_columns(mapping, options, as_read, strict)
    # unmapped columns are left out (the store fills them with NULL): they would only widen
    # the rows DuckDB stages and deduplicates; parent_id stays, the reject check reads it
    derived = fast_derived(mapping) if strict else {}
    typed = {
        name: f"CAST({expr} AS {'BIGINT' if name.endswith('_ns') else 'INTEGER' if name == 'http_status_code' else 'VARCHAR'}) AS {name}"
        for name, expr in cols.items()
        if (expr != "NULL" or name == "parent_id") and name not in derived
    }
    reader = csv_reader(files, columns, as_read)
    if strict:  # a malformed line raises, and so does a row the checked read would touch
        # one test per row (separate CASEs per column cost about 0.05 s more per 1 M rows)
        ok = " AND ".join(
            (
                _plain_id("trace_id", 32),
                _plain_id("span_id", 16),
                "(parent_id IS NULL OR regexp_full_match(parent_id, '[0-9a-f]{16}'))",
                span_values_ok_sql("instance" if "service" in derived else "service"),
            )
        )
        return (  # without the columns of fast_derived
            f"SELECT * FROM (SELECT {', '.join(typed.values())} FROM {reader})) "
            f"WHERE CASE WHEN {ok} THEN true ELSE error('not in stored form') END"
        )
    reader += ", filename = '_file', store_rejects = true)"
    return f"SELECT {', '.join(typed.values())}, _file AS _source FROM {reader}"


def check_columns(path: Path, columns: list[str], mapping: dict[str, str]) -> None:
    """Every mapped column exists in the file, else an InputError naming file and column."""
    missing = [f"{col} (for {field})" for field, col in mapping.items() if col not in columns]
    if missing:
        raise InputError(
            f"{path}: line 1: missing column {', '.join(missing)}; header has {', '.join(columns)}"
        )
    absent = [f for f in REQUIRED if f not in mapping]
    if absent:
        raise InputError(
            f"{path}: no column mapped for {', '.join(absent)} (use --map field=column)"
        )


def decode_files(
    files: list[Path],
    options: DecodeOptions,
    preset: str | None = None,
    headers: dict[Path, list[str]] | None = None,
) -> Iterator[Chunk]:
    """Chunks of CSV spans: one SELECT per group of files that share a header (the columns
    of each file where known, else read here)."""
    groups: dict[tuple[str, ...], list[Path]] = {}
    for f in files:
        columns = (headers or {}).get(f) or header(f)
        groups.setdefault(tuple(columns), []).append(f)
    for columns, group in groups.items():
        mapping = dict(options.column_map) if options.column_map else {}
        if preset == "nezha" or (not mapping and is_nezha_traces(list(columns))):
            mapping = {**NEZHA_MAP, **mapping}
            opts = DecodeOptions(
                column_map=mapping,
                time_unit="ns",
                duration_unit="us",
                fault_duration_s=options.fault_duration_s,
                batch_rows=options.batch_rows,
            )
        else:
            opts = options
        if not mapping:
            raise InputError(
                f"{group[0]}: CSV of unknown layout (columns {', '.join(columns)}); "
                "give --map field=column,... or --format nezha"
            )
        for f in group:
            check_columns(f, list(columns), mapping)
        sql = span_select(group, mapping, opts, list(columns))
        fast = span_select(group, mapping, opts, list(columns), strict=True)
        source = SqlSource(
            sql, SPAN_REJECT_SQL, reader_rejects=True, fast=fast, derived=fast_derived(mapping)
        )
        yield Chunk("spans", source)
