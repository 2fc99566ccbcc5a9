"""Figures of a classifier against true classes: confusion matrix, per-class precision,
recall and F1, macro F1, and the binary figures of a normal-vs-anomalous detector.

Precision of a class that was never predicted, recall of a class that never occurred, and
the F1 of either are 0 (scikit-learn's `zero_division=0`); macro F1 is the unweighted mean
over the classes that occur in the truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> np.ndarray:
    """Counts: rows the true class, columns the predicted one, in the order of classes
    (a prediction outside classes is not counted)."""
    index = {c: i for i, c in enumerate(classes)}
    t = np.array([index.get(str(v), -1) for v in y_true], dtype=np.int64)
    p = np.array([index.get(str(v), -1) for v in y_pred], dtype=np.int64)
    ok = (t >= 0) & (p >= 0)
    k = len(classes)
    return np.bincount(t[ok] * k + p[ok], minlength=k * k).reshape(k, k)


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def per_class(matrix: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class from a confusion matrix."""
    out = {}
    for i, c in enumerate(classes):  # a handful of classes
        tp = float(matrix[i, i])
        p, r, f = _prf(tp, float(matrix[:, i].sum()) - tp, float(matrix[i].sum()) - tp)
        out[c] = {"precision": p, "recall": r, "f1": f, "support": int(matrix[i].sum())}
    return out


def report(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The classification document: classes, confusion, per_class, macro_f1, accuracy."""
    if classes is None:
        classes = sorted({str(v) for v in y_true} | {str(v) for v in y_pred})
    m = confusion(y_true, y_pred, classes)
    figures = per_class(m, classes)
    occurring = [figures[c]["f1"] for c in classes if figures[c]["support"]]
    total = int(m.sum())
    return {
        "classes": classes,
        "confusion": m.tolist(),
        "per_class": figures,
        "macro_f1": float(np.mean(occurring)) if occurring else 0.0,
        "accuracy": float(np.trace(m) / total) if total else 0.0,
        "windows": total,
    }


def binary(truth: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of flags against a boolean truth (True: anomalous)."""
    truth, flagged = np.asarray(truth, dtype=bool), np.asarray(flagged, dtype=bool)
    tp = float((truth & flagged).sum())
    p, r, f = _prf(tp, float((~truth & flagged).sum()), float((truth & ~flagged).sum()))
    return {"precision": p, "recall": r, "f1": f, "positives": int(truth.sum()),
            "flagged": int(flagged.sum()), "windows": len(truth)}  # fmt: skip
