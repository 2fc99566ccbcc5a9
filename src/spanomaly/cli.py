"""The `spanomaly` command line: thin commands over pipeline.py, one-line errors, --json."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from spanomaly import __version__
from spanomaly.config import DEFAULT_FAULT_DURATION_S, db_path
from spanomaly.errors import InputError, SpanomalyError

app = typer.Typer(
    help="Anomalies and their root causes in microservices, from traces, metrics and logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("spanomaly")

DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="store path (default $SPANOMALY_DB, else ./spanomaly.duckdb)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
F = TypeVar("F", bound=Callable[..., Any])


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
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), 1)


def _iso(ns: int | None) -> str | None:
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


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


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="files, folders (recursive) or globs")],
    db: DbOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", help="auto|otlp|jaeger|zipkin|csv|nezha")
    ] = "auto",
    map_: Annotated[
        str | None,
        typer.Option("--map", help="CSV column map: trace_id=TraceID,span_id=SpanID,..."),
    ] = None,
    time_unit: Annotated[
        str, typer.Option(help="unit of mapped CSV time columns: s|ms|us|ns")
    ] = "ns",
    duration_unit: Annotated[str, typer.Option(help="unit of a mapped CSV duration column")] = "ns",
    fault_duration: Annotated[
        float, typer.Option(help="seconds a labelled fault lasts (label files)")
    ] = DEFAULT_FAULT_DURATION_S,
    as_json: JsonOpt = False,
) -> None:
    """Store spans, metrics, logs and fault labels from files (.gz/.zst too)."""
    from spanomaly import pipeline
    from spanomaly.ingest.base import DecodeOptions
    from spanomaly.ingest.csv import UNITS_NS, parse_map

    with _errors():
        for name, unit in (("--time-unit", time_unit), ("--duration-unit", duration_unit)):
            if unit not in UNITS_NS:
                raise InputError(f"{name}: {unit!r} is not one of {', '.join(UNITS_NS)}")
        if fault_duration <= 0:
            raise InputError("--fault-duration: must be positive")
        options = DecodeOptions(
            column_map=parse_map(map_) if map_ else {},
            time_unit=time_unit,
            duration_unit=duration_unit,
            fault_duration_s=fault_duration,
        )
        store = pipeline.open_store(db_path(db))
        try:
            with _progress(not as_json) as progress:
                report = pipeline.ingest(paths, store, fmt, options, progress)
        finally:
            store.close()
        doc = report.to_json()

        def human() -> None:
            typer.echo(
                f"stored {report.spans} spans, {report.metrics} metric points, {report.logs} logs, "
                f"{report.faults} faults from {report.files} files; {report.duplicates} duplicates "
                f"skipped, {report.rejected} rejected, {report.orphans} spans without their parent"
            )
            for message in report.errors:
                typer.echo(f"  {message}", err=True)

        _emit(doc, as_json, human)
        if (
            report.files
            and not (report.spans or report.metrics or report.logs or report.faults)
            and (report.rejected)
        ):
            raise typer.Exit(2)


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
        doc = {
            "spans": s.spans,
            "traces": s.traces,
            "services": s.services,
            "instances": s.instances,
            "metrics": s.metrics,
            "logs": s.logs,
            "faults": s.faults,
            "from": _iso(s.start_ns),
            "to": _iso(s.end_ns),
        }

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


def main() -> None:
    """Entry point of the `spanomaly` script."""
    try:
        app()
    except typer.Exit:
        raise
    except SystemExit:
        raise
