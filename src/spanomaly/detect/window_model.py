"""The window model: instance windows judged by a point detector per source.

Per source of instance windows (`traces`: RED features of the spans, and log shares where
the trace model has templates; `metrics`: the instance's metrics), a `Normalizer` turns raw
windows into z-scores against the service's normal and a point detector (`detect.point`,
ECOD by default) scores them; its threshold is set on the latest training windows, which
neither the normaliser nor the detector saw, so new normal data is judged as held-out
windows were. The self-time profile of the span features is part of the model.

Model directory (`<model>/point/`):

    config.json                  format, detector, parameters, window, sources and their
                                 features, host metrics left out, the period trained on
    profile.json                 the self-time profile of every event key
    <source>-normalizer.json     the source's normaliser
    <source>-config.json         the source's detector (`detect.base` persistence)
    <source>-weights.safetensors
    <source>-peers.json          the normal spread of instances against their peers and
                                 the limit of the peer score (`detect.peer_check`)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa

from spanomaly.detect.base import FeatureInfo, detectors
from spanomaly.detect.peer_check import PeerCheck
from spanomaly.detect.point import PointDetector as Detector
from spanomaly.detect.window_findings import FlaggedWindows, window_findings
from spanomaly.errors import ModelError
from spanomaly.features.windows import InstanceWindows, Normalizer, SelfTimeProfile
from spanomaly.schema import FINDINGS

log = logging.getLogger(__name__)

FORMAT = "spanomaly-point-model"
SOURCES = ("traces", "metrics")
MIN_WINDOWS = 10  # a source with fewer training windows gets no detector


# the score of each instance window scored, beside its threshold (what "how anomalous is
# this instance now" reads: the collector's /metrics gauges)
LEVELS = pa.schema(
    [
        ("time_ns", pa.int64()),
        ("service", pa.string()),
        ("instance", pa.string()),
        ("source", pa.string()),
        ("score", pa.float64()),
        ("threshold", pa.float64()),
    ]
)


def _levels(
    source: str, w: InstanceWindows, rows: np.ndarray, scores: np.ndarray, threshold: float
) -> pa.Table:
    return pa.table(
        {
            "time_ns": w.column("time_ns")[rows],
            "service": w.column("service")[rows],
            "instance": w.column("instance")[rows],
            "source": np.full(len(rows), source, dtype=object),
            "score": scores[rows],
            "threshold": np.full(len(rows), threshold),
        },
        schema=LEVELS,
    )


def matrix(X: np.ndarray) -> np.ndarray:
    """The detectors' input: finite values only (a missing feature reads as normal, 0)."""
    return np.nan_to_num(X, nan=0.0, posinf=1e12, neginf=-1e12)


@dataclass(kw_only=True)
class WindowModel:
    """A normaliser and a point detector per source of instance windows (the fields are
    its parameters; learned state, set by `fit` or `load`, ends in `_`)."""

    detector: str = "ecod"
    params: dict[str, Any] | None = None
    window_s: float = 60.0
    recent: int = 10
    target_fpr: float = 1e-3
    random_state: int = 0

    @property
    def window_ns(self) -> int:
        """The window length in ns."""
        return int(self.window_s * 1e9)

    # -- fitting --------------------------------------------------------------------------

    def _make(self) -> Detector:
        cls = detectors("point")[self.detector]
        # the normaliser's features are z-scores: the detector says what suits them
        wanted = cls.params_for(FeatureInfo(z_scores=True))
        params = {**wanted, **(self.params or {})}
        det = cls(target_fpr=self.target_fpr, random_state=self.random_state, **params)
        assert isinstance(det, Detector)
        return det

    def fit(
        self,
        windows: dict[str, InstanceWindows],
        profile: SelfTimeProfile,
        host_metrics: list[str],
        period: tuple[int | None, int | None],
        logs: bool,
        labels: dict[str, np.ndarray] | None = None,
    ) -> Self:
        """Fit a normaliser and a detector per source on normal windows (host metrics left
        out; a source with fewer than MIN_WINDOWS windows or no feature is left out too);
        a detector that requires labels gets them per window from labels."""
        self.profile_ = profile
        self.host_metrics_ = list(host_metrics)
        self.period_ = period
        self.logs_ = logs
        self.sources_: dict[str, tuple[Normalizer, Detector]] = {}
        self.peers_: dict[str, PeerCheck] = {}
        self.trained_: dict[str, dict[str, Any] | None] = {}
        self.skipped_: dict[str, str] = {}
        for source, w in windows.items():
            w = w.select([n for n in w.names if n not in self.host_metrics_])
            if w.n < MIN_WINDOWS or not w.names:
                self.trained_[source] = None
                why = f"{w.n} windows, fewer than {MIN_WINDOWS}" if w.names else "no feature"
                self.skipped_[source] = f"{why}: no detector for the {source} windows"
                log.warning("window model: %s", self.skipped_[source])
                continue
            norm, det = self._fit_source(w, None if labels is None else labels[source])
            self.sources_[source] = (norm, det)
            self.peers_[source] = PeerCheck().fit(w)
            self.trained_[source] = {
                "windows": w.n,
                "features": len(norm.feature_names()),
                "threshold": det.threshold_,
                "validation_fpr": det.validation_fpr_,
            }
        return self

    def _fit_source(self, w: InstanceWindows, y: np.ndarray | None) -> tuple[Normalizer, Detector]:
        det = self._make()
        if det.requires_labels:  # fitted and calibrated on every labelled window
            # the normaliser describes normal behaviour: the windows labelled normal
            normal = np.asarray(y) == getattr(det, "normal_label", "normal")
            norm = Normalizer(recent=self.recent).fit(w.take(normal) if normal.any() else w)
            det.fit(matrix(norm.transform(w)), y, groups=w.groups())
            return norm, det
        # the threshold is set on the latest windows, which neither the normaliser nor the
        # detector saw: new normal data is judged as the held-out windows were
        held: np.ndarray | None = w.latest(det.validation_fraction)
        if held is not None and (held.all() or not held.any()):
            held = None
        fit_rows = w if held is None else w.take(~held)
        norm = Normalizer(recent=self.recent).fit(fit_rows)
        det.fit(matrix(norm.transform(w)), groups=w.groups(), validation=held)
        return norm, det

    def relevel(self, windows: dict[str, InstanceWindows]) -> dict[str, dict[str, int]]:
        """Move each source's normal levels to a new deployment's (`Normalizer.relevel`);
        the detectors stay. Per source, the features moved per service."""
        return {
            source: norm.relevel(windows[source])
            for source, (norm, _) in self.sources_.items()
            if source in windows and windows[source].n
        }

    # -- scoring --------------------------------------------------------------------------

    def detect(
        self, source: str, w: InstanceWindows, keep: np.ndarray
    ) -> tuple[pa.Table, int, int, pa.Table]:
        """Score the windows of one source; findings of the anomalous ones among `keep`
        (the others only give the recent past); (findings, scored, anomalous, levels: the
        score and threshold of every window of `keep`, `LEVELS`)."""
        norm, det = self.sources_[source]
        X = matrix(norm.transform(w))
        groups = w.groups()
        scores = det.score(X, groups=groups)
        idx = np.flatnonzero(np.asarray(keep))
        flagged = idx[scores[idx] > det.threshold_]
        levels = _levels(source, w, idx, scores, float(det.threshold_))
        peers = self._peer_findings(source, w, idx, flagged)
        if not len(flagged):
            return peers, len(idx), len(flagged), levels
        found = FlaggedWindows(
            source=source,
            detector=self.detector,
            windows=w,
            features=norm.feature_names(),
            X=X,
            scores=scores,
            threshold=float(det.threshold_),
            rows=flagged,
            surprise=self._surprise(norm, det, w, scores, flagged),
            contributions=det.explain(X, groups=groups)[flagged],
            fault_types=det.predict_class(X[flagged]) if hasattr(det, "predict_class") else None,
        )
        found_rows = window_findings(found, self.window_ns)
        return pa.concat_tables([found_rows, peers]), len(idx), len(flagged), levels

    def _peer_findings(
        self, source: str, w: InstanceWindows, idx: np.ndarray, flagged: np.ndarray
    ) -> pa.Table:
        """Findings of the windows of idx that deviate from their peers past the limit
        (`detect.peer_check`) and that the detector did not flag already."""
        from scipy.stats import norm as gauss

        check = getattr(self, "peers_", {}).get(source)
        if check is None or not np.isfinite(check.limit):
            return FINDINGS.empty_table()
        score, z = check.score(w)
        rows = np.setdiff1d(idx[score[idx] > check.limit], flagged)
        if not len(rows):
            return FINDINGS.empty_table()
        found = FlaggedWindows(
            source=source, detector="peer", windows=w,
            features=[f"p.{n}" for n in check.names], X=z, scores=score,
            threshold=check.limit, rows=rows, surprise=-gauss.logsf(score[rows]),
            contributions=z[rows],
        )  # fmt: skip
        return window_findings(found, self.window_ns)

    @staticmethod
    def _surprise(
        norm: Normalizer, det: Detector, w: InstanceWindows, scores: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        """What the ranking weighs: with per-feature tails (ECOD), the largest increase
        against the instance's recent past; else the surprise of the score."""
        if not hasattr(det, "tail_surprise"):
            return det.surprise_of(scores[rows])
        feats = norm.feature_names()
        changed = [j for j, f in enumerate(feats) if f.startswith("d.")] or list(range(len(feats)))
        # the flagged instances' windows only (their changes need their own recent past)
        inst = w.column("instance")
        theirs = np.isin(inst, inst[rows])
        at = np.cumsum(theirs)[rows] - 1  # the flagged windows among theirs
        weighed = matrix(norm.transform(w.take(theirs), predictive=True))[at]
        return det.tail_surprise(weighed, changed)

    # -- persistence ----------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The model's config.json document."""
        return {
            "format": FORMAT,
            "format_version": 1,
            "detector": self.detector,
            "params": self.params or {},
            "window_s": self.window_s,
            "target_fpr": self.target_fpr,
            "sources": {s: {"features": n.feature_names()} for s, (n, _) in self.sources_.items()},
            "period_from_ns": self.period_[0],
            "period_to_ns": self.period_[1],
            "logs": self.logs_,
            "host_metrics": self.host_metrics_,
        }

    def save(self, directory: str | Path) -> None:
        """Write the model into directory (config.json last)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps(self.profile_.to_json()))
        for source, (norm, det) in self.sources_.items():
            det.save(out, prefix=f"{source}-")
            (out / f"{source}-normalizer.json").write_text(json.dumps(norm.to_json()))
            if source in getattr(self, "peers_", {}):
                peers = self.peers_[source].to_json()
                (out / f"{source}-peers.json").write_text(json.dumps(peers))
        (out / "config.json").write_text(json.dumps(self.config(), indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> WindowModel | None:
        """The model in directory, or None when there is none."""
        path = Path(directory)
        if not (path / "config.json").exists():
            return None
        try:
            config = json.loads((path / "config.json").read_text())
            model = cls(
                detector=config["detector"],
                params=config.get("params") or None,
                window_s=float(config["window_s"]),
                target_fpr=float(config.get("target_fpr", 1e-3)),
            )
            model.profile_ = SelfTimeProfile.from_json(
                json.loads((path / "profile.json").read_text())
            )
            model.sources_ = {}
            model.peers_ = {}
            for source in config["sources"]:
                peers = path / f"{source}-peers.json"
                if peers.exists():  # a model of an earlier version has none
                    model.peers_[source] = PeerCheck.from_json(json.loads(peers.read_text()))
                norm = Normalizer.from_json(
                    json.loads((path / f"{source}-normalizer.json").read_text())
                )
                model.sources_[source] = (norm, Detector.load(path, prefix=f"{source}-"))
            model.recent = max((n.recent for n, _ in model.sources_.values()), default=0)
            model.period_ = (config.get("period_from_ns"), config.get("period_to_ns"))
            model.logs_ = bool(config.get("logs"))
            model.host_metrics_ = list(config.get("host_metrics", []))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{path}: cannot read the point model: {exc}") from exc
        return model

    @property
    def lookback_ns(self) -> int:
        """How much past a window's score needs: its `recent` windows."""
        return self.recent * self.window_ns


def window_length_ns(directory: str | Path) -> int:
    """The window length in ns of the model in directory (0 without one)."""
    path = Path(directory) / "config.json"
    if not path.exists():
        return 0
    return int(float(json.loads(path.read_text())["window_s"]) * 1e9)
