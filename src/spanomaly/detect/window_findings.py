"""Findings of anomalous instance windows: the stored rows and their explanation.

A window's finding is timed at the window's end (when its evidence is complete) and names
the features that deviate most (raw value, z-score, contribution to the score), the
operation that lost the most time there, and the surprise the root-cause ranking weighs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from spanomaly.features.windows import InstanceWindows
from spanomaly.schema import FINDINGS

TOP_FEATURES = 3


@dataclass
class FlaggedWindows:
    """What scoring says of the anomalous windows of one source (rows of `windows`)."""

    source: str
    detector: str
    windows: InstanceWindows
    features: list[str]  # names of the detector's features (columns of X)
    X: np.ndarray  # the detector's features of every window
    scores: np.ndarray  # of every window
    threshold: float
    rows: np.ndarray  # the flagged windows
    surprise: np.ndarray  # per flagged window
    contributions: np.ndarray  # per flagged window and feature
    fault_types: np.ndarray | None = None  # per flagged window, from a supervised detector


def _top_features(f: FlaggedWindows, n: int, row: int) -> list[dict[str, Any]]:
    """The features that contribute most to flagged window n (row `row` of the windows)."""
    contrib = f.contributions[n]
    raw_names = list(f.windows.names)
    top = []
    for j in np.argsort(-contrib)[:TOP_FEATURES].tolist():
        if contrib[j] <= 0:
            continue
        fname = f.features[j]
        base = fname.split(".", 1)[1]
        col = raw_names.index(base) if base in raw_names else -1
        value = float(f.windows.X[row, col]) if col >= 0 else None
        top.append(
            {
                "feature": fname,
                "value": None if value is None or not np.isfinite(value) else round(value, 4),
                "z": round(float(f.X[row, j]), 3),
                "contribution": round(float(contrib[j]), 3),
            }
        )
    return top


def _what(top: list[dict[str, Any]]) -> str:
    """The reason's list of deviating features: name, value and z (or change z)."""
    return (
        ", ".join(
            f"{f['feature'][2:]} {f['value']:.4g} ({'change ' if f['feature'][0] == 'd' else ''}"
            f"z {f['z']:+.1f})"
            for f in top
            if f["value"] is not None
        )
        or "unusual combination of features"
    )


def window_findings(f: FlaggedWindows, window_ns: int) -> pa.Table:
    """FINDINGS rows of the flagged windows, timed at each window's end."""
    w = f.windows
    t, svc, inst = w.column("time_ns"), w.column("service"), w.column("instance")
    rows = []
    for n, (r, s) in enumerate(zip(f.rows.tolist(), f.surprise.tolist(), strict=True)):
        top = _top_features(f, n, r)
        op = w.operation[r] if len(w.operation) == w.n else None
        reason = f"{inst[r]} ({f.source}): {_what(top)}"
        doc: dict[str, Any] = {"source": f.source, "surprise": round(float(s), 4), "features": top}
        if f.fault_types is not None:
            doc["fault_type"] = str(f.fault_types[n])
            reason = f"{doc['fault_type']} on {reason}"
        if op:
            reason += f"; most time lost in {op}"
        key = f"instance:{f.detector}:{f.source}:{inst[r]}:{int(t[r])}"
        rows.append(
            {
                "finding_id": hashlib.sha1(key.encode()).hexdigest()[:16],
                "time_ns": int(t[r]) + window_ns,
                "detector": f"point:{f.detector}:{f.source}",
                "entity": "instance",
                "trace_id": None,
                "span_id": None,
                "service": svc[r],
                "instance": inst[r],
                "operation": op,
                "score": float(f.scores[r]),
                "threshold": float(f.threshold),
                "reason": reason,
                "details": json.dumps(doc),
                "feedback": None,
            }
        )
    return pa.Table.from_pylist(rows, schema=FINDINGS)
