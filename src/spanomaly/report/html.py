"""The static HTML report: one self-contained ``index.html`` (figures inline as SVG, styles
inline, no script, no network) beside ``results.json``.

`write_report` reads what it plots from the store (spans, metrics, findings, faults of the
period) and takes the evaluation document (`spanomaly evaluate --json`) from the caller.
Every string that comes from the data (service, operation, instance names, reasons) is
HTML-escaped; matplotlib escapes the text it writes into the SVGs.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from spanomaly.report import plots
from spanomaly.store.base import Store

log = logging.getLogger(__name__)

TOP_TRACES = 5
METRICS_PER_FAULT = 4
METRIC_CONTEXT_S = 60.0
_NS = 1_000_000_000

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1rem 1.5rem;color:#212529}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid
#dee2e6;padding-bottom:.2rem}.sub{color:#6c757d;margin-top:0}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}th,td{padding:.25rem .55rem;
border-bottom:1px solid #e9ecef;text-align:left}th{background:#f8f9fa}td.n{text-align:right;
font-variant-numeric:tabular-nums}.ok{color:#2a9d8f;font-weight:600}.miss{color:#d62828;
font-weight:600}.cards{display:flex;gap:.8rem;flex-wrap:wrap}.card{border:1px solid #dee2e6;
border-radius:6px;padding:.5rem .9rem;min-width:8rem}.card b{display:block;font-size:1.3rem}
figure{margin:.6rem 0}figure svg{max-width:100%;height:auto}figcaption{color:#6c757d;
font-size:.8rem}.grid{display:flex;flex-wrap:wrap;gap:1rem}.read{background:#f8f9fa;
padding:.6rem 1rem;border-radius:6px;font-size:.9rem}code{font-size:.85em}
"""


def _iso(ns: int | None) -> str:
    if ns is None:
        return "–"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _figure(svg: str, caption: str, fig_id: str) -> str:
    return f'<figure id="{fig_id}" class="plot">{svg}<figcaption>{escape(caption)}</figcaption></figure>'


def _period(store: Store, start_ns: int | None, end_ns: int | None) -> tuple[int, int]:
    row = store.sql("SELECT min(start_ns) AS lo, max(start_ns + duration_ns) AS hi FROM spans")
    lo, hi = row.column("lo")[0].as_py(), row.column("hi")[0].as_py()
    return (start_ns if start_ns is not None else lo or 0), (
        end_ns if end_ns is not None else hi or 1
    )


def _data(store: Store, t0: int, t1: int) -> dict[str, Any]:
    bucket = max((t1 - t0) // 120, 5 * _NS)
    findings = store.sql(
        "SELECT * FROM findings WHERE time_ns >= ? AND time_ns <= ? "
        "AND feedback IS DISTINCT FROM 'normal' ORDER BY time_ns",
        [t0, t1],
    )
    rate = store.sql(
        "SELECT service, (start_ns // ?) * ? AS bucket_ns, count(*) AS n, "
        "quantile_cont(duration_ns, 0.95) / 1e6 AS p95_ms FROM spans "
        "WHERE start_ns >= ? AND start_ns < ? GROUP BY ALL ORDER BY bucket_ns",
        [bucket, bucket, t0, t1],
    )
    graph = store.sql(
        "SELECT p.service AS caller, c.service AS callee, count(*) AS calls, "
        "avg(CASE WHEN c.status = 'error' THEN 1 ELSE 0 END) AS errors, "
        "quantile_cont(c.duration_ns, 0.5) / 1e6 AS p50_ms "
        "FROM spans c JOIN spans p ON c.trace_id = p.trace_id AND c.parent_id = p.span_id "
        "WHERE c.start_ns >= ? AND c.start_ns < ? AND c.service <> p.service "
        "GROUP BY ALL ORDER BY calls DESC",
        [t0, t1],
    )
    instances = {
        r["service"]: r["n"]
        for r in store.sql(
            "SELECT service, count(DISTINCT instance) AS n FROM spans "
            "WHERE start_ns >= ? AND start_ns < ? GROUP BY ALL",
            [t0, t1],
        ).to_pylist()
    }
    return {"findings": findings, "rate": rate, "graph": graph, "instances": instances}


def _kind_table(per_type: dict[str, Any]) -> str:
    rows = []
    for kind, d in per_type.items():
        tr = d.get("trace") or {}
        svc, inst = d["rca"]["service"], d["rca"]["instance"]
        ok = "ok" if d["detected"] == d["faults"] else "miss"
        rows.append(
            f"<tr><td>{escape(kind)}</td><td class='n'>{d['faults']}</td>"
            f"<td class='n {ok}'>{d['detected']}</td><td class='n'>{_num(d['time_to_detect_s'])}</td>"
            f"<td class='n'>{_pct(tr.get('precision'))}</td><td class='n'>{_pct(tr.get('recall'))}</td>"
            f"<td class='n'>{_pct(tr.get('f1'))}</td><td class='n'>{_pct(svc['top1'])}</td>"
            f"<td class='n'>{_pct(svc['top3'])}</td><td class='n'>{_pct(inst['top1'])}</td></tr>"
        )
    head = (
        "<tr><th>fault kind</th><th>faults</th><th>detected</th><th>time to detect (s)</th>"
        "<th>trace precision</th><th>trace recall</th><th>trace F1</th><th>service AS@1</th>"
        "<th>service AS@3</th><th>instance AS@1</th></tr>"
    )
    return f"<table id='per-kind'>{head}{''.join(rows)}</table>"


def _fault_table(per_fault: list[dict[str, Any]]) -> str:
    rows = []
    for f in per_fault:
        ok = "ok" if f["detected"] else "miss"
        suspects = ", ".join(
            f"{s['rank']}. {escape(str(s['instance'] or s['service']))}" for s in f["suspects"][:3]
        )
        rows.append(
            f"<tr><td>{escape(f['fault_id'])}</td><td>{escape(f['kind'])}</td>"
            f"<td>{escape(str(f['instance'] or f['service']))}</td>"
            f"<td class='{ok}'>{'yes' if f['detected'] else 'no'}</td>"
            f"<td class='n'>{_num(f['time_to_detect_s'])}</td>"
            f"<td class='n'>{f['rank']['service'] or '–'}</td>"
            f"<td class='n'>{f['rank']['instance'] or '–'}</td><td>{suspects}</td></tr>"
        )
    head = (
        "<tr><th>fault</th><th>kind</th><th>injected into</th><th>detected</th>"
        "<th>time to detect (s)</th><th>rank of service</th><th>rank of instance</th>"
        "<th>top suspects (RCA)</th></tr>"
    )
    return f"<table id='per-fault'>{head}{''.join(rows)}</table>"


def _confusions(
    store: Store, evaluation: dict[str, Any], findings: pa.Table, t0: int, t1: int
) -> str:
    parts = []
    per_fault = evaluation.get("per_fault") or []
    if per_fault:
        truth = [f["service"] for f in per_fault]
        top = [f["suspects"][0]["service"] if f["suspects"] else "(none)" for f in per_fault]
        rows, cols = sorted(set(truth)), sorted(set(top) | set(truth))
        m = np.zeros((len(rows), len(cols)), dtype=int)
        for a, b in zip(truth, top, strict=True):
            m[rows.index(a), cols.index(b)] += 1
        parts.append(
            _figure(
                plots.confusion(m, rows, cols, "true faulty service (rows) vs. ranked first"),
                "Root cause: every fault counted once; the diagonal is AS@1.",
                "fig-confusion-rca",
            )
        )
    labelled = (
        store.sql(
            "SELECT count(*) AS n FROM fault_traces ft JOIN faults f USING (fault_id) "
            "WHERE f.start_ns >= ? AND f.start_ns < ?",
            [t0, t1],
        )
        .column("n")[0]
        .as_py()
    )
    if labelled:
        row = store.sql(
            "WITH t AS (SELECT trace_id FROM spans GROUP BY trace_id "
            "HAVING min(start_ns) >= ? AND min(start_ns) < ?), "
            "l AS (SELECT DISTINCT trace_id FROM fault_traces), "
            "f AS (SELECT DISTINCT trace_id FROM findings WHERE trace_id IS NOT NULL "
            "AND feedback IS DISTINCT FROM 'normal') "
            "SELECT count(*) FILTER (WHERE l.trace_id IS NOT NULL AND f.trace_id IS NOT NULL) AS tp,"
            " count(*) FILTER (WHERE l.trace_id IS NOT NULL AND f.trace_id IS NULL) AS fn,"
            " count(*) FILTER (WHERE l.trace_id IS NULL AND f.trace_id IS NOT NULL) AS fp,"
            " count(*) FILTER (WHERE l.trace_id IS NULL AND f.trace_id IS NULL) AS tn "
            "FROM t LEFT JOIN l USING (trace_id) LEFT JOIN f USING (trace_id)",
            [t0, t1],
        ).to_pylist()[0]
        m = np.array([[row["tp"], row["fn"]], [row["fp"], row["tn"]]])
        parts.append(
            _figure(
                plots.confusion(
                    m,
                    ["faulty request", "normal request"],
                    ["flagged", "not flagged"],
                    "traces: per-request labels vs. findings",
                ),
                "Requests the fault injector touched (rows) against the traces spanomaly flagged.",
                "fig-confusion-traces",
            )
        )
    return f"<div class='grid'>{''.join(parts)}</div>"


def _waterfalls(store: Store, findings: pa.Table) -> str:
    if findings.num_rows == 0:
        return "<p>No trace findings in the period.</p>"
    tr = [r for r in findings.to_pylist() if r["entity"] == "trace" and r["trace_id"]]
    tr.sort(key=lambda r: -(r["score"] / r["threshold"] if r["threshold"] else r["score"]))
    seen: set[str] = set()
    out = []
    for r in tr:
        if r["trace_id"] in seen or len(seen) >= TOP_TRACES:
            continue
        seen.add(r["trace_id"])
        spans = store.traces([r["trace_id"]])
        if spans.num_rows == 0:
            continue
        title = f"trace {r['trace_id'][:16]}… at {_iso(r['time_ns'])}"
        explain = plots.details_line(r.get("details"))
        out.append(
            _figure(
                plots.waterfall(spans, r["span_id"], title),
                f"{r['reason'] or ''} {('(' + explain + ')') if explain else ''}",
                f"fig-trace-{len(seen)}",
            )
        )
    return "".join(out) or "<p>No trace findings in the period.</p>"


def _metric_panels(store: Store, faults: list[dict[str, Any]]) -> str:
    out = []
    ctx = int(METRIC_CONTEXT_S * _NS)
    for k, f in enumerate(faults):
        who = f["instance"]
        col = "instance" if who else "service"
        pts = store.sql(
            f"SELECT time_ns, name, value FROM metrics WHERE {col} = ? AND time_ns >= ? "
            "AND time_ns <= ? AND value IS NOT NULL",
            [who or f["service"], f["start_ns"] - ctx, f["end_ns"] + ctx],
        )
        if pts.num_rows == 0:
            continue
        names = _telling_metrics(pts, f["start_ns"], f["end_ns"])
        out.append(
            _figure(
                plots.instance_metrics(pts, f, names, METRIC_CONTEXT_S),
                f"{f['fault_id']}: the {len(names)} metrics of {who or f['service']} that moved "
                "most in the fault window (shaded) against the minute before.",
                f"fig-metrics-{k + 1}",
            )
        )
    return "".join(out) or "<p>No instance metrics around the faults.</p>"


def _telling_metrics(points: pa.Table, start: int, end: int) -> list[str]:
    """The metric names whose mean moved most (in units of their spread before)."""
    t = points.column("time_ns").to_numpy()
    v = points.column("value").to_numpy(zero_copy_only=False).astype(float)
    names = np.asarray(points.column("name").to_pylist())
    scores = []
    for name in np.unique(names):
        sel = names == name
        before, during = v[sel & (t < start)], v[sel & (t >= start) & (t <= end)]
        if len(before) < 2 or len(during) < 1:
            continue
        scores.append(
            (
                abs(during.mean() - before.mean())
                / (before.std() + 1e-9 + 0.01 * abs(before.mean())),
                str(name),
            )
        )
    scores.sort(reverse=True)
    return [n for _, n in scores[:METRICS_PER_FAULT]]


def write_report(
    store: Store,
    out_dir: Path,
    evaluation: dict[str, Any],
    start_ns: int | None = None,
    end_ns: int | None = None,
    title: str = "spanomaly report",
) -> Path:
    """Write index.html and results.json under out_dir; returns the HTML's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t0, t1 = _period(store, start_ns, end_ns)
    data = _data(store, t0, t1)
    findings: pa.Table = data["findings"]
    per_fault = evaluation.get("per_fault") or []
    faults = []
    for f in per_fault:
        ttd = f.get("time_to_detect_s")
        faults.append(
            {**f, "first_detection_ns": None if ttd is None else f["start_ns"] + int(ttd * 1e9)}
        )
    services = sorted(data["instances"]) or sorted(
        set(findings.column("service").to_pylist()) - {None}
    )
    anomaly: dict[str, float] = {}
    for s in findings.column("service").to_pylist():
        if s:
            anomaly[s] = anomaly.get(s, 0) + 1
    rca = evaluation.get("rca") or {}
    trace = evaluation.get("trace") or {}
    if evaluation.get("labels") is False:
        return _write(out_dir, evaluation, title, _unlabelled_sections(store, evaluation, data, t0, t1, services, anomaly))  # fmt: skip
    cards = [
        ("faults", str(evaluation.get("faults", 0))),
        ("detected", str(evaluation.get("detected", 0))),
        ("fault recall", _pct(evaluation.get("fault_recall"))),
        ("false alarms / hour", _num(evaluation.get("false_alarms_per_hour"))),
        ("service AS@1", _pct((rca.get("service") or {}).get("top1"))),
        ("instance AS@1", _pct((rca.get("instance") or {}).get("top1"))),
        ("trace F1", _pct(trace.get("f1")) if trace else "–"),
        ("findings", str(findings.num_rows)),
    ]
    sections = [
        f"<h1>{escape(title)}</h1>",
        f"<p class='sub'>period {_iso(t0)} – {_iso(t1)}; generated {_iso(int(datetime.now(UTC).timestamp() * 1e9))}</p>",
        "<div class='cards'>"
        + "".join(f"<div class='card'><b>{escape(v)}</b>{escape(k)}</div>" for k, v in cards)
        + "</div>",
        _HOW_TO_READ,
        "<h2 id='kinds'>Detection and root cause per fault kind</h2>",
        _kind_table(evaluation.get("per_type") or {}),
        "<h2 id='faults'>Every fault</h2>",
        _fault_table(per_fault),
        "<h2 id='timelines'>Anomaly timelines per service</h2>",
        _figure(
            plots.timelines(services, findings, faults, data["rate"], t0, t1),
            "Each row a service; shaded: fault windows (darker where the fault hit this "
            "service); dashed: the first finding of a fault on this service.",
            "fig-timelines",
        ),
        "<h2 id='confusion'>Confusion matrices</h2>",
        _confusions(store, evaluation, findings, t0, t1),
        "<h2 id='graph'>Service dependency graph</h2>",
        _figure(
            plots.service_graph(data["graph"], anomaly, data["instances"]),
            "Callers left of callees; arrow width: calls in the period; colour: findings "
            "blamed on the service.",
            "fig-graph",
        ),
        "<h2 id='traces'>Most anomalous traces</h2>",
        _waterfalls(store, findings),
        "<h2 id='metrics'>Instance metrics around each fault</h2>",
        _metric_panels(store, faults),
    ]
    return _write(out_dir, evaluation, title, sections)


def _write(out_dir: Path, evaluation: dict[str, Any], title: str, sections: list[str]) -> Path:
    """index.html of the sections and results.json of the evaluation; the HTML's path."""
    html = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    path = out_dir / "index.html"
    path.write_text(html)
    (out_dir / "results.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    log.info("report written to %s", path)
    return path


def _unlabelled_sections(
    store: Store,
    evaluation: dict[str, Any],
    data: dict[str, Any],
    t0: int,
    t1: int,
    services: list[str],
    anomaly: dict[str, float],
) -> list[str]:
    """The report of a period without fault labels: what was found, nothing scored."""
    findings: pa.Table = data["findings"]
    cards = [
        ("findings", str(findings.num_rows)),
        ("incidents", str(evaluation.get("incidents", 0))),
        ("services with findings", str(len(anomaly))),
    ]
    rows = "".join(
        f"<tr><td class='n'>{r['rank']}</td><td>{escape(str(r['service']))}</td>"
        f"<td>{escape(str(r['instance'] or '–'))}</td><td>{escape(str(r['operation'] or '–'))}</td>"
        f"<td class='n'>{r['score']:.3g}</td></tr>"
        for r in evaluation.get("suspects") or []
    )
    return [
        "<h1>spanomaly report</h1>",
        f"<p class='sub'>period {_iso(t0)} – {_iso(t1)}</p>",
        "<p class='read' id='no-labels'><b>No fault labels in the store for this period:</b> "
        "nothing to score against, so no recall, accuracy or false-alarm figure (a false "
        "alarm needs labels to be false). Below: what was found, and where it points.</p>",
        "<div class='cards'>"
        + "".join(f"<div class='card'><b>{escape(v)}</b>{escape(k)}</div>" for k, v in cards)
        + "</div>",
        "<h2 id='ranking'>Suspects of the period</h2>",
        "<table><tr><th>rank</th><th>service</th><th>instance</th><th>operation</th>"
        f"<th>score</th></tr>{rows}</table>"
        if rows
        else "<p>No findings: nothing to rank.</p>",
        "<h2 id='timelines'>Anomaly timelines per service</h2>",
        _figure(
            plots.timelines(services, findings, [], data["rate"], t0, t1),
            "Each row a service: its findings over the period.",
            "fig-timelines",
        ),
        "<h2 id='graph'>Service dependency graph</h2>",
        _figure(
            plots.service_graph(data["graph"], anomaly, data["instances"]),
            "Callers left of callees; arrow width: calls; colour: findings.",
            "fig-graph",
        ),
        "<h2 id='traces'>Most anomalous traces</h2>",
        _waterfalls(store, findings),
    ]


_HOW_TO_READ = """
<div class='read'><b>How to read this report.</b> The cards give the headline figures:
a fault is <i>detected</i> when a finding falls in its window (start to end + 60 s);
<i>AS@1</i> is the share of faults whose injected service (or instance) is ranked first
by the root-cause ranking of that window; a <i>false alarm</i> is an incident (findings on
one service less than 60 s apart) that starts outside every fault window. The tables break
this down per fault kind and per fault, with the top suspects. The timelines show when each
service had findings (above 1 = above its threshold) against the fault windows; the
confusion matrices show which service was blamed for which fault and how the flagged traces
match the requests the injector touched; the graph shows where the findings sit in the call
graph; the waterfalls show the most anomalous traces with the deviating span in red; the
last panels show the faulty instance's metrics that moved most during each fault.</div>
"""


# -- the classifiers' evaluation (spanomaly classify evaluate) --------------------------------


def _matrix_table(m: dict[str, Any], table_id: str) -> str:
    classes = [escape(str(c)) for c in m["classes"]]
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{c}</th>" for c in classes) + "</tr>"
    rows = "".join(
        f"<tr><th>{classes[i]}</th>"
        + "".join(
            f"<td class='n{' ok' if i == j and v else ''}'>{v}</td>" for j, v in enumerate(row)
        )
        + "</tr>"
        for i, row in enumerate(m["confusion"])
    )
    return f"<table id='{table_id}'>{head}{rows}</table>"


def _prf_table(per_class: dict[str, Any], table_id: str) -> str:
    rows = "".join(
        f"<tr><td>{escape(str(c))}</td><td class='n'>{v['support']}</td>"
        f"<td class='n'>{v['precision']:.3f}</td><td class='n'>{v['recall']:.3f}</td>"
        f"<td class='n'>{v['f1']:.3f}</td></tr>"
        for c, v in per_class.items()
    )
    head = "<tr><th>class</th><th>windows</th><th>precision</th><th>recall</th><th>F1</th></tr>"
    return f"<table id='{table_id}'>{head}{rows}</table>"


def classification_section(doc: dict[str, Any]) -> str:
    """HTML of a classifier evaluation (`classify evaluate --json`): per method the
    confusion matrix and per-class precision, recall and F1 (ECOD: normal vs anomalous)."""
    spec = doc.get("spec") or {}
    parts = [
        "<h2 id='classify'>Fault-type classification, cross-validated by run</h2>",
        f"<p class='sub'>{doc['windows']} {escape(str(doc['on']))} windows of {doc['runs']} "
        f"runs, {doc['folds']} folds (a run never in two); windows of {spec.get('length')} "
        f"{'calls' if spec.get('unit') == 'calls' else 'ns'} every {spec.get('stride')}, "
        f"per {escape(str(spec.get('by')))}</p>",
    ]
    for method, m in doc["methods"].items():
        name = escape(method)
        if "per_class" in m:
            title = f"{name}: macro F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f}"
            if "labelled" in m:
                title += f" ({100 * m['labelled']:.0f} % of the training windows labelled)"
            parts += [f"<h3>{title}</h3>", "<div class='grid'>",
                      _matrix_table(m, f"confusion-{name}"),
                      _prf_table(m["per_class"], f"prf-{name}"), "</div>"]  # fmt: skip
        else:
            parts += [
                f"<h3>{name} (unsupervised reference: anomalous vs normal): precision "
                f"{m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f}</h3>",
                _matrix_table(m["matrix"], f"confusion-{name}"),
            ]
    return "\n".join(parts)


def write_classification(path: Path, doc: dict[str, Any], title: str = "spanomaly classify") -> Path:  # fmt: skip
    """A self-contained HTML page of a classifier evaluation; its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    html = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>{classification_section(doc)}</body></html>\n"
    )
    path.write_text(html)
    return path
