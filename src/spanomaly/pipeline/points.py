"""Point-anomaly and root-cause wiring: instance windows, rca and evaluate."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from spanomaly.errors import InputError
from spanomaly.ingest.base import Chunk
from spanomaly.store.base import Store

if TYPE_CHECKING:
    from spanomaly.detect.confirm import Confirmer

from spanomaly.pipeline.events import (
    TEMPLATES_FILE,
    load_templates,
    log_bodies,
    period_conditions,
    span_range,
    trace_events,
)

log = logging.getLogger(__name__)

POINT_DIR = "point"
POINT_FORMAT = "spanomaly-point-model"
POINT_SOURCES = ("traces", "metrics")
_POINT_CHUNK_S = 3600.0
_TOP_FEATURES = 3


@dataclass
class PointOptions:
    """What `train` fits for instance windows: the detector, the window, the normaliser."""

    detector: str | None = "ecod"
    params: dict[str, object] = field(default_factory=dict)
    window_s: float = 60.0
    recent: int = 10
    target_fpr: float = 1e-3
    random_state: int = 0
    sources: tuple[str, ...] = POINT_SOURCES  # windows of span RED features, of metrics
    # the shares of warning, error and unseen log lines as window features (with a trace
    # model trained on logs): True, False, or None: where log lines cover the training
    # period (in LOG_COVERAGE of the windows where an instance that logs served requests); a
    # feature missing from most training windows would judge every window that has it
    log_features: bool | None = None


LOG_COVERAGE = 0.9


def _metric_points(store: Store, start_ns: int | None, end_ns: int | None) -> object:
    where, params = period_conditions("time_ns", start_ns, end_ns)
    where.append("instance IS NOT NULL")
    return store.sql(
        "SELECT time_ns, service, instance, name, value, kind FROM metrics WHERE "
        + " AND ".join(where),
        params,
    )


_FAR_PAST, _FAR_FUTURE = -(2**62), 2**62


def _overlapping(starts: np.ndarray, periods: Iterable[tuple[int, int]], w_ns: int) -> np.ndarray:
    """Whether each window [start, start + w_ns) overlaps any [from, to) of periods."""
    out = np.zeros(len(starts), dtype=bool)
    for lo, hi in periods:
        out |= (starts + w_ns > lo) & (starts < hi)
    return out


def _drop_windows(windows: object, exclude: list[tuple[int, int]], window_s: float) -> object:
    if not exclude or windows.n == 0:  # type: ignore[attr-defined]
        return windows
    t = windows.column("time_ns")  # type: ignore[attr-defined]
    return windows.take(~_overlapping(t, exclude, int(window_s * 1e9)))  # type: ignore[attr-defined]


def _log_coverage(red: object, counts: object) -> float:
    """Share of the windows in which an instance that writes lines served requests that
    have its lines too (instances that never log do not count)."""
    import pyarrow.compute as pc

    writers = pc.unique(counts.column("instance"))  # type: ignore[attr-defined]
    served = red.filter(  # type: ignore[attr-defined]
        pc.and_(
            pc.greater(red.column("t.requests_s"), 0),  # type: ignore[attr-defined]
            pc.is_in(red.column("instance"), value_set=writers),  # type: ignore[attr-defined]
        )
    )
    if served.num_rows == 0:
        return 0.0
    keys = ["time_ns", "service", "instance"]
    logged = served.select(keys).join(counts.select(keys), keys, join_type="inner")  # type: ignore[attr-defined]
    return logged.num_rows / served.num_rows


def _instance_windows(
    store: Store,
    start_ns: int | None,
    end_ns: int | None,
    profile: object,
    window_s: float,
    exclude: list[tuple[int, int]] | None = None,
    templates: object | None = None,
) -> dict[str, object]:
    """Raw instance windows of the period per source: 'traces' (RED, and with templates the
    log counts of the traces' lines) and 'metrics'."""
    from spanomaly.features import windows as win

    events = trace_events(store, start_ns, end_ns, exclude or [])
    out: dict[str, object] = {}
    red = win.span_windows(events, profile, window_s)  # type: ignore[arg-type]
    if templates is not None:
        from spanomaly.features import logs as log_features

        lines = log_bodies(store, start_ns, end_ns, exclude or [])
        counts = log_features.window_counts(
            log_features.log_events(lines, templates),  # type: ignore[arg-type]
            window_s,
        )
        red = log_features.with_window_counts(red, counts)
        coverage = _log_coverage(red, counts)
    out["traces"] = win.combine(red)
    metric_table = win.metric_windows(_metric_points(store, start_ns, end_ns), window_s)  # type: ignore[arg-type]
    out["metrics"] = win.combine(metric_table)
    out = {k: _drop_windows(v, exclude or [], window_s) for k, v in out.items()}
    out["host_metrics"] = win.host_metrics(metric_table)
    if templates is not None:
        out["log_coverage"] = coverage
    return out


def train_points(
    store: Store,
    model_dir: str | Path,
    start_ns: int | None = None,
    end_ns: int | None = None,
    exclude: Iterable[tuple[int, int]] = (),
    options: PointOptions | None = None,
) -> dict[str, object]:
    """Fit the self-time profile, the normalisers and a point detector per source on the
    normal period; write them to <model_dir>/point/."""
    import json

    from spanomaly.detect.base import detectors
    from spanomaly.features import windows as win

    POINT_REGISTRY = detectors("point")

    options = options or PointOptions()
    exclude = list(exclude)
    if options.detector not in POINT_REGISTRY or options.detector in ("svm", "fisher-dbscan"):
        unsupervised = sorted(set(POINT_REGISTRY) - {"svm", "fisher-dbscan"})
        raise InputError(
            f"--point: {options.detector!r} is not one of {', '.join(unsupervised)}, none"
        )
    if options.window_s <= 0:
        raise InputError("--point-window: must be positive")
    bad = [x for x in options.sources if x not in POINT_SOURCES]
    if bad or not options.sources:
        raise InputError(f"--point-sources: {', '.join(bad) or 'none given'}; "
                         f"sources: {', '.join(POINT_SOURCES)}")  # fmt: skip
    events = trace_events(store, start_ns, end_ns, exclude)
    profile = win.SelfTimeProfile().fit(events)  # type: ignore[arg-type]
    # the trace model's log templates, when it was trained with logs: log counts too
    templates = (
        load_templates(model_dir)
        if options.log_features is not False and (Path(model_dir) / TEMPLATES_FILE).exists()
        else None
    )
    # whole windows only: one cut by the period's edge holds a fraction of its requests and
    # reads as a collapse of traffic (a demo's last window of 0.4 s set its threshold three
    # times too high)
    edges = [(_FAR_PAST, start_ns)] if start_ns is not None else []
    edges += [(end_ns, _FAR_FUTURE)] if end_ns is not None else []
    windows = _instance_windows(
        store, start_ns, end_ns, profile, options.window_s, exclude + edges, templates
    )
    coverage = windows.pop("log_coverage", None)
    if templates is not None and options.log_features is None and coverage < LOG_COVERAGE:  # type: ignore[operator]
        from spanomaly.features.logs import LOG_FEATURES

        log.info("log lines in %.0f %% of the training windows: no log window features",
                 100 * coverage)  # type: ignore[operator]  # fmt: skip
        templates = None
        w = windows["traces"]
        windows["traces"] = w.select([n for n in w.names if n not in LOG_FEATURES])  # type: ignore[attr-defined]
    out = Path(model_dir) / POINT_DIR
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, object] = {"detector": options.detector, "window_s": options.window_s}
    config: dict[str, object] = {
        "format": POINT_FORMAT,
        "format_version": 1,
        "detector": options.detector,
        "params": options.params,
        "window_s": options.window_s,
        "target_fpr": options.target_fpr,
        "sources": {},
        "period_from_ns": start_ns,
        "period_to_ns": end_ns,
        "logs": templates is not None,
    }
    doc["log_windows"] = templates is not None
    if coverage is not None:
        doc["log_coverage"] = round(float(coverage), 3)  # type: ignore[arg-type]
    (out / "profile.json").write_text(json.dumps(profile.to_json()))
    host = list(windows["host_metrics"])  # type: ignore[arg-type]
    config["host_metrics"] = host
    doc["host_metrics"] = host
    for source in options.sources:
        w = windows[source]
        w = w.select([n for n in w.names if n not in host])  # type: ignore[attr-defined]
        if w.n < 10 or not w.names:  # type: ignore[attr-defined]
            doc[source] = None
            continue
        # ECOD on the normaliser's z-scores: their tail past the training range is the
        # normal's (detect.point.ECOD normal_tail)
        params = {"normal_tail": True} if options.detector == "ecod" else {}
        det = POINT_REGISTRY[options.detector](  # type: ignore[call-arg]
            target_fpr=options.target_fpr,
            random_state=options.random_state,
            **{**params, **options.params},
        )
        # the threshold is set on the latest windows, which neither the normaliser nor the
        # detector saw: new normal data is judged as the held-out windows were
        held = w.latest(det.validation_fraction)  # type: ignore[attr-defined]
        if held.all() or not held.any():
            held = None
        fit_rows = w if held is None else w.take(~held)  # type: ignore[attr-defined]
        norm = win.Normalizer(recent=options.recent).fit(fit_rows)  # type: ignore[arg-type]
        X = norm.transform(w)  # type: ignore[arg-type]
        det.fit(X, groups=w.groups(), validation=held)  # type: ignore[attr-defined]
        det.save(out, prefix=f"{source}-")
        (out / f"{source}-normalizer.json").write_text(json.dumps(norm.to_json()))
        config["sources"][source] = {"features": norm.feature_names()}  # type: ignore[index]
        doc[source] = {
            "windows": w.n,  # type: ignore[attr-defined]
            "features": len(norm.feature_names()),
            "threshold": det.threshold_,
            "validation_fpr": det.validation_fpr_,
        }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return doc


@dataclass
class _PointModel:
    config: dict[str, object]
    profile: object
    sources: dict[str, tuple[object, object]]  # source -> (normalizer, detector)


def load_points(model_dir: str | Path) -> _PointModel | None:
    """The point model under model_dir, or None when there is none."""
    import json

    from spanomaly.detect.point import PointDetector
    from spanomaly.errors import ModelError
    from spanomaly.features import windows as win

    path = Path(model_dir) / POINT_DIR
    if not (path / "config.json").exists():
        return None
    try:
        config = json.loads((path / "config.json").read_text())
        profile = win.SelfTimeProfile.from_json(json.loads((path / "profile.json").read_text()))
        sources = {}
        for source in config["sources"]:
            norm = win.Normalizer.from_json(
                json.loads((path / f"{source}-normalizer.json").read_text())
            )
            sources[source] = (norm, PointDetector.load(path, prefix=f"{source}-"))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot read the point model: {exc}") from exc
    return _PointModel(config, profile, sources)


def _point_findings(
    source: str, name: str, w: object, norm: object, det: object, keep: object, window_ns: int
) -> tuple[object, int, int]:
    """Score windows; FINDINGS rows of the anomalous ones, timed at the window's end (when
    its evidence is complete); (table, scored, anomalous)."""
    import hashlib
    import json

    import numpy as np

    from spanomaly.schema import FINDINGS

    X = norm.transform(w)  # type: ignore[attr-defined]
    groups = w.groups()  # type: ignore[attr-defined]
    scores = det.score(X, groups)  # type: ignore[attr-defined]
    idx = np.flatnonzero(np.asarray(keep))
    flagged = idx[scores[idx] > det.threshold_]  # type: ignore[attr-defined]
    if not len(flagged):
        return FINDINGS.empty_table(), len(idx), 0
    feats = norm.feature_names()  # type: ignore[attr-defined]
    if hasattr(det, "tail_surprise"):
        # RCA weighs what changed: the largest increase against the instance's recent past
        changed = [j for j, f in enumerate(feats) if f.startswith("d.")] or list(range(len(feats)))
        # the flagged instances' windows only (their changes need their own recent past)
        inst = w.column("instance")  # type: ignore[attr-defined]
        theirs = np.isin(inst, inst[flagged])
        at = np.cumsum(theirs)[flagged] - 1  # the flagged windows among theirs
        weighed = norm.transform(w.take(theirs), predictive=True)[at]  # type: ignore[attr-defined]
        surprise = det.tail_surprise(weighed, changed)  # type: ignore[attr-defined]
    else:
        surprise = det.surprise_of(scores[flagged])  # type: ignore[attr-defined]
    contrib = det.explain(X, groups)[flagged]  # type: ignore[attr-defined]
    z = X[flagged]
    t = w.column("time_ns")  # type: ignore[attr-defined]
    svc = w.column("service")  # type: ignore[attr-defined]
    inst = w.column("instance")  # type: ignore[attr-defined]
    raw_names = list(w.names)  # type: ignore[attr-defined]
    rows = []
    for n, (r, s) in enumerate(zip(flagged.tolist(), surprise.tolist(), strict=True)):
        order = np.argsort(-contrib[n])[:_TOP_FEATURES]
        top = []
        for j in order.tolist():
            if contrib[n, j] <= 0:
                continue
            fname = feats[j]
            base = fname.split(".", 1)[1]
            col = raw_names.index(base) if base in raw_names else -1
            value = float(w.X[r, col]) if col >= 0 else None  # type: ignore[attr-defined]
            top.append(
                {
                    "feature": fname,
                    "value": None if value is None or not np.isfinite(value) else round(value, 4),
                    "z": round(float(z[n, j]), 3),
                    "contribution": round(float(contrib[n, j]), 3),
                }
            )
        what = (
            ", ".join(
                f"{f['feature'][2:]} {f['value']:.4g} ({'change ' if f['feature'][0] == 'd' else ''}"
                f"z {f['z']:+.1f})"
                for f in top
                if f["value"] is not None
            )
            or "unusual combination of features"
        )
        op = w.operation[r] if len(w.operation) == w.n else None  # type: ignore[attr-defined]
        reason = f"{inst[r]} ({source}): {what}"
        if op:
            reason += f"; most time lost in {op}"
        key = f"instance:{name}:{source}:{inst[r]}:{int(t[r])}"
        rows.append(
            {
                "finding_id": hashlib.sha1(key.encode()).hexdigest()[:16],
                "time_ns": int(t[r]) + window_ns,
                "detector": f"point:{name}:{source}",
                "entity": "instance",
                "trace_id": None,
                "span_id": None,
                "service": svc[r],
                "instance": inst[r],
                "operation": op,
                "score": float(scores[r]),
                "threshold": float(det.threshold_),  # type: ignore[attr-defined]
                "reason": reason,
                "details": json.dumps(
                    {"source": source, "surprise": round(float(s), 4), "features": top}
                ),
                "feedback": None,
            }
        )
    return pa.Table.from_pylist(rows, schema=FINDINGS), len(idx), len(flagged)


def detect_points(
    store: Store,
    model_dir: str | Path,
    start_ns: int | None = None,
    end_ns: int | None = None,
    model: _PointModel | None = None,
    confirmer: Confirmer | None = None,
    skip: Iterable[tuple[int, int]] = (),
) -> dict[str, int] | None:
    """Score the instance windows of the period with the point model (model, else the one
    in model_dir), store a finding per anomalous window (time: the window's end); None
    when there is no point model. With a confirmer, findings pass through it first;
    windows that overlap a period of skip are not scored."""
    model = model or load_points(model_dir)
    if model is None:
        return None
    window_s = float(model.config["window_s"])  # type: ignore[arg-type]
    w_ns = int(window_s * 1e9)
    row = store.sql(
        "SELECT least((SELECT min(start_ns) FROM spans), (SELECT min(time_ns) FROM metrics "
        "WHERE instance IS NOT NULL)) AS lo, greatest((SELECT max(start_ns) FROM spans), "
        "(SELECT max(time_ns) FROM metrics WHERE instance IS NOT NULL)) AS hi"
    ).to_pylist()[0]
    if row["lo"] is None:
        return {"instances_scored": 0, "anomalous_windows": 0}
    start = max(start_ns, row["lo"]) if start_ns is not None else row["lo"]
    end = min(end_ns, row["hi"] + 1) if end_ns is not None else row["hi"] + 1
    start = (start // w_ns) * w_ns
    recent = max((int(norm.recent) for norm, _ in model.sources.values()), default=0)  # type: ignore[attr-defined]
    chunk = max(int(_POINT_CHUNK_S * 1e9) // w_ns, 1) * w_ns
    scored = anomalous = 0
    templates = load_templates(model_dir) if model.config.get("logs") else None
    t = start
    while t < end:
        hi = min(t + chunk, end)
        lookback = t - recent * w_ns
        windows = _instance_windows(
            store, lookback, hi, model.profile, window_s, templates=templates
        )
        for source, (norm, det) in model.sources.items():
            w = windows[source]
            if w.n == 0:  # type: ignore[attr-defined]
                continue
            starts = w.column("time_ns")  # type: ignore[attr-defined]
            keep = (starts >= t) & ~_overlapping(starts, skip, w_ns)
            found, n_scored, n_flagged = _point_findings(
                source,
                model.config["detector"],
                w,
                norm,
                det,
                keep,  # type: ignore[arg-type]
                w_ns,
            )
            scored += n_scored
            anomalous += n_flagged
            if confirmer is not None:
                found = confirmer.push(found)  # type: ignore[arg-type]
            if found.num_rows:  # type: ignore[attr-defined]
                store.write(Chunk("findings", found))  # type: ignore[arg-type]
        t = hi
    return {"instances_scored": scored, "anomalous_windows": anomalous}


RCA_METHODS = ("ranked", "baseline")


@dataclass
class _WindowContext:
    """What the ranking of one window needs besides findings: calls, traffic, events."""

    events: object
    graph: object
    traffic: object


def _window_context(store: Store, start_ns: int, end_ns: int) -> _WindowContext:
    import pyarrow.compute as pc

    from spanomaly.features.graph import dependency_graph

    events = trace_events(store, start_ns, end_ns)
    graph = dependency_graph(events)  # type: ignore[arg-type]
    if events.num_rows:  # type: ignore[attr-defined]
        served = events.filter(  # type: ignore[attr-defined]
            pc.not_equal(events.column("parent_service"), events.column("service"))  # type: ignore[attr-defined]
        )
        traffic = served.group_by(["service", "instance"]).aggregate([("span_id", "count")])
        traffic = traffic.rename_columns(["service", "instance", "requests"])
    else:
        traffic = pa.table(
            {"service": pa.array([], pa.string()), "instance": pa.array([], pa.string()),
             "requests": pa.array([], pa.int64())}
        )  # fmt: skip
    return _WindowContext(events, graph, traffic)


def _findings_between(store: Store, start_ns: int | None, end_ns: int | None) -> object:
    where, params = period_conditions("time_ns", start_ns, end_ns, end_inclusive=True)
    where.append("feedback IS DISTINCT FROM 'normal'")
    return store.sql(f"SELECT * FROM findings WHERE {' AND '.join(where)} ORDER BY time_ns", params)


def _rank_window(
    store: Store,
    start_ns: int,
    end_ns: int,
    evidence: str,
    method: str,
    model_dir: str | Path | None,
    context: _WindowContext | None = None,
    findings: object | None = None,
) -> object:
    from spanomaly.errors import ModelError
    from spanomaly.rca import ranking

    if method not in RCA_METHODS:
        raise InputError(f"--method: {method!r} is not one of {', '.join(RCA_METHODS)}")
    if evidence not in ranking.EVIDENCE:
        raise InputError(f"--evidence: {evidence!r} is not one of {', '.join(ranking.EVIDENCE)}")
    context = context or _window_context(store, start_ns, end_ns)
    if method == "baseline":
        model = load_points(model_dir) if model_dir is not None else None
        if model is None:
            raise ModelError(
                f"{model_dir}: the baseline needs the self-time profile of a trained model "
                "(spanomaly train)"
            )
        return ranking.baseline(context.events, model.profile.table())  # type: ignore[arg-type, attr-defined]
    if findings is None:
        findings = _between(
            _findings_between(store, start_ns, end_ns), start_ns, end_ns,
            _point_window_ns(model_dir),
        )  # fmt: skip
    return ranking.rank(findings, context.graph, context.traffic, evidence)  # type: ignore[arg-type]


def rca(
    store: Store,
    start_ns: int | None = None,
    end_ns: int | None = None,
    evidence: str = "both",
    method: str = "ranked",
    model_dir: str | Path | None = None,
    top: int | None = 10,
) -> list[dict[str, object]]:
    """Ranked suspects of the period: rank, service, instance, operation, score, evidence."""
    import json

    if start_ns is None or end_ns is None:
        lo, hi = span_range(store)
        start_ns = start_ns if start_ns is not None else (lo or 0)
        end_ns = end_ns if end_ns is not None else ((hi or 0) + 1)
    if start_ns >= end_ns:
        raise InputError("--from must be before --to")
    table = _rank_window(store, start_ns, end_ns, evidence, method, model_dir)
    rows = table.to_pylist()  # type: ignore[attr-defined]
    for r in rows:
        r["evidence"] = json.loads(r["evidence"])
    return rows[:top] if top else rows


def evaluate(
    store: Store,
    start_ns: int | None = None,
    end_ns: int | None = None,
    evidence: str = "both",
    method: str = "ranked",
    model_dir: str | Path | None = None,
) -> dict[str, object]:
    """Detection and root-cause figures against the fault labels (DESIGN.md's document).

    The only function that reads the fault tables. Findings count under `evidence`
    (trace findings and span-derived instance windows for 'traces', metric-derived ones for
    'metrics', all for 'both'); RCA for a fault ranks the findings of [start, end + 60 s].
    """
    import numpy as np
    import pyarrow.compute as pc

    from spanomaly.evaluate import metrics as m
    from spanomaly.rca import ranking

    if evidence not in ranking.EVIDENCE:
        raise InputError(f"--evidence: {evidence!r} is not one of {', '.join(ranking.EVIDENCE)}")
    if method not in RCA_METHODS:
        raise InputError(f"--method: {method!r} is not one of {', '.join(RCA_METHODS)}")
    lo, hi = span_range(store)
    start = start_ns if start_ns is not None else (lo or 0)
    end = end_ns if end_ns is not None else ((hi or 0) + 1)
    if start >= end:
        raise InputError("--from must be before --to")
    faults = store.table("faults")
    faults = faults.filter(
        pc.and_(
            pc.greater_equal(faults.column("start_ns"), start),
            pc.less(faults.column("start_ns"), end),
        )
    ).sort_by("start_ns")
    findings = _findings_between(store, start, end + int(m.SLACK_S * 1e9))
    if findings.num_rows:  # type: ignore[attr-defined]
        src = [
            ranking.source_of(d or "", e or "")
            for d, e in zip(
                findings.column("detector").to_pylist(),  # type: ignore[attr-defined]
                findings.column("entity").to_pylist(),  # type: ignore[attr-defined]
                strict=True,
            )
        ]
        mask = pa.array([ranking.wanted(s, evidence) for s in src])
        findings = findings.filter(mask)  # type: ignore[attr-defined]
    traces = store.sql(
        "SELECT trace_id, min(start_ns) AS start_ns FROM spans GROUP BY trace_id "
        "HAVING min(start_ns) >= ? AND min(start_ns) < ?",
        [start, end],
    )
    summary = m.summarize(findings, faults, traces, start, end)  # type: ignore[arg-type]
    fault_traces = store.table("fault_traces")
    trace_doc = None
    if fault_traces.num_rows:
        flagged = (
            pc.unique(pc.drop_null(findings.column("trace_id")))  # type: ignore[attr-defined]
            if findings.num_rows  # type: ignore[attr-defined]
            else pa.array([], pa.string())
        )
        trace_doc = m.trace_prf(
            traces.column("trace_id"), flagged, pc.unique(fault_traces.column("trace_id"))
        )
    detected = m.detected_faults(findings, faults)  # type: ignore[arg-type]
    ttd = m.time_to_detect(findings, faults)  # type: ignore[arg-type]
    svc_ranks: list[int | None] = []
    inst_ranks: list[int | None] = []
    per_fault: list[dict[str, object]] = []
    window_ns = _point_window_ns(model_dir)
    rows = faults.to_pylist()
    _, rca_ends = m.fault_windows(faults)  # each up to the next fault's start at most
    for k, f in enumerate(rows):  # one ranking per fault
        hi = int(rca_ends[k])
        ranked = _rank_window(
            store,
            f["start_ns"],
            hi,
            evidence,
            method,
            model_dir,
            findings=_between(findings, f["start_ns"], hi, window_ns),
        )
        s_rank, i_rank = ranking.positions(ranked, f["service"], f["instance"])  # type: ignore[arg-type]
        svc_ranks.append(s_rank)
        inst_ranks.append(i_rank if f["instance"] is not None else s_rank)
        per_fault.append(
            {
                "fault_id": f["fault_id"],
                "kind": f["kind"],
                "service": f["service"],
                "instance": f["instance"],
                "start_ns": f["start_ns"],
                "end_ns": f["end_ns"],
                "rca_end_ns": hi,
                "detected": bool(detected[k]),
                "time_to_detect_s": None if not np.isfinite(ttd[k]) else float(ttd[k]),
                "rank": {"service": s_rank, "instance": inst_ranks[-1]},
                "suspects": [
                    {key: r[key] for key in ("rank", "service", "instance", "operation", "score")}
                    for r in ranked.slice(0, 5).to_pylist()  # type: ignore[attr-defined]
                ],
            }
        )
    kinds = faults.column("kind").to_pylist()
    per_type: dict[str, object] = {}
    for kind in sorted(set(kinds)):
        sel = np.array([k == kind for k in kinds])
        per_type[kind] = {
            "faults": int(sel.sum()),
            "detected": int(detected[sel].sum()),
            "fault_recall": float(detected[sel].mean()),
            "time_to_detect_s": m.mean_or_none(ttd[sel]),
            "trace": _kind_trace_prf(faults.filter(pa.array(sel)), fault_traces, traces, findings),
            "rca": {
                "service": m.accuracy_at_k([r for r, s in zip(svc_ranks, sel, strict=True) if s]),
                "instance": m.accuracy_at_k([r for r, s in zip(inst_ranks, sel, strict=True) if s]),
            },
        }
    return {
        "faults": summary.faults,
        "detected": summary.detected,
        "fault_recall": summary.fault_recall,
        "false_alarms_per_hour": summary.false_alarms_per_hour,
        "trace_fpr": summary.trace_fpr,
        "trace": trace_doc,
        "rca": {
            "service": m.accuracy_at_k(svc_ranks),
            "instance": m.accuracy_at_k(inst_ranks),
        },
        "per_type": per_type,
        "per_fault": per_fault,
    }


def _kind_trace_prf(
    faults: object, fault_traces: object, traces: object, findings: object
) -> dict[str, float] | None:
    """Trace P/R/F1 over the traces that start in these faults' windows (+ slack); None
    when the faults have no per-request labels."""
    import pyarrow.compute as pc

    from spanomaly.evaluate import metrics as m

    labelled = fault_traces.filter(  # type: ignore[attr-defined]
        pc.is_in(fault_traces.column("fault_id"), value_set=faults.column("fault_id"))  # type: ignore[attr-defined]
    ).column("trace_id")
    if len(labelled) == 0:
        return None
    starts, ends = m.fault_windows(faults)  # type: ignore[arg-type]
    t = traces.column("start_ns").to_numpy(zero_copy_only=False)  # type: ignore[attr-defined]
    scored = traces.filter(pa.array(m.in_windows(t, starts, ends))).column("trace_id")  # type: ignore[attr-defined]
    flagged = (
        pc.unique(pc.drop_null(findings.column("trace_id")))  # type: ignore[attr-defined]
        if findings.num_rows  # type: ignore[attr-defined]
        else pa.array([], pa.string())
    )
    return m.trace_prf(scored, flagged, pc.unique(labelled))


def _between(table: object, lo: int, hi: int, window_ns: int = 0) -> object:
    """Findings of [lo, hi]; an instance window's finding (timed at the window's end) only
    where most of its window lies after lo: what mostly happened before a period is not
    evidence of it."""
    import pyarrow.compute as pc

    if table.num_rows == 0:  # type: ignore[attr-defined]
        return table
    t = table.column("time_ns")  # type: ignore[attr-defined]
    keep = pc.and_(pc.greater_equal(t, lo), pc.less_equal(t, hi))
    if window_ns:
        windowed = pc.equal(table.column("entity"), "instance")  # type: ignore[attr-defined]
        early = pc.less(pc.subtract(t, window_ns // 2), lo)
        keep = pc.and_(keep, pc.invert(pc.fill_null(pc.and_(windowed, early), False)))
    return table.filter(keep)  # type: ignore[attr-defined]


def _point_window_ns(model_dir: str | Path | None) -> int:
    """The point model's window length in ns (0 without a point model)."""
    import json

    if model_dir is None:
        return 0
    path = Path(model_dir) / POINT_DIR / "config.json"
    if not path.exists():
        return 0
    return int(float(json.loads(path.read_text())["window_s"]) * 1e9)
