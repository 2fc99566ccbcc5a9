"""`spanomaly classify`: the fault type of system-call windows (or instance metric windows)
from the fault labels, trained, run and cross-validated by run.

    options = ClassifyOptions(on="syscalls", method="svm", length="200", stride="100")
    train_classifier(store, "model-dir", options)          # writes classify.json + detector
    run_classifier(store, "model-dir", lo, hi)             # class (+ probability) per window
    evaluate_classifiers(store, options, folds=5)          # svm, fisher-dbscan, ecod by run

Windows: `features.syscalls` (`--on syscalls`) or the instance metric windows of
`features.windows.metric_windows` (`--on metrics`, tumbling: stride = length). Labels
(`cover_labels`): the kind of a fault that targets the window's instance (or its service,
where the fault names no instance) and whose [start, end) covers the window; a window that
such a fault only partly overlaps is left out of training and evaluation; all others are
`normal`. The run of a metric window is the system-call run whose time range it overlaps,
else its stretch of metric windows (no gap over 5 windows), named `time:<start_ns>`.

Methods: `svm` (FaultTypeSVM: balanced class weights, C and gamma by a grid search
cross-validated by run within the training windows, probabilities by Platt scaling),
`fisher-dbscan` (FisherDBSCAN with a labelled fraction of the training windows, drawn per
class so each class has one at least; k = the labelled classes), `ecod` (ECOD on the normal
training windows, threshold at target_fpr on a held-out share of them: normal or
`anomalous`, an unsupervised reference). Cross-validation keeps each run in one fold
(GroupKFold with groups = run); the feature vocabulary is fitted on each training fold.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from spanomaly.errors import InputError, ModelError
from spanomaly.pipeline import reads
from spanomaly.store.base import Store

if TYPE_CHECKING:
    from spanomaly.detect.point import PointDetector
    from spanomaly.features.syscalls import WindowSpec

log = logging.getLogger(__name__)

METHODS = ("svm", "fisher-dbscan", "ecod")
SOURCES = ("syscalls", "metrics")
CONFIG_FILE = "classify.json"
PREFIX = "classifier-"
NORMAL, ANOMALOUS = "normal", "anomalous"
DEFAULT_LENGTH = {"syscalls": "200", "metrics": "10s"}
RUN_GAP_WINDOWS = 5
VERSION = 1


@dataclass
class ClassifyOptions:
    """What `classify train` and `classify evaluate` fit: source, method, windows."""

    on: str = "syscalls"
    method: str = "svm"
    length: str | None = None  # calls ('200') or a time ('2s'); default DEFAULT_LENGTH
    stride: str | None = None  # default: half the length (metrics: the length)
    by: str = "thread"
    min_calls: int = 1
    labelled: float = 0.1  # fisher-dbscan: share of the training windows that keep labels
    target_fpr: float = 0.01  # ecod
    max_vocab: int = 64
    width: int = 32
    fisher_features: int = 80
    random_state: int = 0

    def spec(self) -> WindowSpec:
        """The windows; one-line errors for options that cannot make them."""
        from spanomaly.features.syscalls import WindowSpec

        if self.on not in SOURCES:
            raise InputError(f"--on: {self.on!r} is not one of {', '.join(SOURCES)}")
        length = self.length or DEFAULT_LENGTH[self.on]
        stride = self.stride or (length if self.on == "metrics" else None)
        spec = WindowSpec.parse(length, stride, self.by, self.min_calls)
        if self.on == "metrics" and (spec.unit != "time" or spec.stride != spec.length):
            raise InputError("--on metrics: --length is a time (10s) and --stride, if "
                             "given, the same (metric windows do not overlap)")  # fmt: skip
        return spec

    def check(self) -> None:
        """One-line errors for bad options."""
        if self.method not in METHODS:
            raise InputError(f"--method: {self.method!r} is not one of {', '.join(METHODS)}")
        if not 0 < self.labelled <= 1:
            raise InputError("--labelled: a fraction in (0, 1]")
        if not 0 < self.target_fpr < 1:
            raise InputError("--target-fpr: in (0, 1)")
        if self.max_vocab < 1 or self.width < 1 or self.fisher_features < 1:
            raise InputError("--max-vocab, --ngram-width, --fisher-features: at least 1")
        self.spec()


# -- windows and their labels -----------------------------------------------------------------


@dataclass
class Data:
    """Windows of either source and their keys (run, service, instance, thread, start_ns,
    end_ns)."""

    keys: pa.Table
    windows: Any  # SyscallWindows | InstanceWindows

    @property
    def n(self) -> int:
        """Number of windows."""
        return self.keys.num_rows

    def column(self, name: str) -> np.ndarray:
        """One key column as numpy (times int64, the rest object)."""
        col = self.keys.column(name)
        if name in ("start_ns", "end_ns"):
            return col.to_numpy().astype(np.int64)
        return np.asarray(col.to_pylist(), dtype=object)

    def take(self, rows: np.ndarray) -> Data:
        """Some windows (indices or a mask)."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows, dtype=np.int64)
        return Data(self.keys.take(pa.array(rows, pa.int64())), self.windows.take(rows))


def _syscall_data(store: Store, spec: WindowSpec, lo: int | None, hi: int | None) -> Data:
    from spanomaly.features.syscalls import call_windows

    where, params = reads.period_conditions("time_ns", lo, hi)
    table = store.sql(f"SELECT * FROM syscalls WHERE {' AND '.join(where) or 'TRUE'}", params)
    if table.num_rows == 0:
        raise InputError("no system calls in the store for the period (spanomaly ingest a "
                         "recording first)")  # fmt: skip
    w = call_windows(table, spec)
    return Data(w.keys, w)


def _metric_data(store: Store, spec: WindowSpec, lo: int | None, hi: int | None) -> Data:
    from spanomaly.features import windows as win

    points = reads.metric_points(store, lo, hi)
    if points.num_rows == 0:
        raise InputError("no instance metrics in the store for the period")
    iw = win.combine(win.metric_windows(points, spec.length / 1e9))
    start = iw.column("time_ns")
    keys = pa.table({
        "run": pa.array(_metric_runs(store, start, spec.length), pa.string()),
        "service": iw.keys.column("service"),
        "instance": iw.keys.column("instance"),
        "thread": pa.nulls(iw.n, pa.int64()),
        "start_ns": pa.array(start, pa.int64()),
        "end_ns": pa.array(start + spec.length, pa.int64()),
    })  # fmt: skip
    return Data(keys, iw)


def _metric_runs(store: Store, start: np.ndarray, w_ns: int) -> np.ndarray:
    """The run of each metric window (see the module docstring)."""
    from spanomaly.features.syscalls import run_of

    spans = store.sql(
        "SELECT source, min(time_ns) AS lo, max(time_ns) AS hi FROM syscalls GROUP BY source"
    ).to_pylist()
    ranges: dict[str, list[int]] = {}
    for r in spans:  # per recording file
        run = ranges.setdefault(run_of(r["source"]), [r["lo"], r["hi"]])
        run[0], run[1] = min(run[0], r["lo"]), max(run[1], r["hi"])
    times = np.unique(start)
    gap = np.r_[True, np.diff(times) > RUN_GAP_WINDOWS * w_ns]
    first = times[gap][np.cumsum(gap) - 1]  # the start of each time's stretch
    out = np.array([f"time:{t}" for t in first], dtype=object)[np.searchsorted(times, start)]
    for run, (a, b) in sorted(ranges.items()):  # a few runs
        out[(start <= b) & (start + w_ns > a)] = run
    return out


def read_data(store: Store, options: ClassifyOptions, lo: int | None, hi: int | None) -> Data:
    """The windows of the period from the source the options name."""
    spec = options.spec()
    if options.on == "syscalls":
        return _syscall_data(store, spec, lo, hi)
    return _metric_data(store, spec, lo, hi)


def cover_labels(data: Data, faults: pa.Table) -> np.ndarray:
    """Per window: the kind of a fault aimed at it that covers it, None where such a fault
    only partly overlaps it (left out), else normal."""
    labels = np.full(data.n, NORMAL, dtype=object)
    partly = np.zeros(data.n, dtype=bool)
    start, end = data.column("start_ns"), data.column("end_ns")
    inst, svc = data.column("instance"), data.column("service")
    for f in faults.to_pylist():  # per fault (a few), never per window
        on = inst == f["instance"] if f["instance"] else svc == f["service"]
        overlaps = on & (start < f["end_ns"]) & (end > f["start_ns"])
        covered = overlaps & (start >= f["start_ns"]) & (end <= f["end_ns"])
        partly |= overlaps & ~covered
        labels[covered & (labels == NORMAL)] = f["kind"]
    labels[partly] = None
    return labels


def labelled_data(store: Store, options: ClassifyOptions, lo: int | None, hi: int | None) -> tuple[Data, np.ndarray]:  # fmt: skip
    """The windows that have a label, and the labels."""
    data = read_data(store, options, lo, hi)
    labels = cover_labels(data, reads.fault_labels(store, lo, hi))
    keep = np.array([v is not None for v in labels], dtype=bool)
    log.info("%d windows, %d left out (partly in a fault)", data.n, int((~keep).sum()))
    return data.take(keep), labels[keep].astype(str)


# -- features, fitting, predicting ------------------------------------------------------------


@dataclass
class MetricFeatures:
    """The metric columns of the training windows; a missing value is the training median."""

    names: list[str] | None = None
    fill: list[float] | None = None

    def fit(self, windows: Any) -> MetricFeatures:
        """Learn the columns and their medians."""
        self.names = list(windows.names)
        X = windows.X
        ok = np.isfinite(X).any(axis=0)
        med = np.zeros(X.shape[1])
        med[ok] = np.nanmedian(X[:, ok], axis=0)
        self.fill = med.tolist()
        return self

    def transform(self, windows: Any) -> np.ndarray:
        """The windows' matrix in the training columns, gaps filled."""
        assert self.names is not None and self.fill is not None
        X = np.full((windows.n, len(self.names)), np.nan)
        for j, name in enumerate(self.names):  # per metric
            if name in windows.names:
                X[:, j] = windows.X[:, windows.names.index(name)]
        fill = np.broadcast_to(np.asarray(self.fill), X.shape)
        return np.where(np.isfinite(X), X, fill)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"names": self.names, "fill": self.fill}


def _features(options: ClassifyOptions, doc: dict[str, Any] | None = None) -> Any:
    from spanomaly.features.syscalls import SyscallFeatures

    if options.on == "metrics":
        return MetricFeatures(**doc) if doc else MetricFeatures()
    if doc:
        return SyscallFeatures.from_json(doc)
    return SyscallFeatures(max_vocab=options.max_vocab, width=options.width)


def _labelled_mask(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A random `fraction` of each class's windows (at least one per class)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    for c in sorted(set(y.tolist())):  # a handful of classes
        rows = np.flatnonzero(y == c)
        k = min(len(rows), max(1, round(fraction * len(rows))))
        mask[rng.choice(rows, k, replace=False)] = True
    return mask


def fit_method(method: str, X: np.ndarray, y: np.ndarray, options: ClassifyOptions,
               runs: np.ndarray | None = None) -> PointDetector:  # fmt: skip
    """The fitted detector of a method on the training windows, their labels and runs."""
    from spanomaly.detect.point import ECOD
    from spanomaly.detect.semisupervised import FisherDBSCAN
    from spanomaly.detect.svm import FaultTypeSVM

    seed = options.random_state
    if len(set(y.tolist())) < 2 and method != "ecod":
        raise InputError(f"--method {method}: the training windows have one class only "
                         f"({y[0] if len(y) else 'none'}); it needs faults too")  # fmt: skip
    if method == "svm":
        svm = FaultTypeSVM(probability=True, cv_folds=0, search=True, random_state=seed)
        return svm.fit(X, y, groups=runs)
    if method == "fisher-dbscan":
        known = _labelled_mask(y, options.labelled, seed)
        semi = np.where(known, y, "").astype(object)
        det = FisherDBSCAN(max_features=options.fisher_features, random_state=seed)
        return det.fit(X, semi, groups=runs)
    normal = X[y == NORMAL]
    if len(normal) < 10:
        raise InputError(f"--method ecod: {len(normal)} normal training windows, need 10")
    return ECOD(target_fpr=options.target_fpr, random_state=seed).fit(normal)


def predict(det: PointDetector, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:  # fmt: skip
    """Per window: the class, its probability (the SVM's; None for the others), the score."""
    score = det.score(X)
    if det.name == "ecod":
        return np.where(score > det.threshold_, ANOMALOUS, NORMAL).astype(object), None, score  # type: ignore[attr-defined]
    classes = det.predict_class(X)  # type: ignore[attr-defined]
    if det.name != "svm":
        return classes, None, score
    proba = det.predict_proba(X)  # type: ignore[attr-defined]
    col = np.searchsorted(np.asarray(det.classes_), classes.astype(str))  # type: ignore[attr-defined]
    return classes, proba[np.arange(len(classes)), col], score


# -- the commands -----------------------------------------------------------------------------


def train_classifier(
    store: Store,
    model_dir: str | Path,
    options: ClassifyOptions,
    lo: int | None = None,
    hi: int | None = None,
) -> dict[str, Any]:
    """Fit the features and the method on the labelled windows; write them to model_dir."""
    options.check()
    data, y = labelled_data(store, options, lo, hi)
    feats = _features(options).fit(data.windows)
    det = fit_method(options.method, feats.transform(data.windows), y, options,
                     data.column("run"))  # fmt: skip
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    det.save(out, PREFIX)
    classes, counts = np.unique(y, return_counts=True)
    doc = {
        "model": str(out),
        "on": options.on,
        "method": options.method,
        "windows": int(data.n),
        "runs": sorted(set(data.column("run").tolist())),
        "classes": {str(c): int(n) for c, n in zip(classes, counts, strict=True)},
        "spec": options.spec().to_json(),
    }
    config = {"version": VERSION, "options": asdict(options), "features": feats.to_json(),
              "trained": doc}  # fmt: skip
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return doc


def load_classifier(model_dir: str | Path) -> tuple[ClassifyOptions, Any, PointDetector]:
    """The options, features and detector that train_classifier wrote."""
    from spanomaly.detect.point import PointDetector

    path = Path(model_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a classifier (spanomaly classify train): {exc}") from exc
    if config.get("version") != VERSION:
        raise ModelError(f"{path}: version {config.get('version')}, retrain with this spanomaly")
    options = ClassifyOptions(**config["options"])
    return options, _features(options, config["features"]), PointDetector.load(model_dir, PREFIX)


def run_classifier(
    store: Store, model_dir: str | Path, lo: int | None = None, hi: int | None = None
) -> list[dict[str, Any]]:
    """The class (and the SVM's probability) of every window of the period."""
    options, feats, det = load_classifier(model_dir)
    data = read_data(store, options, lo, hi)
    classes, proba, score = predict(det, feats.transform(data.windows))
    rows = data.keys.to_pylist()
    for i, r in enumerate(rows):  # per window, to print them
        r["class"] = str(classes[i])
        r["probability"] = None if proba is None else float(proba[i])
        r["score"] = float(score[i])
    return rows


def _folds(groups: np.ndarray, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """GroupKFold splits: a run is never split across folds."""
    from sklearn.model_selection import GroupKFold

    n_runs = len(set(groups.tolist()))
    if n_runs < 2:
        raise InputError(f"classify evaluate: {n_runs} run in the windows; cross-validation "
                         "by run needs two at least")  # fmt: skip
    if folds < 2:
        raise InputError("--folds: at least 2")
    splitter = GroupKFold(n_splits=min(folds, n_runs))
    return list(splitter.split(np.zeros(len(groups)), groups=groups))


def _fold_matrices(data: Data, options: ClassifyOptions,
                   splits: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Per fold: the training and test windows' features, the vocabulary fitted on the
    training fold (once for every method)."""
    out = []
    runs = data.column("run")
    for train, test in splits:  # a few folds
        assert not set(runs[train].tolist()) & set(runs[test].tolist())
        windows = data.take(train).windows
        feats = _features(options).fit(windows)
        out.append((feats.transform(windows), feats.transform(data.take(test).windows)))
    return out


def _cross_validate(data: Data, y: np.ndarray, method: str, options: ClassifyOptions,
                    splits: list[tuple[np.ndarray, np.ndarray]],
                    matrices: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:  # fmt: skip
    """Out-of-fold predictions of one method and its figures."""
    from spanomaly.evaluate import classes as figures

    predicted = np.full(len(y), "", dtype=object)
    runs = data.column("run")
    for (train, test), (X_train, X_test) in zip(splits, matrices, strict=True):  # a few folds
        det = fit_method(method, X_train, y[train], options, runs[train])
        predicted[test] = predict(det, X_test)[0]
    if method == "ecod":
        doc = figures.binary(y != NORMAL, predicted != NORMAL)
        doc["matrix"] = figures.report(np.where(y == NORMAL, NORMAL, ANOMALOUS), predicted, [NORMAL, ANOMALOUS])  # fmt: skip
        return doc
    classes = sorted(set(y.tolist()))
    doc = figures.report(y, predicted, classes)
    if method == "fisher-dbscan":
        doc["labelled"] = options.labelled
    return doc


def evaluate_classifiers(
    store: Store,
    options: ClassifyOptions,
    methods: tuple[str, ...] = METHODS,
    folds: int = 5,
    lo: int | None = None,
    hi: int | None = None,
) -> dict[str, Any]:
    """Each method cross-validated by run on the labelled windows of the period."""
    options.check()
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise InputError(f"--methods: {', '.join(bad) or 'none'}; methods: {', '.join(METHODS)}")
    data, y = labelled_data(store, options, lo, hi)
    runs = data.column("run")
    splits = _folds(runs, folds)
    matrices = _fold_matrices(data, options, splits)
    classes, counts = np.unique(y, return_counts=True)
    return {
        "on": options.on,
        "spec": options.spec().to_json(),
        "windows": int(data.n),
        "runs": len(set(runs.tolist())),
        "folds": len(splits),
        "classes": {str(c): int(n) for c, n in zip(classes, counts, strict=True)},
        "methods": {
            m: _cross_validate(data, y, m, replace(options, method=m), splits, matrices)
            for m in methods
        },
    }
