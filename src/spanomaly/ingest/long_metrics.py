"""Metric points in long form: one point per CSV row or JSON line, with a column map.

    spanomaly ingest points.csv --map time=ts,service=svc,instance=pod,name=metric,value=v

`time` and `value` are needed; `name` (else the value column's name), `service` (else the
pod name of `instance` without its Kubernetes suffix), `instance` (else the service: one
instance per service) and `host` are optional. Every other column (every other key of a
JSON line, by the keys of the first line) is a label, stored in `attributes` as a JSON
object, so two series that differ by a label stay two series. Times as for wide CSVs
(`spanomaly.ingest.metric_times`). One DuckDB query per file; a row whose time or value is
not one is refused with its line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from spanomaly.errors import FormatError, InputError
from spanomaly.ingest.base import Chunk, DecodeOptions, SqlSource
from spanomaly.ingest.csv import POD_SUFFIX, _lit, _q, header
from spanomaly.ingest.files import first_line
from spanomaly.ingest.logs import _time_sql

FIELDS = ("time", "service", "instance", "host", "name", "value")
REJECT = """CASE
    WHEN time_ns IS NULL THEN 'line ' || _line || ': time ' || coalesce('''' || _time || '''', 'empty')
      || ' is not unix time (s, ms, us, ns) or ISO-8601'
    WHEN value IS NULL THEN 'line ' || _line || ': value ' || coalesce('''' || _text || '''', 'empty')
      || ' is not a number'
    WHEN name IS NULL THEN 'line ' || _line || ': metric name is empty'
END"""


def _columns_sql(get: dict[str, str], mapping: dict[str, str], labels: list[str]) -> str:
    """METRICS columns (plus _time, _text) from SQL expressions of the mapped fields."""
    if "service" in get:
        service = f"nullif(trim({get['service']}), '')"
    elif "instance" in get:
        service = f"regexp_replace(trim({get['instance']}), {_lit(POD_SUFFIX)}, '')"
    else:
        raise InputError("--map: map 'service' or 'instance' for metric points")
    instance = f"nullif(trim({get['instance']}), '')" if "instance" in get else service
    name = f"nullif(trim({get['name']}), '')" if "name" in get else _lit(mapping["value"])
    attrs = (
        "json_object("
        + ", ".join(f"{_lit(k)}, {v}" for k, v in labels_sql(labels, get))
        + ")::VARCHAR"
        if labels
        else "NULL::VARCHAR"
    )
    return f"""{_time_sql(get["time"], None)} AS time_ns, {service} AS service,
        coalesce({instance}, {service}) AS instance,
        {f"nullif(trim({get['host']}), '')" if "host" in get else "NULL::VARCHAR"} AS host,
        {name} AS name, 'gauge' AS kind, NULL::VARCHAR AS unit,
        TRY_CAST(trim({get["value"]}) AS DOUBLE) AS value,
        NULL::BIGINT AS count, NULL::DOUBLE AS sum, NULL::DOUBLE[] AS bounds,
        NULL::BIGINT[] AS bucket_counts, {attrs} AS attributes,
        _file AS _source, _line, {get["time"]} AS _time, {get["value"]} AS _text"""


def labels_sql(labels: list[str], get: dict[str, str]) -> list[tuple[str, str]]:
    """(label, SQL of its value) for each label column."""
    return [(k, get.get(f"label:{k}", _q(k))) for k in labels]


def _check(path: Path, mapping: dict[str, str], keys: list[str]) -> None:
    absent = [f for f in ("time", "value") if f not in mapping]
    if absent:
        raise InputError(f"{path}: no column mapped for {', '.join(absent)} (use --map)")
    missing = [f"{c} (for {f})" for f, c in mapping.items() if f in FIELDS and c not in keys]
    if missing:
        raise InputError(
            f"{path}: line 1: missing column {', '.join(missing)}; has {', '.join(keys)}"
        )


def csv_select(path: Path, mapping: dict[str, str]) -> str:
    """The SELECT reading a long metric CSV into METRICS columns plus _source."""
    columns = header(path)
    _check(path, mapping, columns)
    used = {c for f, c in mapping.items() if f in FIELDS}
    labels = [c for c in columns if c not in used]
    get = {f: _q(c) for f, c in mapping.items() if f in FIELDS}
    reader = (
        f"read_csv({_lit(str(path))}, header = true, all_varchar = true, delim = ',', "
        "quote = '\"', escape = '\"', filename = '_file', store_rejects = true)"
    )
    rows = f"(SELECT row_number() OVER () + 1 AS _line, * FROM {reader})"
    return f"SELECT {_columns_sql(get, mapping, labels)} FROM {rows}"


def jsonl_select(path: Path, mapping: dict[str, str]) -> str:
    """The SELECT reading metric JSON lines into METRICS columns plus _source."""
    try:
        first = orjson.loads(first_line(path))
    except orjson.JSONDecodeError as exc:
        raise FormatError(f"{path}: line 1: invalid JSON: {exc}") from exc
    if not isinstance(first, dict):
        raise FormatError(f"{path}: line 1: expected a JSON object per line")
    keys = list(first)
    _check(path, mapping, keys)

    def key(k: str) -> str:
        return f"json_extract_string(_json, {_lit('$.' + _q(k))})"

    used = {c for f, c in mapping.items() if f in FIELDS}
    labels = [k for k in keys if k not in used]
    get = {f: key(c) for f, c in mapping.items() if f in FIELDS}
    get |= {f"label:{k}": key(k) for k in labels}
    rows = (
        "(SELECT row_number() OVER () AS _line, json AS _json, filename AS _file "
        f"FROM read_ndjson_objects({_lit(str(path))}, filename = true))"
    )
    return f"SELECT {_columns_sql(get, mapping, labels)} FROM {rows}"


def decode_file(path: Path, options: DecodeOptions, json_lines: bool = False) -> Iterator[Chunk]:
    """Chunks of metric points from one mapped CSV or JSON-lines file."""
    mapping = dict(options.column_map)
    if json_lines:
        yield Chunk("metrics", SqlSource(jsonl_select(path, mapping), REJECT))
    else:
        yield Chunk("metrics", SqlSource(csv_select(path, mapping), REJECT, reader_rejects=True))
