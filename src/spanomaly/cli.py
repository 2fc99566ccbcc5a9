"""The `spanomaly` command line: thin commands over the pipeline package, one-line errors, --json."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from spanomaly import __version__
from spanomaly.config import DEFAULT_FAULT_DURATION_S, DEFAULT_MODEL_DIR, db_path
from spanomaly.errors import InputError, SpanomalyError
from spanomaly.timeparse import parse_time

app = typer.Typer(
    help="Anomalies and their root causes in microservices, from traces, metrics and logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("spanomaly")

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        "--store",
        help="store: DuckDB file, or parquet:DIR for a partitioned Parquet dataset "
        "(default $SPANOMALY_DB, else ./spanomaly.duckdb)",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _fail(message: str, code: int) -> None:
    typer.echo(f"spanomaly: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn our exceptions into one line on stderr and the documented exit status."""
    try:
        yield
    except SpanomalyError as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 1)
    except BrokenPipeError:  # the reader went away (`spanomaly rca | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), 1)


def _emit(doc: object, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        human()


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int, str], None] | None]:
    """A rich progress bar on stderr while a long job runs (only on a terminal)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("ingest", total=1)

        def update(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=f"ingest {label}")

        yield update


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress details")] = False,
    version: Annotated[bool, typer.Option("--version", help="print the version")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)


PathsArg = Annotated[list[str], typer.Argument(help="files, folders (recursive) or globs")]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format", help="auto|otlp|jaeger|zipkin|prometheus|csv|nezha|metrics|labels|strace|lttng"
    ),
]
MapOpt = Annotated[
    str | None,
    typer.Option(
        "--map",
        help="column map: trace_id=TraceID,span_id=SpanID,... (spans), time=,body= (logs), "
        "time=,service=,instance=,name=,value= (metric points)",
    ),
]
SeriesOpt = Annotated[
    str | None,
    typer.Option(
        help="wide metric CSVs: how a column name splits, e.g. '{service}_{metric}' (the "
        "default), '{instance}.{metric}' or a regex with named groups"
    ),
]
TimeUnitOpt = Annotated[str, typer.Option(help="unit of mapped CSV time columns: s|ms|us|ns")]
DurationUnitOpt = Annotated[str, typer.Option(help="unit of a mapped CSV duration column")]


def _decode_options(
    map_: str | None,
    time_unit: str,
    duration_unit: str,
    fault_duration: float,
    series: str | None = None,
) -> Any:
    """The readers' DecodeOptions from the ingest flags, each checked."""
    from spanomaly.ingest.base import DecodeOptions
    from spanomaly.ingest.csv import UNITS_NS, parse_map
    from spanomaly.ingest.wide_metrics import compile_pattern

    for name, unit in (("--time-unit", time_unit), ("--duration-unit", duration_unit)):
        if unit not in UNITS_NS:
            raise InputError(f"{name}: {unit!r} is not one of {', '.join(UNITS_NS)}")
    if fault_duration <= 0:
        raise InputError("--fault-duration: must be positive")
    if series is not None:
        compile_pattern(series)  # a one-line error for a bad pattern, before any file
    return DecodeOptions(
        column_map=parse_map(map_) if map_ else {},
        time_unit=time_unit,
        duration_unit=duration_unit,
        fault_duration_s=fault_duration,
        series=series,
    )


FromOpt = Annotated[
    str | None, typer.Option("--from", help="start: ISO-8601 or unix seconds (default: all)")
]
ToOpt = Annotated[str | None, typer.Option("--to", help="end, exclusive: ISO-8601 or unix seconds")]


@app.command()
def ingest(
    paths: PathsArg,
    db: DbOpt = None,
    fmt: FormatOpt = "auto",
    map_: MapOpt = None,
    time_unit: TimeUnitOpt = "ns",
    duration_unit: DurationUnitOpt = "ns",
    fault_duration: Annotated[
        float, typer.Option(help="seconds a labelled fault lasts (label files)")
    ] = DEFAULT_FAULT_DURATION_S,
    series: SeriesOpt = None,
    query: Annotated[
        list[str] | None,
        typer.Option(
            "--query", help="prometheus+http://HOST:9090: a PromQL expression (repeatable)"
        ),
    ] = None,
    from_: FromOpt = None,
    to: ToOpt = None,
    step: Annotated[
        str | None, typer.Option(help="prometheus+http://...: resolution (15, 15s, 1m)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Store spans, metrics, logs, fault labels, call edges and system calls (strace, LTTng)
    from files (.gz/.zst too), or range queries pulled from a running Prometheus
    (prometheus+http://HOST:9090)."""
    from spanomaly import pipeline

    with _errors():
        options = _decode_options(map_, time_unit, duration_unit, fault_duration, series)
        pulled = [p for p in paths if p.startswith("prometheus+")]
        if pulled and len(paths) > 1:
            raise InputError(f"{pulled[0]}: pull from one Prometheus at a time, without files")
        pull = _pull_request(pulled[0], query, from_, to, step) if pulled else None
        store = pipeline.open_store(db_path(db))
        try:
            if pull is not None:
                report = pipeline.pull_prometheus(*pull, store=store, options=options)
            else:
                with _progress(not as_json) as progress:
                    report = pipeline.ingest(paths, store, fmt, options, progress)
        finally:
            store.close()
        doc = report.to_json()

        def human() -> None:
            typer.echo(
                f"stored {report.spans} spans, {report.metrics} metric points, {report.logs} logs, "
                f"{report.faults} faults{f', {report.calls} call edges' if report.calls else ''}"
                f"{f', {report.syscalls} syscalls' if report.syscalls else ''} "
                f"from {report.files} files; {report.duplicates} duplicates "
                f"skipped, {report.rejected} rejected, {report.orphans} spans without their parent"
            )
            for message in report.errors:
                typer.echo(f"  {message}", err=True)

        _emit(doc, as_json, human)
        if report.files and report.rejected and not _read_any(report):
            raise typer.Exit(2)


def _pull_request(
    url: str, queries: list[str] | None, from_: str | None, to: str | None, step: str | None
) -> tuple[str, list[str], int, int, float]:
    """The checked arguments of a Prometheus pull: url, queries, start and end ns, step s."""
    if not url.startswith(("prometheus+http://", "prometheus+https://")):
        raise InputError(f"{url}: write prometheus+http://HOST:PORT")
    if not queries:
        raise InputError(f"{url}: give at least one --query EXPR")
    lo, hi = _period(from_, to)
    if lo is None or hi is None:
        raise InputError(f"{url}: give --from and --to")
    if step is None:
        raise InputError(f"{url}: give --step (the resolution, e.g. 15s)")
    return url, list(queries), lo, hi, parse_duration(step, "--step")


def _read_any(report: Any) -> bool:
    """Whether the input held a good record: stored now, or a duplicate of a stored one
    (so a file imported again exits as its first import did)."""
    tables = ("spans", "metrics", "logs", "faults", "calls", "syscalls")
    return any(getattr(report, t) for t in tables) or bool(report.duplicates)


@app.command()
def stats(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Counts of what the store holds."""
    from spanomaly import pipeline

    with _errors():
        store = pipeline.open_store(db_path(db), read_only=True)
        try:
            s = store.stats()
        finally:
            store.close()
        doc = s.to_json()

        def human() -> None:
            for key, value in doc.items():
                shown = f"{len(value)}: {', '.join(value)}" if isinstance(value, list) else value
                typer.echo(f"{key:10} {shown}")

        _emit(doc, as_json, human)


@app.command()
def export(
    parquet: Annotated[Path, typer.Option("--parquet", help="output folder")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the store as a Parquet dataset, Hive-partitioned by hour."""
    from spanomaly import pipeline

    with _errors():
        store = pipeline.open_store(db_path(db), read_only=True)
        try:
            counts = store.export_parquet(parquet)
        finally:
            store.close()
        _emit(
            {"out": str(parquet), "rows": counts},
            as_json,
            lambda: typer.echo(
                f"wrote {', '.join(f'{n} {t}' for t, n in counts.items())} to {parquet}"
            ),
        )


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2}
_SIZE_UNITS |= {"mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str, option: str) -> int:
    """A byte size such as 16777216, 16MiB, 16M or 512k, as an int."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise InputError(
            f"{option}: {text!r} is not a size (bytes, or with k, M, G, KiB, MiB, GiB)"
        )
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise InputError(f"{option}: must be positive")
    return size


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="address to listen on; loopback unless told otherwise")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port)")] = 4318,
    db: DbOpt = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="SPANOMALY_TOKEN",
            help="require 'Authorization: Bearer TOKEN' on every route (or $SPANOMALY_TOKEN)",
            show_default=False,
        ),
    ] = None,
    max_body: Annotated[
        str, typer.Option(help="largest request body as sent; 4x that once decompressed")
    ] = "16MiB",
    trace_idle: Annotated[
        float,
        typer.Option(help="seconds without a new span after the root ends: trace complete"),
    ] = 5.0,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="score traces and instance windows online with this model directory "
            "(empty: wait for POST /api/model/retrain)",
        ),
    ] = None,
    alertmanager: Annotated[
        str | None,
        typer.Option(help="post incidents to this Alertmanager (http://host:9093, API v2)"),
    ] = None,
    webhook: Annotated[
        str | None, typer.Option(help="post incidents as JSON to this URL (HMAC-signed)")
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(
            envvar="SPANOMALY_WEBHOOK_SECRET",
            help="key of the webhook's X-Spanomaly-Signature (or $SPANOMALY_WEBHOOK_SECRET)",
            show_default=False,
        ),
    ] = None,
    dashboard_url: Annotated[
        str | None,
        typer.Option(help="the dashboard's URL as alerts link it (default: the one served)"),
    ] = None,
    incident_gap: Annotated[
        float, typer.Option(help="seconds between a service's findings that end an incident")
    ] = 60.0,
    header_timeout: Annotated[
        float, typer.Option(help="seconds a request has to send its headers")
    ] = 10.0,
    store_memory: Annotated[
        str, typer.Option(help="DuckDB memory limit of the collector's store")
    ] = "512MiB",
) -> None:
    """OTLP/HTTP collector (/v1/traces, /v1/metrics), the dashboard (/) and its JSON API (/api,
    described at /docs)."""
    with _errors():
        if not 0 <= port <= 65535:
            raise InputError(f"--port: {port} is not a port number")
        if trace_idle <= 0:
            raise InputError("--trace-idle: must be positive")
        if token is not None and not token.strip():
            raise InputError("--token: must not be empty")
        for name, value in (("--incident-gap", incident_gap), ("--header-timeout", header_timeout)):
            if value <= 0:
                raise InputError(f"{name}: must be positive")
        if (alertmanager or webhook) and model is None:
            raise InputError(
                "--alertmanager/--webhook: incidents come from findings; give --model DIR"
            )
        for name, url in (("--alertmanager", alertmanager), ("--webhook", webhook), ("--dashboard-url", dashboard_url)):  # fmt: skip
            if url is not None and not url.startswith(("http://", "https://")):
                raise InputError(f"{name}: {url!r} is not an http:// or https:// URL")
        from spanomaly.serve.app import AlertSettings, ServeSettings
        from spanomaly.serve.app import serve as run_server

        alerts = AlertSettings(
            alertmanager=alertmanager,
            webhook=webhook,
            webhook_secret=webhook_secret,
            dashboard=dashboard_url,
            gap_s=incident_gap,
        )
        settings = ServeSettings(
            db=db_path(db),
            host=host,
            port=port,
            token=token,
            max_body=parse_size(max_body, "--max-body"),
            trace_idle_s=trace_idle,
            header_timeout_s=header_timeout,
            store_memory=_memory(store_memory),
            alerts=alerts,
        )

        def ready(url: str) -> None:
            auth = ", bearer token required" if token else ""
            typer.echo(
                f"spanomaly: serving on {url} (store {settings.db}{auth}); "
                f"send OTLP/HTTP to {url}/v1/traces and {url}/v1/metrics; dashboard at {url}/",
                err=True,
            )

        online = None
        if model is not None:
            from spanomaly.pipeline.online import OnlineDetector

            online = OnlineDetector(Path(model))
        run_server(settings, on_ready=ready, online=online)


def _memory(text: str) -> str:
    """A DuckDB memory limit as DuckDB reads it ("1GB", "512MiB", or bytes)."""
    return f"{parse_size(text, '--store-memory')}B"


def _period(from_: str | None, to: str | None) -> tuple[int | None, int | None]:
    """--from/--to in ns; either may be open; --from must come first."""
    lo, hi = parse_time(from_, "--from"), parse_time(to, "--to")
    if lo is not None and hi is not None and lo >= hi:
        raise InputError("--from must be before --to")
    return lo, hi


ModelOpt = Annotated[
    str,
    typer.Option("--model", help="model directory (config.json, safetensors, vocabulary)"),
]
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, option: str) -> float:
    """Seconds of a duration such as 3600, 90m, 6h or 1d."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise InputError(f"{option}: {text!r} is not a duration (seconds, or with s, m, h, d)")
    seconds = float(match.group(1)) * _DURATION_UNITS.get(match.group(2) or "s", 1.0)
    if seconds <= 0:
        raise InputError(f"{option}: must be positive")
    return seconds


SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        help="engine dask: scheduler address (tcp://host:8786) or local:N "
        "(default $SPANOMALY_SCHEDULER, else local:<cpus>)"
    ),
]


def _check_engine(engine: str, scheduler: str | None) -> None:
    if engine not in ("local", "dask"):
        raise InputError(f"--engine: {engine!r} is not one of local, dask")
    if scheduler is not None and engine != "dask":
        raise InputError("--scheduler: only with --engine dask")


def _none(name: str) -> str | None:
    return None if name.lower() == "none" else name


# -- the options of `train` -------------------------------------------------------------------

ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="FROM/TO window to leave out (repeatable)"),
]
WindowOpt = Annotated[
    str | None,
    typer.Option(
        help="train on a window of DURATION (6h, 1d): from --from, else up to --to (or the last span)"
    ),
]
SequenceOpt = Annotated[str, typer.Option(help="sequence detector: lstm|ngram|none")]
DurationOpt = Annotated[str, typer.Option(help="duration detector: robust|lstm-duration|none")]
OrderOpt = Annotated[str, typer.Option(help="event order in a trace: start|tree")]
KeyFieldsOpt = Annotated[
    str | None,
    typer.Option(
        help="event key fields, comma-separated (default: "
        "parent_service,service,operation,callee,status_class)"
    ),
]
TargetFprOpt = Annotated[
    float, typer.Option(help="false-positive rate the thresholds aim at (validation)")
]
EpochsOpt = Annotated[int | None, typer.Option(help="training epochs of the LSTMs")]
TopKOpt = Annotated[
    int | None,
    typer.Option(help="also flag an event whose key is outside the k likeliest (DeepLog's g)"),
]
SeedOpt = Annotated[int, typer.Option(help="random state of splits and training")]
IncludeFlaggedOpt = Annotated[
    bool, typer.Option(help="also train on traces with findings not marked normal")
]
LogsOpt = Annotated[
    bool | None,
    typer.Option(
        "--logs/--no-logs",
        help="log lines as trace events (default: when the period's traces have any)",
    ),
]
PointOpt = Annotated[
    str,
    typer.Option(help="instance-window detector, or none (`spanomaly detectors` lists them)"),
]
LabelsOpt = Annotated[
    bool,
    typer.Option(
        "--labels",
        help="fit --point on the store's fault labels of the period (svm, fisher-dbscan)",
    ),
]
PointWindowOpt = Annotated[
    float | None,
    typer.Option(
        help="instance window, seconds (default 60 with traces; without, the metrics' resolution)"
    ),
]
PointSourcesOpt = Annotated[
    str, typer.Option(help="instance windows of: traces (RED features), metrics, or both")
]
EngineOpt = Annotated[
    str, typer.Option(help="local|dask: where the training sequences are prepared")
]
LogWindowsOpt = Annotated[
    bool | None,
    typer.Option(
        "--log-windows/--no-log-windows",
        help="warning, error and unseen-template shares of log lines as window features "
        "(default: where log lines cover 90 % of the training windows)",
    ),
]


@app.command()
def train(
    db: DbOpt = None,
    model: ModelOpt = DEFAULT_MODEL_DIR,
    from_: FromOpt = None,
    to: ToOpt = None,
    exclude: ExcludeOpt = None,
    window: WindowOpt = None,
    sequence: SequenceOpt = "lstm",
    duration: DurationOpt = "robust",
    order: OrderOpt = "start",
    key_fields: KeyFieldsOpt = None,
    target_fpr: TargetFprOpt = 1e-3,
    epochs: EpochsOpt = None,
    top_k: TopKOpt = None,
    seed: SeedOpt = 0,
    include_flagged: IncludeFlaggedOpt = False,
    logs: LogsOpt = None,
    point: PointOpt = "ecod",
    labels: LabelsOpt = False,
    point_window: PointWindowOpt = None,
    point_sources: PointSourcesOpt = "traces,metrics",
    engine: EngineOpt = "local",
    scheduler: SchedulerOpt = None,
    log_windows: LogWindowsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit the trace models on a normal period (minus --exclude windows) into --model."""
    from spanomaly import pipeline

    with _errors():
        windows = _exclude_windows(exclude or [])
        fields = _key_fields(key_fields)
        if order not in ("start", "tree"):
            raise InputError(f"--order: {order!r} is not one of start, tree")
        _check_engine(engine, scheduler)
        if not 0 < target_fpr < 1:
            raise InputError("--target-fpr: must be between 0 and 1")
        if epochs is not None and epochs < 1:
            raise InputError("--epochs: must be at least 1")
        if top_k is not None and top_k < 1:
            raise InputError("--top-k: must be at least 1")
        seq, dur = _none(sequence), _none(duration)
        seq_params: dict[str, object] = {"epochs": epochs} if epochs and seq == "lstm" else {}
        if top_k is not None:
            seq_params["top_k"] = top_k
        options = pipeline.TrainOptions(
            sequence=seq,
            duration=dur,
            sequence_params=seq_params,
            duration_params={"epochs": epochs} if epochs and dur == "lstm-duration" else {},
            key_fields=fields,
            order=order,
            target_fpr=target_fpr,
            random_state=seed,
            exclude_flagged=not include_flagged,
            logs=logs,
        )
        points = pipeline.PointOptions(
            detector=point, window_s=point_window, target_fpr=target_fpr, random_state=seed,
            sources=tuple(x.strip() for x in point_sources.split(",") if x.strip()),
            log_features=log_windows, labels=labels,
        ) if _none(point) else None  # fmt: skip
        store = pipeline.open_store(db_path(db), read_only=True)
        try:
            doc = pipeline.train(
                store,
                Path(model),
                parse_time(from_, "--from"),
                parse_time(to, "--to"),
                windows,
                parse_duration(window, "--window") if window else None,
                options,
                points,
                engine=engine,
                scheduler=scheduler,
            )
        finally:
            store.close()
        _emit(doc, as_json, lambda: _trained(doc))


def _exclude_windows(items: list[str]) -> list[tuple[int, int]]:
    """The --exclude FROM/TO windows as nanosecond pairs."""
    windows = []
    for item in items:
        if "/" not in item:
            raise InputError(f"--exclude: {item!r} is not FROM/TO")
        lo, hi = item.split("/", 1)
        lo_ns, hi_ns = parse_time(lo, "--exclude"), parse_time(hi, "--exclude")
        assert lo_ns is not None and hi_ns is not None
        if lo_ns >= hi_ns:
            raise InputError(f"--exclude: {item!r} ends before it starts")
        windows.append((lo_ns, hi_ns))
    return windows


def _key_fields(text: str | None) -> tuple[str, ...] | None:
    """The --key-fields list, checked against the known fields."""
    from spanomaly.features.traces import KEY_FIELDS

    if not text:
        return None
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in fields if f not in KEY_FIELDS]
    if bad or not fields:
        raise InputError(
            f"--key-fields: {', '.join(bad) or 'none given'}; fields: {', '.join(KEY_FIELDS)}"
        )
    return fields


def _trained(doc: dict[str, Any]) -> None:
    """The human lines of a training document."""
    dets = doc["detectors"]
    names = " + ".join(d["name"] for d in dets.values())
    if dets:
        typer.echo(
            f"trained {names} on {doc['traces']} traces, {doc['events']} events, "
            f"{doc['keys']} event keys ({doc['from']} to {doc['to']}) into {doc['model']}"
        )
    else:  # metrics alone
        typer.echo(f"trained on metrics alone, no traces ({doc['from']} to {doc['to']}) "
                   f"into {doc['model']}")  # fmt: skip
    for role, d in dets.items():
        typer.echo(
            f"  {role:8} {d['name']:14} threshold {d['threshold']:.4g}, validation "
            f"FPR {100 * d['validation_fpr']:.2f} %, {d['fit_seconds']:.1f} s"
        )
    if isinstance(doc.get("logs"), dict):
        typer.echo(f"  logs     {doc['logs']['lines']} lines, {doc['logs']['templates']} templates")
    point = doc.get("point")
    if isinstance(point, dict):
        for source in ("traces", "metrics"):
            p = point.get(source)
            if isinstance(p, dict):
                typer.echo(
                    f"  windows  {point['detector']} on {source} ({point['window_s']:g} s): "
                    f"{p['windows']} windows, {p['features']} features, threshold "
                    f"{p['threshold']:.4g}, validation FPR {100 * p['validation_fpr']:.2f} %"
                )
        for source, why in (point.get("skipped") or {}).items():
            typer.echo(f"  windows  {source}: {why}")


@app.command("detectors")
def list_detectors(as_json: JsonOpt = False) -> None:
    """The registered detectors: name, kind, whether they need labels, what they do."""
    from spanomaly.detect.base import detectors

    rows = [
        {
            "name": name,
            "kind": cls.kind,
            "option": "--point" if cls.kind == "point" else f"--{cls.kind}",
            "requires_labels": bool(cls.requires_labels),
            "about": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
        }
        for name, cls in detectors().items()
    ]

    def human() -> None:
        for r in rows:
            labels = ", --labels" if r["requires_labels"] else ""
            what = f"{r['option']} {r['name']}{labels}"
            typer.echo(f"{what:32} {r['about']}")

    _emit(rows, as_json, human)


@app.command()
def detect(
    db: DbOpt = None,
    model: ModelOpt = DEFAULT_MODEL_DIR,
    from_: FromOpt = None,
    to: ToOpt = None,
    engine: Annotated[str, typer.Option(help="local|dask")] = "local",
    scheduler: SchedulerOpt = None,
    confirm_gap: Annotated[
        float,
        typer.Option(
            help="seconds: a finding from traces or metrics is stored when its instance has "
            "findings at other moments this far apart, in one run of evidence (within 10 s or "
            "two instance windows; README 'Confirmation'); 0 stores every finding",
            min=0.0,
        ),
    ] = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Score the traces of a period with --model and store a finding per anomalous trace."""
    from spanomaly import pipeline

    with _errors():
        _check_engine(engine, scheduler)
        lo, hi = _period(from_, to)
        store = pipeline.open_store(db_path(db))
        try:
            doc = pipeline.detect(
                store, Path(model), lo, hi, engine, scheduler=scheduler, confirm_gap_s=confirm_gap
            )
        finally:
            store.close()
        _emit(
            doc,
            as_json,
            lambda: typer.echo(
                f"scored {doc['traces_scored']} traces: {doc['anomalous_traces']} anomalous, "
                f"{doc['alarms']} alarms; findings stored in {db_path(db)}"
            ),
        )


@app.command()
def feedback(
    finding: Annotated[str, typer.Option("--finding", help="id of the finding")],
    normal: Annotated[
        bool, typer.Option("--normal", help="the finding is a false positive: learn from it")
    ] = False,
    db: DbOpt = None,
    model: ModelOpt = DEFAULT_MODEL_DIR,
    as_json: JsonOpt = False,
) -> None:
    """Mark a finding as normal (a false positive) and update the model with its trace."""
    from spanomaly import pipeline

    with _errors():
        if not normal:
            raise InputError("feedback: say what the finding is: --normal (a false positive)")
        store = pipeline.open_store(db_path(db))
        try:
            doc = pipeline.feedback(store, Path(model), finding, normal=True)
        finally:
            store.close()

        def human() -> None:
            if not doc.get("model_updated") and "already" in str(doc.get("changed")):
                typer.echo(f"finding {finding}: marked normal already, nothing changed")
                return
            text = f"finding {finding} marked normal"
            if doc.get("model_updated"):
                text += (
                    f"; model {model} updated ({doc['new_keys']} new event keys, trace flagged "
                    f"{'still' if doc['flagged_after'] else 'no longer'}); it no longer flags "
                    f"{doc['clears']} other trace findings of the store (a new detect would not "
                    "store them)"
                )
            typer.echo(text)

        _emit(doc, as_json, human)


@app.command()
def adapt(
    from_: FromOpt = None,
    to: ToOpt = None,
    db: DbOpt = None,
    model: ModelOpt = DEFAULT_MODEL_DIR,
    as_json: JsonOpt = False,
) -> None:
    """Update a trained model with a short normal period of a new deployment (new pods, log
    lines and levels), keeping what it knew."""
    from spanomaly import pipeline

    with _errors():
        store = pipeline.open_store(db_path(db))
        try:
            doc = pipeline.adapt(
                store, Path(model), parse_time(from_, "--from"), parse_time(to, "--to")
            )
        finally:
            store.close()

        def human() -> None:
            tr = doc["traces"]
            text = (
                f"model {model} adapted on {tr['traces']} traces ({tr['new_keys']} new event "
                f"keys; flagged before {tr['flagged_before']}, after {tr['flagged_after']})"
            )
            if "new_templates" in doc:
                text += f", {doc['log_lines']} log lines ({doc['new_templates']} new templates)"
            if doc.get("windows"):
                moved = sum(sum(m.values()) for m in doc["windows"]["moved"].values())
                text += f", {moved} window feature levels moved"
            typer.echo(text)

        _emit(doc, as_json, human)


testbed_app = typer.Typer(help="The demo application: services, load, faults, ground truth.")
app.add_typer(testbed_app, name="testbed")


@testbed_app.command("run")
def testbed_run(
    minutes: Annotated[float, typer.Option(help="minutes of load")] = 2.0,
    faults: Annotated[
        Path | None, typer.Option("--faults", help="fault schedule (TOML); default: shipped")
    ] = None,
    rate: Annotated[float, typer.Option(help="requests per second (mean)")] = 20.0,
    profile: Annotated[str, typer.Option(help="load profile: constant|wave|bursts")] = "constant",
    time_scale: Annotated[float, typer.Option(help="multiply the schedule's times")] = 1.0,
    replicas: Annotated[int, typer.Option(help="instances per service")] = 2,
    collector: Annotated[
        str | None, typer.Option(help="send to this running collector instead of starting one")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="run folder: process logs, ground truth, spool (default: a new one in "
            "the system's temp folder, printed)",
        ),
    ] = None,
    prometheus_port: Annotated[
        int,
        typer.Option(help="the agent also serves its readings at http://127.0.0.1:PORT/metrics"),
    ] = 0,
    syscalls: Annotated[
        list[str] | None,
        typer.Option(
            "--syscalls",
            help="record these instances' system calls with strace (INSTANCE[,INSTANCE...], "
            "repeatable, or all) into OUT/syscalls/SERVICE@INSTANCE.strace",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the load's arrivals and journeys")] = 0,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the testbed with load and faults; store spans, metrics and ground truth."""
    from spanomaly import pipeline
    from spanomaly.ingest.base import Chunk
    from spanomaly.testbed.faults import ScheduleError
    from spanomaly.testbed.load import PROFILES
    from spanomaly.testbed.run import RunConfig, run

    with _errors():
        if minutes <= 0 or rate <= 0 or time_scale <= 0 or not 1 <= replicas <= 3:
            raise InputError("--minutes, --rate, --time-scale > 0; --replicas 1 to 3")
        if not 0 <= prometheus_port <= 65535:
            raise InputError(f"--prometheus-port: {prometheus_port} is not a port number")
        if profile not in PROFILES:
            raise InputError(f"--profile: one of {', '.join(PROFILES)}")
        cfg = RunConfig(
            minutes=minutes,
            rate=rate,
            faults=faults,
            time_scale=time_scale,
            db=Path(db_path(db)),
            collector=collector,
            replicas=replicas,
            profile=profile,
            run_dir=out,
            prometheus_port=prometheus_port,
            syscalls=syscalls or [],
            seed=seed,
        )
        try:
            result = run(cfg)
        except ScheduleError as exc:
            raise InputError(str(exc)) from exc
        doc = result.summary
        for name in ("faults", "fault_traces"):  # the run folder's own labels
            rows = getattr(result, name).to_pylist()
            if name == "faults":  # plain fault labels too: `spanomaly ingest faults.jsonl`
                rows = [r | {"start": r["start_ns"], "end": r["end_ns"]} for r in rows]
            path = result.run_dir / f"{name}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if collector is None:  # the collector is down: the store is ours to write
            store = pipeline.open_store(str(cfg.db))
            try:
                store.write(Chunk("faults", result.faults))
                store.write(Chunk("fault_traces", result.fault_traces))
                doc["store"] = {"db": str(cfg.db), **store.stats().to_json()}
            finally:
                store.close()
        else:
            doc["ground_truth_dir"] = str(result.run_dir)

        def human() -> None:
            load = doc.get("load", {})
            typer.echo(
                f"testbed run {doc['run_id']}: {doc['duration_s']} s, "
                f"{load.get('sent', 0)} requests at {load.get('achieved_rate')}/s "
                f"(target {rate}/s), {load.get('errors', 0)} errors, {doc['faults']} faults, "
                f"{doc['fault_traces']} faulty requests recorded"
            )
            typer.echo(f"  run folder {doc['run_dir']} (process logs, ground truth)")
            if doc.get("syscalls"):
                typer.echo(f"  system calls of {', '.join(doc['syscalls'])} in "
                           f"{result.run_dir / 'syscalls'}")  # fmt: skip
            if doc.get("crashed"):
                typer.echo(f"  crashed: {', '.join(doc['crashed'])}")
            if "store" in doc:
                st = doc["store"]
                typer.echo(
                    f"  store {st['db']}: {st.get('spans')} spans, {st.get('metrics')} metrics"
                )

        _emit(doc, as_json, human)


def main() -> None:
    """Entry point of the `spanomaly` script."""
    try:
        app()
    except typer.Exit:
        raise
    except SystemExit:
        raise


# -- root cause and evaluation (issue 6) ------------------------------------------------------

EvidenceOpt = Annotated[str, typer.Option(help="evidence to rank on: traces|metrics|both")]
MethodOpt = Annotated[
    str, typer.Option(help="ranked (the combined evidence) | baseline (self-time z-scores)")
]


@app.command()
def rca(
    db: DbOpt = None,
    model: ModelOpt = DEFAULT_MODEL_DIR,
    from_: FromOpt = None,
    to: ToOpt = None,
    evidence: EvidenceOpt = "both",
    method: MethodOpt = "ranked",
    top: Annotated[int, typer.Option(help="how many suspects to list")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Ranked suspects (service, instance, operation) of a period, from the findings."""
    from spanomaly import pipeline

    with _errors():
        lo, hi = _period(from_, to)
        if top < 1:
            raise InputError("--top: must be at least 1")
        store = pipeline.open_store(db_path(db), read_only=True)
        try:
            rows = pipeline.rca(store, lo, hi, evidence, method, Path(model), top)
            if not rows:  # on stderr: --json keeps its list
                from spanomaly.pipeline.rank import why_empty

                typer.echo(f"nothing to rank: {why_empty(store, lo, hi, evidence)}", err=True)
        finally:
            store.close()

        def human() -> None:
            for r in rows:
                ev = r["evidence"]
                assert isinstance(ev, dict)
                why = (ev.get("reasons") or [""])[0] if "reasons" in ev else json.dumps(ev)
                typer.echo(
                    f"{r['rank']:3}. {r['service']}  {r['instance'] or '-'}  "
                    f"{r['operation'] or '-'}  score {r['score']:.3g}"
                )
                if why:
                    typer.echo(f"     {why}")

        _emit(rows, as_json, human)


@app.command()
def evaluate(
    db: DbOpt = None,
    model: ModelOpt = DEFAULT_MODEL_DIR,
    from_: FromOpt = None,
    to: ToOpt = None,
    evidence: EvidenceOpt = "both",
    method: MethodOpt = "ranked",
    as_json: JsonOpt = False,
) -> None:
    """Detection and root-cause figures against the fault labels in the store."""
    from spanomaly import pipeline

    with _errors():
        lo, hi = _period(from_, to)
        store = pipeline.open_store(db_path(db), read_only=True)
        try:
            doc = pipeline.evaluate(store, lo, hi, evidence, method, Path(model))
        finally:
            store.close()

        def pct(v: object) -> str:
            return "-" if v is None else f"{100 * float(v):.1f} %"  # type: ignore[arg-type]

        def human() -> None:
            if doc.get("labels") is False:
                _unlabelled(doc)
                return
            r = doc["rca"]
            assert isinstance(r, dict)
            typer.echo(
                f"{doc['detected']} of {doc['faults']} faults detected "
                f"(recall {pct(doc['fault_recall'])}), {float(doc['false_alarms_per_hour']):.1f} false "  # type: ignore[arg-type]
                f"alarms per hour, trace FPR {pct(doc['trace_fpr'])}"
            )
            tr = doc.get("trace")
            if isinstance(tr, dict):  # per-request labels: which traces the faults touched
                typer.echo(
                    f"  traces   precision {pct(tr['precision'])}  recall {pct(tr['recall'])}  "
                    f"F1 {pct(tr['f1'])}"
                )
            for level in ("service", "instance"):
                a = r[level]
                typer.echo(
                    f"  {level:8} AS@1 {pct(a['top1'])}  AS@3 {pct(a['top3'])}  "
                    f"AS@5 {pct(a['top5'])}"
                )
            per_type = doc["per_type"]
            assert isinstance(per_type, dict)
            for kind, t in per_type.items():
                s = t["rca"]["service"]
                k = t.get("trace")
                prf = f", traces P/R/F1 {pct(k['precision'])} / {pct(k['recall'])} / {pct(k['f1'])}" if isinstance(k, dict) else ""  # fmt: skip
                typer.echo(
                    f"  {kind}: {t['detected']}/{t['faults']} detected, time to detect "
                    f"{t['time_to_detect_s']} s, service AS@1 {pct(s['top1'])}{prf}"
                )

        _emit(doc, as_json, human)


def _unlabelled(doc: dict[str, Any]) -> None:
    """The human lines of an evaluation without fault labels."""
    typer.echo(
        f"{doc['note']}; {doc['findings']} findings in {doc['incidents']} incidents "
        "(findings on one service less than 60 s apart)"
    )
    for r in doc["suspects"][:5]:
        typer.echo(
            f"  {r['rank']:2}. {r['service']}  {r['instance'] or '-'}  score {r['score']:.3g}"
        )


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", help="folder for index.html and results.json")],
    db: DbOpt = None,
    model: ModelOpt = DEFAULT_MODEL_DIR,
    from_: FromOpt = None,
    to: ToOpt = None,
    title: Annotated[str, typer.Option(help="title of the report")] = "spanomaly report",
    as_json: JsonOpt = False,
) -> None:
    """Static HTML report (offline, plots inline) of the evaluation against the labels."""
    from spanomaly import pipeline
    from spanomaly.pipeline.report import report as write

    with _errors():
        lo, hi = _period(from_, to)
        store = pipeline.open_store(db_path(db), read_only=True)
        try:
            path, doc = write(store, out, lo, hi, Path(model), title=title)
        finally:
            store.close()
        _emit(
            {"report": str(path), "results": str(out / "results.json"), "evaluation": doc},
            as_json,
            lambda: typer.echo(f"report: {path}"),
        )


@app.command()
def graph(
    paths: PathsArg,
    out: Annotated[Path, typer.Option("--out", help="graph.html, graph.svg or graph.dot")],
    fmt: FormatOpt = "auto",
    model: Annotated[
        str | None,
        typer.Option("--model", help="model directory: colour by its findings, not by errors"),
    ] = None,
    map_: MapOpt = None,
    time_unit: TimeUnitOpt = "ns",
    duration_unit: DurationUnitOpt = "ns",
    title: Annotated[str, typer.Option(help="title of the graph")] = "service graph",
    as_json: JsonOpt = False,
) -> None:
    """The service graph straight from trace files (no store): HTML (offline), SVG or DOT."""
    from spanomaly.pipeline.graph import check_output
    from spanomaly.pipeline.graph import graph as draw

    with _errors():
        check_output(out)
        options = _decode_options(map_, time_unit, duration_unit, DEFAULT_FAULT_DURATION_S)
        data = draw(paths, out, fmt, options, model, title)
        doc = {
            "graph": str(out),
            "services": data.nodes.num_rows,
            "edges": data.edges.num_rows,
            "calls": sum(data.edges.column("calls").to_pylist()),
            "colour_by": data.colour_by,
        }
        _emit(doc, as_json, lambda: typer.echo(
            f"graph: {out} ({doc['services']} services, {doc['edges']} edges, "
            f"{doc['calls']} calls; colour = {data.colour_by})"))  # fmt: skip


@app.command()
def demo(
    minutes: Annotated[
        float, typer.Option(help="most minutes of load (it ends after the fault schedule)")
    ] = 8.0,
    out: Annotated[Path, typer.Option("--out", help="folder for the store, model, report")] = Path(
        "demo-out"
    ),
    train: Annotated[float, typer.Option(help="seconds of normal load to train on")] = 90.0,
    rate: Annotated[float, typer.Option(help="requests per second")] = 20.0,
    faults: Annotated[
        Path | None, typer.Option("--faults", help="fault schedule (TOML); default: the demo's")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The main job: testbed → online training and detection → evaluation → report."""
    from spanomaly import pipeline
    from spanomaly.pipeline.demo import PHASES, DemoConfig, check_schedule, run_demo
    from spanomaly.pipeline.report import report as write
    from spanomaly.testbed.faults import ScheduleError

    with _errors():
        if minutes <= 0 or rate <= 0 or train <= 0 or train >= minutes * 60:
            raise InputError("--minutes, --rate, --train > 0 and --train < the run")
        if faults is not None and not faults.is_file():
            raise InputError(f"--faults: {faults}: no such file")
        cfg = DemoConfig(minutes=minutes, out=out, train_s=train, rate=rate, faults=faults)
        try:
            check_schedule(cfg)  # before anything starts
            doc = _with_phases(PHASES, lambda phase: run_demo(cfg, phase))
        except ScheduleError as exc:
            raise InputError(str(exc)) from exc
        store = pipeline.open_store(doc["paths"]["db"], read_only=True)
        try:
            path, _ = write(
                store,
                out / "report",
                doc["training"]["loaded_ns"],
                None,
                Path(doc["paths"]["model"]),
                evaluation=doc["evaluation"],
                title="spanomaly demo: the movie and book encyclopedia under faults",
            )
        finally:
            store.close()
        doc["paths"]["report"] = str(path)
        doc["timings"]["total_s"] = cfg.timings.get("total_s")
        _emit(doc, as_json, lambda: _demo_summary(doc))


def _with_phases(phases: tuple[str, ...], work: Callable[[Callable[[str], None]], T]) -> T:
    """Run work(phase) under a rich progress display naming the phase and its elapsed time
    (a line per phase on stderr when the output is not a terminal)."""
    import time

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = _console()
    if not console.is_terminal:
        t0 = time.monotonic()

        def line(name: str) -> None:
            typer.echo(f"[{time.monotonic() - t0:6.1f} s] {name}", err=True)

        return work(line)
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("({task.completed:.0f}/{task.total:.0f})"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(phases[0], total=len(phases))

        def phase(name: str) -> None:
            done = phases.index(name) if name in phases else 0
            bar.update(task, description=name, completed=done)

        result = work(phase)
        bar.update(task, description="done", completed=len(phases))
    return result


def _demo_summary(doc: dict[str, Any]) -> None:
    """The demo's table on the terminal: a row per fault."""
    from rich.table import Table

    ev = doc["evaluation"]
    table = Table(title="spanomaly demo: every fault, detected and ranked")
    for col in ("fault kind", "injected into", "detected", "time to detect", "trace P / R / F1",
                "rank: service", "rank: instance"):  # fmt: skip
        table.add_column(col)
    for f in ev.get("per_fault", []):
        tr = (ev["per_type"].get(f["kind"]) or {}).get("trace")
        prf = (
            "-"
            if not tr
            else " / ".join(f"{100 * tr[k]:.0f}%" for k in ("precision", "recall", "f1"))
        )
        ttd = f["time_to_detect_s"]
        table.add_row(
            f["kind"],
            str(f["instance"] or f["service"]),
            "[green]yes[/]" if f["detected"] else "[red]no[/]",
            "-" if ttd is None else f"{ttd:.1f} s",
            prf,
            str(f["rank"]["service"] or "-"),
            str(f["rank"]["instance"] or "-"),
        )
    console = _console()
    console.print(table)
    svc, inst = ev["rca"]["service"], ev["rca"]["instance"]
    console.print(
        f"{ev['detected']} of {ev['faults']} faults detected; service AS@1 "
        f"{_pct(svc['top1'])}, instance AS@1 {_pct(inst['top1'])}; "
        f"{ev['false_alarms_per_hour']:.1f} false alarms per hour; "
        f"model trained on {doc['training']['traces']} traces in {doc['training']['seconds']} s; "
        f"demo took {doc['timings'].get('total_s')} s"
    )
    console.print(f"report: {doc['paths']['report']}")


def _pct(v: object) -> str:
    return "-" if v is None else f"{100 * float(v):.0f} %"  # type: ignore[arg-type]


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=False)


# -- fault-type classification of system-call and metric windows (issue 21) -------------------

classify_app = typer.Typer(
    help="Fault type of system-call (or metric) windows: train, run, evaluate by run.",
    no_args_is_help=True,
)
app.add_typer(classify_app, name="classify")

OnOpt = Annotated[str, typer.Option("--on", help="windows of: syscalls | metrics")]
LengthOpt = Annotated[
    str | None,
    typer.Option(
        help="window length: calls (200) or a time (2s, 500ms); default 200 calls, metrics 10s"
    ),
]
StrideOpt = Annotated[
    str | None,
    typer.Option(help="a new window every STRIDE, in the unit of --length (default: half)"),
]
ByOpt = Annotated[str, typer.Option("--by", help="system-call windows per thread | instance")]
MinCallsOpt = Annotated[int, typer.Option(help="leave out windows with fewer calls")]
LabelledOpt = Annotated[
    float, typer.Option(help="fisher-dbscan: share of training windows that keep their label")
]
ClassifyFprOpt = Annotated[
    float, typer.Option("--target-fpr", help="ecod: false-positive rate of its threshold")
]
VocabOpt = Annotated[int, typer.Option(help="system calls with a share feature of their own")]
WidthOpt = Annotated[int, typer.Option("--ngram-width", help="hash buckets of the bigrams")]
FisherOpt = Annotated[
    int, typer.Option(help="fisher-dbscan: at most this many features, chosen by Fisher score")
]


# the window and method options `classify train` and `classify evaluate` share, as
# (ClassifyOptions field, annotation, default; --seed is random_state)
_CLASSIFY_FIELDS = (
    ("on", OnOpt, "syscalls"),
    ("length", LengthOpt, None),
    ("stride", StrideOpt, None),
    ("by", ByOpt, "thread"),
    ("min_calls", MinCallsOpt, 1),
    ("labelled", LabelledOpt, 0.1),
    ("target_fpr", ClassifyFprOpt, 0.01),
    ("max_vocab", VocabOpt, 64),
    ("width", WidthOpt, 32),
    ("fisher_features", FisherOpt, 80),
    ("seed", SeedOpt, 0),  # random_state
)


def _with_classify_options(command: F) -> F:
    """Give a command the shared options; it receives them as one ClassifyOptions
    (`options`, checked: a bad option is a one-line error)."""
    import functools
    import inspect
    import typing

    sig = inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)  # the strings, resolved
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in sig.parameters.values()
        if p.name != "options"
    ]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)
        for name, ann, default in _CLASSIFY_FIELDS
    ]
    kw_own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        from spanomaly.pipeline.classify import ClassifyOptions

        values = {name: kwargs.pop(name) for name, _, _ in _CLASSIFY_FIELDS}
        values["random_state"] = values.pop("seed")
        with _errors():
            options = ClassifyOptions(method=kwargs.get("method", "svm"), **values)
            options.check()
        return command(options=options, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=kw_own + shared)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


@contextmanager
def _reading(db: str | None) -> Iterator[Any]:
    """The store, open for reading while the block runs."""
    from spanomaly import pipeline

    store = pipeline.open_store(db_path(db), read_only=True)
    try:
        yield store
    finally:
        store.close()


@classify_app.command("train")
@_with_classify_options
def classify_train(
    options: Any,
    model: Annotated[str, typer.Option("--model", help="model directory to write")],
    method: Annotated[str, typer.Option(help="svm | fisher-dbscan | ecod")] = "svm",
    from_: FromOpt = None,
    to: ToOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit a classifier on the labelled windows of the period (labels: the store's faults)."""
    from spanomaly.pipeline.classify import train_classifier

    with _errors():
        period = _period(from_, to)
        with _reading(db) as store:
            doc = train_classifier(store, model, options, *period)
        classes = ", ".join(f"{c} {n}" for c, n in doc["classes"].items())
        _emit(doc, as_json, lambda: typer.echo(
            f"{doc['method']} on {doc['windows']} {doc['on']} windows of {len(doc['runs'])} "
            f"runs ({classes}) -> {doc['model']}"))  # fmt: skip


@classify_app.command("run")
def classify_run(
    model: Annotated[str, typer.Option("--model", help="model directory (classify train)")],
    db: DbOpt = None,
    from_: FromOpt = None,
    to: ToOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The class (and the SVM's probability) of every window of the period."""
    from spanomaly.pipeline.classify import run_classifier

    with _errors():
        with _reading(db) as store:
            rows = run_classifier(store, model, *_period(from_, to))

        def human() -> None:
            for r in rows:
                p = "" if r["probability"] is None else f"  p {r['probability']:.2f}"
                who = r["instance"] + ("" if r["thread"] is None else f" tid {r['thread']}")
                typer.echo(f"{r['start_ns']}  {r['end_ns']}  {who}  {r['class']}{p}")

        _emit(rows, as_json, human)


@classify_app.command("evaluate")
@_with_classify_options
def classify_evaluate(
    options: Any,
    db: DbOpt = None,
    methods: Annotated[
        str, typer.Option(help="comma-separated: svm,fisher-dbscan,ecod (default all)")
    ] = "svm,fisher-dbscan,ecod",
    folds: Annotated[int, typer.Option(help="folds of the cross-validation by run")] = 5,
    from_: FromOpt = None,
    to: ToOpt = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="also write the figures as an HTML page")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Cross-validate the classifiers by run (a run is never split across folds)."""
    from spanomaly.pipeline.classify import evaluate_classifiers

    with _errors():
        chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
        with _reading(db) as store:
            doc = evaluate_classifiers(store, options, chosen, folds, *_period(from_, to))
        if html is not None:
            from spanomaly.report.html import write_classification

            doc["html"] = str(write_classification(html, doc))
        _emit(doc, as_json, lambda: _classified(doc))


def _classified(doc: dict[str, Any]) -> None:
    """The human lines of a classifier evaluation."""
    typer.echo(
        f"{doc['windows']} {doc['on']} windows of {doc['runs']} runs, {doc['folds']} folds by run"
    )
    for method, m in doc["methods"].items():
        if "per_class" not in m:  # ecod: normal vs anomalous
            typer.echo(f"  {method}: precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
                       f"F1 {m['f1']:.3f} (anomalous vs normal)")  # fmt: skip
            continue
        per = "  ".join(f"{c} {v['f1']:.3f}" for c, v in m["per_class"].items())
        typer.echo(f"  {method}: macro F1 {m['macro_f1']:.3f}; F1 per class: {per}")
    if doc.get("html"):
        typer.echo(f"  html: {doc['html']}")
