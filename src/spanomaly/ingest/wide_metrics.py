"""Wide metric CSVs: a time column and one numeric column per series, into metric points.

The layout of the public root-cause benchmarks (RCAEval and the methods it packages) and of
most exports from a monitoring system's table view:

    time,carts_cpu,carts-db_cpu,carts_mem,carts_lat_90,...
    1652565600,1.25,100.19,342642688,7.37,...

- **Time**: the column named time/timestamp/ts/... (else the first, where it reads as
  times): unix seconds, ms, us or ns (told apart by size) or ISO-8601 (UTC unless it says).
- **Series names** are split into service and metric by a pattern (`--series`, default
  `{service}_{metric}`). The default cuts each name at the *first* underscore whose metric
  part recurs under two or more services of the header (`carts_lat_90` is service
  `carts`, metric `lat_90`, where `catalogue_lat_90` is there too; `carts-db_cpu` is
  `carts-db`, `cpu`); where no cut recurs, at the last underscore that leaves a known
  metric name (`cpu`, `mem`, `latency`, ...), else at the last underscore. A pattern may
  also name `{instance}`; where it does not, the series' entity is its instance (one
  instance per service).
- **Multi-row headers** (pandas' MultiIndex columns, CloudWatch-style exports): one header
  row per level, entity then metric then statistic (`PetSite / latency / p99` is service
  `PetSite`, metric `latency.p99`); a row of blank cells under them (the index's name) is
  skipped; blank level cells repeat the one to their left.

A file is taken for wide metrics without `--format` when it is unambiguous: a time column,
numbers (or nothing) in every other cell of the first data row, and every other column's
name cut where its metric recurs or is a known one (or two or more header rows);
`--format metrics` takes any split. Points are one DuckDB query over the file (UNPIVOT): a
cell that is not a number or a line whose time is not a time is refused with its line and
column; empty cells are no points.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spanomaly.errors import FormatError, InputError
from spanomaly.ingest.base import Chunk, DecodeOptions, SqlSource
from spanomaly.ingest.csv import _lit, _q
from spanomaly.ingest.files import open_binary
from spanomaly.ingest.logs import _time_sql
from spanomaly.ingest.metric_times import looks_like_time

DEFAULT_PATTERN = "{service}_{metric}"
TIME_NAMES = ("time", "timestamp", "ts", "datetime", "date", "@timestamp", "time_ns", "epoch")
# first words of metric names as monitoring systems write them (USE and RED metrics)
_METRIC_WORDS = """
cpu mem memory rss heap gc disk diskio io fs net network socket sockets tcp rx tx receive
transmit bytes packets threads fds files lat latency duration response rt load workload
requests request req rps qps throughput calls count errors error err failures availability
success status up saturation utilization usage queue
"""
KNOWN_METRICS = frozenset(_METRIC_WORDS.split())
MAX_HEADER_ROWS = 4
_HEAD_LINES = 12
_HEAD_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Series:
    """One data column: its position, the header text and the point's identity."""

    index: int
    label: str
    service: str
    instance: str
    name: str


@dataclass(frozen=True)
class WideLayout:
    """What the header says: header rows, the time column, the series."""

    header_rows: int
    time_index: int
    columns: int
    series: tuple[Series, ...]


def _first_word(metric: str) -> str:
    return re.split(r"[^0-9A-Za-z]+", metric.lower(), maxsplit=1)[0]


def _cuts(name: str) -> list[int]:
    return [m.start() for m in re.finditer("_", name) if 0 < m.start() < len(name) - 1]


def split_default(names: list[str]) -> list[tuple[str, str] | None]:
    """(service, metric) of each name of a header (see the module docstring); None where a
    name has no known or recurring metric part."""
    services: dict[str, set[str]] = {}
    for name in names:  # the header's columns, a few hundred at most
        for at in _cuts(name):
            services.setdefault(name[at + 1 :], set()).add(name[:at])
    out: list[tuple[str, str] | None] = []
    for name in names:
        cuts = _cuts(name)
        recurring = [at for at in cuts if len(services[name[at + 1 :]]) >= 2]
        known = [at for at in cuts if _first_word(name[at + 1 :]) in KNOWN_METRICS]
        at = recurring[0] if recurring else (known[-1] if known else None)
        out.append(None if at is None else (name[:at], name[at + 1 :]))
    return out


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A `{service}_{metric}`-style pattern (or a regex with named groups) as a regex."""
    if "(?P<" in pattern:
        regex = pattern
    else:
        parts = re.split(r"(\{service\}|\{instance\}|\{metric\})", pattern)
        group = {"{service}": "(?P<service>.+)", "{instance}": "(?P<instance>.+?)",
                 "{metric}": "(?P<metric>.+?)"}  # fmt: skip
        regex = "".join(group.get(p, re.escape(p)) for p in parts)
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise InputError(f"--series: {pattern!r} is not a valid pattern: {exc}") from None
    if "metric" not in compiled.groupindex or not (
        {"service", "instance"} & set(compiled.groupindex)
    ):
        raise InputError(
            f"--series: {pattern!r} must name {{metric}} and {{service}} or {{instance}}"
        )
    return compiled


def split_names(
    names: list[str], pattern: str | None, strict: bool = True
) -> list[tuple[str, str, str] | None]:
    """(service, instance, metric) of each column name; None where the pattern does not fit
    (strict) or, not strict, where the name has no underscore either."""
    if pattern is None or pattern == DEFAULT_PATTERN:
        out: list[tuple[str, str, str] | None] = []
        for name, parts in zip(names, split_default(names), strict=True):
            if parts is None and not strict and _cuts(name):
                parts = (name[: _cuts(name)[-1]], name[_cuts(name)[-1] + 1 :])
            out.append(None if parts is None else (parts[0], parts[0], parts[1]))
        return out
    regex = compile_pattern(pattern)
    found = []
    for name in names:
        m = regex.fullmatch(name)
        if m is None:
            found.append(None)
            continue
        groups = m.groupdict()
        service = groups.get("service") or groups.get("instance") or ""
        found.append((service, groups.get("instance") or service, groups["metric"]))
    return found


def _head_rows(path: Path) -> list[list[str]]:
    """The first lines of a CSV file, parsed (header rows and a few data rows)."""
    try:
        with open_binary(path) as raw, io.BufferedReader(raw) as reader:  # type: ignore[arg-type]
            lines = [reader.readline(_HEAD_BYTES) for _ in range(_HEAD_LINES)]
    except Exception as exc:
        raise FormatError(f"{path}: cannot decompress: {exc}") from exc
    text = b"".join(lines).decode("utf-8", "replace").lstrip("\ufeff")
    return [row for row in csv.reader(io.StringIO(text)) if row]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _time_column(header: list[list[str]], first: list[str]) -> int | None:
    for i in range(len(first)):
        names = {row[i].strip().lower() for row in header if i < len(row)}
        if names & set(TIME_NAMES) and looks_like_time(first[i]):
            return i
    return 0 if first and looks_like_time(first[0]) else None


def _levels(header: list[list[str]], width: int) -> list[list[str]]:
    """Header rows as levels, blank cells repeating the one to their left; rows whose data
    cells are all blank (an index's name under a MultiIndex) dropped."""
    out = []
    for row in header:
        cells = [(row[i] if i < len(row) else "").strip() for i in range(width)]
        if len(header) > 1 and not any(cells[1:]):
            continue
        for i in range(1, width):
            cells[i] = cells[i] or cells[i - 1]
        out.append(cells)
    return out


def layout(path: Path, pattern: str | None = None, strict: bool = True) -> WideLayout | None:
    """The wide layout of a CSV file; None where it is not one (strict: only where every
    series name fits and every data cell of the first row is a number; else any split is
    taken, for an explicit `--format metrics`)."""
    rows = _head_rows(path)
    data_at = next(
        (i for i, r in enumerate(rows[: MAX_HEADER_ROWS + 1]) if i and _data_row(r)), None
    )
    if data_at is None:
        return None
    header, first = rows[:data_at], rows[data_at]
    t = _time_column(header, first)
    if t is None:
        return None
    width = max(len(r) for r in rows[: data_at + 1])
    if strict and not all(_is_number(c) or not c.strip() for i, c in enumerate(first) if i != t):
        return None
    levels = _levels(header, width)
    columns = [i for i in range(width) if i != t]
    cells = {i: [lv[i] for lv in levels] for i in columns}
    if len(levels) >= 2:
        parts = [(c[0], c[0], ".".join(x for x in c[1:] if x) or "value") for c in cells.values()]
    else:
        found = split_names([cells[i][0] for i in columns], pattern, strict)
        if strict and any(p is None for p in found):
            return None
        parts = [p or (cells[i][0], cells[i][0], "value") for i, p in zip(columns, found, strict=True)]  # fmt: skip
    series = [
        Series(i, "/".join(x for x in cells[i] if x) or f"column {i + 1}", *p)
        for i, p in zip(columns, parts, strict=True)
    ]
    if not series:
        return None
    return WideLayout(len(header), t, width, tuple(series))


def _data_row(row: list[str]) -> bool:
    """A data row: some cell a time and some other cell a number."""
    return any(looks_like_time(c) for c in row[:4]) and sum(_is_number(c) for c in row) >= 2


def is_wide(path: Path, options: DecodeOptions) -> bool:
    """Whether a CSV file is unambiguously wide metrics (see the module docstring)."""
    try:
        return layout(path, options.series, strict=True) is not None
    except (OSError, FormatError, InputError):
        return False


def wide_select(path: Path, wl: WideLayout) -> str:
    """The SELECT that unpivots the file into METRICS columns plus _source."""
    cols = [f"c{i}" for i in range(wl.columns)]
    types = ", ".join(f"{_lit(c)}: 'VARCHAR'" for c in cols)
    reader = (
        f"read_csv({_lit(str(path))}, header = false, skip = {wl.header_rows}, "
        f"columns = {{{types}}}, auto_detect = false, delim = ',', quote = '\"', "
        "escape = '\"', null_padding = true, filename = '_file', store_rejects = true)"
    )
    t = _q(f"c{wl.time_index}")
    rows = f"(SELECT row_number() OVER () + {wl.header_rows} AS _line, * FROM {reader})"
    data = ", ".join(_q(f"c{s.index}") for s in wl.series)
    unpivot = (
        f"UNPIVOT (SELECT _line, _file, {t} AS _time, {data} FROM {rows}) "
        f"ON {data} INTO NAME _col VALUE _text"
    )
    names = ", ".join(
        f"({_lit(f'c{s.index}')}, {_lit(s.service)}, {_lit(s.instance)}, {_lit(s.name)}, "
        f"{_lit(s.label)})"
        for s in wl.series
    )
    return f"""SELECT {_time_sql("_time", None)} AS time_ns, m.service, m.instance,
        NULL::VARCHAR AS host, m.name, 'gauge' AS kind, NULL::VARCHAR AS unit,
        TRY_CAST(trim(_text) AS DOUBLE) AS value,
        NULL::BIGINT AS count, NULL::DOUBLE AS sum, NULL::DOUBLE[] AS bounds,
        NULL::BIGINT[] AS bucket_counts, NULL::VARCHAR AS attributes,
        _file AS _source, _line, _time, _text, m.label AS _label
      FROM ({unpivot}) JOIN (VALUES {names}) m(_col, service, instance, name, label)
        USING (_col)
      WHERE trim(_text) <> ''"""


REJECT = """CASE
    WHEN time_ns IS NULL THEN 'line ' || _line || ': time ' || coalesce('''' || _time || '''', 'empty')
      || ' is not unix time (s, ms, us, ns) or ISO-8601'
    WHEN value IS NULL THEN 'line ' || _line || ', column ' || _label || ': '''
      || _text || ''' is not a number'
END"""


def decode_file(path: Path, options: DecodeOptions) -> Iterator[Chunk]:
    """Chunks of metric points from one wide CSV file."""
    wl = layout(path, options.series, strict=False)
    if wl is None:
        raise FormatError(
            f"{path}: not a wide metric CSV (a time column and one numeric column per series "
            "from line 2 or after its header rows)"
        )
    yield Chunk("metrics", SqlSource(wide_select(path, wl), REJECT, reader_rejects=True))
