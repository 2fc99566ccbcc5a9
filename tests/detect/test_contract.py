"""The detector contract, run over every registered detector (a new one gets it by
registering): __init__ only stores its arguments; fit returns self; shapes; determinism
under a seed; a save/load round trip that gives identical scores; a clear error on empty
or NaN input; planted anomalies score higher than normal rows. Each kind brings its data:
traces for sequence and duration detectors, instance windows for point detectors, and
labelled windows for those that require labels.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spanomaly.detect.base import Detector, FeatureInfo, detectors, fit_threshold, split_rows
from spanomaly.detect.point import PointDetector
from spanomaly.detect.trace import TraceDetector
from spanomaly.errors import ModelError
from spanomaly.features.traces import FeatureConfig, Sequences, Vocabulary, events, sequences
from tests.synthetic import PLANTS, T0, TraceBuilder, normal_traces, plant

REGISTRY = detectors()
FAST = {
    "lstm": {"hidden_size": 16, "num_layers": 1, "epochs": 30},
    "lstm-duration": {"hidden_size": 16, "epochs": 30},
}
TARGET_FPR = {"point": 0.01}
D = 8


@dataclass
class Case:
    """What one detector is fitted on and scored with."""

    train: Any
    y: Any
    groups: np.ndarray | None
    test: Any  # normal and planted rows, scored together (peers see each other)
    test_groups: np.ndarray | None
    planted: np.ndarray  # mask over the test rows
    empty: Any
    nan: Any


@pytest.fixture(scope="module")
def traces() -> dict[str, Sequences]:
    b = TraceBuilder(seed=3)
    normal_traces(b, 300)
    n_train = len({r["trace_id"] for r in b.rows})
    normal_traces(b, 60, start_ns=T0 + 10**12)
    for i, kind in enumerate(PLANTS):
        plant(b, kind, T0 + 2 * 10**12 + i * 10**9)
    ev = events(b.table())
    ids = ev.column("trace_id").to_numpy(zero_copy_only=False)
    assert len(set(ids)) == n_train + 60 + len(PLANTS)
    seqs = sequences(ev, Vocabulary.fit(ev.column("key")), FeatureConfig())
    starts = ev.column("start_ns").to_numpy()[seqs.offsets[:-1]]
    train = np.flatnonzero(starts < T0 + 10**12)
    normal = np.flatnonzero((starts >= T0 + 10**12) & (starts < T0 + 2 * 10**12))
    planted = np.flatnonzero(starts >= T0 + 2 * 10**12)
    return {
        "train": seqs.subset(train),
        "all": seqs,
        "normal_rows": normal,
        "planted_rows": planted,
    }


def _trace_case(kind: str, data: dict[str, Sequences]) -> Case:
    wanted = (
        ["wrong_order", "missing_call", "extra_call", "unknown_op"]
        if kind == "sequence"
        else ["slow_span", "slow_self"]
    )
    planted = data["planted_rows"][[PLANTS.index(k) for k in wanted]]
    rows = np.concatenate([data["normal_rows"], planted])
    mask = np.arange(len(rows)) >= len(data["normal_rows"])
    empty = Sequences.from_lists([], n_keys=5, durations=[], self_times=[])
    nan = Sequences.from_lists(
        [[4, 4]] * 10, n_keys=5, durations=[[0.1, np.nan]] * 10, self_times=[[0.1, 0.1]] * 10
    )
    return Case(data["train"], None, None, data["all"].subset(rows), None, mask, empty, nan)


def _point_case(rng: np.random.Generator) -> Case:
    """Normal windows of 4 peers per group; planted: one instance in each of 40 groups far
    off on every feature (an outlier to its peers and to the training windows alike)."""
    test = rng.normal(size=(800, D))
    planted_rows = np.arange(0, 800, 4)[:40]
    test[planted_rows] += 6.0
    is_planted = np.zeros(800, dtype=bool)
    is_planted[planted_rows] = True
    test_groups = np.repeat(np.arange(200), 4) + 10_000
    train, groups = rng.normal(size=(2000, D)), np.repeat(np.arange(500), 4)
    nan = np.full((10, D), np.nan)
    return Case(train, None, groups, test, test_groups, is_planted, np.zeros((0, D)), nan)


def _labelled_case(rng: np.random.Generator) -> Case:
    """Labelled windows: normal ones and two fault types, each moving its own features."""

    def windows(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.choice(np.array(["normal", "cpu", "memory"], dtype=object), n, p=[0.6, 0.2, 0.2])
        X = rng.normal(size=(n, D))
        X[y == "cpu", :2] += 6.0
        X[y == "memory", 2:4] += 6.0
        return X, y

    X, y = windows(600)
    X_new, y_new = windows(400)
    planted = y_new != "normal"
    return Case(X, y, None, X_new, None, planted, np.zeros((0, D)), X_new * np.nan)


@pytest.fixture(scope="module")
def cases(traces: dict[str, Sequences]) -> dict[str, Case]:
    rng = np.random.default_rng(7)
    return {
        "sequence": _trace_case("sequence", traces),
        "duration": _trace_case("duration", traces),
        "point": _point_case(rng),
        "labelled": _labelled_case(rng),
    }


def _case(name: str, cases: dict[str, Case]) -> Case:
    cls = REGISTRY[name]
    return cases["labelled" if cls.requires_labels else cls.kind]


def _make(name: str) -> Detector:
    cls = REGISTRY[name]
    return cls(random_state=0, target_fpr=TARGET_FPR.get(cls.kind, 1e-3), **FAST.get(name, {}))


def _fit(name: str, case: Case) -> Detector:
    return _make(name).fit(case.train, case.y, groups=case.groups)


def _scores(det: Detector, case: Case) -> np.ndarray:
    if isinstance(det, TraceDetector):
        return det.score(case.test)
    assert isinstance(det, PointDetector)
    return det.score(case.test, case.test_groups)


def _rows(X: Any) -> int:
    return X.n_traces if isinstance(X, Sequences) else len(X)


def test_the_registry_holds_every_kind() -> None:
    assert set(REGISTRY) >= {"lstm", "ngram", "robust", "lstm-duration", "ecod", "iforest",
                             "lof", "dbscan", "peer", "svm", "fisher-dbscan"}  # fmt: skip
    assert {c.kind for c in REGISTRY.values()} == {"sequence", "duration", "point"}
    assert {n for n, c in REGISTRY.items() if c.requires_labels} == {"svm", "fisher-dbscan"}
    assert detectors("point").keys() == {n for n, c in REGISTRY.items() if c.kind == "point"}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_init_only_stores_arguments(name: str, cases: dict[str, Case]) -> None:
    det = _make(name)
    assert [k for k in vars(det) if k.endswith("_")] == []
    params = det.get_params()
    assert set(vars(det)) == set(params) >= {"target_fpr", "validation_fraction", "random_state"}
    for klass in REGISTRY[name].__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and klass is not object:
            for p in inspect.signature(init).parameters.values():
                if p.kind == p.KEYWORD_ONLY:
                    assert p.name in params
    assert type(det)(**params).get_params() == params
    with pytest.raises(ModelError, match="not fitted"):
        det.score(_case(name, cases).test)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_fit_returns_self_and_planted_anomalies_score_higher(
    name: str, cases: dict[str, Case]
) -> None:
    case = _case(name, cases)
    det = _make(name)
    assert det.fit(case.train, case.y, groups=case.groups) is det
    assert np.isfinite(det.threshold_)  # type: ignore[attr-defined]
    scores = _scores(det, case)
    assert scores.shape == (_rows(case.test),) and scores.dtype == np.float64
    normal, planted = scores[~case.planted], scores[case.planted]
    assert planted.min() > np.quantile(normal, 0.95), (planted, np.sort(normal)[-5:])
    flagged = scores > det.threshold_  # type: ignore[attr-defined]
    assert flagged[case.planted].mean() >= 0.9 and flagged[~case.planted].mean() <= 0.05


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_fit_is_deterministic_under_a_seed(name: str, cases: dict[str, Case]) -> None:
    case = _case(name, cases)
    assert np.array_equal(_scores(_fit(name, case), case), _scores(_fit(name, case), case))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_save_load_gives_identical_scores(
    name: str, cases: dict[str, Case], tmp_path: Path
) -> None:
    case = _case(name, cases)
    det = _fit(name, case)
    det.save(tmp_path, prefix="x-")
    assert not list(tmp_path.glob("*.pkl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-config.json", "x-weights.safetensors"]
    again = Detector.load(tmp_path, prefix="x-")
    assert type(again) is type(det) and again.get_params() == det.get_params()
    assert again.threshold_ == det.threshold_  # type: ignore[attr-defined]
    assert np.array_equal(_scores(again, case), _scores(det, case))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_empty_or_nan_input_is_one_clear_error(name: str, cases: dict[str, Case]) -> None:
    case = _case(name, cases)
    for bad, what in ((case.empty, "to train on"), (case.nan, "NaN")):
        y = None if case.y is None else case.y[: len(bad)]
        with pytest.raises(ModelError, match=what) as err:
            _make(name).fit(bad, y)
        assert str(err.value).startswith(name) and "\n" not in str(err.value)
    det = _fit(name, case)
    with pytest.raises(ModelError, match="NaN"):
        det.score(case.nan)
    if isinstance(det, PointDetector):
        with pytest.raises(ModelError, match="3 features, but fitted on 8"):
            det.score(case.test[:, :3])


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if c.kind != "point"))
def test_update_learns_a_false_positive(name: str, cases: dict[str, Case]) -> None:
    case = _case(name, cases)
    det = _fit(name, case)
    assert isinstance(det, TraceDetector)
    planted = np.flatnonzero(case.planted)
    fp = case.test.subset(planted[:1])
    assert det.predict(fp).all()
    det.update(fp)
    assert not det.predict(fp).any()
    # one false positive does not make the other anomalies normal
    others = case.test.subset(planted[1:])
    if det.kind == "duration":  # the other plant slows another span
        assert det.predict(others).all()


def test_labels_are_required_where_they_are_used(cases: dict[str, Case]) -> None:
    case = cases["labelled"]
    for name, cls in REGISTRY.items():
        if cls.requires_labels:
            with pytest.raises(ModelError, match="needs labels"):
                _make(name).fit(case.train)
            with pytest.raises(ModelError, match="3 labels for 600"):
                _make(name).fit(case.train, case.y[:3])


def test_a_detector_says_what_it_needs_from_its_features() -> None:
    z = FeatureInfo(z_scores=True)
    wanted = {n: c.params_for(z) for n, c in REGISTRY.items() if c.params_for(z)}
    assert wanted == {"ecod": {"normal_tail": True}}
    assert all(not c.params_for(FeatureInfo()) for c in REGISTRY.values())
    assert REGISTRY["ecod"](**wanted["ecod"]).normal_tail is True  # type: ignore[attr-defined]


def test_a_family_loads_only_its_own_detectors(cases: dict[str, Case], tmp_path: Path) -> None:
    _fit("ngram", cases["sequence"]).save(tmp_path)
    assert isinstance(TraceDetector.load(tmp_path), TraceDetector)
    with pytest.raises(ModelError, match="unknown detector 'ngram'"):
        PointDetector.load(tmp_path)


def test_incompatible_state_version_is_one_clear_error(
    cases: dict[str, Case], tmp_path: Path
) -> None:
    _fit("ngram", cases["sequence"]).save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["state_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="state version 99") as err:
        Detector.load(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name", sorted(n for n, c in REGISTRY.items() if c.HOLD_OUT and c.kind == "point")
)
def test_the_validation_mask_names_the_held_out_rows(name: str, cases: dict[str, Case]) -> None:
    """Point windows: a mask marks the held-out ones (traces come as Sequences of their own)."""
    case = _case(name, cases)
    held = np.zeros(len(case.train), dtype=bool)
    held[-400:] = True
    det = _make(name).fit(case.train, groups=case.groups, validation=held)
    assert det.n_validation_ == 400 and det.n_train_ == len(case.train) - 400  # type: ignore[attr-defined]
    with pytest.raises(ModelError, match="some but not all"):
        _make(name).fit(case.train, groups=case.groups, validation=np.ones_like(held))


def test_bad_parameters_are_model_errors(cases: dict[str, Case]) -> None:
    with pytest.raises(ModelError, match="target_fpr"):
        REGISTRY["ngram"](target_fpr=2.0).fit(cases["sequence"].train)
    with pytest.raises(ModelError, match="durations"):
        REGISTRY["robust"]().fit(Sequences.from_lists([[4, 5]] * 10, n_keys=6))


def test_fit_threshold_quantile_and_tail() -> None:
    rng = np.random.default_rng(0)
    scores = rng.exponential(1.0, 100_000)
    # enough data: the empirical quantile
    assert abs(fit_threshold(scores, 1e-2) - np.log(100)) < 0.1
    # too little for the target: a Pareto tail extrapolates beyond the sample
    few = scores[:2000]
    t = fit_threshold(few, 1e-4)
    assert t >= few.max() * 0.9 and abs(t - np.log(1e4)) < 2.5
    assert fit_threshold(np.zeros(50), 1e-3) == 0.0
    assert fit_threshold(np.array([]), 1e-3) == float("inf")


def test_fit_threshold_small_validation_sets_extrapolate() -> None:
    """Thirty held-out windows cannot place a 1e-3 threshold by themselves: an exponential
    tail on the top scores does, well past the largest one (not at it)."""
    rng = np.random.default_rng(1)
    misses = []
    for _ in range(200):
        s = rng.exponential(1.0, 30)
        t = fit_threshold(s, 1e-3)
        assert t >= s.max()
        misses.append((rng.exponential(1.0, 10_000) > t).mean())
    # the realised false-positive rate is near the target, not the 1/31 of the maximum
    assert np.median(misses) < 3e-3 and np.mean(misses) < 1e-2


def test_fit_threshold_leaves_the_ties_of_the_body_out_of_the_tail() -> None:
    """Most traces lose no time (score 0): the tail is the few that lost some, scaled by
    how much they lost, not by an average that counts the zeros."""
    s = np.zeros(286)
    s[:3] = [8.0, 10.0, 12.0]
    t = fit_threshold(s, 1e-4)
    # P(S > t) = 3/286 * exp(-(t) / 10) = 1e-4
    assert abs(t - 10.0 * np.log(3 / (286 * 1e-4))) < 1e-6


def test_split_is_a_partition_that_keeps_groups_together() -> None:
    tr, val = split_rows(50, 0.2, 0)
    assert (len(tr), len(val)) == (40, 10) and not set(tr) & set(val)
    g = np.repeat(np.arange(50), 3)
    tr, val = split_rows(len(g), 0.2, 0, g)
    assert not set(g[tr]) & set(g[val]) and len(tr) + len(val) == len(g)
