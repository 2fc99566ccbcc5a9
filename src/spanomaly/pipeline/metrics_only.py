"""Metrics without traces: train, detect and rank from metric points alone.

Where the training period holds no spans, `train` fits no trace model, only the window
model of the metrics, at a window that follows the data's resolution (the median step
between a series' points) unless `--point-window` says otherwise, and refuses, in one line,
a window that leaves a service too few normal windows (the normaliser would judge it on the
pooled scale of all services). `detect` then scores the metric windows alone; `rca` takes
its period from the metrics, its call graph from the imported call edges (`calls`) where
no spans show one, and its metric evidence over the whole period (`rca.metric_change`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.errors import InputError, ModelError
from spanomaly.pipeline.reads import period_conditions
from spanomaly.store.base import Store

if TYPE_CHECKING:
    from spanomaly.detect.window_model import WindowModel
    from spanomaly.pipeline.training import PointOptions

log = logging.getLogger(__name__)

MIN_NORMAL_WINDOWS = 10  # per service (features.windows.Normalizer pools below that)
TRACE_MODEL_FILES = ("config.json", "vocabulary.json", "sequence.safetensors",
                     "duration.safetensors", "templates.json")  # fmt: skip


def has_spans(store: Store, start_ns: int | None = None, end_ns: int | None = None) -> bool:
    """Whether any span starts in the period."""
    where, params = period_conditions("start_ns", start_ns, end_ns)
    sql = f"SELECT count(*) AS n FROM (SELECT 1 FROM spans WHERE {' AND '.join(where) or 'TRUE'} LIMIT 1)"  # fmt: skip
    return bool(store.sql(sql, params).to_pylist()[0]["n"])


def metric_range(store: Store) -> tuple[int | None, int | None]:
    """First and last time of the instances' metric points."""
    row = store.sql(
        "SELECT min(time_ns) AS lo, max(time_ns) AS hi FROM metrics WHERE instance IS NOT NULL"
    ).to_pylist()[0]
    return row["lo"], row["hi"]


def _where(start_ns: int | None, end_ns: int | None) -> tuple[str, list[object]]:
    where, params = period_conditions("time_ns", start_ns, end_ns)
    return " AND ".join([*where, "instance IS NOT NULL"]), params


def resolution_s(store: Store, start_ns: int | None, end_ns: int | None) -> float | None:
    """The median step between consecutive points of a series in the period, in seconds."""
    where, params = _where(start_ns, end_ns)
    row = store.sql(
        "SELECT median(d) AS step FROM (SELECT time_ns - lag(time_ns) OVER (PARTITION BY "
        f"instance, name, attributes ORDER BY time_ns) AS d FROM metrics WHERE {where}) "
        "WHERE d > 0",
        params,
    ).to_pylist()[0]
    return None if row["step"] is None else float(row["step"]) / 1e9


def _fewest_windows(
    store: Store, start_ns: int | None, end_ns: int | None, window_s: float
) -> tuple[str, int, float]:
    """(service, windows, seconds of data) of the service with the fewest metric windows."""
    where, params = _where(start_ns, end_ns)
    w = max(int(window_s * 1e9), 1)
    rows = store.sql(
        f"SELECT coalesce(service, instance) AS service, count(DISTINCT time_ns // {w}) AS n, "
        f"(max(time_ns) - min(time_ns)) / 1e9 AS span FROM metrics WHERE {where} "
        "GROUP BY 1 ORDER BY 2, 1 LIMIT 1",
        params,
    ).to_pylist()
    return (rows[0]["service"], int(rows[0]["n"]), float(rows[0]["span"])) if rows else ("", 0, 0.0)


def metric_options(
    store: Store,
    model_dir: str | Path,
    period: tuple[int | None, int | None],
    point: PointOptions | None,
) -> PointOptions:
    """The window options to train on a period without spans: its metrics, at their
    resolution unless a window is given (a one-line error where a service would have too few
    windows); a stale trace model in model_dir is removed."""
    if point is None or not point.detector:
        raise InputError("no traces in the training period and --point none: nothing to train")
    start_ns, end_ns = period
    if metric_range(store)[0] is None:
        raise ModelError("no traces or metric points to train on in the chosen period")
    window = point.window_s or resolution_s(store, start_ns, end_ns) or 60.0
    service, n, span = _fewest_windows(store, start_ns, end_ns, window)
    if n < MIN_NORMAL_WINDOWS:
        most = span / MIN_NORMAL_WINDOWS
        hint = f"--point-window {most:.3g} or less" if most > 0 else "a longer period"
        raise InputError(
            f"too few normal windows: service {service!r} has {n} metric windows of "
            f"{window:g} s in the training period, {MIN_NORMAL_WINDOWS} needed; give "
            f"{hint}, or a longer --from/--to period"
        )
    for name in TRACE_MODEL_FILES:  # a trace model of an earlier training would be stale
        (Path(model_dir) / name).unlink(missing_ok=True)
    return replace(point, window_s=window, sources=("metrics",))


def training_doc(
    store: Store, model_dir: str | Path, period: tuple[int | None, int | None], point: object
) -> dict[str, object]:
    """The training document of a model of metrics alone (no trace detectors)."""
    from spanomaly.detect.trace_findings import iso

    lo, hi = metric_range(store)
    first = period[0] if period[0] is not None else lo
    last = period[1] if period[1] is not None else hi
    return {
        "model": str(model_dir), "from": iso(first), "to": iso(last), "from_ns": first,
        "to_ns": last, "traces": 0, "events": 0, "keys": 0, "logs": None, "detectors": {},
        "point": point,
    }  # fmt: skip


def calls_graph(store: Store) -> pa.Table:
    """The imported call edges as a dependency graph (`features.graph.GRAPH_SCHEMA`)."""
    from spanomaly.features.graph import GRAPH_SCHEMA

    table = store.sql(
        "SELECT caller, callee, NULL::VARCHAR AS callee_instance, coalesce(calls, 1) AS calls "
        "FROM calls ORDER BY 1, 2"
    )
    return table.select([f.name for f in GRAPH_SCHEMA]).cast(GRAPH_SCHEMA)


def _metric_rows(findings: pa.Table) -> pa.Array:
    from spanomaly.rca.ranking import source_of

    pairs = zip(findings.column("detector").to_pylist(), findings.column("entity").to_pylist(), strict=True)  # fmt: skip
    return pa.array([source_of(d or "", e or "") == "instance_metrics" for d, e in pairs])


def period_findings(
    store: Store, model: WindowModel, start_ns: int, end_ns: int, findings: pa.Table
) -> pa.Table:
    """The findings of a period with each instance's metric-window findings replaced by one
    finding carrying its evidence over the whole period (`rca.metric_change`)."""
    from spanomaly.pipeline.features import PeriodData, instance_windows
    from spanomaly.rca.metric_change import period_evidence

    if "metrics" not in model.sources_ or findings.num_rows == 0:
        return findings
    is_metric = _metric_rows(findings)
    flagged = pc.unique(findings.filter(is_metric).column("instance")).to_pylist()
    if not flagged:
        return findings
    norm, _ = model.sources_["metrics"]
    lookback = start_ns - max(norm.recent, 1) * model.window_ns
    empty = PeriodData(_no_events())
    w = instance_windows(store, empty, (lookback, end_ns), model.profile_, model.window_s)
    w = w.sources["metrics"]
    w = w.take(np.isin(w.column("instance"), flagged))
    evidence = period_evidence(
        norm.zscores(w, predictive=True), w.column("time_ns"), w.column("instance").astype(str),
        w.column("service").astype(str), list(norm.names), start_ns,
    )  # fmt: skip
    first = findings.filter(is_metric).to_pylist()[0]
    rows = [_evidence_row(first, ev, start_ns, end_ns) for ev in evidence]
    others = findings.filter(pc.invert(is_metric))
    return pa.concat_tables([others, pa.Table.from_pylist(rows, schema=findings.schema)])


def _evidence_row(first: dict[str, Any], ev: Any, start_ns: int, end_ns: int) -> dict[str, Any]:
    change = "" if ev.change is None else f", change {ev.change:+.1f}"
    more = f" and {ev.metrics - 1} more metrics" if ev.metrics > 1 else ""
    return {
        **first, "finding_id": f"period:{ev.instance}:{start_ns}:{end_ns}", "time_ns": end_ns,
        "service": ev.service, "instance": ev.instance, "operation": None, "trace_id": None,
        "span_id": None, "score": ev.surprise, "threshold": None,
        "reason": f"{ev.instance} (metrics over the period): {ev.feature} median z "
                  f"{ev.level:+.1f}{change}{more}",
        "details": json.dumps({
            "source": "metrics", "surprise": round(ev.surprise, 4), "feature": ev.feature,
            "level_z": round(ev.level, 3),
            "change_z": None if ev.change is None else round(ev.change, 3),
            "metrics": ev.metrics,
        }),
    }  # fmt: skip


def _no_events() -> pa.Table:
    """The events table of no spans (`features.traces.events` of an empty read)."""
    from spanomaly.features import traces as trace_features
    from spanomaly.schema import SPANS

    return trace_features.events(SPANS.empty_table())
