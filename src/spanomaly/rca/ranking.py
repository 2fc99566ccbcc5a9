"""Root cause: the findings of a time window combined into ranked suspects.

A suspect is an instance of a service (and the operation where it loses time). The
evidence comes in three kinds, each turned into a *surprise*, -log10 of the probability of
seeing it in normal operation, so that independent ones add up (Fisher's method, up to its
degrees of freedom) whatever their units. Trace findings and span-derived windows are two
views of the same spans, so only the stronger of the two counts; metrics are measured
apart from the spans and add to it:

- **trace findings** (collective anomalies, `entity = 'trace'`): each names the deepest
  deviating span of an anomalous trace (its self time, its errors; a client span's own
  time charged to the callee). A trace detector flags a normal trace with probability
  `trace_fpr` at most, so an instance that serves n requests should collect about
  `trace_fpr * n` false findings; k findings are surprising by the Poisson tail
  P(K >= k).
- **instance findings from spans** (`point:<detector>:traces`): anomalous instance windows
  of the RED features (request rate, errors, latency, time lost above each operation's
  normal self time); each anomalous window's surprise, calibrated by the point detector
  on held-out normal windows, and the windows' surprises add up (as the count of trace
  findings grows with time): a fault holds for minutes, a one-window blip does not.
- **instance findings from metrics** (`point:<detector>:metrics`): the same for the
  instance's own metrics (CPU, memory, I/O, network, ...). A CPU-starved or
  memory-starved instance is named by these alone.

Then the dependency graph: anomalies travel upstream, from a callee to its callers (a
slow callee makes its callers slow). A suspect one of whose callees is at least as
surprising, in all or in the spans alone (its own latency metrics show the callee's time
too), is most likely a symptom of it, and its surprise is halved; the ranking keeps it,
lower. Services are ranked by their best instance.

`evidence` picks what is used: "traces" (trace findings and span-derived instance
windows), "metrics" (metric-derived instance windows), or "both".

`baseline` is the fifty-line reference: per-operation robust z-scores of self time over
every span of the window (a client span's own time charged to the callee), summed per
instance.

Nothing here reads the store: the pipeline hands in the findings, the graph and the
traffic of the window as Arrow tables.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.errors import InputError
from spanomaly.features.graph import adjacency

EVIDENCE = ("traces", "metrics", "both")
SUSPECTS = pa.schema(
    [
        ("rank", pa.int64()),
        ("service", pa.string()),
        ("instance", pa.string()),
        ("operation", pa.string()),
        ("score", pa.float64()),
        ("evidence", pa.string()),
    ]
)
GRAPH_DISCOUNT = 0.5
MAX_REASONS = 3


def source_of(detector: str, entity: str) -> str:
    """The evidence source of a finding: trace, instance_traces or instance_metrics."""
    if entity == "trace":
        return "trace"
    if entity == "instance" and detector.endswith(":metrics"):
        return "instance_metrics"
    if entity == "instance":
        return "instance_traces"
    return "other"


def wanted(source: str, evidence: str) -> bool:
    """Whether a source counts under an evidence setting."""
    if evidence == "both":
        return source != "other"
    if evidence == "traces":
        return source in ("trace", "instance_traces")
    return source == "instance_metrics"


def poisson_surprise(k: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """-log10 P(K >= k) for K ~ Poisson(lam)."""
    from scipy.special import gammaln
    from scipy.stats import poisson

    k = np.asarray(k, dtype=np.float64)
    lam = np.maximum(np.asarray(lam, dtype=np.float64), 1e-12)
    with np.errstate(divide="ignore"):
        log_sf = poisson.logsf(k - 1, lam)
    # far in the tail the survival function underflows: its first term, P(K = k), is it
    log_pmf = k * np.log(lam) - lam - gammaln(k + 1)
    log_sf = np.where(np.isfinite(log_sf), log_sf, log_pmf)
    out = -log_sf / math.log(10.0)
    return np.where(k > 0, np.maximum(out, 0.0), 0.0)


@dataclass
class _Suspect:
    service: str
    instance: str | None
    surprise: dict[str, float] = field(default_factory=dict)
    trace_findings: int = 0
    windows: int = 0
    operations: Counter[str] = field(default_factory=Counter)
    reasons: list[tuple[float, str]] = field(default_factory=list)
    graph: str | None = None
    score: float = 0.0
    spans: float = 0.0  # the part of the score the spans give


def _instances_by_service(traffic: pa.Table) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    if traffic.num_rows:
        for s, i in zip(
            traffic.column("service").to_pylist(),
            traffic.column("instance").to_pylist(),
            strict=True,
        ):
            if i is not None:
                out[s].append(i)
    return out


def rank(
    findings: pa.Table,
    graph: pa.Table,
    traffic: pa.Table,
    evidence: str = "both",
    trace_fpr: float = 1e-3,
) -> pa.Table:
    """Ranked suspects (SUSPECTS schema) from the findings of one window.

    findings: FINDINGS rows of the window (feedback 'normal' ones are left out here);
    graph: `features.graph.dependency_graph` of the window's calls; traffic: (service,
    instance, requests) served in the window.
    """
    if evidence not in EVIDENCE:
        raise InputError(f"--evidence: {evidence!r} is not one of {', '.join(EVIDENCE)}")
    if findings.num_rows and "feedback" in findings.column_names:
        normal = pc.fill_null(pc.equal(findings.column("feedback"), "normal"), False)
        findings = findings.filter(pc.invert(normal))
    rows = _charge_starved_callers(_evidence_rows(findings.to_pylist()))  # hundreds at most
    by_service = _instances_by_service(traffic)
    requests: dict[tuple[str, str | None], float] = {}
    if traffic.num_rows:
        for r in traffic.to_pylist():
            requests[(r["service"], r["instance"])] = float(r["requests"] or 0)
    suspects: dict[tuple[str, str | None], _Suspect] = {}

    def get(service: str, instance: str | None) -> _Suspect:
        key = (service, instance)
        if key not in suspects:
            suspects[key] = _Suspect(service, instance)
        return suspects[key]

    trace_counts: Counter[tuple[str, str | None]] = Counter()
    for r in rows:
        src = source_of(r["detector"] or "", r["entity"] or "")
        if not wanted(src, evidence) or not r["service"]:
            continue
        instance = r["instance"]
        if instance is None and len(by_service.get(r["service"], [])) == 1:
            instance = by_service[r["service"]][0]
        s = get(r["service"], instance)
        if src == "trace":
            trace_counts[(r["service"], instance)] += 1
            s.trace_findings += 1
            if r["operation"]:
                s.operations[r["operation"]] += 1
            if r["reason"]:
                s.reasons.append((float(r["score"] or 0.0), r["reason"]))
            continue
        details = json.loads(r["details"] or "{}")
        value = float(details.get("surprise", 0.0))
        s.surprise[src] = s.surprise.get(src, 0.0) + value
        s.windows += 1
        if r["operation"]:
            s.operations[r["operation"]] += 0.5
        if r["reason"]:
            s.reasons.append((value, r["reason"]))
    if trace_counts:
        keys = list(trace_counts)
        k = np.array([trace_counts[key] for key in keys], dtype=np.float64)
        lam = np.array([trace_fpr * max(requests.get(key, 0.0), 1.0) for key in keys])
        for key, value in zip(keys, poisson_surprise(k, lam), strict=True):
            suspects[key].surprise["trace"] = float(value)
    if not suspects:
        return SUSPECTS.empty_table()
    for s in suspects.values():
        # trace findings and span-derived windows are two views of the same spans: the
        # stronger counts; metrics are an independent channel and add up
        from_spans = max(s.surprise.get("trace", 0.0), s.surprise.get("instance_traces", 0.0))
        s.spans = from_spans
        s.score = from_spans + s.surprise.get("instance_metrics", 0.0)
    _graph_discount(suspects, graph)
    ordered = sorted(suspects.values(), key=lambda s: (-s.score, s.service, s.instance or ""))
    out = []
    for i, s in enumerate(ordered, start=1):
        op = s.operations.most_common(1)[0][0] if s.operations else None
        reasons = [text for _, text in sorted(s.reasons, key=lambda x: -x[0])]
        unique = list(dict.fromkeys(reasons))[:MAX_REASONS]
        out.append(
            {
                "rank": i,
                "service": s.service,
                "instance": s.instance,
                "operation": op,
                "score": round(s.score, 4),
                "evidence": json.dumps(
                    {
                        "surprise": {k: round(v, 3) for k, v in sorted(s.surprise.items())},
                        "trace_findings": s.trace_findings,
                        "anomalous_windows": s.windows,
                        "graph": s.graph,
                        "reasons": unique,
                    }
                ),
            }
        )
    return pa.Table.from_pylist(out, schema=SUSPECTS)


def _evidence_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The findings that are root-cause evidence: all but the trace findings whose sequence
    deviations only reorder known, ordinary log lines (`log_flow_only`, set by the trace
    model): they tell that a trace's log flow changed, not where it failed or lost time."""
    return [r for r in rows if not _log_flow_only(r)]


def _log_flow_only(row: dict[str, Any]) -> bool:
    """Whether a trace finding says only that the trace's log flow changed."""
    text = row.get("details") or ""
    if row.get("entity") != "trace" or "log_flow_only" not in text:
        return False
    return bool(json.loads(text).get("log_flow_only"))


def _charge_starved_callers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trace findings that charge a call's own time to its callee go to the caller instead
    where the caller's charged calls spread over two or more callee instances, a third of
    them or more away from the one with most (as `features.windows.span_windows` does for
    the windows): a slow network or callee slows the calls to it from every caller, a
    starved caller all of its calls. Only the duration detector's findings charge time; a
    sequence deviation at a call (an unexpected call) charges none."""
    callees: dict[str, Counter[str]] = defaultdict(Counter)
    gaps: list[tuple[int, str, str]] = []
    for n, r in enumerate(rows):
        if r.get("entity") != "trace" or not r.get("details"):
            continue
        if not (r.get("detector") or "").startswith("duration:"):
            continue
        doc = json.loads(r["details"])
        event, blame = doc.get("event") or {}, doc.get("blame") or {}
        caller, callee = event.get("instance"), blame.get("instance")
        if caller and callee and caller != callee and callee == r.get("instance"):
            callees[caller][callee] += 1
            gaps.append((n, caller, event.get("service") or ""))
    starved = {
        c for c, k in callees.items() if len(k) >= 2 and 3 * max(k.values()) <= 2 * sum(k.values())
    }
    if not starved:
        return rows
    out = list(rows)
    for n, caller, service in gaps:
        if caller in starved:
            out[n] = {**rows[n], "service": service, "instance": caller}
    return out


def _graph_discount(suspects: dict[tuple[str, str | None], _Suspect], graph: pa.Table) -> None:
    """Halve the score of a suspect that calls a service at least as surprising, in all or
    in what the spans tell (where the calls are seen: a caller's own metrics, its latency
    for one, show a slow callee's time as much as its spans do)."""
    callees, _ = adjacency(graph)
    best: dict[str, float] = defaultdict(float)
    best_spans: dict[str, float] = defaultdict(float)
    for s in suspects.values():
        best[s.service] = max(best[s.service], s.score)
        best_spans[s.service] = max(best_spans[s.service], s.spans)
    raw = {key: s.score for key, s in suspects.items()}
    for key, s in suspects.items():
        if raw[key] <= 0:
            continue
        below = [c for c in callees.get(s.service, ()) if c != s.service]
        above = [
            c for c in below if best[c] >= raw[key] or (s.spans > 0 and best_spans[c] >= s.spans)
        ]
        if above:
            name = max(above, key=lambda c: (best[c], c))
            s.score = raw[key] * GRAPH_DISCOUNT
            s.graph = f"calls {name}, which is at least as anomalous (score halved)"


# -- the fifty-line baseline ------------------------------------------------------------------


def baseline(events: pa.Table, profile: pa.Table, min_events: int = 3) -> pa.Table:
    """Suspects by robust per-operation self-time scores: for every (charged instance,
    operation key) of the window, the median robust z of its spans' self time against the
    key's normal (median, MAD); an instance scores its worst operation.

    events: `features.traces.events` of the window (a client span's own time is charged to
    the callee); profile: (key, median_ms, mad_ms) of normal self times per event key
    (`features.windows.SelfTimeProfile.table()`).
    """
    if events.num_rows == 0 or profile.num_rows == 0:
        return SUSPECTS.empty_table()
    idx = pc.index_in(events.column("key"), value_set=profile.column("key"))
    known = pc.is_valid(idx).to_numpy(zero_copy_only=False)
    pos = pc.fill_null(idx, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    med = profile.column("median_ms").to_numpy()[pos]
    mad = profile.column("mad_ms").to_numpy()[pos]
    self_ms = events.column("self_ns").to_numpy().astype(np.float64) / 1e6
    z = (self_ms - med) / np.maximum(1.4826 * mad, 0.01)
    svc = pc.fill_null(events.column("blame_service"), "").to_numpy(zero_copy_only=False)
    inst = pc.fill_null(events.column("blame_instance"), "").to_numpy(zero_copy_only=False)
    ops = events.column("operation").to_numpy(zero_copy_only=False).astype(str)
    keys = events.column("key").to_numpy(zero_copy_only=False).astype(str)
    sel = known & (svc != "")
    table = pa.table(
        {"s": svc[sel].astype(str), "i": inst[sel].astype(str), "k": keys[sel],
         "o": ops[sel], "z": z[sel]}
    )  # fmt: skip
    per_op = (
        table.group_by(["s", "i", "k", "o"])
        .aggregate([("z", "approximate_median"), ("z", "count")])
        .filter(pc.greater_equal(pc.field("z_count"), min_events))
        .sort_by([("z_approximate_median", "descending"), ("s", "ascending")])
    )
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for r in per_op.to_pylist():  # operations of one window, worst first
        if (r["s"], r["i"]) in seen:
            continue
        seen.add((r["s"], r["i"]))
        zmed = float(r["z_approximate_median"])
        out.append(
            {
                "rank": len(out) + 1,
                "service": r["s"],
                "instance": r["i"] or None,
                "operation": r["o"],
                "score": round(zmed, 4),
                "evidence": json.dumps(
                    {"median_self_time_z": round(zmed, 3), "spans": r["z_count"]}
                ),
            }
        )
    return pa.Table.from_pylist(out, schema=SUSPECTS)


def positions(
    suspects: pa.Table, service: str | None, instance: str | None
) -> tuple[int | None, int | None]:
    """1-based rank of a service among the distinct services of the list, and of an
    instance among the instances; None when absent."""
    svc_rank = inst_rank = None
    seen: list[str] = []
    for s in suspects.column("service").to_pylist():
        if s not in seen:
            seen.append(s)
    if service in seen:
        svc_rank = seen.index(service) + 1
    insts = [i for i in suspects.column("instance").to_pylist() if i is not None]
    uniq = list(dict.fromkeys(insts))
    if instance in uniq:
        inst_rank = uniq.index(instance) + 1
    return svc_rank, inst_rank
