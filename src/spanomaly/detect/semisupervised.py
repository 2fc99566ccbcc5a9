"""Semi-supervised point detection: Fisher scores from a few labelled windows pick and weight
the features, DBSCAN over all windows finds their dense regions, and the labels spread
through each cluster.

    det = FisherDBSCAN()
    det.fit(X, y, groups=runs)   # y: a class name per window, None (or "") where unlabelled
    det.predict_class(X)         # class name per window (its nearest reference's)
    det.score(X)                 # distance to the nearest normal reference / its reach

1. The features are standardised (mean, standard deviation) over all windows, labelled
   or not.
2. The Fisher score of each feature on the labelled windows,
   sum_c n_c (mu_c - mu)^2 / sum_c n_c sigma_c^2; the k best are kept, each scaled by the
   square root of its score, so a distance counts most what separates the labelled classes.
3. DBSCAN over all windows in that space: `min_samples` m, eps = a factor times the median
   over the labelled windows of the distance to their m-th nearest window.
4. Within each cluster a window takes the class of the labelled member nearest to it along
   the cluster's eps-neighbourhood graph (shortest paths from the labelled windows), so a
   label travels through the dense run of windows it sits in, and a cluster holding
   several classes is shared between them. Clusters without a labelled member, and noise,
   stay unnamed.
5. Steps 2-4 again, `iterations` times in all (3), the Fisher scores now over every
   window named so far (many more than the labelled ones, so the scores of a class with
   few labels settle); the labels still spread from the labelled windows only.
6. The references are the named windows and the labelled ones; a window (fitted or new) is
   of its nearest reference's class, so every labelled class can be predicted.

k (each of `features_grid` up to `max_features`, and all features where fewer) and the eps
factor (`eps_grid`) are chosen on the labelled windows alone: per fold (`groups`, e.g. the
run of each window, whose windows are not independent, in at most 3 folds that keep a group
whole; without groups, 3 random folds of the labelled windows) its labels are hidden, steps 2-6 run on the rest, and the hidden windows'
accuracy, balanced over their classes, is averaged; the best pair wins (ties: fewer
features, then the smaller factor).

The score is the distance to the nearest normal reference over the reach of normal: eps, or
the 99th percentile over the fitted windows named normal of the distance to their nearest
normal reference but themselves, where larger; the threshold is 1.0. The labels of scored
data are never used.
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


def fisher_space(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k features of the best Fisher scores (sorted) and their weights, the square
    roots of the scores."""
    cols = np.sort(np.argsort(-scores, kind="stable")[:k])
    return cols.astype(np.int64), np.sqrt(scores[cols])


def _eps(W: np.ndarray, labelled: np.ndarray, m: int, factor: float) -> float:
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=m + 1).fit(W).kneighbors(W[labelled])
    return float(max(factor * np.median(dist[:, -1]), 1e-9))


def spread(W: np.ndarray, y: np.ndarray, labelled: np.ndarray, m: int, eps: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """DBSCAN labels of the windows W, and per window the class reached first from the
    labelled ones along its cluster's eps-graph ("" where none: noise, unlabelled cluster)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import NearestNeighbors

    clusters = DBSCAN(eps=eps, min_samples=m).fit(W).labels_
    graph = NearestNeighbors(radius=eps).fit(W).radius_neighbors_graph(W, mode="distance").tocoo()
    same = (clusters[graph.row] == clusters[graph.col]) & (clusters[graph.row] >= 0)
    # + a tiny length: two identical windows are still joined (a stored 0 is no edge)
    graph = csr_matrix((graph.data[same] + 1e-12, (graph.row[same], graph.col[same])),
                       shape=graph.shape)  # fmt: skip
    names = np.full(len(W), "", dtype=object)
    sources = np.flatnonzero(labelled & (clusters >= 0))
    if len(sources):
        dist, _, src = dijkstra(graph, directed=False, indices=sources, min_only=True,
                                return_predecessors=True)  # fmt: skip
        reached = np.isfinite(dist)
        names[reached] = y[src[reached]]
    names[labelled] = y[labelled]
    return clusters, names


def nearest_names(W: np.ndarray, names: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """The name of each query's nearest named window."""
    from sklearn.neighbors import NearestNeighbors

    named = np.flatnonzero(names != "")
    _, idx = NearestNeighbors(n_neighbors=1).fit(W[named]).kneighbors(Q)
    return names[named[idx[:, 0]]]


def _cluster_names(clusters: np.ndarray, names: np.ndarray) -> dict[int, str]:
    """Per cluster: the commonest class its windows took."""
    out = {}
    for c in sorted(set(clusters.tolist()) - {-1}):  # the clusters
        taken = names[(clusters == c) & (names != "")].astype(str)
        if len(taken):
            values, counts = np.unique(taken, return_counts=True)
            out[int(c)] = str(values[np.argmax(counts)])
    return out


def _balanced(truth: np.ndarray, guess: np.ndarray) -> float:
    return float(np.mean([(guess[truth == c] == c).mean() for c in np.unique(truth)]))


@register
class FisherDBSCAN(PointDetector):
    """Fisher-score weighted features from labelled windows, DBSCAN, labels spread per cluster."""

    name = "fisher-dbscan"
    requires_labels = True  # some: None or "" where a window is unlabelled
    HOLD_OUT = False
    QUANTILE_THRESHOLD = False

    def __init__(
        self,
        *,
        max_features: int = 80,
        features_grid: tuple[int, ...] = (10, 20, 40, 80),
        eps_grid: tuple[float, ...] = (1.0, 1.5, 2.0),
        min_samples: int = 5,
        normal_label: str = "normal",
        iterations: int = 3,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.iterations = iterations
        self.max_features = max_features
        self.features_grid = tuple(features_grid)  # a list once read back from JSON
        self.eps_grid = tuple(eps_grid)
        self.min_samples = min_samples
        self.normal_label = normal_label

    def _grid(self, n_features: int) -> list[tuple[int, float]]:
        ks = sorted({min(int(k), self.max_features, n_features) for k in self.features_grid})
        return [(k, float(f)) for k in ks for f in self.eps_grid]

    def _spread(self, Z: np.ndarray, y: np.ndarray, known: np.ndarray, m: int, k: int, factor: float) -> tuple[Any, ...]:  # fmt: skip
        """Steps 2-4, `iterations` times (the Fisher scores again on the windows named so
        far; labels still spread from the labelled ones only): Fisher scores, columns,
        weights, eps, DBSCAN labels, names, the weighted windows."""
        named, taken = known, y
        for _ in range(self.iterations):  # a few rounds
            fisher = fisher_scores(Z[named], taken[named])
            cols, w = fisher_space(fisher, k)
            W = Z[:, cols] * w
            eps = _eps(W, known, m, factor)
            clusters, names = spread(W, y, known, m, eps)
            named, taken = names != "", names
        return fisher, cols, w, eps, clusters, names, W

    def _validate(self, Z: np.ndarray, y: np.ndarray, known: np.ndarray, groups: np.ndarray | None, m: int) -> tuple[int, float]:  # fmt: skip
        """The (k, eps factor) of the grid with the best hidden-label accuracy."""
        from sklearn.model_selection import GroupKFold

        rows = np.flatnonzero(known)
        folds = np.random.default_rng(self.random_state).permutation(len(rows)) % 3
        if groups is not None and len(np.unique(groups[rows])) >= 2:  # at most 3 folds
            splits = GroupKFold(n_splits=min(3, len(np.unique(groups[rows]))))
            for i, (_, held) in enumerate(splits.split(rows, groups=np.asarray(groups)[rows])):
                folds[held] = i
        best, choice = -1.0, self._grid(Z.shape[1])[0]
        for k, factor in self._grid(Z.shape[1]):  # a dozen pairs
            accuracy = []
            for g in np.unique(folds):  # a few groups
                hidden = rows[folds == g]
                keep = known.copy()
                keep[hidden] = False
                if len(np.unique(y[keep])) < 2:
                    continue
                *_, names, W = self._spread(Z, y, keep, m, k, factor)
                guess = names[hidden]
                if (guess == "").any():
                    guess[guess == ""] = nearest_names(W, names, W[hidden[guess == ""]])
                accuracy.append(_balanced(y[hidden], guess))
            if accuracy and np.mean(accuracy) > best:
                best, choice = float(np.mean(accuracy)), (k, factor)
        return choice

    def _fit(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> None:
        """Fit on all windows; y names the labelled ones (None or '' elsewhere)."""
        y = _labels(y)
        known = y != ""
        classes = sorted(set(y[known].tolist()))
        if len(classes) < 2:
            raise ModelError(f"{self.name}: the labelled windows need at least two classes")
        self.classes_ = classes
        self.center_ = X.mean(axis=0)
        self.scale_ = np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
        Z = (X - self.center_) / self.scale_
        m = max(1, min(self.min_samples, Z.shape[0] - 1))
        self.k_, self.eps_factor_ = self._validate(Z, y, known, groups, m)
        fit = self._spread(Z, y, known, m, self.k_, self.eps_factor_)
        self.fisher_, self.selected_, self.weights_, self.eps_, self.labels_, names, W = fit
        self.cluster_names_ = _cluster_names(self.labels_, names)
        named = np.flatnonzero(names != "")
        self.cores_ = W[named]
        self.core_names_ = names[named].astype(object)
        self._index()
        self.reach_ = self.eps_
        if self.nn_normal_ is not None:  # how far the fitted windows named normal lie
            normal = self.predict_class_z(W) == self.normal_label
            k = min(2, self.nn_normal_.n_samples_fit_)
            if normal.any():  # the nearest but itself, as a new window's would be
                d = self.nn_normal_.kneighbors(W[normal], n_neighbors=k)[0][:, -1]
                self.reach_ = float(max(self.eps_, np.quantile(d, 0.99)))

    def _index(self) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.nn_ = NearestNeighbors(n_neighbors=1).fit(self.cores_)
        normal = self.cores_[self.core_names_ == self.normal_label]
        self.nn_normal_ = NearestNeighbors(n_neighbors=1).fit(normal) if len(normal) else None

    def _z(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.center_) / self.scale_)[:, self.selected_] * self.weights_

    def _own_threshold(self) -> float:
        return 1.0

    def predict_class(self, X: Any) -> np.ndarray:
        """The class name of each window: its nearest reference's."""
        X = self._matrix(X)
        self._check_fitted(X)
        return self.predict_class_z(self._z(X))

    def predict_class_z(self, W: np.ndarray) -> np.ndarray:
        """The class of each window already in the kept, weighted features."""
        _, idx = self.nn_.kneighbors(W)
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
                "k_": self.k_,
                "eps_factor_": self.eps_factor_,
                "classes_": self.classes_,
                "cluster_names_": {str(k): v for k, v in self.cluster_names_.items()},
                "core_names_": self.core_names_.tolist(),
            },
            {
                "fisher_": self.fisher_,
                "selected_": self.selected_.astype(np.int64),
                "weights_": self.weights_,
                "center_": self.center_,
                "scale_": self.scale_,
                "cores_": self.cores_,
                "labels_": self.labels_.astype(np.int64),
            },
        )

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.eps_ = float(values["eps_"])
        self.reach_ = float(values["reach_"])
        self.k_ = int(values["k_"])
        self.eps_factor_ = float(values["eps_factor_"])
        self.classes_ = list(values["classes_"])
        self.cluster_names_ = {int(k): v for k, v in values["cluster_names_"].items()}
        self.core_names_ = np.array(values["core_names_"], dtype=object)
        self.fisher_ = np.asarray(arrays["fisher_"])
        self.selected_ = np.asarray(arrays["selected_"]).astype(np.int64)
        self.weights_ = np.asarray(arrays["weights_"])
        self.center_ = np.asarray(arrays["center_"])
        self.scale_ = np.asarray(arrays["scale_"])
        self.cores_ = np.asarray(arrays["cores_"])
        self.labels_ = np.asarray(arrays["labels_"])
        self._index()
