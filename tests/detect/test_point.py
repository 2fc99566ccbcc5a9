"""Point detectors of instance windows beyond the contract (`test_contract.py`): planted point
anomalies above a quality floor, peer comparison, ECOD's tails, the semi-supervised method
with 5 % of the windows labelled, and the SVM naming fault types."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spanomaly.detect.base import Detector, detectors
from spanomaly.detect.point import ECOD, PeerDetector, group_median
from spanomaly.detect.semisupervised import FisherDBSCAN, fisher_scores, spread
from spanomaly.detect.svm import FaultTypeSVM
from spanomaly.errors import ModelError

UNSUPERVISED = sorted(n for n, c in detectors("point").items() if not c.requires_labels)
D = 8


def auc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Probability that a planted window outscores a normal one (ties count half)."""
    a = anomalous[:, None]
    n = normal[None, :]
    return float(((a > n).sum() + 0.5 * (a == n).sum()) / (a.size * n.size))


@pytest.fixture(scope="module")
def windows() -> dict[str, np.ndarray]:
    """Normal windows of 4 peers per group, and planted ones: single-feature spikes (a
    CPU-starved pod) and small shifts of several features (a slow new version)."""
    rng = np.random.default_rng(7)
    n_groups = 500
    groups = np.repeat(np.arange(n_groups), 4)
    train = rng.normal(size=(len(groups), D))
    test = rng.normal(size=(800, D))
    test_groups = np.repeat(np.arange(200), 4) + 10_000
    spikes = rng.normal(size=(40, D))
    spikes[np.arange(40), rng.integers(0, D, 40)] += 8.0
    shifted = test.copy()
    planted_rows = np.arange(0, 800, 4)[:40]  # one instance in 40 groups misbehaves
    shifted[planted_rows, :4] += 4.0
    return {
        "train": train,
        "groups": groups,
        "test": test,
        "test_groups": test_groups,
        "spikes": spikes,
        "shifted": shifted,
        "planted_rows": planted_rows,
    }


def make(name: str) -> Detector:
    return detectors()[name](target_fpr=0.01, random_state=0)


# Isolation Forest isolates one spiking feature of eight less surely than the others
FLOORS = {"iforest": (0.85, 0.1)}  # ranks them well, flags few at 1 % FPR


@pytest.mark.parametrize("name", [n for n in UNSUPERVISED if n != "peer"])
def test_planted_spikes_score_higher(name: str, windows: dict[str, np.ndarray]) -> None:
    det = make(name).fit(windows["train"])
    floor, caught = FLOORS.get(name, (0.95, 0.8))
    quality = auc(det.score(windows["test"]), det.score(windows["spikes"]))
    assert quality >= floor, (name, quality)
    assert det.predict(windows["spikes"]).mean() >= caught


def test_peer_comparison_catches_the_misbehaving_instance(
    windows: dict[str, np.ndarray],
) -> None:
    det = PeerDetector(target_fpr=0.01).fit(windows["train"], groups=windows["groups"])
    s = det.score(windows["shifted"], windows["test_groups"])
    planted = np.zeros(800, dtype=bool)
    planted[windows["planted_rows"]] = True
    assert auc(s[~planted], s[planted]) >= 0.95
    assert det.predict(windows["shifted"], windows["test_groups"])[planted].mean() >= 0.8
    # an instance without peers is never anomalous by comparison
    alone = det.score(windows["shifted"][:3], np.arange(3))
    assert (alone == 0).all()


def test_group_median_leaves_the_row_out() -> None:
    X = np.array([[1.0], [2.0], [3.0], [10.0], [5.0]])
    med, size = group_median(X, np.array([0, 0, 0, 0, 1]))
    np.testing.assert_allclose(med[:4, 0], [3.0, 3.0, 2.0, 2.0])
    assert np.isnan(med[4, 0]) and size.tolist() == [4, 4, 4, 4, 1]


def test_ecod_grows_past_the_training_range() -> None:
    rng = np.random.default_rng(0)
    det = ECOD(target_fpr=0.01).fit(rng.normal(size=(2000, 3)))
    x = np.zeros((3, 3))
    x[1, 0], x[2, 0] = 10.0, 100.0
    s = det.score(x)
    assert s[0] < s[1] < s[2]
    t = det.tail_surprise(x, [0])
    assert t[0] < 1 < t[1] < t[2]
    flat = ECOD(target_fpr=0.01, tail=False).fit(rng.normal(size=(2000, 3)))
    assert flat.score(x)[1] == pytest.approx(flat.score(x)[2])  # plain ECOD saturates


def test_ecod_normal_tail_counts_one_extreme_z_as_the_normal_would() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 30))
    linear = ECOD(target_fpr=0.01, random_state=0).fit(X)
    normal = ECOD(target_fpr=0.01, random_state=0, normal_tail=True).fit(X)
    inside = rng.normal(size=(200, 30)).clip(-2.5, 2.5)  # within the training range
    assert normal.score(inside) == pytest.approx(linear.score(inside))
    # one feature at z 14 (a memory leak at 2.5 times its usual size): P(Z > 14) ~ 1e-44,
    # about 100 nats; the linear tail gives it a fraction of that
    leak = np.zeros((1, 30))
    leak[0, 0] = 14.0
    gained = normal.score(leak)[0] - normal.score(np.zeros((1, 30)))[0]
    assert gained > 90.0
    assert normal.score(leak)[0] > 1.5 * linear.score(leak)[0]
    assert normal.predict(leak)[0]
    assert ECOD(normal_tail=True).get_params()["normal_tail"] is True


def test_ecod_training_scores_match_pyod() -> None:
    pyod = pytest.importorskip("pyod.models.ecod", reason="PyOD is only a cross-check here")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 4))
    ours = ECOD(tail=False)
    ours._fit(X, None, None)
    theirs = pyod.ECOD().fit(X).decision_scores_
    # same statistic; ours smooths the ECDF with (k + 1) / (n + 1)
    assert np.corrcoef(ours._score(X, None), theirs)[0, 1] > 0.99


# -- labelled windows: fault types -------------------------------------------------------------

TYPES = ("normal", "cpu", "memory", "network", "delay", "error")


def typed_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of 12 features; each fault type moves its own pair of features."""
    rng = np.random.default_rng(seed)
    y = rng.choice(TYPES, size=n, p=[0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    X = rng.normal(size=(n, 12))
    for k, t in enumerate(TYPES[1:]):
        X[y == t, 2 * k : 2 * k + 2] += 6.0
    return X, y


def test_fisher_scores_rank_the_separating_features() -> None:
    X, y = typed_windows(600, 3)
    f = fisher_scores(X, y)
    assert set(np.argsort(-f)[:10]) == set(range(10))  # the 2 noise features come last


def test_semi_supervised_with_five_percent_labelled() -> None:
    X, y = typed_windows(1200, 4)
    rng = np.random.default_rng(5)
    labelled = rng.random(len(y)) < 0.05
    partial = np.where(labelled, y, None)
    det = FisherDBSCAN(max_features=10, min_samples=5).fit(X, partial)
    assert set(det.cluster_names_.values()) == set(y[labelled])  # a cluster per class
    assert set(det.selected_) <= set(range(10))  # no noise feature is kept
    named = det.predict_class(X)
    assert (named == y).mean() >= 0.9
    # the anomaly score: windows of a fault type lie outside the normal clusters
    flagged = det.predict(X)
    assert flagged[y != "normal"].mean() >= 0.9 and flagged[y == "normal"].mean() <= 0.1


def test_labels_spread_along_their_cluster_not_to_the_nearest_label() -> None:
    x = np.arange(0, 10.01, 0.1)
    chains = np.vstack([np.column_stack([x, np.zeros_like(x)]), np.column_stack([x, np.full_like(x, 2.0)])])  # fmt: skip
    W = np.vstack([chains, [[30.0, 30.0]]])  # and one window far from both
    y = np.array(["a"] * len(x) + ["b"] * len(x) + [""], dtype=object)
    labelled = np.zeros(len(W), dtype=bool)
    labelled[[0, 2 * len(x) - 1]] = True  # chain a at x = 0, chain b at x = 10
    clusters, names = spread(W, y, labelled, m=3, eps=0.3)
    assert len(set(clusters[:-1].tolist())) == 2 and clusters[-1] == -1
    # (9.9, 0) lies 2.0 from b's label and 9.9 from a's: it is still a's, along its chain
    assert (names[: len(x)] == "a").all() and (names[len(x) : -1] == "b").all()
    assert names[-1] == ""


def test_semi_supervised_by_run_chooses_its_space_on_labels_alone(tmp_path: Path) -> None:
    X, y = typed_windows(1200, 4)
    runs = np.repeat(np.arange(3), 400)
    labelled = np.random.default_rng(5).random(len(y)) < 0.05
    det = FisherDBSCAN(features_grid=(2, 10), eps_grid=(1.0, 2.0)).fit(
        X, np.where(labelled, y, None), groups=runs
    )
    assert det.k_ == 10 and det.eps_factor_ in (1.0, 2.0)  # 2 features cannot tell 5 types
    assert (det.predict_class(X) == y).mean() >= 0.9
    det.save(tmp_path)
    back = FisherDBSCAN.load(tmp_path)
    assert (back.k_, back.eps_factor_) == (det.k_, det.eps_factor_)
    assert (back.predict_class(X) == det.predict_class(X)).all()
    # a model saved before k and eps were chosen: a one-line error, not a KeyError
    config = json.loads((tmp_path / "config.json").read_text())
    del config["state"]["k_"]
    config["params"]["n_candidates"] = 30
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="retrain") as err:
        FisherDBSCAN.load(tmp_path)
    assert "\n" not in str(err.value)


def test_svm_names_fault_types(tmp_path: Path) -> None:
    X, y = typed_windows(600, 6)
    det = FaultTypeSVM().fit(X, y)
    assert det.cv_accuracy_ >= 0.95
    X_new, y_new = typed_windows(300, 7)
    assert (det.predict_class(X_new) == y_new).mean() >= 0.95
    assert det.predict(X_new)[y_new != "normal"].mean() >= 0.95
    det.save(tmp_path)
    back = FaultTypeSVM.load(tmp_path)
    assert (back.predict_class(X_new) == det.predict_class(X_new)).all()
    assert back.cv_accuracy_ == pytest.approx(det.cv_accuracy_)


def test_svm_search_picks_c_and_gamma_by_group(tmp_path: Path) -> None:
    X, y = typed_windows(600, 6)
    runs = np.repeat(np.arange(3), 200)
    grid = {"C_grid": (0.01, 10.0), "gamma_grid": (0.3,)}
    det = FaultTypeSVM(search=True, **grid).fit(X, y, groups=runs)
    assert det.C_ == 10.0 and det.gamma_ == pytest.approx(0.3 / X.shape[1])  # 0.01 underfits
    assert FaultTypeSVM(search=True, **grid).fit(X, y).C_ == 10.0  # no groups: C kept
    det.save(tmp_path)
    back = FaultTypeSVM.load(tmp_path)
    assert (back.C_, back.gamma_) == (det.C_, det.gamma_)
    X_new, _ = typed_windows(100, 7)
    assert (back.predict_class(X_new) == det.predict_class(X_new)).all()
