"""Log lines from files into the LOGS table: the Nezha CSV layout, CSV and JSON lines with a
column map. (OTLP log files and requests are decoded by `otlp_logs`.)

Every format is one DuckDB SELECT over all files of a group, so no Python runs per line:

- **nezha** (`TimeUnixNano,PodName,TraceID,SpanID,Log`): `Log` is the container runtime's
  JSON (`{"log": "<text>\\n", "stream", "time"}`); the text carries the severity after its
  clock time and its own `TraceID:` / `SpanID:`, used where the columns are empty; where
  `TimeUnixNano` is broken (79 TrainTicket lines hold Go's zero time, a negative number)
  the runtime's `time` stands in.
- **CSV** with `--map time=ts,body=message,trace_id=...`: like CSV spans (`--time-unit`).
- **JSON lines**, one object per line: the keys are found by their usual names
  (`timestamp|time|ts|@timestamp`, `message|msg|body|log`, `level|severity|levelname`,
  `trace_id|traceId|otelTraceID`, `span_id|spanId|otelSpanID`, `service|service.name`),
  or given with `--map` as for CSV. Times are ISO-8601 text or epoch numbers (seconds,
  milliseconds, microseconds or nanoseconds, told apart by magnitude).

Severities are normalised to TRACE, DEBUG, INFO, WARN, ERROR, FATAL. Ids are lower-case
hex; an empty id becomes null (a line outside any trace); a malformed one is rejected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from spanomaly.errors import InputError
from spanomaly.ingest.base import Chunk, DecodeOptions, SqlSource
from spanomaly.ingest.csv import POD_SUFFIX, UNITS_NS, _lit, _q, csv_reader
from spanomaly.ingest.files import LOG_BODY_KEYS, LOG_TIME_KEYS, numeric_column

LOG_FIELDS = ("time", "body", "severity", "trace_id", "span_id", "service", "instance", "host")
NEZHA_LOG_COLUMNS = ("TimeUnixNano", "PodName", "TraceID", "SpanID", "Log")
SEVERITIES = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
# JSON-lines keys tried in order when --map does not name the field
JSON_KEYS: dict[str, tuple[str, ...]] = {
    "time": LOG_TIME_KEYS,
    "body": LOG_BODY_KEYS,
    "severity": ("level", "severity", "severity_text", "severityText", "levelname", "lvl"),
    "trace_id": ("trace_id", "traceId", "traceID", "otelTraceID", "trace.id", "dd.trace_id"),
    "span_id": ("span_id", "spanId", "spanID", "otelSpanID", "span.id", "dd.span_id"),
    "service": ("service", "service.name", "service_name", "otelServiceName", "app"),
    "instance": ("instance", "service.instance.id", "pod", "k8s.pod.name", "hostname"),
}

# Why a stored log row is refused (SQL over LOGS columns), checked inside the write.
LOG_REJECT_SQL = """CASE
    WHEN time_ns IS NULL THEN 'time is missing or not a time'
    WHEN body IS NULL THEN 'log message (body) is missing'
    WHEN trace_id IS NOT NULL AND (strlen(trace_id) <> 32 OR regexp_matches(trace_id, '[^0-9a-f]'))
      THEN 'trace_id must be 32 hex characters'
    WHEN span_id IS NOT NULL AND (strlen(span_id) <> 16 OR regexp_matches(span_id, '[^0-9a-f]'))
      THEN 'span_id must be 16 hex characters'
END"""


def severity_sql(expr: str) -> str:
    """SQL normalising a severity text (or OTLP severity number) to one of SEVERITIES."""
    e = f"upper(trim(CAST({expr} AS VARCHAR)))"
    return (
        f"CASE WHEN {e} IN ('WARNING') THEN 'WARN' "
        f"WHEN {e} IN ('ERR', 'SEVERE') THEN 'ERROR' "
        f"WHEN {e} IN ('CRITICAL', 'CRIT', 'PANIC', 'EMERG', 'ALERT') THEN 'FATAL' "
        f"WHEN {e} IN ('INFORMATION', 'NOTICE') THEN 'INFO' "
        f"WHEN {e} IN ('FINE', 'FINER', 'FINEST') THEN 'DEBUG' "
        f"WHEN {e} IN ({', '.join(map(_lit, SEVERITIES))}) THEN {e} "
        f"WHEN {e} IS NULL OR {e} = '' THEN NULL ELSE {e} END"
    )


def _id_sql(expr: str) -> str:
    return f"nullif(lower(trim(CAST({expr} AS VARCHAR))), '')"


def is_nezha_logs(columns: list[str]) -> bool:
    """Whether a CSV header is the Nezha / TrainTicket log layout."""
    return all(c in columns for c in NEZHA_LOG_COLUMNS)


def _file_list(files: list[Path]) -> str:
    return "[" + ", ".join(_lit(str(f)) for f in files) + "]"


def _select(cols: dict[str, str], source: str) -> str:
    """The final SELECT in LOGS column order, from expressions per column."""
    return (
        f"SELECT CAST({cols['time_ns']} AS BIGINT) AS time_ns, "
        f"CAST({cols['service']} AS VARCHAR) AS service, "
        f"CAST({cols['instance']} AS VARCHAR) AS instance, "
        f"CAST({cols['trace_id']} AS VARCHAR) AS trace_id, "
        f"CAST({cols['span_id']} AS VARCHAR) AS span_id, "
        f"CAST({cols['severity']} AS VARCHAR) AS severity, "
        f"CAST({cols['body']} AS VARCHAR) AS body, "
        "NULL::BIGINT AS template_id, NULL::VARCHAR AS params, _file AS _source "
        f"FROM {source}"
    )


def _csv_reader(files: list[Path], columns: list[str] | None = None) -> str:
    """read_csv of files of one header: with the header's columns named, DuckDB sniffs
    nothing, so a row with too many or too few fields is a reject of its own (with its
    line) instead of a sniffing error that refuses the whole file."""
    return csv_reader(files, columns) + ", filename = '_file', store_rejects = true)"


def nezha_select(files: list[Path], columns: list[str] | None = None) -> str:
    """The SELECT reading Nezha log CSVs into LOGS columns plus _source."""
    text = (
        "rtrim(CASE WHEN json_valid(Log) AND json_extract_string(Log, '$.log') IS NOT NULL "
        "THEN json_extract_string(Log, '$.log') ELSE Log END, chr(10) || chr(13))"
    )
    inner = f"(SELECT *, {text} AS _body FROM {_csv_reader(files, columns)})"
    # a few lines carry a broken TimeUnixNano (Go's zero time, negative): the container
    # runtime's own time then tells it
    runtime_time = (
        "CASE WHEN json_valid(Log) THEN CAST(epoch_ns(TRY_CAST(json_extract_string(Log, "
        "'$.time') AS TIMESTAMPTZ)) AS BIGINT) END"
    )
    level = "regexp_extract(left(_body, 80), '\\b(TRACE|DEBUG|INFO|WARNING|WARN|ERROR|FATAL|SEVERE)\\b', 1)"
    cols = {
        "time_ns": "CASE WHEN TRY_CAST(TimeUnixNano AS BIGINT) > 0 "
        f"THEN TRY_CAST(TimeUnixNano AS BIGINT) ELSE {runtime_time} END",
        "service": f"regexp_replace(PodName, {_lit(POD_SUFFIX)}, '')",
        "instance": "nullif(trim(PodName), '')",
        "trace_id": "coalesce("
        + _id_sql("TraceID")
        + ", nullif(lower(regexp_extract(_body, 'TraceID: ([0-9a-fA-F]{32})', 1)), ''))",
        "span_id": "coalesce("
        + _id_sql("SpanID")
        + ", nullif(lower(regexp_extract(_body, 'SpanID: ([0-9a-fA-F]{16})', 1)), ''))",
        "severity": severity_sql(level),
        "body": "_body",
    }
    return _select(cols, inner)


def _time_sql(expr: str, unit: str | None) -> str:
    """ns since the epoch from a text column: a number in `unit` (or by magnitude), or ISO."""
    num = f"TRY_CAST(CAST({expr} AS VARCHAR) AS DECIMAL(38, 9))"  # exact, unlike DOUBLE
    if unit is not None:
        scaled = f"CAST(round({num} * {UNITS_NS[unit]}) AS BIGINT)"
    else:  # by magnitude: s < 1e11 < ms < 1e14 < us < 1e17 < ns
        scaled = (
            f"CAST(round({num} * CASE WHEN abs({num}) < 1e11 THEN 1000000000 "
            f"WHEN abs({num}) < 1e14 THEN 1000000 WHEN abs({num}) < 1e17 THEN 1000 "
            "ELSE 1 END) AS BIGINT)"
        )
    iso = (
        f"CAST(epoch_ns(TRY_CAST(replace(CAST({expr} AS VARCHAR), ',', '.') AS TIMESTAMPTZ)) "
        "AS BIGINT)"
    )
    return f"CASE WHEN {num} IS NOT NULL THEN {scaled} ELSE {iso} END"


def _mapped_cols(m: dict[str, str], unit: str | None) -> dict[str, str]:
    """LOGS column expressions from field -> SQL expressions of the source's values."""
    if "service" in m:
        service = f"nullif(trim({m['service']}), '')"
    elif "instance" in m:
        service = f"regexp_replace({m['instance']}, {_lit(POD_SUFFIX)}, '')"
    else:
        service = "NULL"
    return {
        "time_ns": _time_sql(m["time"], unit),
        "service": service,
        "instance": f"nullif(trim({m['instance']}), '')" if "instance" in m else "NULL",
        "trace_id": _id_sql(m["trace_id"]) if "trace_id" in m else "NULL",
        "span_id": _id_sql(m["span_id"]) if "span_id" in m else "NULL",
        "severity": severity_sql(m["severity"]) if "severity" in m else "NULL",
        "body": f"rtrim({m['body']}, chr(10) || chr(13))",
    }


def _check_map(path: Path, mapping: dict[str, str]) -> None:
    absent = [f for f in ("time", "body") if f not in mapping]
    if absent:
        raise InputError(f"{path}: no column mapped for log {', '.join(absent)} (use --map)")


def csv_select(files: list[Path], mapping: dict[str, str], columns: list[str], unit: str) -> str:
    """The SELECT reading mapped log CSVs into LOGS columns plus _source."""
    missing = [f"{c} (for {f})" for f, c in mapping.items() if c not in columns]
    if missing:
        raise InputError(f"{files[0]}: line 1: missing column {', '.join(missing)}")
    _check_map(files[0], mapping)
    if numeric_column(files[0], mapping["body"]):
        raise InputError(
            f"{files[0]}: column {mapping['body']} (mapped to body) holds numbers, not log "
            "lines; for one column per series give --format metrics, for metric points "
            "--map time=,service=,name=,value="
        )
    m = {k: _q(v) for k, v in mapping.items() if k in LOG_FIELDS}
    return _select(_mapped_cols(m, unit), _csv_reader(files, columns))


def jsonl_select(files: list[Path], mapping: dict[str, str], unit: str | None) -> str:
    """The SELECT reading JSON-lines logs into LOGS columns plus _source."""
    reader = (
        f"(SELECT json AS _line, filename AS _file FROM read_ndjson_objects("
        f"{_file_list(files)}, filename = true))"
    )

    def key(path: str) -> str:
        return f"json_extract_string(_line, {_lit('$.' + _q(path))})"

    m: dict[str, str] = {}
    for name, keys in JSON_KEYS.items():
        if name in mapping:
            m[name] = key(mapping[name])
        else:
            m[name] = "coalesce(" + ", ".join(key(k) for k in keys) + ")"
    cols = _mapped_cols(m, unit if "time" in mapping else None)
    return _select(cols, reader)


def decode_files(
    files: list[Path],
    kind: str,
    options: DecodeOptions,
    headers: dict[Path, list[str]] | None = None,
) -> Iterator[Chunk]:
    """Chunks of log lines from files of one kind: nezha-logs, csv-logs or jsonl-logs."""
    mapping = {k: v for k, v in options.column_map.items() if k in LOG_FIELDS}
    if kind == "jsonl-logs":
        unit = options.time_unit if options.column_map else None
        yield Chunk("logs", SqlSource(jsonl_select(files, mapping, unit), LOG_REJECT_SQL))
        return
    groups: dict[tuple[str, ...], list[Path]] = {}
    for f in files:
        groups.setdefault(tuple((headers or {}).get(f, [])), []).append(f)
    for columns, group in groups.items():
        if kind == "nezha-logs" and not mapping:
            sql = nezha_select(group, list(columns))
        else:
            sql = csv_select(group, mapping, list(columns), options.time_unit)
        yield Chunk("logs", SqlSource(sql, LOG_REJECT_SQL, reader_rejects=True))
