"""The trace model: event keys and vocabulary, a sequence and a duration detector, their
decisions, feedback, and the model directory.

A trace is anomalous when either detector flags it; `detect.trace_findings` explains it.

Model directory (`spanomaly train --model DIR`):

    config.json               format, format_version, features, detectors with their
                              parameters and thresholds, the data period trained on
    vocabulary.json           event keys (ids are positions; 0-3 are special tokens)
    sequence.safetensors      the sequence detector's arrays (LSTM weights or n-gram counts)
    duration.safetensors      the duration detector's arrays
    line_counts.json          per span key, the fewest log lines a normal span wrote
                              (`detect.line_counts`)

No pickle: weights are safetensors, everything else JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa

from spanomaly import __version__
from spanomaly.detect import duration as _duration  # noqa: F401  (registers detectors)
from spanomaly.detect import sequence as _sequence  # noqa: F401
from spanomaly.detect.base import REGISTRY, split_rows
from spanomaly.detect.line_counts import LineCounts
from spanomaly.detect.trace import EventScores, Reason, TraceDetector
from spanomaly.detect.trace_findings import (
    TraceResult,
    finding_id,  # noqa: F401  (a finding's id: part of the model's interface)
    iso,
    json_default,
    trace_findings,
)
from spanomaly.errors import InputError, ModelError
from spanomaly.features.logs import weak_log_keys
from spanomaly.features.traces import FeatureConfig, Sequences, Vocabulary, sequences

log = logging.getLogger(__name__)

FORMAT = "spanomaly-trace-model"
FORMAT_VERSION = 1
ROLES = ("sequence", "duration")
# an informational log line out of place (an unexpected template or order) is weak
# evidence: its sequence score is held below the threshold, so alone it flags no trace
WEAK_LOG_SHARE = 0.5
SEQUENCE_DETECTORS = tuple(n for n, c in REGISTRY.items() if c.kind == "sequence")
DURATION_DETECTORS = tuple(n for n, c in REGISTRY.items() if c.kind == "duration")


def weakened(
    ev: EventScores, weak: np.ndarray, offsets: np.ndarray, threshold: float
) -> EventScores:
    """The event scores with the weak events' held below the threshold and their rules off;
    so is an event whose only fault is to follow a weak one (an unexpected or impossible
    transition from an informational line: where a line falls among spans varies)."""
    after = np.zeros_like(weak)
    after[1:] = weak[:-1]
    after[offsets[:-1]] = False
    weak = weak | (after & (ev.reason != Reason.UNKNOWN))
    score = ev.score.copy()
    score[weak] = np.minimum(score[weak], WEAK_LOG_SHARE * threshold)
    rule = ev.rule & ~weak
    return dataclasses.replace(ev, score=score, rule=rule)


class TraceModel:
    """Vocabulary plus a sequence and a duration detector, fitted and saved together."""

    def __init__(
        self,
        *,
        features: FeatureConfig | None = None,
        sequence: str | None = "lstm",
        duration: str | None = "robust",
        sequence_params: dict[str, Any] | None = None,
        duration_params: dict[str, Any] | None = None,
        target_fpr: float = 1e-3,
        validation_fraction: float = 0.2,
        random_state: int = 0,
    ) -> None:
        self.features = features
        self.sequence = sequence
        self.duration = duration
        self.sequence_params = sequence_params
        self.duration_params = duration_params
        self.target_fpr = target_fpr
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    # -- fitting --------------------------------------------------------------------------

    @property
    def feature_config(self) -> FeatureConfig:
        """The feature configuration (default when none given)."""
        return self.features or FeatureConfig()

    def _make(self, role: str) -> TraceDetector | None:
        name = self.sequence if role == "sequence" else self.duration
        if name is None:
            return None
        allowed = SEQUENCE_DETECTORS if role == "sequence" else DURATION_DETECTORS
        if name not in allowed:
            raise InputError(f"{role} detector: {name!r} is not one of {', '.join(allowed)}")
        params = (self.sequence_params if role == "sequence" else self.duration_params) or {}
        try:
            return REGISTRY[name](
                target_fpr=self.target_fpr,
                validation_fraction=self.validation_fraction,
                random_state=self.random_state,
                **params,
            )
        except TypeError as exc:
            raise InputError(f"{role} detector {name}: {exc}") from exc

    def fit(self, events: pa.Table, period: dict[str, Any] | None = None) -> Self:
        """Fit vocabulary and detectors on the events of normal traces (`features.events`)."""
        if self.sequence is None and self.duration is None:
            raise InputError("no detector chosen: give a sequence or a duration detector")
        made = {role: self._make(role) for role in ROLES}
        if events.num_rows == 0:
            raise ModelError("no traces to train on in the chosen period")
        config = self.feature_config
        self.vocabulary_ = Vocabulary.fit(events.column("key"))
        data = sequences(events, self.vocabulary_, config)
        rows, held = split_rows(data.n_traces, self.validation_fraction, self.random_state)
        train, validation = data.subset(rows), data.subset(held)
        self.detectors_: dict[str, TraceDetector] = {}
        seconds: dict[str, float] = {}
        for role, det in made.items():
            if det is None:
                continue
            t0 = time.perf_counter()
            self.detectors_[role] = det.fit(train, validation=validation)
            seconds[role] = round(time.perf_counter() - t0, 3)
            log.info(
                "%s %s: threshold %.4g, validation FPR %.4f (%.1f s)",
                role,
                det.name,
                det.threshold_,
                det.validation_fpr_,
                seconds[role],
            )
        self.line_counts_ = LineCounts().update(events)
        starts = events.column("start_ns").to_numpy()
        self.trained_on_ = {
            "from_ns": int(starts.min()),
            "to_ns": int(starts.max()),
            **(period or {}),
            "traces": data.n_traces,
            "events": data.n_events,
            "keys": len(self.vocabulary_) - 4,
            "validation_traces": validation.n_traces,
            "fit_seconds": seconds,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "feedback_traces": 0,
        }
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "detectors_"):
            raise ModelError("the trace model is not fitted")

    def sequences(self, events: pa.Table) -> Sequences:
        """Datasets A and B of some events under this model's vocabulary."""
        self._check_fitted()
        return sequences(events, self.vocabulary_, self.feature_config)

    # -- scoring and explaining -----------------------------------------------------------

    def score(self, events: pa.Table) -> tuple[TraceResult, Sequences, dict[str, EventScores]]:
        """Scores and decisions per trace (no explanations)."""
        data = self.sequences(events)
        starts = (
            events.column("start_ns").to_numpy()[data.offsets[:-1]]
            if data.n_traces
            else np.zeros(0, dtype=np.int64)
        )
        result = TraceResult(trace_ids=data.trace_ids, start_ns=starts)
        per_event: dict[str, EventScores] = {}
        weak = self._weak(data)
        for role, det in self.detectors_.items():
            ev = det.score_events(data)
            if role == "sequence":
                if weak.any():
                    ev = weakened(ev, weak, data.offsets, det.threshold_)
                ev = self._missing_lines(ev, data)
            per_event[role] = ev
            raw = ev.trace_scores(data.offsets)
            rule = ev.trace_rule(data.offsets)
            result.scores[role] = raw / det.threshold_
            result.flagged[role] = (raw > det.threshold_) | rule
        return result, data, per_event

    def _missing_lines(self, ev: EventScores, data: Sequences) -> EventScores:
        """The sequence scores with the spans that stopped writing their lines as rules."""
        counts = getattr(self, "line_counts_", None)
        if counts is None or data.events is None or not counts.fewest:
            return ev
        missing = counts.missing(data.events)
        if not missing.any():
            return ev
        reason = ev.reason.copy()
        reason[missing] = Reason.MISSING_LINES
        return dataclasses.replace(ev, rule=ev.rule | missing, reason=reason)

    def _weak(self, data: Sequences) -> np.ndarray:
        """Which events are informational log lines (weak evidence), known keys or not."""
        if data.events is not None:
            return weak_log_keys(data.events.column("key"))
        tokens = weak_log_keys(self.vocabulary_.tokens)
        return tokens[np.asarray(data.keys, dtype=np.int64)] if len(tokens) else tokens

    def detect(self, events: pa.Table) -> TraceResult:
        """Scores, decisions and a finding (with its explanation) per anomalous trace."""
        result, data, per_event = self.score(events)
        result.findings = trace_findings(
            self.detectors_, self.vocabulary_.tokens, data, result, per_event
        )
        return result

    # -- feedback -------------------------------------------------------------------------

    def update(self, events: pa.Table) -> dict[str, Any]:
        """Learn that the traces of these events are normal (a false positive).

        New keys join the vocabulary; each detector updates itself (DeepLog's online update)
        until the traces are no longer flagged. Returns what changed.
        """
        self._check_fitted()
        if events.num_rows == 0:
            raise InputError("feedback: the trace has no spans in the store")
        before, _, _ = self.score(events)
        new_keys = sorted(set(events.column("key").to_pylist()) - set(self.vocabulary_.tokens))
        if new_keys:
            self.vocabulary_.add(new_keys)
        data = self.sequences(events)
        self.line_counts_.update(events)
        for det in self.detectors_.values():
            det.update(data)
        after, _, _ = self.score(events)
        self.trained_on_["feedback_traces"] = (
            int(self.trained_on_.get("feedback_traces", 0)) + data.n_traces
        )
        return {
            "traces": data.n_traces,
            "new_keys": len(new_keys),
            "flagged_before": int(before.anomalous.sum()),
            "flagged_after": int(after.anomalous.sum()),
        }

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write the model directory (config.json last, so a half-written one never loads)."""
        from safetensors.numpy import save_file

        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocabulary.json").write_text(self.vocabulary_.dumps())
        self.line_counts_.save(directory)
        detectors = {}
        for role in ROLES:
            path = directory / f"{role}.safetensors"
            det = self.detectors_.get(role)
            if det is None:
                path.unlink(missing_ok=True)
                continue
            config, arrays = det.state()
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, path)
            detectors[role] = config
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spanomaly_version": __version__,
            "features": self.feature_config.to_json(),
            "params": {
                "target_fpr": self.target_fpr,
                "validation_fraction": self.validation_fraction,
                "random_state": self.random_state,
            },
            "trained_on": {
                **self.trained_on_,
                "from": iso(self.trained_on_.get("from_ns")),
                "to": iso(self.trained_on_.get("to_ns")),
            },
            "detectors": detectors,
        }
        tmp = directory / "config.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2, allow_nan=False, default=json_default))
        os.replace(tmp, directory / "config.json")

    @classmethod
    def load(cls, directory: str | Path) -> TraceModel:
        """The model in a directory written by `save`; ModelError when it cannot be used."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.exists():
            raise ModelError(f"{directory}: no model here (run `spanomaly train` first)")
        try:
            doc = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{config_path}: unreadable model config: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ModelError(f"{directory}: not a spanomaly trace model")
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelError(
                f"{directory}: model format version {version} (written by spanomaly "
                f"{doc.get('spanomaly_version', '?')}) cannot be read by spanomaly {__version__}, "
                f"which reads version {FORMAT_VERSION}; retrain with `spanomaly train`"
            )
        try:
            features = FeatureConfig.from_json(doc["features"])
            dets = doc["detectors"]
            model = cls(
                features=features,
                sequence=dets["sequence"]["detector"] if "sequence" in dets else None,
                duration=dets["duration"]["detector"] if "duration" in dets else None,
                sequence_params=dets.get("sequence", {}).get("params"),
                duration_params=dets.get("duration", {}).get("params"),
                **doc["params"],
            )
            model.vocabulary_ = Vocabulary.from_json(
                json.loads((directory / "vocabulary.json").read_text())
            )
            model.line_counts_ = LineCounts.load(directory)
            model.detectors_ = {}
            for role, config in dets.items():
                arrays = load_file(directory / f"{role}.safetensors")
                model.detectors_[role] = TraceDetector.from_state(config, arrays)
            model.trained_on_ = {
                k: v for k, v in doc["trained_on"].items() if k not in ("from", "to")
            }
        except ModelError as exc:
            raise ModelError(f"{directory}: {exc}") from exc
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            RuntimeError,
            InputError,
            SafetensorError,
        ) as exc:
            what = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"{directory}: broken model directory: {what}") from exc
        return model
