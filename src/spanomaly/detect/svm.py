"""Supervised point detection: a multi-class SVM that names the fault type of a window.

    det = FaultTypeSVM()
    det.fit(X, y)              # y: a class name per window: normal, cpu, memory, network,
                               # delay, error (any names; `normal_label` is the normal one)
    det.cv_accuracy_           # stratified k-fold cross-validated accuracy on the fit data
    det.predict_class(X)       # class name per window
    det.score(X)               # best non-normal decision value minus the normal one (> 0:
                               # the SVM prefers a fault type; threshold 0)
    FaultTypeSVM(probability=True).fit(X, y).predict_proba(X)   # per window and class

An RBF-kernel SVC (one-vs-rest decision values, balanced class weights) on features scaled
by their training mean and standard deviation; with `probability`, class probabilities
from a sigmoid (Platt) calibration of the same SVM over a seeded stratified k-fold
(`CalibratedClassifierCV(ensemble=False)`, what scikit-learn 1.9 puts in place of
`SVC(probability=True)`; one-hot where a class has a single window). The model file keeps the training windows
and labels and refits on load (deterministic); no pickle.

With `search=True` and `groups` (one id per window: the run it was recorded in; windows of
one run are not independent), C and gamma are chosen by a grid search (`C_grid`; gamma =
each of `gamma_grid` / the number of features, around scikit-learn's "scale" on
standardised features) cross-validated by group (GroupKFold, at most 3 folds), best macro
F1; they are learned state (`C_`, `gamma_`). Without groups, or with one group, the given
C and gamma are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spanomaly.detect.base import register
from spanomaly.detect.point import PointDetector
from spanomaly.errors import ModelError

FAULT_TYPES = ("normal", "cpu", "memory", "network", "delay", "error")


@register
class FaultTypeSVM(PointDetector):
    """Multi-class SVM over instance windows; names the fault type."""

    name = "svm"
    requires_labels = True
    HOLD_OUT = False
    QUANTILE_THRESHOLD = False

    def __init__(
        self,
        *,
        C: float = 10.0,
        gamma: str | float = "scale",
        normal_label: str = "normal",
        cv_folds: int = 5,
        probability: bool = False,
        search: bool = False,
        C_grid: tuple[float, ...] = (1.0, 10.0, 100.0),
        gamma_grid: tuple[float, ...] = (0.1, 0.3, 1.0),
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.C = C
        self.gamma = gamma
        self.normal_label = normal_label
        self.cv_folds = cv_folds
        self.probability = probability
        self.search = search
        self.C_grid = tuple(C_grid)  # a list once read back from JSON
        self.gamma_grid = tuple(gamma_grid)

    def _search(self, X: np.ndarray, codes: np.ndarray, groups: np.ndarray | None) -> None:
        """C_ and gamma_: the grid's best macro F1 by group, else C and gamma."""
        from sklearn.model_selection import GridSearchCV, GroupKFold

        self.C_, self.gamma_ = float(self.C), self.gamma
        n_groups = 0 if groups is None else len(np.unique(groups))
        if not self.search or n_groups < 2:
            return
        grid = {"svc__C": [float(c) for c in self.C_grid],
                "svc__gamma": [float(g) / X.shape[1] for g in self.gamma_grid]}  # fmt: skip
        cv = GroupKFold(n_splits=min(3, n_groups))
        found = GridSearchCV(self._estimator(), grid, scoring="f1_macro", cv=cv)
        found.fit(X, codes, groups=groups)
        self.C_ = float(found.best_params_["svc__C"])
        self.gamma_ = float(found.best_params_["svc__gamma"])

    def _estimator(self) -> Any:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        return make_pipeline(
            StandardScaler(),
            SVC(
                C=getattr(self, "C_", self.C),
                gamma=getattr(self, "gamma_", self.gamma),
                class_weight="balanced",
                decision_function_shape="ovr",
                random_state=self.random_state,
            ),
        )

    def _fit(self, X: np.ndarray, y: np.ndarray | None, groups: np.ndarray | None) -> None:
        """Fit on labelled windows; cross-validated accuracy in cv_accuracy_."""
        from sklearn.model_selection import StratifiedKFold, cross_val_score

        assert y is not None  # requires_labels
        y = np.asarray([str(v) for v in y], dtype=object)
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2:
            raise ModelError(f"{self.name}: needs at least two classes")
        self.classes_ = [str(c) for c in classes]
        codes = np.searchsorted(classes, y)
        self._search(X, codes, groups)
        folds = int(min(self.cv_folds, counts.min()))
        if folds >= 2:
            cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.random_state)
            self.cv_accuracy_ = float(cross_val_score(self._estimator(), X, codes, cv=cv).mean())
        else:
            self.cv_accuracy_ = float("nan")
        self.X_train_, self.y_train_ = X, codes.astype(np.int64)
        self._refit()

    def _refit(self) -> None:
        """The SVM (and, with probability, its calibration) on the training windows."""
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.model_selection import StratifiedKFold

        X, codes = self.X_train_, self.y_train_
        self.estimator_ = self._estimator().fit(X, codes)
        self.calibrated_ = None
        folds = int(min(5, np.bincount(codes).min()))
        if self.probability and folds >= 2:
            cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.random_state)
            self.calibrated_ = CalibratedClassifierCV(
                self._estimator(), method="sigmoid", cv=cv, ensemble=False
            ).fit(X, codes)

    def _own_threshold(self) -> float:
        return 0.0

    def predict_class(self, X: Any) -> np.ndarray:
        """The fault type of each window."""
        X = self._matrix(X)
        self._check_fitted(X)
        return np.asarray(self.classes_, dtype=object)[self.estimator_.predict(X)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Per window, the probability of each class of classes_ (needs `probability`)."""
        if not self.probability:
            raise ModelError(f"{self.name}: fitted without probability=True")
        X = self._matrix(X)
        self._check_fitted(X)
        if self.calibrated_ is None:
            return np.eye(len(self.classes_))[self.estimator_.predict(X)]
        return np.asarray(self.calibrated_.predict_proba(X), dtype=np.float64)

    def _score(self, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        d = self.estimator_.decision_function(X)
        if d.ndim == 1:  # two classes: positive favours classes_[1]
            d = np.column_stack([-d, d])
        if self.normal_label not in self.classes_:
            return d.max(axis=1)
        j = self.classes_.index(self.normal_label)
        others = np.delete(d, j, axis=1)
        return others.max(axis=1) - d[:, j]

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return (
            {
                "classes_": self.classes_,
                "cv_accuracy_": None if np.isnan(self.cv_accuracy_) else self.cv_accuracy_,
                "C_": self.C_,
                "gamma_": self.gamma_,
            },
            {"X_train_": self.X_train_, "y_train_": self.y_train_},
        )

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.classes_ = list(values["classes_"])
        cv = values["cv_accuracy_"]
        self.cv_accuracy_ = float("nan") if cv is None else float(cv)
        self.C_ = float(values.get("C_", self.C))
        self.gamma_ = values.get("gamma_", self.gamma)
        self.X_train_ = np.asarray(arrays["X_train_"], dtype=np.float64)
        self.y_train_ = np.asarray(arrays["y_train_"]).astype(np.int64)
        self._refit()
