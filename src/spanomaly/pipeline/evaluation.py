"""`spanomaly evaluate`: detection and root cause against the fault labels, the only
wiring that reads them (DESIGN.md's evaluation document)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.pipeline import reads
from spanomaly.pipeline.model_dir import point_window_ns
from spanomaly.pipeline.rank import between, check_choice, period_or_all, rank_period, rca
from spanomaly.store.base import Store


def _faults(store: Store, start: int, end: int) -> pa.Table:
    faults = store.table("faults")
    t = faults.column("start_ns")
    return faults.filter(pc.and_(pc.greater_equal(t, start), pc.less(t, end))).sort_by("start_ns")


def _findings(store: Store, start: int, end: int, evidence: str) -> pa.Table:
    """The findings of the period (+ slack) that count under `evidence`."""
    from spanomaly.evaluate import metrics as m
    from spanomaly.rca import ranking

    findings = reads.findings_between(store, start, end + int(m.SLACK_S * 1e9))
    if not findings.num_rows:
        return findings
    pairs = zip(findings.column("detector").to_pylist(), findings.column("entity").to_pylist(), strict=True)  # fmt: skip
    mask = [ranking.wanted(ranking.source_of(d or "", e or ""), evidence) for d, e in pairs]
    return findings.filter(pa.array(mask))


def _fault_doc(f: dict[str, Any], hi: int, hit: bool, ttd: float, ranks: tuple, ranked: pa.Table) -> dict[str, Any]:  # fmt: skip
    return {
        **{k: f[k] for k in ("fault_id", "kind", "service", "instance", "start_ns", "end_ns")},
        "rca_end_ns": hi,
        "detected": bool(hit),
        "time_to_detect_s": None if not np.isfinite(ttd) else float(ttd),
        "rank": {"service": ranks[0], "instance": ranks[1]},
        "suspects": [
            {key: r[key] for key in ("rank", "service", "instance", "operation", "score")}
            for r in ranked.slice(0, 5).to_pylist()
        ],
    }


def _rank_faults(
    store: Store,
    faults: pa.Table,
    findings: pa.Table,
    evidence: str,
    method: str,
    model_dir: str | Path | None,
) -> tuple[list[int | None], list[int | None], list[dict[str, Any]]]:
    """One ranking per fault over [start, end + 60 s] (up to the next fault's start):
    the service and instance ranks of each, and the per-fault documents."""
    from spanomaly.evaluate import metrics as m
    from spanomaly.rca import ranking

    detected = m.detected_faults(findings, faults)
    ttd = m.time_to_detect(findings, faults)
    window_ns = point_window_ns(model_dir)
    _, rca_ends = m.fault_windows(faults)
    svc_ranks: list[int | None] = []
    inst_ranks: list[int | None] = []
    docs = []
    for k, f in enumerate(faults.to_pylist()):
        hi = int(rca_ends[k])
        mine = between(findings, f["start_ns"], hi, window_ns)
        ranked = rank_period(store, f["start_ns"], hi, evidence, method, model_dir, mine)
        s_rank, i_rank = ranking.positions(ranked, f["service"], f["instance"])
        svc_ranks.append(s_rank)
        inst_ranks.append(i_rank if f["instance"] is not None else s_rank)
        docs.append(_fault_doc(f, hi, detected[k], ttd[k], (s_rank, inst_ranks[-1]), ranked))
    return svc_ranks, inst_ranks, docs


def evaluate(
    store: Store,
    start_ns: int | None = None,
    end_ns: int | None = None,
    evidence: str = "both",
    method: str = "ranked",
    model_dir: str | Path | None = None,
) -> dict[str, object]:
    """Detection and root-cause figures against the fault labels (DESIGN.md's document).

    Findings count under `evidence` (trace findings and span-derived instance windows for
    'traces', metric-derived ones for 'metrics', all for 'both'); RCA for a fault ranks the
    findings of [start, end + 60 s].
    """
    from spanomaly.evaluate import metrics as m
    from spanomaly.evaluate.per_kind import flagged_ids, per_kind

    check_choice(evidence, method)
    start, end = period_or_all(store, start_ns, end_ns)
    faults = _faults(store, start, end)
    findings = _findings(store, start, end, evidence)
    if faults.num_rows == 0:
        return _unlabelled(store, start, end, findings, evidence, method, model_dir)
    traces = store.sql(
        "SELECT trace_id, min(start_ns) AS start_ns FROM spans GROUP BY trace_id "
        "HAVING min(start_ns) >= ? AND min(start_ns) < ?",
        [start, end],
    )
    summary = m.summarize(findings, faults, traces, start, end)
    fault_traces = store.table("fault_traces")
    trace_doc = None
    if fault_traces.num_rows:
        labelled = pc.unique(fault_traces.column("trace_id"))
        trace_doc = m.trace_prf(traces.column("trace_id"), flagged_ids(findings), labelled)
    svc_ranks, inst_ranks, per_fault = _rank_faults(store, faults, findings, evidence, method, model_dir)  # fmt: skip
    detected = m.detected_faults(findings, faults)
    ttd = m.time_to_detect(findings, faults)
    return {
        "labels": True,
        "faults": summary.faults,
        "detected": summary.detected,
        "fault_recall": summary.fault_recall,
        "false_alarms_per_hour": summary.false_alarms_per_hour,
        "trace_fpr": summary.trace_fpr,
        "trace": trace_doc,
        "rca": {"service": m.accuracy_at_k(svc_ranks), "instance": m.accuracy_at_k(inst_ranks)},
        "per_type": per_kind(
            faults, detected, ttd, (svc_ranks, inst_ranks), (fault_traces, traces, findings)
        ),
        "per_fault": per_fault,
    }


def _unlabelled(
    store: Store,
    start: int,
    end: int,
    findings: pa.Table,
    evidence: str,
    method: str,
    model_dir: str | Path | None,
) -> dict[str, object]:
    """What can be said of a period without fault labels: its findings, their incidents
    and the ranking of the whole period; no score (there is nothing to score against, and a
    false alarm needs labels to be false)."""
    from spanomaly.evaluate.metrics import alarms

    return {
        "labels": False,
        "note": "no fault labels in the store for this period: nothing to score against",
        "faults": 0,
        "findings": findings.num_rows,
        "incidents": alarms(findings).num_rows if findings.num_rows else 0,
        "suspects": rca(store, start, end, evidence, method, model_dir, 10),
        "detected": 0, "fault_recall": None, "false_alarms_per_hour": None, "trace_fpr": None,
        "trace": None, "rca": {"service": None, "instance": None}, "per_type": {},
        "per_fault": [],
    }  # fmt: skip
