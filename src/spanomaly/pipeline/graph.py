"""`spanomaly graph`: trace files → an in-memory store → the service graph → HTML, SVG or DOT.

The files go through the ingest pipeline of `spanomaly ingest` (every supported format,
.gz/.zst too) into a DuckDB store in memory; the edge and node tables come from
`features.graph`; with a model, the spans are scored first (`detect`) and the findings
colour the graph instead of the errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from spanomaly.errors import InputError
from spanomaly.features.graph import (
    EDGE_SPAN_COLUMNS,
    FINDING_COLUMNS,
    service_edges,
    service_nodes,
)
from spanomaly.ingest.base import DecodeOptions
from spanomaly.pipeline.ingest import ingest
from spanomaly.report.graph_file import GRAPH_OUTPUTS, GraphData, write_graph
from spanomaly.store.duckdb import DuckDBStore


def check_output(out: Path) -> None:
    """Refuse an output whose suffix names no graph format (before any file is read)."""
    if out.suffix.lower() not in GRAPH_OUTPUTS:
        raise InputError(f"--out {out}: the name must end in {', '.join(GRAPH_OUTPUTS)}")


def _strict(report_errors: list[str], rejected: int, spans: int, files: int) -> None:
    """A graph drawn from part of the input would mislead: any refused file or record stops
    it, with the first message (which names the file)."""
    if rejected:
        more = f" (and {rejected - 1} more refused)" if rejected > 1 else ""
        raise InputError(f"{report_errors[0] if report_errors else 'input refused'}{more}")
    if not spans:
        raise InputError(f"no spans in the {files} file(s) given (metrics, logs or labels only)")


def file_graph(
    paths: Iterable[str | Path],
    fmt: str = "auto",
    options: DecodeOptions | None = None,
    model_dir: str | Path | None = None,
    title: str = "service graph",
) -> GraphData:
    """The service graph of the spans in the files; with a model, its findings on it."""
    with DuckDBStore(":memory:") as store:
        report = ingest(paths, store, fmt, options)
        _strict(report.errors, report.rejected, report.spans, report.files)
        findings = None
        if model_dir is not None:
            from spanomaly.pipeline.detection import detect

            detect(store, model_dir)
            findings = store.sql(f"SELECT {', '.join(FINDING_COLUMNS)} FROM findings")
        spans = store.sql(f"SELECT {', '.join(EDGE_SPAN_COLUMNS)} FROM spans")
        period = store.sql("SELECT min(start_ns), max(start_ns + duration_ns) FROM spans")
        lo, hi = (period.column(i)[0].as_py() for i in range(2))
    return GraphData(
        nodes=service_nodes(spans, findings),
        edges=service_edges(spans, findings),
        start_ns=lo,
        end_ns=hi,
        colour_by="errors" if findings is None else "findings",
        title=title,
    )


def graph(
    paths: Iterable[str | Path],
    out: Path,
    fmt: str = "auto",
    options: DecodeOptions | None = None,
    model_dir: str | Path | None = None,
    title: str = "service graph",
) -> GraphData:
    """Draw the service graph of the files into out (.html, .svg or .dot)."""
    check_output(out)
    data = file_graph(paths, fmt, options, model_dir, title)
    write_graph(data, out)
    return data
