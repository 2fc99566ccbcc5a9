"""Point anomalies: the instance-window family of the detector contract (`detect/base.py`).

A row is an instance window of a feature matrix.

    det = ECOD(target_fpr=1e-3)         # __init__ only stores its keyword arguments
    det.fit(X)                          # -> det; learned state ends in `_`
    det.score(X)                        # per window, higher = more anomalous
    det.predict(X)                      # score > threshold_
    det.surprise(X)                     # -log10 of the p-value under normal data
    det.explain(X)                      # per-feature contributions (names the metric)

`fit` holds out `validation_fraction` of the (normal) training windows (or the windows
`validation=` marks: the pipeline holds out the latest ones, so the threshold also covers
drift over time), fits `_fit` on the rest, then sets `threshold_` on the held-out windows at
`target_fpr` with `fit_threshold` (empirical quantile, else a Pareto tail). The held-out scores
also calibrate `surprise`: the empirical tail probability, extended past the largest
held-out score by an exponential tail fitted to the top scores (peaks over threshold), so
scores far beyond anything normal stay comparable instead of saturating. Labels of the
scored data never touch a threshold.

Detectors that compare an instance with its peers take `groups` (one id per window: the
same time and service, `InstanceWindows.groups()`); the others ignore it.

Registered detectors (kind `point` in `detect.base.REGISTRY`; `detectors("point")`):

    ecod      ECOD (empirical cumulative distribution tails; Li et al. 2022), in numpy;
              with `tail=True` (default) a value beyond the training range keeps growing
              with an exponential tail per feature instead of saturating at log(n)
    iforest   scikit-learn Isolation Forest
    lof       scikit-learn Local Outlier Factor (novelty mode)
    dbscan    DBSCAN on the training windows; a window farther than eps from every core
              sample is noise, the anomaly (threshold fixed at 1.0, eps from the training
              windows' k-distances)
    peer      peer comparison: each instance against the median of the other instances
              of its service in the same window, in units of the normal peer spread

Why not PyOD's ECOD: its `decision_function` recomputes the tails over training *and*
scored data together (the scored batch shifts its own scores; a burst of anomalies hides
itself) and stores the result on the model; it also imports matplotlib. The numpy version
here scores new windows against the training tails only.

Persistence is the contract's (config.json and safetensors, no pickle). Detectors whose state is a scikit-learn estimator keep their training matrix
and refit it on load (deterministic under `random_state`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from spanomaly.detect.base import Detector, FeatureInfo, fit_threshold, register
from spanomaly.errors import ModelError


class PointDetector(Detector):
    """Base of the point detectors: validation split, threshold, calibration, persistence."""

    kind: ClassVar[str] = "point"
    ROWS: ClassVar[str] = "windows"
    MIN_FIT_ROWS: ClassVar[int] = 4
    # False: the threshold is the detector's own (e.g. DBSCAN's eps), not a quantile
    QUANTILE_THRESHOLD: ClassVar[bool] = True
    TAIL_FRACTION: ClassVar[float] = 0.05
    _COMMON_STATE: ClassVar[tuple[str, ...]] = (
        "threshold_",
        "validation_fpr_",
        "n_validation_",
        "n_features_",
        "n_train_",
        "tail_start_",
        "tail_scale_",
    )
    _COMMON_ARRAYS: ClassVar[tuple[str, ...]] = ("calibration_",)

    # -- the family's part of the contract ------------------------------------------------

    def _matrix(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ModelError(f"{self.name}: expected a 2-d feature matrix, got shape {X.shape}")
        if np.isnan(X).any():
            rows = np.flatnonzero(np.isnan(X).any(axis=1))
            raise ModelError(f"{self.name}: NaN in {len(rows)} windows (first: row {rows[0]})")
        return np.nan_to_num(X, posinf=1e12, neginf=-1e12)

    def _check_input(self, X: Any) -> np.ndarray:
        return self._matrix(X)

    def _n_rows(self, X: np.ndarray) -> int:
        return int(X.shape[0])

    def _take(self, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return X[rows]

    def _check_fitted(self, X: np.ndarray | None = None) -> None:
        super()._check_fitted()
        if X is not None and X.shape[1] != self.n_features_:
            raise ModelError(
                f"{self.name}: {X.shape[1]} features, but fitted on {self.n_features_}"
            )

    def _learn(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> None:
        self.n_features_ = X.shape[1]
        self._fit(X, y, groups)
        self.n_train_ = X.shape[0]

    def _calibrate(self, X: np.ndarray, groups: np.ndarray | None) -> None:
        self._calibrate_scores(self._score(X, groups))

    def _calibrate_scores(self, scores: np.ndarray) -> None:
        s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
        if self.QUANTILE_THRESHOLD:
            self.threshold_ = fit_threshold(s, self.target_fpr)
        else:
            self.threshold_ = float(self._own_threshold())
        self.validation_fpr_ = float((s > self.threshold_).mean()) if len(s) else 0.0
        self.n_validation_ = len(s)
        self.calibration_ = s
        n_tail = max(int(len(s) * self.TAIL_FRACTION), min(10, len(s)))
        tail = s[len(s) - n_tail :] if n_tail else s
        self.tail_start_ = float(tail[0]) if len(tail) else 0.0
        excess = tail - self.tail_start_
        self.tail_scale_ = float(max(excess.mean() if len(excess) else 0.0, 1e-9))

    def _own_threshold(self) -> float:
        raise NotImplementedError

    def score(self, X: Any, groups: np.ndarray | None = None) -> np.ndarray:
        """Per window, higher = more anomalous."""
        X = self._matrix(X)
        self._check_fitted(X)
        return self._score(X, groups)

    def predict(self, X: Any, groups: np.ndarray | None = None) -> np.ndarray:
        """Whether each window is anomalous."""
        return self.score(X, groups) > self.threshold_

    def surprise_of(self, scores: np.ndarray) -> np.ndarray:
        """-log10 of the p-value of scores under the held-out normal windows.

        Empirical up to the start of the validation tail; past it an exponential tail, so a
        score far beyond every normal one keeps growing instead of saturating at log10(n).
        """
        self._check_fitted()
        s = self.calibration_
        n = len(s)
        scores = np.asarray(scores, dtype=np.float64)
        if n == 0:
            return np.zeros(len(scores))
        above = n - np.searchsorted(s, scores, side="left")
        p = (above + 1.0) / (n + 1.0)
        n_tail = n - np.searchsorted(s, self.tail_start_, side="left")
        beyond = scores > self.tail_start_
        p_tail = (
            (n_tail + 1.0) / (n + 1.0) * np.exp(-(scores - self.tail_start_) / self.tail_scale_)
        )
        p = np.where(beyond, np.minimum(p, p_tail), p)
        return -np.log10(np.clip(p, 1e-300, 1.0))

    def surprise(self, X: Any, groups: np.ndarray | None = None) -> np.ndarray:
        """-log10 p of each window under normal data (see `surprise_of`)."""
        return self.surprise_of(self.score(X, groups))

    def explain(self, X: Any, groups: np.ndarray | None = None) -> np.ndarray:
        """Per-window, per-feature contribution to the anomaly (default: |X|, X being z)."""
        X = self._matrix(X)
        self._check_fitted(X)
        return self._explain(X, groups)

    def _explain(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        return np.abs(X)

    # -- to be written by a detector ------------------------------------------------------

    def _fit(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> None:
        raise NotImplementedError

    def _score(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError


class _RefitOnLoad(PointDetector):
    """A detector whose state is a scikit-learn estimator: it keeps its training matrix and
    refits the estimator on load (deterministic under random_state)."""

    def _fit(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> None:
        self.X_train_ = X
        self._fit_estimator(X)

    def _fit_estimator(self, X: np.ndarray) -> None:
        raise NotImplementedError

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"X_train_": self.X_train_}

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.X_train_ = np.asarray(arrays["X_train_"], dtype=np.float64)
        self._fit_estimator(self.X_train_)


# -- ECOD -------------------------------------------------------------------------------------


def _normal_excess(x: np.ndarray, last: float, base: float) -> np.ndarray:
    """Where x lies past the largest training value `last`: base plus -log P(Z > x) +
    log P(Z > last) for a standard normal Z (how much rarer x is than `last`); 0 elsewhere."""
    from scipy.special import log_ndtr

    past = x > last
    out = np.zeros(len(x))
    if past.any():
        out[past] = base + log_ndtr(-last) - log_ndtr(-x[past])
    return out


@register
class ECOD(PointDetector):
    """Empirical-CDF outlier detection: the sum over features of -log of the smaller tail
    probability of the value under the training distribution of that feature."""

    name = "ecod"
    # in the units of the features: the normaliser's z-scores, where the top 5 % of a
    # standard normal lie about 0.4 beyond their start
    MIN_TAIL_SCALE = 0.25

    def __init__(
        self,
        *,
        tail: bool = True,
        tail_fraction: float = 0.05,
        normal_tail: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.tail = tail
        self.tail_fraction = tail_fraction
        # the features are z-scores (standard normal in normal operation, as the point
        # pipeline's normaliser makes them): past the training range the surprise grows as
        # the normal's, about z^2 / 2, not linearly in z. The normaliser already turned a
        # value's tail probability into its z; a linear tail would count a memory leak at
        # 2.5 times its normal (z 14, p ~ 1e-43) as a few ordinary deviations.
        self.normal_tail = normal_tail

    @classmethod
    def params_for(cls, features: FeatureInfo) -> dict[str, Any]:
        """On z-scores the tail past the training range is the normal's (`normal_tail`)."""
        return {"normal_tail": True} if features.z_scores else {}

    def _fit(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> None:
        self.sorted_ = np.sort(X, axis=0)
        n = X.shape[0]
        k = max(int(n * self.tail_fraction), 1)
        # exponential tails beyond the training range: mean excess over the tail's start,
        # no narrower than MIN_TAIL_SCALE (a feature that never varied in training, or a
        # few training windows, must not turn any change into certainty)
        hi = self.sorted_[n - k :]
        lo = self.sorted_[:k]
        self.right_scale_ = np.maximum((hi - hi[0]).mean(axis=0), self.MIN_TAIL_SCALE)
        self.left_scale_ = np.maximum((lo[-1] - lo).mean(axis=0), self.MIN_TAIL_SCALE)

    def _contributions(self, X: np.ndarray) -> np.ndarray:
        s = self.sorted_
        n = s.shape[0]
        out = np.empty_like(X)
        for j in range(X.shape[1]):  # one pass per feature
            col = s[:, j]
            le = np.searchsorted(col, X[:, j], side="right")  # training values <= x
            ge = n - np.searchsorted(col, X[:, j], side="left")  # training values >= x
            u_l = -np.log((le + 1.0) / (n + 1.0))
            u_r = -np.log((ge + 1.0) / (n + 1.0))
            if self.tail:
                u_r = u_r + np.maximum(X[:, j] - col[-1], 0.0) / self.right_scale_[j]
                u_l = u_l + np.maximum(col[0] - X[:, j], 0.0) / self.left_scale_[j]
            if self.normal_tail:  # past the edge: the edge's surprise, log(n + 1), and more
                edge = math.log(n + 1.0)
                u_r = np.maximum(u_r, _normal_excess(X[:, j], col[-1], edge))
                u_l = np.maximum(u_l, _normal_excess(-X[:, j], -col[0], edge))
            out[:, j] = np.maximum(u_l, u_r)
        return out

    def _score(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        return self._contributions(X).sum(axis=1)

    def tail_surprise(self, X: Any, columns: list[int] | None = None) -> np.ndarray:
        """-log10 of the smallest right-tail probability among some features, Bonferroni-
        corrected for their number: how surprising the largest *increase* of a window is.

        With `tail` the probability keeps falling past the training range, so a CPU at
        eighty times its normal is far more surprising than one at twice.
        """
        X = self._matrix(X)
        self._check_fitted(X)
        cols = list(range(X.shape[1])) if columns is None else list(columns)
        if not cols:
            return np.zeros(X.shape[0])
        s = self.sorted_
        n = s.shape[0]
        out = np.zeros(X.shape[0])
        for j in cols:  # one pass per feature
            col = s[:, j]
            ge = n - np.searchsorted(col, X[:, j], side="left")
            u_r = -np.log((ge + 1.0) / (n + 1.0))
            if self.tail:
                u_r = u_r + np.maximum(X[:, j] - col[-1], 0.0) / self.right_scale_[j]
            out = np.maximum(out, u_r)
        return np.maximum(out / math.log(10.0) - math.log10(len(cols)), 0.0)

    def _explain(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        # what each feature adds beyond a typical value (-log 0.5)
        return np.maximum(self._contributions(X) - math.log(2.0), 0.0)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {
            "sorted_": self.sorted_,
            "right_scale_": self.right_scale_,
            "left_scale_": self.left_scale_,
        }

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.sorted_ = np.asarray(arrays["sorted_"], dtype=np.float64)
        self.right_scale_ = np.asarray(arrays["right_scale_"], dtype=np.float64)
        self.left_scale_ = np.asarray(arrays["left_scale_"], dtype=np.float64)


# -- scikit-learn detectors -------------------------------------------------------------------


@register
class IsolationForest(_RefitOnLoad):
    """scikit-learn's Isolation Forest; score = -score_samples (higher = more isolated)."""

    name = "iforest"

    def __init__(self, *, n_estimators: int = 200, max_samples: int = 256, **kw: Any) -> None:
        super().__init__(**kw)
        self.n_estimators = n_estimators
        self.max_samples = max_samples

    def _fit_estimator(self, X: np.ndarray) -> None:
        from sklearn.ensemble import IsolationForest as SkIsolationForest

        self.estimator_ = SkIsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, X.shape[0]),
            random_state=self.random_state,
        ).fit(X)

    def _score(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        return -self.estimator_.score_samples(X)


@register
class LOF(_RefitOnLoad):
    """scikit-learn's Local Outlier Factor in novelty mode; score = the outlier factor."""

    name = "lof"

    def __init__(self, *, n_neighbors: int = 20, **kw: Any) -> None:
        super().__init__(**kw)
        self.n_neighbors = n_neighbors

    def _fit_estimator(self, X: np.ndarray) -> None:
        from sklearn.neighbors import LocalOutlierFactor

        self.estimator_ = LocalOutlierFactor(
            n_neighbors=min(self.n_neighbors, X.shape[0] - 1), novelty=True
        ).fit(X)

    def _score(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        return -self.estimator_.score_samples(X)


@register
class DBSCANDetector(PointDetector):
    """DBSCAN over the training windows; new windows farther than eps from every core
    sample are noise (anomalous). Score: distance to the nearest core sample in units of
    eps, so the threshold is 1. eps defaults to the `eps_quantile` of the training
    windows' distances to their `min_samples`-th neighbour."""

    name = "dbscan"
    QUANTILE_THRESHOLD = False

    def __init__(
        self,
        *,
        eps: float | None = None,
        min_samples: int = 5,
        eps_quantile: float = 0.99,
        max_train: int = 20000,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.eps = eps
        self.min_samples = min_samples
        self.eps_quantile = eps_quantile
        self.max_train = max_train

    def _fit(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> None:
        from sklearn.cluster import DBSCAN
        from sklearn.neighbors import NearestNeighbors

        if X.shape[0] > self.max_train:
            rng = np.random.default_rng(self.random_state)
            X = X[np.sort(rng.choice(X.shape[0], self.max_train, replace=False))]
        k = min(self.min_samples, X.shape[0] - 1)
        if self.eps is None:
            dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
            self.eps_ = float(max(np.quantile(dist[:, -1], self.eps_quantile), 1e-9))
        else:
            self.eps_ = float(self.eps)
        model = DBSCAN(eps=self.eps_, min_samples=k).fit(X)
        self.labels_ = model.labels_
        self.cores_ = X[model.core_sample_indices_] if len(model.core_sample_indices_) else X
        self._index()

    def _index(self) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.nn_ = NearestNeighbors(n_neighbors=1).fit(self.cores_)

    def _own_threshold(self) -> float:
        return 1.0

    def _score(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        dist, _ = self.nn_.kneighbors(X)
        return dist[:, 0] / self.eps_

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"eps_": self.eps_}, {"cores_": self.cores_, "labels_": self.labels_}

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.eps_ = float(values["eps_"])
        self.cores_ = np.asarray(arrays["cores_"], dtype=np.float64)
        self.labels_ = np.asarray(arrays["labels_"])
        self._index()


# -- peer comparison --------------------------------------------------------------------------


def group_median(X: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the median of each feature over the other rows of its group (NaN when the
    group has no other row), and the group's size."""
    groups = np.asarray(groups)
    n, d = X.shape
    _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    size = counts[inv]
    out = np.full((n, d), np.nan)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for j in range(d):  # vectorised over rows, one pass per feature
        order = np.lexsort((X[:, j], inv))
        vals = X[order, j]
        g = inv[order]
        c = counts[g]
        s = starts[g]
        pos = np.arange(n) - s  # position of the row within its sorted group
        # the median of the others: drop this row, take the middle of the c - 1 others
        m = c - 1
        lo_i = (m - 1) // 2
        hi_i = m // 2
        lo = s + lo_i + (lo_i >= pos)
        hi = s + hi_i + (hi_i >= pos)
        ok = m >= 1
        med = np.full(n, np.nan)
        med[ok] = 0.5 * (vals[np.minimum(lo[ok], n - 1)] + vals[np.minimum(hi[ok], n - 1)])
        out[order, j] = med
    return out, size


@register
class PeerDetector(PointDetector):
    """Each instance against the other instances of its service in the same window.

    The deviation from the peers' median, in units of the normal peer spread of that
    feature (learned on training windows); the score is the mean of the `top` largest
    absolute deviations. An instance without peers scores 0.
    """

    name = "peer"

    def __init__(self, *, top: int = 3, **kw: Any) -> None:
        super().__init__(**kw)
        self.top = top

    def _deviation(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        if groups is None:
            raise ModelError("peer: needs groups (one id per window: time and service)")
        med, _ = group_median(X, groups)
        return X - med  # NaN without peers

    def _fit(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> None:
        dev = self._deviation(X, groups)
        scale = np.ones(X.shape[1])
        for j in range(X.shape[1]):
            d = dev[:, j][np.isfinite(dev[:, j])]
            if len(d):
                s = 1.4826 * float(np.median(np.abs(d)))
                if s <= 0:
                    s = float(np.mean(np.abs(d)))
                scale[j] = max(s, 1e-3)
        self.scale_ = scale

    def _explain(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        return np.nan_to_num(np.abs(self._deviation(X, groups)) / self.scale_, nan=0.0)

    def _score(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        z = self._explain(X, groups)
        k = min(self.top, z.shape[1])
        if k == 0:
            return np.zeros(X.shape[0])
        return np.sort(z, axis=1)[:, -k:].mean(axis=1)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {"scale_": self.scale_}

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.scale_ = np.asarray(arrays["scale_"], dtype=np.float64)
