"""Semi-supervised point detection: Fisher-score feature selection from a few labelled
windows, then DBSCAN over all windows, each cluster named by its labelled members.

    det = FisherDBSCAN(max_features=12)
    det.fit(X, y)            # y: a class name per window, None (or "") where unlabelled
    det.predict_class(X)     # class name per window (its nearest reference's)
    det.score(X)             # distance to the nearest normal reference / its reach

1. The features are standardised (mean, standard deviation) over all windows, labelled
   or not.
2. Iterative Fisher-score selection on the labelled windows: the Fisher score of each
   feature, sum_c n_c (mu_c - mu)^2 / sum_c n_c sigma_c^2, ranks the candidates (the
   `n_candidates` best); starting from none, the candidate that most raises the labelled
   windows' leave-one-out nearest-neighbour accuracy, balanced over the classes, is added,
   until no candidate raises it or `max_features` are kept.
3. DBSCAN over all windows in the kept features, eps the median over the labelled windows
   of the distance to their `min_samples`-th nearest window (their own class's density).
4. A cluster is named by the majority of its labelled members; clusters without any, and
   noise, take no name. The references are the core samples of the named clusters, under
   their cluster's name, and the labelled windows, under their own; a window (fitted or
   new) is of its nearest reference's class, so there are as many classes as labelled ones.

The score is the distance to the nearest normal reference over the reach of normal: eps, or
the 99th percentile over the fitted windows named normal of the distance to their nearest
normal reference but themselves, where larger;
the threshold is 1.0. The labels of scored data are never used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spanomaly.detect.base import register
from spanomaly.detect.point import PointDetector
from spanomaly.errors import ModelError


def fisher_scores(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fisher score of each feature for labels y (higher separates the classes better)."""
    classes = np.unique(y)
    mu = X.mean(axis=0)
    between = np.zeros(X.shape[1])
    within = np.zeros(X.shape[1])
    for c in classes:  # a handful of classes
        rows = X[y == c]
        between += len(rows) * (rows.mean(axis=0) - mu) ** 2
        within += len(rows) * rows.var(axis=0)
    return between / np.maximum(within, 1e-12)


def _labels(y: Any) -> np.ndarray:
    y = np.asarray(y, dtype=object)
    return np.array(["" if v is None else str(v) for v in y], dtype=object)


def _loo_accuracy(Z: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of labels y, balanced over the classes."""
    d = ((Z[:, None, :] - Z[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d, np.inf)
    hit = y[np.argmin(d, axis=1)] == y
    return float(np.mean([hit[y == c].mean() for c in np.unique(y)]))


def select_features(Z: np.ndarray, y: np.ndarray, max_features: int, n_candidates: int) -> np.ndarray:  # fmt: skip
    """Forward selection among the best Fisher scores (see the module docstring)."""
    candidates = list(np.argsort(-fisher_scores(Z, y), kind="stable")[:n_candidates])
    kept: list[int] = []
    best = -1.0
    while candidates and len(kept) < max_features:  # a dozen rounds
        gains = [_loo_accuracy(Z[:, [*kept, j]], y) for j in candidates]
        i = int(np.argmax(gains))
        if gains[i] <= best:
            break
        best = gains[i]
        kept.append(int(candidates.pop(i)))
    return np.array(sorted(kept), dtype=np.int64)


@register
class FisherDBSCAN(PointDetector):
    """Fisher-score feature selection on labelled windows, then DBSCAN named by them."""

    name = "fisher-dbscan"
    requires_labels = True  # some: None or "" where a window is unlabelled
    HOLD_OUT = False
    QUANTILE_THRESHOLD = False

    def __init__(
        self,
        *,
        max_features: int = 12,
        n_candidates: int = 30,
        min_samples: int = 5,
        normal_label: str = "normal",
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.max_features = max_features
        self.n_candidates = n_candidates
        self.min_samples = min_samples
        self.normal_label = normal_label

    def _fit(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> None:
        """Fit on all windows; y names the labelled ones (None or '' elsewhere)."""
        from sklearn.cluster import DBSCAN
        from sklearn.neighbors import NearestNeighbors

        y = _labels(y)
        known = y != ""
        classes = sorted(set(y[known].tolist()))
        if len(classes) < 2:
            raise ModelError(f"{self.name}: the labelled windows need at least two classes")
        self.classes_ = classes
        self.center_ = X.mean(axis=0)
        self.scale_ = np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
        Z = (X - self.center_) / self.scale_
        self.fisher_ = fisher_scores(Z[known], y[known])
        self.selected_ = select_features(Z[known], y[known], self.max_features, self.n_candidates)
        Z = Z[:, self.selected_]
        m = max(1, min(self.min_samples, Z.shape[0] - 1))
        dist, _ = NearestNeighbors(n_neighbors=m + 1).fit(Z).kneighbors(Z[known])
        self.eps_ = float(max(np.median(dist[:, -1]), 1e-9))
        model = DBSCAN(eps=self.eps_, min_samples=m).fit(Z)
        self.labels_ = model.labels_
        names = {}
        for c in sorted(set(self.labels_.tolist()) - {-1}):  # the clusters
            members = y[(self.labels_ == c) & known]
            if len(members):
                values, counts = np.unique(members, return_counts=True)
                names[c] = str(values[np.argmax(counts)])
        self.cluster_names_ = names
        core = np.array([i for i in model.core_sample_indices_ if int(self.labels_[i]) in names],
                        dtype=np.int64)  # fmt: skip
        lab = np.flatnonzero(known)
        self.cores_ = np.vstack([Z[core].reshape(-1, Z.shape[1]), Z[lab]])
        self.core_names_ = np.array([names[int(self.labels_[i])] for i in core] + y[lab].tolist(),
                                    dtype=object)  # fmt: skip
        self._index()
        self.reach_ = self.eps_
        if self.nn_normal_ is not None:  # how far the fitted windows named normal lie
            normal = self.predict_class_z(Z) == self.normal_label
            k = min(2, self.nn_normal_.n_samples_fit_)
            if normal.any():  # the nearest but itself, as a new window's would be
                d = self.nn_normal_.kneighbors(Z[normal], n_neighbors=k)[0][:, -1]
                self.reach_ = float(max(self.eps_, np.quantile(d, 0.99)))

    def _index(self) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.nn_ = NearestNeighbors(n_neighbors=1).fit(self.cores_)
        normal = self.cores_[self.core_names_ == self.normal_label]
        self.nn_normal_ = NearestNeighbors(n_neighbors=1).fit(normal) if len(normal) else None

    def _z(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.center_) / self.scale_)[:, self.selected_]

    def _own_threshold(self) -> float:
        return 1.0

    def predict_class(self, X: Any) -> np.ndarray:
        """The class name of each window: its nearest reference's."""
        X = self._matrix(X)
        self._check_fitted(X)
        return self.predict_class_z(self._z(X))

    def predict_class_z(self, Z: np.ndarray) -> np.ndarray:
        """The class of each window already in the kept, standardised features."""
        _, idx = self.nn_.kneighbors(Z)
        return self.core_names_[idx[:, 0]]

    def _score(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        if self.nn_normal_ is None:
            return np.full(X.shape[0], np.inf)
        dist, _ = self.nn_normal_.kneighbors(self._z(X))
        return dist[:, 0] / self.reach_

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return (
            {
                "eps_": self.eps_,
                "reach_": self.reach_,
                "classes_": self.classes_,
                "cluster_names_": {str(k): v for k, v in self.cluster_names_.items()},
                "core_names_": self.core_names_.tolist(),
            },
            {
                "fisher_": self.fisher_,
                "selected_": self.selected_.astype(np.int64),
                "center_": self.center_,
                "scale_": self.scale_,
                "cores_": self.cores_,
                "labels_": self.labels_.astype(np.int64),
            },
        )

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.eps_ = float(values["eps_"])
        self.reach_ = float(values.get("reach_", self.eps_))
        self.classes_ = list(values["classes_"])
        self.cluster_names_ = {int(k): v for k, v in values["cluster_names_"].items()}
        self.core_names_ = np.array(values["core_names_"], dtype=object)
        self.fisher_ = np.asarray(arrays["fisher_"])
        self.selected_ = np.asarray(arrays["selected_"]).astype(np.int64)
        self.center_ = np.asarray(arrays["center_"])
        self.scale_ = np.asarray(arrays["scale_"])
        self.cores_ = np.asarray(arrays["cores_"])
        self.labels_ = np.asarray(arrays["labels_"])
        self._index()
