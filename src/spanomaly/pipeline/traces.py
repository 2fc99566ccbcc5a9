"""Collective-anomaly wiring: trace events from the store → train / detect / feedback."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from spanomaly.detect.confirm import CONFIRM_GAP_S, Confirmer
from spanomaly.errors import InputError
from spanomaly.ingest.base import Chunk
from spanomaly.store.base import Store

if TYPE_CHECKING:
    pass

from spanomaly.pipeline import scaled
from spanomaly.pipeline.events import (
    TEMPLATES_FILE,
    load_templates,
    log_bodies,
    span_range,
    trace_events,
    with_logs,
)
from spanomaly.pipeline.ingest import Progress
from spanomaly.pipeline.points import PointOptions, detect_points, load_points, train_points

log = logging.getLogger(__name__)

# -- collective anomalies: train / detect / feedback ------------------------------------------

# spans are read and scored in chunks of this many seconds of trace start times
DETECT_CHUNK_S = 3600.0


@dataclass
class TrainOptions:
    """What `spanomaly train` fits: detectors, their parameters, the event keys."""

    sequence: str | None = "lstm"
    duration: str | None = "robust"
    sequence_params: dict[str, object] = field(default_factory=dict)
    duration_params: dict[str, object] = field(default_factory=dict)
    key_fields: tuple[str, ...] | None = None
    order: str = "start"
    target_fpr: float = 1e-3
    random_state: int = 0
    exclude_flagged: bool = True  # traces with unresolved findings are not normal data
    logs: bool | None = None  # log lines as events: True, False, None = when the period has any


def train(
    store: Store,
    model_dir: str | Path,
    start_ns: int | None = None,
    end_ns: int | None = None,
    exclude: Iterable[tuple[int, int]] = (),
    window_s: float | None = None,
    options: TrainOptions | None = None,
    engine: str = "local",
    scheduler: str | None = None,
) -> dict[str, object]:
    """Fit the trace model on the normal period and write it to model_dir.

    With window_s the period is the last window_s seconds before end_ns (default: the last
    span): retraining on a sliding window of recent normal data. With engine "dask" the
    training sequences are prepared per partition on the cluster; the fit runs here.
    """
    from spanomaly.detect.model import TraceModel, iso
    from spanomaly.features.traces import DEFAULT_KEY_FIELDS, FeatureConfig

    options = options or TrainOptions()
    exclude = list(exclude)
    if window_s is not None:
        if window_s <= 0:
            raise InputError("--window: must be positive")
        if end_ns is None:
            hi = span_range(store)[1]
            end_ns = None if hi is None else hi + 1
        if end_ns is not None:
            start_ns = max(start_ns or 0, end_ns - int(window_s * 1e9))
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise InputError("--from must be before --to")
    templates = None
    lines = 0
    if options.logs is not False:
        from spanomaly.features.logs import TemplateMiner

        bodies = log_bodies(store, start_ns, end_ns, exclude, options.exclude_flagged)
        lines = bodies.num_rows
        if lines:
            templates = TemplateMiner().fit(bodies.column("body"))
        elif options.logs:
            raise InputError("--logs: no log lines of the training period's traces in the store")
    config = FeatureConfig(
        key_fields=tuple(options.key_fields or DEFAULT_KEY_FIELDS),
        order=options.order,
        logs=templates is not None,
    )
    if engine == "dask":
        if templates is not None:
            raise InputError("--engine dask: training with logs runs on the local engine only")
        events = scaled.trace_events(
            store, scheduler, start_ns, end_ns, exclude, options.exclude_flagged, config
        )
    else:
        events = trace_events(
            store, start_ns, end_ns, exclude, options.exclude_flagged, config, templates
        )
    model = TraceModel(
        features=config,
        sequence=options.sequence,
        duration=options.duration,
        sequence_params=dict(options.sequence_params),
        duration_params=dict(options.duration_params),
        target_fpr=options.target_fpr,
        random_state=options.random_state,
    )
    period = {
        "period_from_ns": start_ns,
        "period_to_ns": end_ns,
        "period_from": iso(start_ns),
        "period_to": iso(end_ns),
        "excluded": [[iso(lo), iso(hi)] for lo, hi in exclude],
        "window_s": window_s,
    }
    model.fit(events, period)
    model.save(model_dir)
    templates_path = Path(model_dir) / TEMPLATES_FILE
    if templates is not None:
        templates_path.write_text(templates.dumps())
    else:
        templates_path.unlink(missing_ok=True)
    return {
        "model": str(model_dir),
        "from": iso(model.trained_on_["from_ns"]),
        "to": iso(model.trained_on_["to_ns"]),
        "from_ns": model.trained_on_["from_ns"],
        "to_ns": model.trained_on_["to_ns"],
        "traces": model.trained_on_["traces"],
        "events": model.trained_on_["events"],
        "keys": model.trained_on_["keys"],
        "logs": None if templates is None else {"lines": lines, "templates": templates.n_templates},
        "detectors": {
            role: {
                "name": det.name,
                "threshold": det.threshold_,
                "validation_fpr": det.validation_fpr_,
                "fit_seconds": model.trained_on_["fit_seconds"].get(role),
            }
            for role, det in model.detectors_.items()
        },
    }


def train_models(
    store: Store,
    model_dir: str | Path,
    start_ns: int | None = None,
    end_ns: int | None = None,
    exclude: Iterable[tuple[int, int]] = (),
    window_s: float | None = None,
    options: TrainOptions | None = None,
    point: PointOptions | None = None,
    engine: str = "local",
    scheduler: str | None = None,
) -> dict[str, object]:
    """Fit the trace model and (with point options) the instance-window model, same period."""
    exclude = list(exclude)
    doc = train(store, model_dir, start_ns, end_ns, exclude, window_s, options, engine, scheduler)
    if point is not None and point.detector:
        lo, hi = doc["from_ns"], doc["to_ns"]
        assert isinstance(lo, int | None) and isinstance(hi, int | None)
        doc["point"] = train_points(
            store,
            model_dir,
            lo,
            None if hi is None else hi + 1,
            exclude,
            point,
        )
    return doc


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
    """Score the traces starting in the period, store a finding per anomalous trace.

    Findings from traces are stored once confirmed (detect.confirm; confirm_gap_s 0: all).
    With engine "dask" (a Parquet store) every partition is scored on the cluster of
    scheduler (an address, or local:N) and the findings come back into the store.
    """
    from spanomaly.detect.model import TraceModel
    from spanomaly.evaluate.metrics import alarms

    point = load_points(model_dir)
    window_s = float(point.config["window_s"]) if point else None  # type: ignore[arg-type]
    confirmer = Confirmer(gap_s=confirm_gap_s, window_s=window_s)
    points = (store, model_dir, (start_ns, end_ns), confirmer, point)  # for _with_points

    if engine not in ("local", "dask"):
        raise InputError(f"--engine: {engine!r} is not one of local, dask")
    model = TraceModel.load(model_dir)
    if engine == "dask":
        if model.feature_config.logs:
            raise InputError("--engine dask: a model trained with logs scores on the local engine")
        scored, anomalous, findings = scaled.detect_traces(
            store, model_dir, start_ns, end_ns, scheduler
        )
        findings = confirmer.push(findings)
        if findings.num_rows:
            store.write(Chunk("findings", findings))  # type: ignore[arg-type]
        n_alarms = alarms(findings).num_rows if findings.num_rows else 0
        return _with_points(_detect_doc(scored, anomalous, n_alarms), *points)
    templates = load_templates(model_dir) if model.feature_config.logs else None
    lo, hi = span_range(store)
    if lo is None or hi is None:
        return _detect_doc(0, 0, 0)
    start = max(start_ns, lo) if start_ns is not None else lo
    end = min(end_ns, hi + 1) if end_ns is not None else hi + 1
    chunk = int(DETECT_CHUNK_S * 1e9)
    scored = anomalous = 0
    found = []
    t = start
    while t < end:
        if progress:
            progress(t - start, max(end - start, 1), "traces")
        events = trace_events(
            store, t, min(t + chunk, end), config=model.feature_config, templates=templates
        )
        t += chunk
        if events.num_rows == 0:
            continue
        result = model.detect(events)
        scored += len(result.trace_ids)
        anomalous += int(result.anomalous.sum())
        confirmed = confirmer.push(result.findings)
        if confirmed.num_rows:
            # findings are written like an ingest chunk (Chunk's table names the ingest ones)
            store.write(Chunk("findings", confirmed))  # type: ignore[arg-type]
            found.append(confirmed)
    if progress:
        progress(1, 1, "done")
    n_alarms = alarms(pa.concat_tables(found)).num_rows if found else 0
    return _with_points(_detect_doc(scored, anomalous, n_alarms), *points)


def _with_points(
    doc: dict[str, object],
    store: Store,
    model_dir: str | Path,
    period: tuple[int | None, int | None],
    confirmer: Confirmer,
    point: object,
) -> dict[str, object]:
    """The detect document with the instance windows' figures (issue 6) added."""
    points = detect_points(store, model_dir, *period, model=point, confirmer=confirmer)  # type: ignore[arg-type]
    if points:
        doc.update(points)
    if confirmer.held:
        log.info("%d findings from traces had no partner within %.0f s: not stored",
                 confirmer.held, confirmer.within_s)  # fmt: skip
    return doc


def _detect_doc(traces: int, anomalous: int, n_alarms: int) -> dict[str, object]:
    return {
        "traces_scored": traces,
        "anomalous_traces": anomalous,
        "instances_scored": 0,
        "anomalous_windows": 0,
        "alarms": n_alarms,
    }


def feedback(
    store: Store, model_dir: str | Path, finding: str, normal: bool = True
) -> dict[str, object]:
    """Mark a finding as a false positive and update the model with its trace."""
    from spanomaly.detect.model import TraceModel

    if not normal:
        raise InputError("feedback: only --normal (a false positive) is supported")
    rows = store.sql(
        "SELECT finding_id, trace_id, entity FROM findings WHERE finding_id = ?", [finding]
    ).to_pylist()
    if not rows:
        raise InputError(f"--finding: no finding {finding!r} in the store")
    trace_id = rows[0]["trace_id"]
    doc: dict[str, object] = {"finding": finding, "feedback": "normal", "model_updated": False}
    if trace_id:
        model = TraceModel.load(model_dir)
        spans = store.traces([trace_id])
        from spanomaly.features.traces import events as trace_events_of

        events = trace_events_of(spans, model.feature_config)
        if model.feature_config.logs:  # the trace's log lines are events of it too
            events = with_logs(store, events, [trace_id], load_templates(model_dir))
        update = model.update(events)
        model.save(model_dir)
        doc.update(model_updated=True, trace_id=trace_id, **update)
    store.set_feedback([finding], "normal")
    return doc


# == point anomalies and root cause (issue 6) ==================================================
# Instance windows are scored by point detectors trained on the normal period (a model in
# <model>/point/); their findings and the trace findings are ranked into suspects by
# `rca`, and `evaluate` measures detection and ranking against the fault labels (the only
# place that reads them).
