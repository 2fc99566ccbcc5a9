"""Collective (trace) anomalies: the trace family of the detector contract (`detect/base.py`).

    det = NGramSequence(n=3, target_fpr=1e-3)      # __init__ only stores its arguments
    det.fit(train)                                  # -> det; learned state ends in `_`
    det.score(test)                                 # per trace, higher = more anomalous
    det.predict(test)                               # per trace, bool
    det.score_events(test)                          # per event: score, reason, expectations

A row is a trace of `Sequences`. `fit` holds out `validation_fraction` of the traces (or
takes `validation=`: held-out traces), fits the model on the rest with `_fit`, then fits
the trace threshold on the held-out normal traces at the target false-positive rate
(`fit_threshold`: the empirical quantile where the validation set is large enough for it,
else a generalised Pareto tail fitted to its largest scores, the peaks-over-threshold
method, which extrapolates to rates smaller than 1/n).

A concrete detector writes `_fit(train)`, `_score_events(data)`, `_update(data)` (learn
that some traces are normal: operator feedback) and `_state` / `_load_state` (JSON-able
config and numpy arrays), and registers itself with `@register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, Self

import numpy as np

from spanomaly.detect.base import Detector, fit_threshold
from spanomaly.errors import ModelError
from spanomaly.features.traces import Sequences


class Reason(IntEnum):
    """Why an event scores as it does (its dominant cause)."""

    NONE = 0
    UNEXPECTED = 1  # the key is unlikely (low probability, outside the top k) at this point
    UNKNOWN = 2  # the key was never seen in training
    IMPOSSIBLE = 3  # the transition from the previous key was never seen in training
    SLOW = 4  # the duration is above the normal range for the key and context
    SLOW_SELF = 5  # the self time is above the normal range
    EARLY_END = 6  # the trace ends where more events were expected (a missing call)
    MISSING_LINES = 7  # the span wrote fewer log lines than any normal span of its key


REASON_TEXT = {
    Reason.NONE: "",
    Reason.UNEXPECTED: "unexpected event",
    Reason.UNKNOWN: "unknown event",
    Reason.IMPOSSIBLE: "impossible transition",
    Reason.SLOW: "slow span",
    Reason.SLOW_SELF: "slow self time",
    Reason.EARLY_END: "trace ended early",
    Reason.MISSING_LINES: "log lines missing",
}


def segment_max(values: np.ndarray, offsets: np.ndarray, empty: float = -np.inf) -> np.ndarray:
    """The maximum of each segment values[offsets[i]:offsets[i+1]]; `empty` for empty ones."""
    n = len(offsets) - 1
    out = np.full(n, empty, dtype=np.float64)
    lengths = np.diff(offsets)
    full = lengths > 0
    if values.size and full.any():
        out[full] = np.maximum.reduceat(values.astype(np.float64), offsets[:-1][full])
    return out


def segment_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The sum of each segment values[offsets[i]:offsets[i+1]] (0 for empty ones)."""
    csum = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    return csum[offsets[1:]] - csum[offsets[:-1]]


def segment_argmax(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Index (into values) of the first maximum of each non-empty segment; -1 for empty ones."""
    n = len(offsets) - 1
    best = segment_max(values, offsets)
    lengths = np.diff(offsets)
    out = np.full(n, -1, dtype=np.int64)
    if not values.size:
        return out
    seg = np.repeat(np.arange(n), lengths)
    hit = values.astype(np.float64) == best[seg]
    idx = np.flatnonzero(hit)
    first = np.full(n, -1, dtype=np.int64)
    # reversed assignment keeps the first index of each segment
    first[seg[idx[::-1]]] = idx[::-1]
    out[lengths > 0] = first[lengths > 0]
    return out


@dataclass
class EventScores:
    """Per-event output of a detector, aligned with the events of the scored Sequences.

    `score` is the natural score (higher = more anomalous; -log p for sequence models, a
    robust z for duration models); `rule` marks events anomalous by rule whatever the
    threshold (unknown keys, impossible transitions). `end_score` / `end_rule` score the end
    of each trace (sequence models: did the trace end where it should?). `extra` holds
    per-event arrays for explanations (expected duration, probability, rank).
    """

    score: np.ndarray
    reason: np.ndarray
    rule: np.ndarray
    end_score: np.ndarray
    end_rule: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    aggregate: str = "max"  # how event scores make the trace score: max | sum

    @classmethod
    def zeros(cls, data: Sequences) -> EventScores:
        """All-normal scores for the data."""
        return cls(
            score=np.zeros(data.n_events),
            reason=np.zeros(data.n_events, dtype=np.int8),
            rule=np.zeros(data.n_events, dtype=bool),
            end_score=np.zeros(data.n_traces),
            end_rule=np.zeros(data.n_traces, dtype=bool),
        )

    def trace_scores(self, offsets: np.ndarray) -> np.ndarray:
        """Natural score of each trace: the largest of its events and its end (or their sum
        plus the end, for detectors whose event scores add up, such as time lost)."""
        if self.aggregate == "sum":
            return segment_sum(self.score, offsets) + self.end_score
        return np.maximum(segment_max(self.score, offsets), self.end_score)

    def trace_rule(self, offsets: np.ndarray) -> np.ndarray:
        """Whether a rule fired in each trace."""
        lengths = np.diff(offsets)
        fired = np.zeros(len(lengths), dtype=bool)
        if self.rule.any():
            seg = np.repeat(np.arange(len(lengths)), lengths)
            fired[np.unique(seg[self.rule])] = True
        return fired | self.end_rule


class TraceDetector(Detector):
    """Base of the collective-anomaly detectors: rows are traces of `Sequences`."""

    kind: ClassVar[str] = ""  # sequence | duration
    ROWS: ClassVar[str] = "traces"
    # a score at or below this is never anomalous, whatever the validation data say
    THRESHOLD_FLOOR: ClassVar[float] = 0.0
    _COMMON_STATE: ClassVar[tuple[str, ...]] = (
        "threshold_",
        "validation_fpr_",
        "n_validation_traces_",
        "n_keys_",
        "n_train_traces_",
        "n_train_events_",
    )

    # -- the family's part of the contract ------------------------------------------------

    def _check_data(self, data: Sequences) -> None:
        if not isinstance(data, Sequences):
            raise ModelError(f"{self.name}: expected Sequences, got {type(data).__name__}")
        if self.kind == "duration" and (data.log_duration is None or data.log_self is None):
            raise ModelError(f"{self.name}: the sequences carry no durations (dataset B)")
        for what, values in (("duration", data.log_duration), ("self time", data.log_self)):
            if values is not None and np.isnan(values).any():
                raise ModelError(f"{self.name}: a {what} is NaN")

    def _check_input(self, X: Any) -> Sequences:
        self._check_data(X)
        return X  # type: ignore[no-any-return]

    def _n_rows(self, X: Sequences) -> int:
        return X.n_traces

    def _take(self, X: Sequences, rows: np.ndarray) -> Sequences:
        return X.subset(rows)

    def _learn(self, X: Sequences, y: np.ndarray | None, groups: np.ndarray | None) -> None:
        self.n_keys_ = X.n_keys
        self._fit(X)
        self.n_train_traces_ = X.n_traces
        self.n_train_events_ = X.n_events

    def _calibrate(self, X: Sequences, groups: np.ndarray | None = None) -> None:
        ev = self._score_events(X)
        scores = ev.trace_scores(X.offsets)
        self.threshold_ = max(fit_threshold(scores, self.target_fpr), self.THRESHOLD_FLOOR)
        flagged = (scores > self.threshold_) | ev.trace_rule(X.offsets)
        self.n_validation_traces_ = X.n_traces
        self.validation_fpr_ = float(flagged.mean()) if len(flagged) else 0.0

    def score_events(self, data: Sequences) -> EventScores:
        """Per-event scores, reasons, rules and expectations."""
        self._check_fitted()
        self._check_data(data)
        return self._score_events(data)

    def event_flags(self, ev: EventScores) -> np.ndarray:
        """Which events are anomalous: by rule, or past the threshold (max-aggregated
        detectors) or contributing to the trace score at all (sum-aggregated ones)."""
        limit = self.threshold_ if ev.aggregate == "max" else 0.0
        return ev.rule | (ev.score > limit)

    def score(self, data: Sequences) -> np.ndarray:
        """Per-trace score, higher = more anomalous; +inf where a rule fired."""
        ev = self.score_events(data)
        scores = ev.trace_scores(data.offsets)
        scores[ev.trace_rule(data.offsets)] = np.inf
        return scores

    def predict(self, data: Sequences) -> np.ndarray:
        """Whether each trace is anomalous."""
        return self.score(data) > self.threshold_

    UPDATE_ROUNDS: ClassVar[int] = 5

    def update(self, data: Sequences) -> Self:
        """Learn that these traces are normal (operator feedback on a false positive).

        The model-specific update (DeepLog's online update: fine-tuning, more counts, wider
        ranges) repeats a few times while the traces are still flagged.
        """
        self._check_fitted()
        self._check_data(data)
        for _ in range(self.UPDATE_ROUNDS if data.n_traces else 0):
            self._update(data)
            if not self.predict(data).any():
                break
        return self

    # -- to be written by a detector ------------------------------------------------------

    def _fit(self, train: Sequences) -> None:
        raise NotImplementedError

    def _score_events(self, data: Sequences) -> EventScores:
        raise NotImplementedError

    def _update(self, data: Sequences) -> None:
        raise NotImplementedError
