"""Detection and root-cause figures per fault kind (the `per_type` of DESIGN.md's
evaluation document), from per-fault results; nothing reads the store."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.evaluate import metrics as m


def flagged_ids(findings: pa.Table) -> pa.Array:
    """The distinct trace ids the findings name."""
    if not findings.num_rows:
        return pa.array([], pa.string())
    return pc.unique(pc.drop_null(findings.column("trace_id")))


def kind_trace_prf(
    faults: pa.Table, fault_traces: pa.Table, traces: pa.Table, findings: pa.Table
) -> dict[str, float] | None:
    """Trace P/R/F1 over the traces that start in these faults' windows (+ slack); None
    when the faults have no per-request labels."""
    labelled = fault_traces.filter(
        pc.is_in(fault_traces.column("fault_id"), value_set=faults.column("fault_id"))
    ).column("trace_id")
    if len(labelled) == 0:
        return None
    starts, ends = m.fault_windows(faults)
    t = traces.column("start_ns").to_numpy(zero_copy_only=False)
    scored = traces.filter(pa.array(m.in_windows(t, starts, ends))).column("trace_id")
    return m.trace_prf(scored, flagged_ids(findings), pc.unique(labelled))


def per_kind(
    faults: pa.Table,
    detected: np.ndarray,
    ttd: np.ndarray,
    ranks: tuple[list[int | None], list[int | None]],
    labels: tuple[pa.Table, pa.Table, pa.Table],
) -> dict[str, object]:
    """Per fault kind: faults, detected, recall, time to detect, trace P/R/F1 and AS@k.

    ranks: (service ranks, instance ranks) per fault; labels: (fault_traces, traces,
    findings) for the per-request figures.
    """
    fault_traces, traces, findings = labels
    kinds = faults.column("kind").to_pylist()
    out: dict[str, object] = {}
    for kind in sorted(set(kinds)):
        sel = np.array([k == kind for k in kinds])
        out[kind] = {
            "faults": int(sel.sum()),
            "detected": int(detected[sel].sum()),
            "fault_recall": float(detected[sel].mean()),
            "time_to_detect_s": m.mean_or_none(ttd[sel]),
            "trace": kind_trace_prf(faults.filter(pa.array(sel)), fault_traces, traces, findings),
            "rca": {
                role: m.accuracy_at_k([r for r, s in zip(rs, sel, strict=True) if s])
                for role, rs in zip(("service", "instance"), ranks, strict=True)
            },
        }
    return out
