"""The input formats: which file is which, and the reader of each.

Every format is one `InputFormat` in the registry, in the order files are tested against
them. A file's kind comes from its first bytes (`files.sniff`); a CSV file's layout from its
header, against the `columns` test of each CSV format (the Nezha / TrainTicket folder: a
`label.json` of faults, per-pod metric CSVs, trace CSVs and log CSVs, told apart by their
columns, never by their names; metric CSVs of one column per series, plain fault labels and
call edges, likewise). `plan` turns files into `Work`: one file for the formats
decoded in Python, groups of files of one kind for those DuckDB reads itself.

A new input format is a reader module and one `register(InputFormat(...))` here, with a tiny
sample that `tests/ingest/test_formats.py` checks (it sniffs as itself, decodes to its
table's schema, and a damaged copy is a one-line error naming the file).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from spanomaly.errors import FormatError, InputError, SpanomalyError
from spanomaly.ingest import csv as csv_spans
from spanomaly.ingest import faults as fault_labels
from spanomaly.ingest import logs as log_lines
from spanomaly.ingest import metrics as csv_metrics
from spanomaly.ingest import plain_labels, wide_metrics
from spanomaly.ingest.base import Chunk, DecodeOptions, TableName
from spanomaly.ingest.files import head, sniff

Headers = dict[Path, list[str]]  # the columns of each CSV file, read while sniffing
Reader = Callable[[list[Path], DecodeOptions, Headers], Iterator[Chunk]]

# DuckDB reads CSV (and JSON-lines) files in groups of about this many bytes: one query, one
# transaction
GROUP_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class InputFormat:
    """One input format: how it is recognised, what it fills, and its reader."""

    name: str  # the kind of file: otlp-json, jaeger, csv-spans, nezha-logs, ...
    family: str | None  # the `--format` value that admits it (None: every one does)
    tables: tuple[TableName, ...]  # the tables its chunks fill
    read: Reader  # chunks of the files (one file unless `grouped`)
    sample: bytes  # a tiny valid file of the format (the contract test reads it)
    columns: Callable[[list[str]], bool] | None = None  # a CSV layout: its header test
    grouped: bool = False  # read by DuckDB itself, many files per query (no Arrow)


REGISTRY: dict[str, InputFormat] = {}


def register(fmt: InputFormat) -> InputFormat:
    """Add a format to the registry (a name is registered once)."""
    if fmt.name in REGISTRY:
        raise ValueError(f"input format {fmt.name!r} is registered twice")
    REGISTRY[fmt.name] = fmt
    return fmt


def families() -> tuple[str, ...]:
    """The `--format` values besides auto, in registration order."""
    return tuple(dict.fromkeys(f.family for f in REGISTRY.values() if f.family is not None))


def check_family(fmt: str) -> None:
    """Refuse a `--format` value that names no registered format."""
    if fmt != "auto" and fmt not in families():
        raise InputError(f"--format: {fmt!r} is not one of auto, {', '.join(families())}")


@dataclass
class Work:
    """A piece of ingest work: some files of one format, stored in one transaction."""

    format: InputFormat
    files: list[Path]
    options: DecodeOptions
    headers: Headers = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The file name, or how many files of which folder."""
        first = self.files[0]
        return (
            first.name
            if len(self.files) == 1
            else f"{len(self.files)} files ({first.parent.name}/)"
        )

    @property
    def size(self) -> int:
        """Bytes on disk (for progress)."""
        return sum(f.stat().st_size for f in self.files)

    def decode(self) -> Iterator[Chunk]:
        """The chunks of the files."""
        return self.format.read(self.files, self.options, self.headers)

    def split(self) -> list[Work]:
        """The same work file by file (a bad file of a group must not sink its neighbours)."""
        return [
            Work(self.format, [f], self.options, {f: self.headers[f]} if f in self.headers else {})
            for f in self.files
        ]


def identify(path: Path, fmt: str, options: DecodeOptions, headers: Headers) -> InputFormat:
    """The format of one file under `--format fmt`; a CSV file's columns go into headers."""
    if fmt in _TRUSTED:  # line formats told only by their name or first lines: the user's
        return REGISTRY[_TRUSTED[fmt]]  # word decides (its reader names a line that is not)
    data = head(path)  # read once for the kind and a CSV header
    kind = _json_kind(path, data, options)
    if kind == "csv":  # any --format: the header (or the column map) decides
        columns = headers[path] = csv_spans.header(path, data)
        return _csv_layout(path, columns, fmt, options)
    found = REGISTRY[kind]
    if fmt not in ("auto", found.family) and found.family is not None:
        return _named(path, data, fmt, options, headers)  # the user's word wins over a guess
    return found


# --format values whose one format is taken at the user's word, without sniffing
_TRUSTED = {"strace": "strace"}


def _json_kind(path: Path, data: bytes, options: DecodeOptions) -> str:
    """The content kind (`files.sniff`), with the JSON formats of plain records: metric
    points where the column map names a value, fault labels and call edges by their keys."""
    json_like = data.lstrip()[:1] in (b"{", b"[")
    if json_like and "value" in options.column_map:
        return "long-metrics-jsonl"
    try:
        return sniff(path, data)
    except FormatError:
        if json_like and plain_labels.is_fault_labels(data):
            return "fault-labels"
        if json_like and plain_labels.is_call_edges(data):
            return "call-edges"
        raise


def _named(
    path: Path, data: bytes, fmt: str, options: DecodeOptions, headers: Headers
) -> InputFormat:
    """The format of family fmt for a file whose first bytes suggested another: its reader
    decides (and names the file and line where the content does not fit)."""
    if fmt in ("csv", "nezha"):
        columns = headers[path] = csv_spans.header(path, data)
        return _csv_layout(path, columns, fmt, options)
    named = [f for f in REGISTRY.values() if f.family == fmt]
    if fmt == "metrics":  # JSON lines of points, else a CSV (its reader names a bad line)
        return REGISTRY["long-metrics-jsonl" if data.lstrip()[:1] == b"{" else "wide-metrics"]
    if len(named) > 1:  # OTLP: JSON (lines) or protobuf, by the first byte
        json_like = data.lstrip()[:1] in (b"{", b"[")
        named = [f for f in named if f.name.endswith("pb") != json_like] or named
    return named[0]


def _csv_layout(path: Path, columns: list[str], fmt: str, options: DecodeOptions) -> InputFormat:
    """The CSV format of a header: a column map decides, else the first layout that fits."""
    if "body" in options.column_map:
        return REGISTRY["csv-logs"]
    if "value" in options.column_map:
        return REGISTRY["long-metrics"]
    if fmt == "csv" or options.column_map:
        return REGISTRY["csv-spans"]
    for candidate in REGISTRY.values():
        labels = candidate.family == "labels"  # only where guessed or asked for, alone then
        if (
            candidate.columns is None
            or (fmt == "labels" and not labels)
            or (fmt not in ("auto", "labels") and labels)
        ):
            continue
        if candidate.columns(columns):
            return candidate
    if fmt == "nezha":
        return REGISTRY["csv-spans"]
    if fmt == "metrics" or (fmt == "auto" and wide_metrics.is_wide(path, options)):
        return REGISTRY["wide-metrics"]
    raise InputError(
        f"{path}: CSV of unknown layout (columns {', '.join(columns[:12])}); "
        "give --format csv --map field=column,... (spans), --format metrics (one column "
        "per series; --series PATTERN), --map time=,service=,name=,value= (metric points) "
        "or --format nezha"
    )


def plan(files: list[Path], fmt: str, options: DecodeOptions) -> tuple[list[Work], list[str]]:
    """The work for files (one per file, grouped where DuckDB reads them), and one message
    per file no format fits."""
    check_family(fmt)
    work: list[Work] = []
    grouped: dict[str, list[Path]] = {}
    headers: Headers = {}
    refused: list[str] = []
    for path in files:
        try:
            found = identify(path, fmt, options, headers)
        except SpanomalyError as exc:
            refused.append(str(exc))
            continue
        if found.grouped:
            grouped.setdefault(found.name, []).append(path)
        else:
            work.append(Work(found, [path], options))
    for name in REGISTRY:  # groups in registration order
        for group in _groups(grouped.get(name, [])):
            known = {f: headers[f] for f in group if f in headers}
            work.append(Work(REGISTRY[name], group, options, known))
    return work, refused


def _groups(paths: list[Path]) -> Iterator[list[Path]]:
    group: list[Path] = []
    size = 0
    for p in paths:
        group.append(p)
        size += p.stat().st_size
        if size >= GROUP_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


def _one(files: list[Path]) -> Path:
    (path,) = files
    return path


def _otlp(kind: str) -> Reader:
    def read(files: list[Path], options: DecodeOptions, headers: Headers) -> Iterator[Chunk]:
        from spanomaly.ingest import otlp

        return otlp.decode_file(_one(files), kind, options)

    return read


def _jaeger(files: list[Path], options: DecodeOptions, headers: Headers) -> Iterator[Chunk]:
    from spanomaly.ingest import jaeger

    return jaeger.decode_file(_one(files), options)


def _zipkin(files: list[Path], options: DecodeOptions, headers: Headers) -> Iterator[Chunk]:
    from spanomaly.ingest import zipkin

    return zipkin.decode_file(_one(files), options)


def _labels(files: list[Path], options: DecodeOptions, headers: Headers) -> Iterator[Chunk]:
    return fault_labels.decode_nezha_labels(_one(files), options.fault_duration_s)


def _prometheus(files: list[Path], options: DecodeOptions, headers: Headers) -> Iterator[Chunk]:
    from spanomaly.ingest import prometheus

    return prometheus.decode_file(_one(files), options)


def _logs(kind: str) -> Reader:
    def read(files: list[Path], options: DecodeOptions, headers: Headers) -> Iterator[Chunk]:
        return log_lines.decode_files(files, kind, options, headers or None)

    return read


_T = "5b8efff798038103d269b633813fc60c"
_S = "eee19b7ec3c1b174"
_OTLP_JSON = (
    b'{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":'
    b'{"stringValue":"svc-a"}}]},"scopeSpans":[{"spans":[{"traceId":"' + _T.encode() + b'",'
    b'"spanId":"' + _S.encode() + b'","name":"op","startTimeUnixNano":"1700000000000000000",'
    b'"endTimeUnixNano":"1700000000000001000"}]}]}]}'
)

for _kind, _sample in (
    ("otlp-json", _OTLP_JSON),
    ("otlp-jsonl", _OTLP_JSON + b"\n" + _OTLP_JSON.replace(b"eee1", b"fff1") + b"\n"),
    (
        "otlp-pb",
        bytes.fromhex(
            "0a510a190a170a0c736572766963652e6e616d6512070a057376632d61123412320a10"
            + _T
            + "1208"
            + _S
            + "2a026f703900002a36fe9c971741e8032a36fe9c9717"
        ),
    ),
):
    register(
        InputFormat(
            _kind,
            "otlp",
            ("spans", "metrics", "logs"),
            _otlp(_kind),
            _sample,
        )
    )
register(
    InputFormat(
        "jaeger",
        "jaeger",
        ("spans",),
        _jaeger,
        b'{"data":[{"traceID":"'
        + _T.encode()
        + b'","spans":[{"traceID":"'
        + _T.encode()
        + b'","spanID":"'
        + _S.encode()
        + b'","operationName":"op","references":[],'
        b'"startTime":1700000000000000,"duration":1000,"processID":"p1"}],'
        b'"processes":{"p1":{"serviceName":"svc-a","tags":[]}}}]}',
    )
)
register(
    InputFormat(
        "zipkin",
        "zipkin",
        ("spans",),
        _zipkin,
        b'[{"traceId":"' + _T.encode() + b'","id":"' + _S.encode() + b'","name":"op",'
        b'"timestamp":1700000000000000,"duration":1000,"localEndpoint":{"serviceName":"svc-a"}}]',
    )
)
register(
    InputFormat(
        "nezha-labels",
        "nezha",
        ("faults",),
        _labels,
        b'{"10_00":[{"inject_timestamp":"1700000000","inject_pod":"svc-a-5d8f9c7b6-x2x4q",'
        b'"inject_type":"cpu"}]}',
    )
)
register(
    InputFormat(
        "prometheus-json",
        "prometheus",
        ("metrics",),
        _prometheus,
        b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":'
        b'"process_cpu_utilization","service":"svc-a","instance":"svc-a-1"},'
        b'"values":[[1700000000,"0.25"],[1700000015,"0.5"]]}]}}',
    )
)
# CSV layouts, in the order their headers are tested
register(
    InputFormat(
        "nezha-logs",
        "nezha",
        ("logs",),
        _logs("nezha-logs"),
        b"TimeUnixNano,PodName,TraceID,SpanID,Log\n1700000000000000000,svc-a-5d8f9c7b6-x2x4q,"
        + _T.encode()
        + b","
        + _S.encode()
        + b',"{""log"":""2023-01-30 10:00:00.000 INFO start\\n"",""stream"":""stdout""}"\n',
        columns=log_lines.is_nezha_logs,
        grouped=True,
    )
)
register(
    InputFormat(
        "csv-metrics",
        "nezha",
        ("metrics",),
        lambda files, options, headers: csv_metrics.decode_files(files, headers),
        b"TimeStamp,PodName,CpuUsageRate(%)\n1700000000,svc-a-5d8f9c7b6-x2x4q,0.5\n",
        columns=csv_metrics.is_nezha_metrics,
        grouped=True,
    )
)
register(
    InputFormat(
        "csv-spans",
        "csv",
        ("spans",),
        lambda files, options, headers: csv_spans.decode_files(files, options, headers=headers),
        b"TraceID,SpanID,ParentID,PodName,OperationName,StartTimeUnixNano,EndTimeUnixNano,"
        b"Duration\n" + _T.encode() + b"," + _S.encode() + b",root,svc-a-5d8f9c7b6-x2x4q,op,"
        b"1700000000000000000,1700000000000700000,700\n",
        columns=csv_spans.is_nezha_traces,
        grouped=True,
    )
)
register(
    InputFormat(
        "csv-logs",
        "csv",
        ("logs",),
        _logs("csv-logs"),
        b"ts,message\n1700000000000000000,hello\n",
        grouped=True,
    )
)
register(
    InputFormat(
        "jsonl-logs",
        None,
        ("logs",),
        _logs("jsonl-logs"),
        b'{"timestamp":"2023-11-14T22:13:20Z","message":"hello","level":"info"}\n',
        grouped=True,
    )
)


# metric points and plain labels (issue 20)
def _wide(files: list[Path], options: DecodeOptions, headers: Headers) -> Iterator[Chunk]:
    return wide_metrics.decode_file(_one(files), options)


def _long(json_lines: bool) -> Reader:
    def read(files: list[Path], options: DecodeOptions, headers: Headers) -> Iterator[Chunk]:
        from spanomaly.ingest import long_metrics

        return long_metrics.decode_file(_one(files), options, json_lines=json_lines)

    return read


register(
    InputFormat(
        "wide-metrics",
        "metrics",
        ("metrics",),
        _wide,
        b"time,svc-a_cpu,svc-a_mem,svc-b_cpu,svc-b_mem\n1700000000,0.5,1024,0.25,2048\n"
        b"1700000001,0.75,1024,0.5,2048\n",
    )
)
register(
    InputFormat(
        "long-metrics",
        "metrics",
        ("metrics",),
        _long(json_lines=False),
        b"ts,svc,metric,v,region\n1700000000,svc-a,cpu,0.5,eu\n1700000001,svc-a,cpu,0.75,eu\n",
    )
)
register(
    InputFormat(
        "long-metrics-jsonl",
        "metrics",
        ("metrics",),
        _long(json_lines=True),
        b'{"ts":1700000000,"svc":"svc-a","metric":"cpu","v":0.5}\n'
        b'{"ts":1700000001,"svc":"svc-a","metric":"cpu","v":0.75}\n',
    )
)
register(
    InputFormat(
        "fault-labels",
        "labels",
        ("faults",),
        lambda files, options, headers: plain_labels.decode_faults(
            _one(files), options.fault_duration_s
        ),
        b'[{"start":"2023-11-14T22:13:20Z","end":1700000100,"service":"svc-a","instance":null,'
        b'"kind":"cpu"}]',
        columns=plain_labels.fault_columns,
    )
)
register(
    InputFormat(
        "call-edges",
        "labels",
        ("calls",),
        lambda files, options, headers: plain_labels.decode_edges(_one(files)),
        b"caller,callee,calls\nsvc-a,svc-b,10\nsvc-b,svc-c,\n",
        columns=plain_labels.edge_columns,
    )
)


# system calls (issue 21)
def _strace(files: list[Path], options: DecodeOptions, headers: Headers) -> Iterator[Chunk]:
    from spanomaly.ingest import strace

    return strace.decode_file(_one(files), options)


register(
    InputFormat(
        "strace",
        "strace",
        ("syscalls",),
        _strace,
        b'[pid 12] 1700000000.000001 openat(AT_FDCWD, "/x", O_RDONLY) = -1 ENOENT (No such '
        b"file or directory) <0.000010>\n"
        b"[pid 12] 1700000000.000020 read(3,  <unfinished ...>\n"
        b"[pid 13] 1700000000.000030 --- SIGCHLD {si_signo=SIGCHLD} ---\n"
        b'[pid 12] 1700000000.000050 <... read resumed>"ab", 4096) = 2 <0.000030>\n'
        b"[pid 13] 1700000000.000060 exit_group(0) = ?\n"
        b"[pid 13] 1700000000.000070 +++ exited with 0 +++\n",
    )
)
