"""Each instance window against the other instances of its service in the same window.

A replica that runs another release for the whole run (slower, chattier) is inside its
service's normal, which was learnt with it; only its peers can tell. Per feature where
only more is a symptom (latency, self time, errors, time lost: `UPPER_ONLY`), the amount by
which an instance's value (log1p of the raw value) lies above the median of the other
instances of its service in that window, in units of the normal peer spread: 1.4826 x the
median absolute deviation over every service's instances in the training windows (robust
to one odd replica among them). Only those features, and only above: with two instances
each is the other's peer, and a two-sided deviation (a request rate, a metric) would flag
the healthy one as much as the odd one. The score is the mean of the three largest; a
window is flagged past `limit`, `SIGMAS` normal spreads (a quantile of the training
scores would not do: the odd replica's windows are among them). An instance without
peers scores 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spanomaly.detect.point import group_median
from spanomaly.features.windows import UPPER_ONLY, InstanceWindows

TOP = 3
SIGMAS = 6.0


def _mad_scale(x: np.ndarray) -> float:
    """1.4826 x the median absolute deviation from the median of the finite values."""
    x = x[np.isfinite(x)]
    if not len(x):
        return 1.0
    s = 1.4826 * float(np.median(np.abs(x - np.median(x))))
    return s if s > 0 else max(float(np.mean(np.abs(x - np.median(x)))), 1e-3)


@dataclass
class PeerCheck:
    """The normal peer spread per feature and the limit of the peer score."""

    names: list[str] = field(default_factory=list)
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))
    limit: float = np.inf

    def _deviations(self, w: InstanceWindows) -> np.ndarray:
        cols = [w.names.index(n) if n in w.names else -1 for n in self.names]
        X = np.full((w.n, len(self.names)), np.nan)
        for j, c in enumerate(cols):
            if c >= 0:
                X[:, j] = np.log1p(np.maximum(w.X[:, c], 0.0))
        if w.n == 0 or not self.names:
            return X
        med, _ = group_median(X, w.groups())
        dev = X - med  # NaN without peers
        return np.maximum(dev, 0.0)

    def fit(self, w: InstanceWindows) -> PeerCheck:
        """Learn the peer spread and the limit on normal windows."""
        self.names = [n for n in w.names if n in UPPER_ONLY]
        raw = self._deviations_raw(w)
        self.scale = np.array([max(_mad_scale(raw[:, j]), 1e-3) for j in range(raw.shape[1])])
        self.limit = SIGMAS if self.names else np.inf
        return self

    def _deviations_raw(self, w: InstanceWindows) -> np.ndarray:
        """Signed deviations from the peers (the spread is of both sides)."""
        cols = [w.names.index(n) for n in self.names]
        X = np.log1p(np.maximum(w.X[:, cols], 0.0)) if cols else np.zeros((w.n, 0))
        if w.n == 0 or not cols:
            return X
        med, _ = group_median(X, w.groups())
        return X - med

    def has_peers(self, w: InstanceWindows) -> np.ndarray:
        """Whether each window's service has another instance in that window."""
        if w.n == 0:
            return np.zeros(0, dtype=bool)
        groups = w.groups()
        return np.bincount(groups)[groups] > 1

    def score(self, w: InstanceWindows) -> tuple[np.ndarray, np.ndarray]:
        """Per window: the peer score and the per-feature peer z (0 without peers)."""
        z = np.nan_to_num(self._deviations(w) / self.scale, nan=0.0) if self.names else None
        if z is None or z.shape[1] == 0:
            return np.zeros(w.n), np.zeros((w.n, 0))
        k = min(TOP, z.shape[1])
        return np.sort(z, axis=1)[:, -k:].mean(axis=1), z

    def to_json(self) -> dict[str, Any]:
        """The check as a JSON document."""
        limit = self.limit if np.isfinite(self.limit) else None
        return {"names": self.names, "scale": self.scale.tolist(), "limit": limit}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PeerCheck:
        """The check of `to_json`'s document."""
        limit = doc.get("limit")
        return cls(list(doc["names"]), np.asarray(doc["scale"], dtype=np.float64),
                   np.inf if limit is None else float(limit))  # fmt: skip
