"""Semi-supervised point detection: Fisher-score feature selection from a few labelled
windows, then DBSCAN into the sought number of classes, each cluster named by its
labelled members.

    det = FisherDBSCAN(n_features=5)
    det.fit(X, y)            # y: a class name per window, None (or "") where unlabelled
    det.predict_class(X)     # class name per window (the nearest core sample's cluster)
    det.score(X)             # distance to the nearest core sample of a normal cluster / eps

1. Fisher score of each feature on the labelled windows: between-class over within-class
   variance, sum_c n_c (mu_c - mu)^2 / sum_c n_c sigma_c^2; the `n_features` best are kept.
2. The kept features are scaled robustly (median, MAD) over all windows, labelled or not.
3. DBSCAN over all windows with the eps that yields the sought number of clusters (the
   number of labelled classes unless `n_classes` says otherwise): eps is searched over the
   quantiles of the windows' distances to their `min_samples`-th neighbour; among the eps
   that give that many clusters, the one that leaves the fewest windows as noise.
4. A cluster is named by the majority of its labelled members; a cluster without labelled
   members takes the name of the nearest labelled window.

The threshold (1.0: farther than eps from every normal core) comes from the fitted eps;
the labels of scored data are never used.
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


@register
class FisherDBSCAN(PointDetector):
    """Fisher-score feature selection on labelled windows, then DBSCAN into n classes."""

    name = "fisher-dbscan"
    requires_labels = True  # some: None or "" where a window is unlabelled
    HOLD_OUT = False
    QUANTILE_THRESHOLD = False

    def __init__(
        self,
        *,
        n_classes: int | None = None,
        n_features: int = 5,
        min_samples: int = 5,
        normal_label: str = "normal",
        n_eps: int = 60,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.n_classes = n_classes
        self.n_features = n_features
        self.min_samples = min_samples
        self.normal_label = normal_label
        self.n_eps = n_eps

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
        self.fisher_ = fisher_scores(X[known], y[known])
        k = min(self.n_features, X.shape[1])
        self.selected_ = np.sort(np.argsort(-self.fisher_, kind="stable")[:k])
        Z = X[:, self.selected_]
        self.center_ = np.median(Z, axis=0)
        mad = 1.4826 * np.median(np.abs(Z - self.center_), axis=0)
        self.scale_ = np.where(mad > 0, mad, np.maximum(Z.std(axis=0), 1e-9))
        Z = (Z - self.center_) / self.scale_
        want = self.n_classes or len(classes)
        m = min(self.min_samples, Z.shape[0] - 1)
        dist, _ = NearestNeighbors(n_neighbors=m + 1).fit(Z).kneighbors(Z)
        candidates = np.unique(np.quantile(dist[:, -1], np.linspace(0.5, 0.999, self.n_eps)))
        best: tuple[int, int, float, np.ndarray] | None = None
        for eps in candidates[candidates > 0]:  # a few dozen DBSCAN runs
            labels = DBSCAN(eps=float(eps), min_samples=m).fit(Z).labels_
            n_clusters = len(set(labels.tolist()) - {-1})
            key = (abs(n_clusters - want), int((labels == -1).sum()))
            if best is None or key < best[:2]:
                best = (*key, float(eps), labels)
        assert best is not None
        _, _, self.eps_, labels = best
        model = DBSCAN(eps=self.eps_, min_samples=m).fit(Z)
        labels = model.labels_
        self.labels_ = labels
        names: dict[int, str] = {}
        lab_idx = np.flatnonzero(known)
        for c in sorted(set(labels.tolist()) - {-1}):
            members = y[(labels == c) & known]
            if len(members):
                values, counts = np.unique(members, return_counts=True)
                names[c] = str(values[np.argmax(counts)])
            else:  # the nearest labelled window names it
                centroid = Z[labels == c].mean(axis=0)
                near = lab_idx[np.argmin(((Z[lab_idx] - centroid) ** 2).sum(axis=1))]
                names[c] = str(y[near])
        self.cluster_names_ = names
        core = model.core_sample_indices_
        if not len(core):
            raise ModelError(f"{self.name}: DBSCAN found no core samples")
        self.cores_ = Z[core]
        self.core_names_ = np.array([names[int(labels[i])] for i in core], dtype=object)
        self._index()

    def _index(self) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.nn_ = NearestNeighbors(n_neighbors=1).fit(self.cores_)
        normal = self.cores_[self.core_names_ == self.normal_label]
        self.nn_normal_ = NearestNeighbors(n_neighbors=1).fit(normal) if len(normal) else None

    def _z(self, X: np.ndarray) -> np.ndarray:
        return (X[:, self.selected_] - self.center_) / self.scale_

    def _own_threshold(self) -> float:
        return 1.0

    def predict_class(self, X: Any) -> np.ndarray:
        """The class name of each window: the cluster of its nearest core sample."""
        X = self._matrix(X)
        self._check_fitted(X)
        _, idx = self.nn_.kneighbors(self._z(X))
        return self.core_names_[idx[:, 0]]

    def _score(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        if self.nn_normal_ is None:
            return np.full(X.shape[0], np.inf)
        dist, _ = self.nn_normal_.kneighbors(self._z(X))
        return dist[:, 0] / self.eps_

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return (
            {
                "eps_": self.eps_,
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
