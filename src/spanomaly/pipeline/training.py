"""Training, top to bottom: choose the normal period, read its features once (span events,
log lines), mine log templates, fit the trace model, build the instance windows, fit the
window model, write the model directory.

`train` fits the trace model and the window model on the same features, `train_points` the
window model alone (from the trace model's directory: its event keys and templates).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.errors import InputError
from spanomaly.pipeline import metrics_only, reads, scaled
from spanomaly.pipeline.features import (
    LOG_COVERAGE,
    PeriodData,
    edges,
    instance_windows,
    read_period,
    window_labels,
    without_log_features,
)
from spanomaly.pipeline.model_dir import (
    POINT_DIR,
    has_templates,
    load_templates,
    save_templates,
)
from spanomaly.store.base import Store

if TYPE_CHECKING:
    from spanomaly.detect.model import TraceModel
    from spanomaly.features.logs import TemplateMiner
    from spanomaly.features.traces import FeatureConfig

log = logging.getLogger(__name__)

POINT_SOURCES = ("traces", "metrics")
DEFAULT_WINDOW_S = 60.0  # the instance window where spans are there


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

    def feature_config(self, logs: bool) -> FeatureConfig:
        """How traces become events under these options."""
        from spanomaly.features.traces import DEFAULT_KEY_FIELDS, FeatureConfig

        key_fields = tuple(self.key_fields or DEFAULT_KEY_FIELDS)
        return FeatureConfig(key_fields=key_fields, order=self.order, logs=logs)


@dataclass
class PointOptions:
    """What `train` fits for instance windows: the detector, the window, the normaliser."""

    detector: str | None = "ecod"
    params: dict[str, object] = field(default_factory=dict)
    # None: DEFAULT_WINDOW_S with spans, the metrics' resolution without (metrics_only)
    window_s: float | None = None
    recent: int = 10
    target_fpr: float = 1e-3
    random_state: int = 0
    sources: tuple[str, ...] = POINT_SOURCES  # windows of span RED features, of metrics
    # the shares of warning, error and unseen log lines as window features (with a trace
    # model trained on logs): True, False, or None: where log lines cover the training
    # period (in LOG_COVERAGE of the windows where an instance that logs served requests)
    log_features: bool | None = None
    # fit on the store's fault labels (a window overlapping a fault of its instance, or of
    # its service, is labelled with the fault's kind, every other one normal): for the
    # detectors that require labels, and only for them
    labels: bool = False

    def check(self) -> None:
        """One-line errors for options no window model can be fitted with."""
        from spanomaly.detect.base import detectors

        known = detectors("point")
        if self.detector not in known:
            raise InputError(f"--point: {self.detector!r} is not one of {', '.join(known)}, none")
        needs = known[self.detector].requires_labels
        if needs and not self.labels:
            raise InputError(f"--point {self.detector}: needs labels (--labels: the store's "
                             "fault labels over the training period)")  # fmt: skip
        if self.labels and not needs:
            with_labels = [n for n, c in known.items() if c.requires_labels]
            raise InputError(f"--labels: only for {', '.join(with_labels)}")
        if self.window_s is not None and self.window_s <= 0:
            raise InputError("--point-window: must be positive")
        bad = [x for x in self.sources if x not in POINT_SOURCES]
        if bad or not self.sources:
            raise InputError(f"--point-sources: {', '.join(bad) or 'none given'}; "
                             f"sources: {', '.join(POINT_SOURCES)}")  # fmt: skip


# -- the period -------------------------------------------------------------------------------


def training_period(
    store: Store, start_ns: int | None, end_ns: int | None, window_s: float | None
) -> tuple[int | None, int | None]:
    """The period to train on: [start, end); with window_s a window of that length: the
    first window_s seconds from start, or the last before end (default: the last span), a
    sliding window of recent normal data."""
    if window_s is not None:
        if window_s <= 0:
            raise InputError("--window: must be positive")
        if start_ns is not None and end_ns is not None:
            raise InputError("--window: give --from (a window from then) or --to (a window "
                             "up to then), not both")  # fmt: skip
        w_ns = int(window_s * 1e9)
        if start_ns is not None:
            end_ns = start_ns + w_ns
        else:
            if end_ns is None:
                hi = reads.span_range(store)[1]
                end_ns = None if hi is None else hi + 1
            if end_ns is not None:
                start_ns = end_ns - w_ns
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise InputError("--from must be before --to")
    return start_ns, end_ns


# -- the trace model --------------------------------------------------------------------------


def _training_lines(lines: pa.Table | None, flagged: pa.Array | None) -> pa.Table | None:
    """The log lines of the traces the trace model learns from (not flagged)."""
    if lines is None or flagged is None or not len(flagged):
        return lines
    return lines.filter(pc.invert(pc.is_in(lines.column("trace_id"), value_set=flagged)))


def _mine_templates(lines: pa.Table | None, options: TrainOptions) -> TemplateMiner | None:
    """Templates mined on the training traces' log lines (None without lines)."""
    from spanomaly.features.logs import TemplateMiner

    if lines is None or lines.num_rows == 0:
        if options.logs:
            raise InputError("--logs: no log lines of the training period's traces in the store")
        return None
    return TemplateMiner().fit(lines.column("body"))


def _fit_trace_model(
    events: Any, options: TrainOptions, config: FeatureConfig, period: dict[str, Any]
) -> TraceModel:
    from spanomaly.detect.model import TraceModel

    model = TraceModel(
        features=config,
        sequence=options.sequence,
        duration=options.duration,
        sequence_params=dict(options.sequence_params),
        duration_params=dict(options.duration_params),
        target_fpr=options.target_fpr,
        random_state=options.random_state,
    )
    return model.fit(events, period)


def _period_doc(
    start_ns: int | None, end_ns: int | None, exclude: list[tuple[int, int]], window_s: float | None
) -> dict[str, Any]:
    from spanomaly.detect.trace_findings import iso

    return {
        "period_from_ns": start_ns,
        "period_to_ns": end_ns,
        "period_from": iso(start_ns),
        "period_to": iso(end_ns),
        "excluded": [[iso(lo), iso(hi)] for lo, hi in exclude],
        "window_s": window_s,
    }


def _trace_doc(model: TraceModel, model_dir: str | Path, logs: dict[str, int] | None) -> dict[str, Any]:  # fmt: skip
    from spanomaly.detect.trace_findings import iso

    trained = model.trained_on_
    return {
        "model": str(model_dir),
        "from": iso(trained["from_ns"]),
        "to": iso(trained["to_ns"]),
        "from_ns": trained["from_ns"],
        "to_ns": trained["to_ns"],
        "traces": trained["traces"],
        "events": trained["events"],
        "keys": trained["keys"],
        "logs": logs,
        "detectors": {
            role: {
                "name": det.name,
                "threshold": det.threshold_,
                "validation_fpr": det.validation_fpr_,
                "fit_seconds": trained["fit_seconds"].get(role),
            }
            for role, det in model.detectors_.items()
        },
    }


def _train_traces(
    store: Store,
    model_dir: str | Path,
    period: tuple[int | None, int | None],
    exclude: list[tuple[int, int]],
    window_s: float | None,
    options: TrainOptions,
    engine: str,
    scheduler: str | None,
) -> tuple[dict[str, Any], PeriodData | None]:
    """Fit and save the trace model; its document and the period's features (local)."""
    start_ns, end_ns = period
    flagged = reads.flagged_traces(store) if options.exclude_flagged else None
    want_lines = options.logs is not False
    data = None
    if engine == "dask":
        lines = reads.log_bodies(store, start_ns, end_ns, exclude) if want_lines else None
        lines = _training_lines(lines, flagged)
        if _mine_templates(lines, options) is not None:
            raise InputError("--engine dask: training with logs runs on the local engine only")
        templates, config = None, options.feature_config(logs=False)
        events = scaled.trace_events(store, scheduler, start_ns, end_ns, exclude, options.exclude_flagged, config)  # fmt: skip
    else:
        data = read_period(store, start_ns, end_ns, exclude, options.feature_config(logs=False), want_lines)  # fmt: skip
        lines = _training_lines(data.lines, flagged)
        templates = _mine_templates(lines, options) if want_lines else None
        config = options.feature_config(logs=templates is not None)
        events = data.trace_events(templates, without=flagged)
    model = _fit_trace_model(
        events, options, config, _period_doc(start_ns, end_ns, exclude, window_s)
    )
    model.save(model_dir)
    save_templates(model_dir, templates)
    used = None if templates is None or lines is None else {"lines": lines.num_rows, "templates": templates.n_templates}  # fmt: skip
    return _trace_doc(model, model_dir, used), data


# -- the window model -------------------------------------------------------------------------


def _trace_config(model_dir: str | Path) -> FeatureConfig | None:
    """The event keys of the trace model in model_dir (None: there is none, the default)."""
    from spanomaly.detect.model import TraceModel

    if not (Path(model_dir) / "config.json").exists():
        return None
    return replace(TraceModel.load(model_dir).feature_config, logs=False)


def _fit_windows(
    store: Store,
    model_dir: str | Path,
    data: PeriodData,
    period: tuple[int | None, int | None],
    exclude: list[tuple[int, int]],
    options: PointOptions,
) -> dict[str, object]:
    """Fit the self-time profile, the normalisers and a detector per source; write them."""
    from spanomaly.detect.window_model import WindowModel
    from spanomaly.features.windows import SelfTimeProfile

    assert options.window_s is not None  # train and train_points choose it
    profile = SelfTimeProfile().fit(data.events)
    # the trace model's log templates, when it was trained with logs: log shares too
    use_logs = options.log_features is not False and has_templates(model_dir)
    templates = load_templates(model_dir) if use_logs else None
    if templates is not None and data.lines is None:
        data.lines = reads.log_bodies(store, *period, exclude)
    windows = instance_windows(
        store, data, period, profile, options.window_s, templates, exclude + edges(*period)
    )
    coverage = windows.log_coverage
    if templates is not None and options.log_features is None and coverage < LOG_COVERAGE:  # type: ignore[operator]
        log.info("log lines in %.0f %% of the training windows: no log window features",
                 100 * coverage)  # type: ignore[operator]  # fmt: skip
        templates = None
        without_log_features(windows)
    model = WindowModel(
        detector=options.detector or "ecod",
        params=dict(options.params),
        window_s=options.window_s,
        recent=options.recent,
        target_fpr=options.target_fpr,
        random_state=options.random_state,
    )
    chosen = {s: windows.sources[s] for s in options.sources}
    labels = None
    if options.labels:  # supervised: the fault labels are what it learns from
        faults = reads.fault_labels(store, *period)
        labels = {s: window_labels(w, faults, model.window_ns) for s, w in chosen.items()}
    model.fit(chosen, profile, windows.host_metrics, period, templates is not None, labels)
    model.save(Path(model_dir) / POINT_DIR)
    doc: dict[str, object] = {"detector": options.detector, "window_s": options.window_s}
    doc["log_windows"] = templates is not None
    if coverage is not None:
        doc["log_coverage"] = round(float(coverage), 3)
    doc["host_metrics"] = model.host_metrics_
    doc.update(model.trained_)
    if model.skipped_:
        doc["skipped"] = model.skipped_
    return doc


def train_points(
    store: Store,
    model_dir: str | Path,
    start_ns: int | None = None,
    end_ns: int | None = None,
    exclude: Iterable[tuple[int, int]] = (),
    options: PointOptions | None = None,
) -> dict[str, object]:
    """Fit the window model on the normal period; write it to <model_dir>/point/."""
    options = options or PointOptions()
    options.check()
    if options.window_s is None:
        options = replace(options, window_s=DEFAULT_WINDOW_S)
    exclude = list(exclude)
    data = read_period(store, start_ns, end_ns, exclude, _trace_config(model_dir))
    return _fit_windows(store, model_dir, data, (start_ns, end_ns), exclude, options)


def train(
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
    """Fit the trace model and (with point options) the window model on one period (the
    window model on the span of the traces the trace model learnt from); write them.

    With window_s the period is the last window_s seconds before end_ns (default: the last
    span): retraining on a sliding window of recent normal data. With engine "dask" the
    training sequences are prepared per partition on the cluster; the fit runs here.
    """
    exclude = list(exclude)
    if point is not None and point.detector:
        point.check()
    period = training_period(store, start_ns, end_ns, window_s)
    if not metrics_only.has_spans(store, *period):  # metrics alone: no trace model
        chosen = metrics_only.metric_options(store, model_dir, period, point)
        doc = train_points(store, model_dir, *period, exclude, chosen)
        return metrics_only.training_doc(store, model_dir, period, doc)
    if point is not None and point.window_s is None:
        point = replace(point, window_s=DEFAULT_WINDOW_S)
    opts = options or TrainOptions()
    doc, data = _train_traces(store, model_dir, period, exclude, window_s, opts, engine, scheduler)  # fmt: skip
    if point is None or not point.detector:
        return doc
    lo, hi = doc["from_ns"], doc["to_ns"]
    span = (lo, None if hi is None else hi + 1)
    assert isinstance(lo, int | None) and isinstance(hi, int | None)
    if data is None:  # the dask engine: read here
        data = read_period(store, *span, exclude, opts.feature_config(logs=False))
    else:
        data = data.between(*span)
    doc["point"] = _fit_windows(store, model_dir, data, span, exclude, point)  # type: ignore[arg-type]
    return doc
