"""The trace model: event keys and vocabulary, a sequence and a duration detector, their
decisions and explanations, feedback, and the model directory.

A trace is anomalous when either detector flags it. Its explanation names one event, the
*primary* one: for the sequence detector the first deviating event (everything after it may
be a consequence), for the duration detector the event furthest above its normal range; a
rule (unknown key, impossible transition) or the larger score relative to its threshold
decides between the two. The finding carries the event's span, the service and instance it
blames (for a client span the callee, whose network the call's own time measures), the
observed key and the expected keys with their probabilities, and observed versus expected
duration and self time.

Model directory (`spanomaly train --model DIR`):

    config.json               format, format_version, features, detectors with their
                              parameters and thresholds, the data period trained on
    vocabulary.json           event keys (ids are positions; 0-3 are special tokens)
    sequence.safetensors      the sequence detector's arrays (LSTM weights or n-gram counts)
    duration.safetensors      the duration detector's arrays

No pickle: weights are safetensors, everything else JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly import __version__
from spanomaly.detect import duration as _duration  # noqa: F401  (registers detectors)
from spanomaly.detect import sequence as _sequence  # noqa: F401
from spanomaly.detect.base import REGISTRY, split_rows
from spanomaly.detect.trace import REASON_TEXT, EventScores, Reason, TraceDetector, segment_argmax
from spanomaly.errors import InputError, ModelError
from spanomaly.features.traces import FeatureConfig, Sequences, Vocabulary, sequences
from spanomaly.schema import FINDINGS

log = logging.getLogger(__name__)

FORMAT = "spanomaly-trace-model"
FORMAT_VERSION = 1
ROLES = ("sequence", "duration")
SEQUENCE_DETECTORS = tuple(n for n, c in REGISTRY.items() if c.kind == "sequence")
DURATION_DETECTORS = tuple(n for n, c in REGISTRY.items() if c.kind == "duration")
TOP_EXPECTED = 5
LOG_KEY_PREFIX = "log | "  # event keys of log lines (spanomaly.features.logs)
MAX_LISTED_EVENTS = 10


def finding_id(trace_id: str) -> str:
    """Stable id of the finding of a trace: re-running detect stores it once."""
    return hashlib.sha1(f"trace:{trace_id}".encode()).hexdigest()[:16]


def iso(ns: int | None) -> str | None:
    """ISO-8601 UTC of a time in ns."""
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


@dataclass
class TraceResult:
    """Scores and decisions per trace, and the findings of the anomalous ones."""

    trace_ids: np.ndarray
    start_ns: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # score / threshold per role
    flagged: dict[str, np.ndarray] = field(default_factory=dict)
    findings: pa.Table = field(default_factory=FINDINGS.empty_table)

    @property
    def anomalous(self) -> np.ndarray:
        """Whether each trace is flagged by any detector."""
        out = np.zeros(len(self.trace_ids), dtype=bool)
        for f in self.flagged.values():
            out |= f
        return out

    @property
    def score(self) -> np.ndarray:
        """The trace score: the largest of the detectors' score / threshold (> 1: anomalous)."""
        out = np.zeros(len(self.trace_ids))
        for s in self.scores.values():
            out = np.maximum(out, s)
        return out


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
        for role, det in self.detectors_.items():
            ev = det.score_events(data)
            per_event[role] = ev
            raw = ev.trace_scores(data.offsets)
            rule = ev.trace_rule(data.offsets)
            result.scores[role] = raw / det.threshold_
            result.flagged[role] = (raw > det.threshold_) | rule
        return result, data, per_event

    def detect(self, events: pa.Table) -> TraceResult:
        """Scores, decisions and a finding (with its explanation) per anomalous trace."""
        result, data, per_event = self.score(events)
        result.findings = self._explain(data, result, per_event)
        return result

    def _primary(
        self, data: Sequences, per_event: dict[str, EventScores]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per role: the primary event of every trace (-1 if none) and its ratio."""
        out = {}
        for role, ev in per_event.items():
            det = self.detectors_[role]
            ratio = ev.score / det.threshold_
            anomalous = det.event_flags(ev)
            if role == "sequence":
                # the first deviating event; the end when only the end deviates. A
                # deviating error-level log line says where a failure was caught: the first
                # of them is named. Else, errors travel up the call tree (a failed call
                # fails its callers), so where deviating spans are errors, the last of them
                # (the deepest) is named.
                lines = _error_lines(data)
                weight = anomalous.astype(np.float64)
                weight[anomalous & lines] = 2.0
                idx = segment_argmax(weight, data.offsets)
                has = np.zeros(data.n_traces, dtype=bool)
                ok = idx >= 0
                has[ok] = anomalous[idx[ok]]
                idx = np.where(has, idx, -1)
                on_line = np.zeros(data.n_traces, dtype=bool)
                on_line[has] = lines[idx[has]]
                err_idx = self._last_error(data, anomalous)
                idx = np.where((err_idx >= 0) & ~on_line, err_idx, idx)
            else:
                idx = segment_argmax(np.where(anomalous, ratio, -np.inf), data.offsets)
            r = np.where(idx >= 0, ratio[np.maximum(idx, 0)] if len(ratio) else 0.0, 0.0)
            out[role] = (idx, r)
        return out

    @staticmethod
    def _last_error(data: Sequences, anomalous: np.ndarray) -> np.ndarray:
        """Per trace, the last deviating event whose status is an error (-1 if none)."""
        if data.events is None or "status_class" not in data.events.column_names:
            return np.full(data.n_traces, -1, dtype=np.int64)
        err = np.asarray(
            pc.equal(data.events.column("status_class"), "error")
            .fill_null(False)
            .to_numpy(zero_copy_only=False),
            dtype=bool,
        )
        pos = np.arange(len(anomalous), dtype=np.float64)
        last = segment_argmax(np.where(anomalous & err, pos, -1.0), data.offsets)
        ok = last >= 0
        hit = np.zeros(data.n_traces, dtype=bool)
        hit[ok] = (anomalous & err)[last[ok]]
        return np.where(hit, last, -1)

    def _explain(
        self, data: Sequences, result: TraceResult, per_event: dict[str, EventScores]
    ) -> pa.Table:
        flagged = np.flatnonzero(result.anomalous)
        if not len(flagged) or data.events is None:
            return FINDINGS.empty_table()
        ev_tab = data.events
        col = {
            name: ev_tab.column(name).to_numpy(zero_copy_only=False)
            for name in (
                "span_id",
                "service",
                "instance",
                "operation",
                "key",
                "parent_service",
                "blame_service",
                "blame_instance",
                "start_ns",
                "duration_ns",
                "self_ns",
            )
        }
        primary = self._primary(data, per_event)
        # log-line events (features.logs): a deviation among them is weaker evidence of
        # where a trace lost time than the duration detector's measured excess
        is_log = pc.starts_with(ev_tab.column("key"), LOG_KEY_PREFIX).to_numpy(zero_copy_only=False)
        warned = pc.match_substring(ev_tab.column("key"), " | WARN | ").to_numpy(
            zero_copy_only=False
        )
        serious = is_log & (_error_lines(data) | warned)
        seq = per_event.get("sequence")
        dur = per_event.get("duration")
        # expected keys at the sequence detector's primary position, in one batch
        expected: dict[int, list[tuple[int, float]]] = {}
        if seq is not None:
            seq_det = self.detectors_["sequence"]
            idx, _ = primary["sequence"]
            sel = flagged[result.flagged["sequence"][flagged]]
            pos = np.where(idx[sel] >= 0, idx[sel] - data.offsets[sel], data.lengths[sel])
            lists = seq_det.expected(data, sel, pos, TOP_EXPECTED)  # type: ignore[attr-defined]
            expected = dict(zip(sel.tolist(), lists, strict=True))
        tokens = self.vocabulary_.tokens
        rows: list[dict[str, Any]] = []
        for t in flagged.tolist():
            lo, hi = int(data.offsets[t]), int(data.offsets[t + 1])
            roles = [r for r in self.detectors_ if result.flagged[r][t]]
            choice = self._choose(roles, t, primary, per_event, data, is_log)
            ev_scores = per_event[choice]
            e_idx = int(primary[choice][0][t])
            at_end = e_idx < 0  # the sequence detector's end: name the last event
            e = hi - 1 if at_end else e_idx
            if e < lo:  # an empty trace: nothing to name
                continue
            # a span event that deviates right after a warning or error line: the flow of
            # the span that wrote the line changed there, so its service and instance are
            # blamed rather than (for a client span) the callee
            b = e - 1 if choice == "sequence" and e > lo and serious[e - 1] and not is_log[e] else e
            det = self.detectors_[choice]
            reason = Reason(
                int(ev_scores.reason[e]) if not at_end else int(_end_reason(ev_scores, t))
            )
            event = {
                "index": e - lo,
                "span_id": col["span_id"][e],
                "service": col["service"][e],
                "instance": col["instance"][e],
                "operation": col["operation"][e],
                "key": col["key"][e],
                "parent_service": col["parent_service"][e],
                "start": iso(int(col["start_ns"][e])),
                "duration_ms": round(col["duration_ns"][e] / 1e6, 3),
                "self_ms": round(col["self_ns"][e] / 1e6, 3),
            }
            details: dict[str, Any] = {
                "trace_id": result.trace_ids[t],
                "detector": det.name,
                "reason": REASON_TEXT[reason],
                "event": event,
                "at_end": at_end,
                "blame": {"service": col["blame_service"][b], "instance": col["blame_instance"][b]},
                "scores": {r: round(float(result.scores[r][t]), 4) for r in self.detectors_},
                "sequence": None,
                "duration": None,
            }
            if seq is not None and t in expected:
                si = int(primary["sequence"][0][t])
                s_end = si < 0
                s_e = hi - 1 if s_end else si
                logp = float(seq.extra["end_logp"][t] if s_end else seq.extra["logp"][s_e])
                # the key before the deviation: the last event for the end, else the previous
                before = s_e if s_end else s_e - 1
                previous = col["key"][before] if before >= lo else "<start>"
                details["sequence"] = {
                    "detector": self.detectors_["sequence"].name,
                    "event_index": (hi - lo) if s_end else s_e - lo,
                    "observed": "<end>" if s_end else col["key"][s_e],
                    "previous": previous,
                    "p": float(np.exp(logp)),
                    "rank": int(seq.extra["end_rank"][t] if s_end else seq.extra["rank"][s_e]),
                    "expected": [{"key": tokens[k], "p": round(p, 6)} for k, p in expected[t]],
                    "threshold_p": float(np.exp(-self.detectors_["sequence"].threshold_)),
                }
            if dur is not None and dur.score[lo:hi].max() > 0:
                di = int(primary["duration"][0][t])
                d_e = di if di >= 0 else int(lo + np.argmax(dur.score[lo:hi]))
                x = dur.extra
                details["duration"] = {
                    "detector": self.detectors_["duration"].name,
                    "event_index": d_e - lo,
                    "span_id": col["span_id"][d_e],
                    "duration_ms": round(col["duration_ns"][d_e] / 1e6, 3),
                    "normal_duration_ms": _ms(x["normal_duration_ms"][d_e]),
                    "upper_duration_ms": _ms(x["upper_duration_ms"][d_e]),
                    "self_ms": round(col["self_ns"][d_e] / 1e6, 3),
                    "normal_self_ms": _ms(x["normal_self_ms"][d_e]),
                    "upper_self_ms": _ms(x["upper_self_ms"][d_e]),
                    "excess_ms": _ms(dur.score[d_e]),
                    "trace_excess_ms": _ms(dur.score[lo:hi].sum()),
                    "threshold_ms": _ms(self.detectors_["duration"].threshold_),
                }
            details["anomalous_events"] = _listed(per_event, self.detectors_, lo, hi, col)
            if choice == "sequence" and seq is not None:
                details["log_flow_only"] = self._log_flow_only(seq, is_log, serious, t, lo, hi)
            rows.append(
                {
                    "finding_id": finding_id(str(result.trace_ids[t])),
                    "time_ns": int(col["start_ns"][e]),
                    "detector": f"{choice}:{det.name}",
                    "entity": "trace",
                    "trace_id": str(result.trace_ids[t]),
                    "span_id": col["span_id"][e],
                    "service": col["blame_service"][b],
                    "instance": col["blame_instance"][b],
                    "operation": col["operation"][e],
                    # a rule (unknown key, impossible transition) flags whatever the score
                    "score": round(max(float(result.score[t]), 1.0), 6),
                    "threshold": 1.0,
                    "reason": _reason_line(reason, details, at_end),
                    "details": json.dumps(details, default=_json_default),
                    "feedback": None,
                }
            )
        return pa.Table.from_pylist(rows, schema=FINDINGS)

    def _choose(
        self,
        roles: list[str],
        t: int,
        primary: dict[str, tuple[np.ndarray, np.ndarray]],
        per_event: dict[str, EventScores],
        data: Sequences,
        is_log: np.ndarray,
    ) -> str:
        if len(roles) == 1:
            return roles[0]
        seq = per_event["sequence"]
        lo, hi = data.offsets[t], data.offsets[t + 1]
        if self._about_logs(seq, is_log, lo, hi):
            return "duration"
        if seq.rule[lo:hi].any() or seq.end_rule[t]:
            return "sequence"
        seq_ratio = max(
            float(primary["sequence"][1][t]),
            float(seq.end_score[t]) / self.detectors_["sequence"].threshold_,
        )
        return "sequence" if seq_ratio >= float(primary["duration"][1][t]) else "duration"

    def _about_logs(self, seq: EventScores, is_log: np.ndarray, lo: int, hi: int) -> bool:
        """Whether the sequence deviations of a trace all concern log-line events (the
        deviating event or the one before it is a log line): then, when the duration
        detector flags the trace too, its measured excess explains it better."""
        if not is_log[lo:hi].any():
            return False
        flags = self.detectors_["sequence"].event_flags(seq)[lo:hi]
        idx = np.flatnonzero(flags) + lo
        if not len(idx):
            return False
        before = np.maximum(idx - 1, lo)
        return bool(np.all(is_log[idx] | (is_log[before] & (idx > lo))))

    def _log_flow_only(
        self, seq: EventScores, is_log: np.ndarray, serious: np.ndarray, t: int, lo: int, hi: int
    ) -> bool:
        """Whether a trace's sequence deviations only reorder known, ordinary log lines: each
        deviation concerns a log line (as `_about_logs`), none is a warning or error line,
        an unknown key or the trace's end. Such a deviation says the flow of log lines
        changed, not where the trace failed or lost time."""
        if not self._about_logs(seq, is_log, lo, hi):
            return False
        det = self.detectors_["sequence"]
        if seq.end_rule[t] or seq.end_score[t] > det.threshold_:
            return False
        idx = np.flatnonzero(det.event_flags(seq)[lo:hi]) + lo
        before = np.maximum(idx - 1, lo)
        return not (
            serious[idx].any()
            or (serious[before] & (idx > lo)).any()
            or (seq.reason[idx] == Reason.UNKNOWN).any()
        )

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
        tmp.write_text(json.dumps(doc, indent=2, allow_nan=False, default=_json_default))
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


def _error_lines(data: Sequences) -> np.ndarray:
    """Per event: whether it is an error-level log line (features.logs)."""
    ev = data.events
    if ev is None or "status_class" not in ev.column_names:
        return np.zeros(data.n_events, dtype=bool)
    is_log = pc.starts_with(ev.column("key"), LOG_KEY_PREFIX)
    is_error = pc.equal(ev.column("status_class"), "error")
    return pc.and_(is_log, is_error).to_numpy(zero_copy_only=False).astype(bool)


def _end_reason(ev: EventScores, t: int) -> Reason:
    reason = Reason.EARLY_END
    if ev.end_rule[t]:
        reason = Reason.IMPOSSIBLE
    return reason


def _listed(
    per_event: dict[str, EventScores],
    detectors: dict[str, TraceDetector],
    lo: int,
    hi: int,
    col: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """The anomalous events of one trace, most deviating first (at most MAX_LISTED_EVENTS)."""
    out = []
    for role, ev in per_event.items():
        thr = detectors[role].threshold_
        s = ev.score[lo:hi]
        hit = np.flatnonzero(detectors[role].event_flags(ev)[lo:hi])
        for i in hit[np.argsort(-s[hit], kind="stable")][:MAX_LISTED_EVENTS]:
            e = lo + int(i)
            out.append(
                {
                    "index": int(i),
                    "span_id": col["span_id"][e],
                    "service": col["blame_service"][e],
                    "operation": col["operation"][e],
                    "detector": detectors[role].name,
                    "reason": REASON_TEXT[Reason(int(ev.reason[e]))],
                    "score": round(float(s[i] / thr), 4),
                }
            )
    out.sort(key=lambda d: -d["score"])
    return out[:MAX_LISTED_EVENTS]


def _reason_line(reason: Reason, details: dict[str, Any], at_end: bool) -> str:
    ev = details["event"]
    what = f"{ev['service']} {ev['operation']}"
    seq = details.get("sequence")
    dur = details.get("duration")
    if reason in (Reason.SLOW, Reason.SLOW_SELF) and dur is not None:
        blame = details["blame"]["service"]
        where = f" (blames {blame})" if blame and blame != ev["service"] else ""
        if reason == Reason.SLOW_SELF:
            return (
                f"slow self time of {what}: {dur['self_ms']:.1f} ms, normal "
                f"{dur['normal_self_ms']:.1f} ms (up to {dur['upper_self_ms']:.1f}){where}"
            )
        return (
            f"slow span {what}: {dur['duration_ms']:.1f} ms, normal "
            f"{dur['normal_duration_ms']:.1f} ms (up to {dur['upper_duration_ms']:.1f}){where}"
        )
    top = ""
    if seq is not None and seq["expected"]:
        best = seq["expected"][0]
        top = f"; expected {best['key']} (p={best['p']:.2f})"
    if at_end:
        if reason == Reason.IMPOSSIBLE:
            return f"impossible transition: no trace ended after {what}{top}"
        return f"trace ended early after {what}{top}"
    if reason == Reason.UNKNOWN:
        return f"unknown event {ev['key']}"
    if reason == Reason.IMPOSSIBLE and seq is not None:
        return f"impossible transition {seq['previous']} -> {ev['key']}"
    p = f" (p={seq['p']:.2g})" if seq is not None else ""
    return f"unexpected event {what}{p}{top}"


def _ms(value: float) -> float:
    return round(float(value), 3)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
