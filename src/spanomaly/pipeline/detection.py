"""Detection, top to bottom: load the models, then per chunk of the period build each
feature set once (span events, log events, instance windows), score the traces and the
windows, confirm the findings, store them.

Chunks are an hour of window starts (aligned to the window model's windows); the windows
of a chunk need the `recent` windows before it, so each chunk reads that much earlier too
(those windows and their traces are scored by the chunk before). Offline the confirmer
keeps every finding as a partner, so the result does not depend on the chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from spanomaly.detect.confirm import CONFIRM_GAP_S, Confirmer
from spanomaly.errors import InputError, ModelError
from spanomaly.ingest.base import Chunk
from spanomaly.pipeline import reads, scaled
from spanomaly.pipeline.features import PeriodData, instance_windows, overlapping, read_period
from spanomaly.pipeline.ingest import Progress
from spanomaly.pipeline.model_dir import Models, load_models
from spanomaly.store.base import Store

log = logging.getLogger(__name__)

# spans and windows are read and scored in chunks of this many seconds of start times
DETECT_CHUNK_S = 3600.0
ENGINES = ("local", "dask")

if TYPE_CHECKING:
    from spanomaly.detect.window_model import WindowModel
    from spanomaly.features.logs import TemplateMiner


COUNTED = ("traces_scored", "anomalous_traces", "instances_scored", "anomalous_windows")


@dataclass
class Counts:
    """What one detection scored, found and stored (`n`: the COUNTED figures)."""

    n: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))
    stored: list[pa.Table] = field(default_factory=list)
    levels: list[pa.Table] = field(default_factory=list)  # window_model.LEVELS

    def store(self, store: Store, confirmer: Confirmer | None, found: pa.Table) -> None:
        """Pass findings through the confirmer and store what it lets through."""
        if confirmer is not None:
            found = confirmer.push(found)
        if found.num_rows:
            # findings are written like an ingest chunk (Chunk's table names the ingest ones)
            store.write(Chunk("findings", found))  # type: ignore[arg-type]
            self.stored.append(found)

    def doc(self) -> dict[str, object]:
        """The detect document (docs/architecture.md): what was scored, and the alarms of
        the trace findings stored (window findings repeat each minute an instance stays
        anomalous, so evaluate, not detect, counts their incidents)."""
        import pyarrow.compute as pc

        from spanomaly.evaluate.metrics import alarms

        found = pa.concat_tables(self.stored) if self.stored else None
        traces = found.filter(pc.equal(found.column("entity"), "trace")) if found else None
        n_alarms = alarms(traces).num_rows if traces is not None and traces.num_rows else 0
        return {**self.n, "alarms": n_alarms}


@dataclass(frozen=True)
class Span:
    """One chunk: windows starting in [start, end) are scored, traces starting in
    [trace_start, end); features are read from `read_from` (the windows' recent past)."""

    start: int
    end: int
    trace_start: int
    read_from: int


def _chunks(
    lo: int, hi: int, start_ns: int | None, end_ns: int | None, windows: WindowModel | None
) -> Iterator[Span]:
    """The chunks of [start, end) within the data's [lo, hi]."""
    start = max(start_ns, lo) if start_ns is not None else lo
    end = min(end_ns, hi + 1) if end_ns is not None else hi + 1
    w_ns = windows.window_ns if windows is not None else 0
    chunk = int(DETECT_CHUNK_S * 1e9)
    if w_ns:
        chunk = max(chunk // w_ns, 1) * w_ns
        start = (start // w_ns) * w_ns
    lookback = windows.lookback_ns if windows is not None else 0
    t = start
    while t < end:
        hi_t = min(t + chunk, end)
        trace_start = max(t, start_ns) if start_ns is not None else t
        yield Span(t, hi_t, trace_start, t - lookback)
        t = hi_t


def _score_traces(models: Models, data: PeriodData, span: Span, counts: Counts) -> pa.Table:
    events = data.trace_events(models.trace_templates(), span.trace_start, span.end)
    if events.num_rows == 0:
        return _no_findings()
    assert models.traces is not None  # detect loads it
    result = models.traces.detect(events)
    counts.n["traces_scored"] += len(result.trace_ids)
    counts.n["anomalous_traces"] += int(result.anomalous.sum())
    return result.findings


def _no_findings() -> pa.Table:
    from spanomaly.schema import FINDINGS

    return FINDINGS.empty_table()


def _score_windows(
    store: Store,
    windows: WindowModel,
    data: PeriodData,
    span: Span,
    templates: object,
    counts: Counts,
    skip: Iterable[tuple[int, int]] = (),
) -> Iterator[pa.Table]:
    """Findings of the anomalous windows of each source that start in the chunk."""
    built = instance_windows(
        store,
        data,
        (span.read_from, span.end),
        windows.profile_,
        windows.window_s,
        templates,  # type: ignore[arg-type]
    )
    for source in windows.sources_:
        w = built.sources[source]
        if w.n == 0:
            continue
        starts = w.column("time_ns")
        keep = (starts >= span.start) & ~overlapping(starts, skip, windows.window_ns)
        found, scored, flagged, levels = windows.detect(source, w, keep)
        counts.levels.append(levels)
        counts.n["instances_scored"] += scored
        counts.n["anomalous_windows"] += flagged
        yield found


def detect(
    store: Store,
    model_dir: str | Path,
    start_ns: int | None = None,
    end_ns: int | None = None,
    engine: str = "local",
    progress: Progress | None = None,
    scheduler: str | None = None,
    confirm_gap_s: float = CONFIRM_GAP_S,
) -> dict[str, object]:
    """Score the traces and instance windows of the period, store the confirmed findings.

    Findings are stored once confirmed (detect.confirm; confirm_gap_s 0: all). With engine
    "dask" (a Parquet store) the traces of every partition are scored on the cluster of
    scheduler (an address, or local:N) and the findings come back into the store.
    """
    if engine not in ENGINES:
        raise InputError(f"--engine: {engine!r} is not one of {', '.join(ENGINES)}")
    models = load_models(model_dir, traces=False)  # a model of metrics alone has none
    if models.traces is None and models.windows is None:
        raise ModelError(f"{model_dir}: no trained model there (spanomaly train --model DIR)")
    confirmer = Confirmer(gap_s=confirm_gap_s, window_s=models.window_s)
    counts = Counts()
    if models.traces is None:  # metrics alone: the metric windows only
        _windows_only(store, models, start_ns, end_ns, confirmer, counts)
    elif engine == "dask":
        _detect_on_cluster(store, model_dir, models, start_ns, end_ns, scheduler, confirmer, counts)
    else:
        _detect_here(store, models, start_ns, end_ns, progress, confirmer, counts)
    if models.templates is not None:
        counts.n["log_lines_templated"] = label_log_lines(store, models.templates, start_ns, end_ns)
    if confirmer.held:
        log.info("%d findings had no partner within %.0f s: not stored",
                 confirmer.held, confirmer.within_s)  # fmt: skip
    return counts.doc()


def label_log_lines(
    store: Store, templates: TemplateMiner, start_ns: int | None, end_ns: int | None
) -> int:
    """Store each log line's template id and masked values (`logs.template_id`, `params`)
    for the lines of the period: one match per distinct body, one UPDATE. 0 on a store that
    keeps its lines as written (the Parquet store)."""
    if not hasattr(store, "set_log_templates"):
        return 0
    where, params = [], []
    for op, v in ((">=", start_ns), ("<", end_ns)):
        if v is not None:
            where.append(f"time_ns {op} ?")
            params.append(v)
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    bodies = store.sql(f"SELECT DISTINCT body FROM logs{cond}", params).column("body")
    if not len(bodies):
        return 0
    t = templates.transform(bodies, params=True)
    table = pa.table({"body": bodies, "template_id": t.column("template_id"),
                      "params": t.column("params")})  # fmt: skip
    return store.set_log_templates(table, start_ns, end_ns)


def _detect_here(
    store: Store,
    models: Models,
    start_ns: int | None,
    end_ns: int | None,
    progress: Progress | None,
    confirmer: Confirmer,
    counts: Counts,
) -> None:
    windows = models.windows
    lo, hi = reads.data_range(store) if windows is not None else reads.span_range(store)
    if lo is None or hi is None:
        return
    assert models.traces is not None  # detect loads it
    config = models.traces.feature_config
    wanted_lines = models.templates is not None
    spans = list(_chunks(lo, hi, start_ns, end_ns, windows))
    for n, span in enumerate(spans):
        if progress:
            progress(n, len(spans), "traces and windows")
        data = read_period(store, span.read_from, span.end, (), config, wanted_lines)
        found = [_score_traces(models, data, span, counts)]
        if windows is not None:
            found += _score_windows(store, windows, data, span, models.window_templates(), counts)
        for table in found:
            counts.store(store, confirmer, table)
    if progress:
        progress(1, 1, "done")


def _detect_on_cluster(
    store: Store,
    model_dir: str | Path,
    models: Models,
    start_ns: int | None,
    end_ns: int | None,
    scheduler: str | None,
    confirmer: Confirmer,
    counts: Counts,
) -> None:
    if models.traces is not None and models.traces.feature_config.logs:
        raise InputError("--engine dask: a model trained with logs scores on the local engine")
    scored, anomalous, findings = scaled.detect_traces(store, model_dir, start_ns, end_ns, scheduler)  # fmt: skip
    counts.n["traces_scored"], counts.n["anomalous_traces"] = scored, anomalous
    counts.store(store, confirmer, findings)
    if models.windows is not None:
        _windows_only(store, models, start_ns, end_ns, confirmer, counts)


def _windows_only(
    store: Store,
    models: Models,
    start_ns: int | None,
    end_ns: int | None,
    confirmer: Confirmer | None,
    counts: Counts,
    skip: Iterable[tuple[int, int]] = (),
) -> None:
    windows = models.windows
    assert windows is not None
    lo, hi = reads.data_range(store)
    if lo is None or hi is None:
        return
    wanted_lines = models.window_templates() is not None
    config = models.traces.feature_config if models.traces else None
    for span in _chunks(lo, hi, start_ns, end_ns, windows):
        data = read_period(store, span.read_from, span.end, (), config, wanted_lines)
        for table in _score_windows(store, windows, data, span, models.window_templates(), counts, skip):  # fmt: skip
            counts.store(store, confirmer, table)


def detect_points(
    store: Store,
    model_dir: str | Path,
    start_ns: int | None = None,
    end_ns: int | None = None,
    model: Models | None = None,
    confirmer: Confirmer | None = None,
    skip: Iterable[tuple[int, int]] = (),
    levels: list[pa.Table] | None = None,
) -> dict[str, int] | None:
    """Score the instance windows of the period (with the models given, else those in
    model_dir), store a finding per anomalous window (time: the window's end); None when
    there is no window model. With a confirmer, findings pass through it first; windows
    that overlap a period of skip are not scored; levels gets each scored window's score
    (`detect.window_model.LEVELS`)."""
    models = model or load_models(model_dir, traces=False)
    if models.windows is None:
        return None
    counts = Counts()
    _windows_only(store, models, start_ns, end_ns, confirmer, counts, skip)
    if levels is not None:
        levels.extend(counts.levels)
    return {k: counts.n[k] for k in ("instances_scored", "anomalous_windows")}
