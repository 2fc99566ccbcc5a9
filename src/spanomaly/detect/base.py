"""The detector contract for collective (trace) anomalies, and thresholding done once.

A detector follows the scikit-learn / PyOD shape:

    det = NGramSequence(n=3, target_fpr=1e-3)      # __init__ only stores its arguments
    det.fit(train)                                  # -> det; learned state ends in `_`
    det.score(test)                                 # per trace, higher = more anomalous
    det.predict(test)                               # per trace, bool
    det.score_events(test)                          # per event: score, reason, expectations

`fit` holds out `validation_fraction` of the traces (or takes `validation=`), fits the model
on the rest with `_fit`, then fits the trace threshold on the held-out normal traces at the
target false-positive rate (`fit_threshold`: the empirical quantile where the validation set
is large enough for it, else a generalised Pareto tail fitted to its largest scores, the
peaks-over-threshold method, which extrapolates to rates smaller than 1/n). Labels and the
data being scored never touch a threshold.

A concrete detector writes `_fit(train, random_state)`, `_score_events(data)`,
`_update(data)` (learn that some traces are normal: operator feedback) and `_state` /
`_load_state` (JSON-able config and numpy arrays, saved as JSON and safetensors; no
pickle). Every detector registers itself in `REGISTRY` by name; one contract test runs over
all of them.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from spanomaly.errors import ModelError
from spanomaly.features.traces import Sequences

# Version of the on-disk detector state; a different major version cannot be loaded.
STATE_VERSION = 1


class Reason(IntEnum):
    """Why an event scores as it does (its dominant cause)."""

    NONE = 0
    UNEXPECTED = 1  # the key is unlikely (low probability, outside the top k) at this point
    UNKNOWN = 2  # the key was never seen in training
    IMPOSSIBLE = 3  # the transition from the previous key was never seen in training
    SLOW = 4  # the duration is above the normal range for the key and context
    SLOW_SELF = 5  # the self time is above the normal range
    EARLY_END = 6  # the trace ends where more events were expected (a missing call)


REASON_TEXT = {
    Reason.NONE: "",
    Reason.UNEXPECTED: "unexpected event",
    Reason.UNKNOWN: "unknown event",
    Reason.IMPOSSIBLE: "impossible transition",
    Reason.SLOW: "slow span",
    Reason.SLOW_SELF: "slow self time",
    Reason.EARLY_END: "trace ended early",
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


# -- thresholds -------------------------------------------------------------------------------


def _gpd_pwm(excess: np.ndarray) -> tuple[float, float]:
    """Shape xi and scale sigma of a generalised Pareto fit (probability-weighted moments)."""
    x = np.sort(excess)
    n = len(x)
    a0 = float(x.mean())
    p = (np.arange(1, n + 1) - 0.35) / n
    a1 = float(np.mean((1.0 - p) * x))
    denom = a0 - 2.0 * a1
    if a0 <= 0 or denom <= 0:
        return 0.0, max(a0, 1e-12)
    k = a0 / denom - 2.0
    sigma = 2.0 * a0 * a1 / denom
    return -k, max(sigma, 1e-12)


def fit_threshold(
    scores: np.ndarray, target_fpr: float, tail: float = 0.05, min_tail: int = 20
) -> float:
    """The score above which a share target_fpr of normal traces lies.

    The empirical quantile where at least ten validation traces lie above it; otherwise the
    peaks-over-threshold estimate: a generalised Pareto distribution fitted to the scores
    above the (1 - tail) quantile, extrapolated to target_fpr; where that quantile leaves
    fewer than `min_tail` scores (a small validation set), an exponential tail fitted to the
    scores above the eleventh largest or a lower one (at most half; scores tied with it, the zeros
    of traces that lost no time, are left out of the tail) instead, since a Pareto shape
    cannot be told from so few. Never below the largest score the quantile could
    see; with too few distinct tail scores, the largest score.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    n = len(s)
    if n == 0:
        return float("inf")
    if target_fpr * n >= 10:
        return float(np.quantile(s, 1.0 - target_fpr, method="higher"))
    floor = float(np.quantile(s, 1.0 - 10.0 / n if n > 10 else 0.0, method="higher"))
    u = float(np.quantile(s, 1.0 - tail, method="lower"))
    excess = s[s > u] - u
    if len(excess) >= min_tail and np.ptp(excess) > 0:
        xi, sigma = _gpd_pwm(excess)
        ratio = target_fpr * n / len(excess)
        if abs(xi) < 1e-6:
            t = u + sigma * np.log(1.0 / ratio)
        else:
            t = u + sigma / xi * (ratio**-xi - 1.0)
        if xi < 0:  # bounded tail: never past its end point
            t = min(t, u + sigma / -xi)
        return float(max(t, floor))
    k = min(max(len(excess), 10), n // 2)
    if k < 3:
        return float(s[-1])
    u = float(s[n - k - 1])
    above = s[s > u] - u  # strictly above: scores tied at u (often 0: nothing lost) are
    if not len(above):  # the body, not the tail; P(S > t) = P(S > u) exp(-(t - u) / scale)
        return float(s[-1])
    t = u + float(above.mean()) * np.log(len(above) / (target_fpr * n))
    return float(max(t, s[-1]))


def split(data: Sequences, fraction: float, random_state: int) -> tuple[Sequences, Sequences]:
    """A random split of the traces: (train, validation)."""
    rng = np.random.default_rng(random_state)
    order = rng.permutation(data.n_traces)
    n_val = round(data.n_traces * fraction)
    n_val = min(max(n_val, 1), data.n_traces - 1) if data.n_traces >= 2 else 0
    val = np.sort(order[:n_val])
    train = np.sort(order[n_val:])
    return data.subset(train), data.subset(val)


def _finite(value: Any) -> Any:
    """JSON has no infinity: a non-finite float is written as null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# -- the base ---------------------------------------------------------------------------------

REGISTRY: dict[str, type[TraceDetector]] = {}


class DetectorParams:
    """Constructor arguments shared by every detector: stored as given, checked at fit."""

    name: ClassVar[str] = ""

    def __init__(
        self, *, target_fpr: float = 1e-3, validation_fraction: float = 0.2, random_state: int = 0
    ) -> None:
        self.target_fpr = target_fpr
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    # -- parameters -----------------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.kind == p.KEYWORD_ONLY and p.name not in names:
                    names.append(p.name)
        return names

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {n: getattr(self, n) for n in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_params(self) -> None:
        if not 0 < self.target_fpr < 1:
            raise ModelError(f"{self.name}: target_fpr must be in (0, 1), not {self.target_fpr}")
        if not 0 < self.validation_fraction < 1:
            raise ModelError(f"{self.name}: validation_fraction must be in (0, 1)")


def register(cls: type[TraceDetector]) -> type[TraceDetector]:
    """Class decorator: make a detector known by its `name`."""
    REGISTRY[cls.name] = cls
    return cls


class TraceDetector(DetectorParams):
    """Base of the collective-anomaly detectors: validation split, thresholds, persistence."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # sequence | duration
    # a score at or below this is never anomalous, whatever the validation data say
    THRESHOLD_FLOOR: ClassVar[float] = 0.0

    # -- fitting and scoring --------------------------------------------------------------

    def _check_data(self, data: Sequences) -> None:
        if self.kind == "duration" and (data.log_duration is None or data.log_self is None):
            raise ModelError(f"{self.name}: the sequences carry no durations (dataset B)")

    def fit(self, data: Sequences, validation: Sequences | None = None) -> Self:
        """Fit on normal traces; the threshold on validation (held out when not given)."""
        self._check_params()
        self._check_data(data)
        if data.n_traces == 0:
            raise ModelError(f"{self.name}: no traces to train on")
        if validation is None:
            data, validation = split(data, self.validation_fraction, self.random_state)
        self.n_keys_ = data.n_keys
        self._fit(data)
        self.n_train_traces_ = data.n_traces
        self.n_train_events_ = data.n_events
        self._calibrate(validation)
        return self

    def _calibrate(self, validation: Sequences) -> None:
        ev = self._score_events(validation)
        scores = ev.trace_scores(validation.offsets)
        self.threshold_ = max(fit_threshold(scores, self.target_fpr), self.THRESHOLD_FLOOR)
        flagged = (scores > self.threshold_) | ev.trace_rule(validation.offsets)
        self.n_validation_traces_ = validation.n_traces
        self.validation_fpr_ = float(flagged.mean()) if len(flagged) else 0.0

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise ModelError(f"{self.name}: not fitted; call fit first")

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

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Learned state: JSON-able values and named arrays."""
        raise NotImplementedError

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    # -- persistence ----------------------------------------------------------------------

    _COMMON_STATE = (
        "threshold_",
        "validation_fpr_",
        "n_validation_traces_",
        "n_keys_",
        "n_train_traces_",
        "n_train_events_",
    )

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything needed to rebuild the fitted detector: (config, arrays)."""
        self._check_fitted()
        values, arrays = self._state()
        config = {
            "detector": self.name,
            "state_version": STATE_VERSION,
            "params": self.get_params(),
            "fitted": {k: _finite(getattr(self, k)) for k in self._COMMON_STATE},
            "state": values,
        }
        return config, arrays

    @staticmethod
    def from_state(config: dict[str, Any], arrays: dict[str, np.ndarray]) -> TraceDetector:
        """The detector that `state` described."""
        name = config.get("detector")
        if name not in REGISTRY:
            raise ModelError(f"unknown detector {name!r}; known: {', '.join(sorted(REGISTRY))}")
        if config.get("state_version") != STATE_VERSION:
            raise ModelError(
                f"detector {name}: state version {config.get('state_version')} is not "
                f"{STATE_VERSION}; retrain with this version of spanomaly"
            )
        det = REGISTRY[name](**config["params"])
        for k, v in config["fitted"].items():
            setattr(det, k, float("inf") if v is None and k == "threshold_" else v)
        det._load_state(config["state"], arrays)
        return det

    def save(self, directory: str | Path) -> None:
        """Write config.json and weights.safetensors into directory."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config, arrays = self.state()
        (directory / "config.json").write_text(json.dumps(config, indent=2, allow_nan=False))
        save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()},
            directory / "weights.safetensors",
        )

    @staticmethod
    def load(directory: str | Path) -> TraceDetector:
        """A detector written by `save`."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        directory = Path(directory)
        try:
            config = json.loads((directory / "config.json").read_text())
            arrays = load_file(directory / "weights.safetensors")
        except (OSError, ValueError, SafetensorError) as exc:
            raise ModelError(f"{directory}: cannot read the detector: {exc}") from exc
        return TraceDetector.from_state(config, arrays)
