"""The detector contract, run over every registered detector.

fit returns self; __init__ only stores its arguments; planted anomalies score higher than
normal traces; save/load round-trips; an incompatible state version is a clear error; an
unfitted detector says so; the threshold comes from the validation traces.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from spanomaly.detect.base import REGISTRY, TraceDetector, fit_threshold, split
from spanomaly.detect.model import TraceModel  # noqa: F401  (registers every detector)
from spanomaly.errors import ModelError
from spanomaly.features.traces import FeatureConfig, Sequences, Vocabulary, events, sequences
from tests.synthetic import PLANTS, T0, TraceBuilder, normal_traces, plant

FAST = {
    "lstm": {"hidden_size": 16, "num_layers": 1, "epochs": 30},
    "lstm-duration": {"hidden_size": 16, "epochs": 30},
}


@pytest.fixture(scope="module")
def data() -> dict[str, Sequences]:
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
        "normal": seqs.subset(normal),
        "planted": seqs.subset(planted),
    }


def _make(name: str) -> TraceDetector:
    return REGISTRY[name](random_state=0, **FAST.get(name, {}))


def _relevant(name: str, data: dict[str, Sequences]) -> Sequences:
    """The planted traces the detector's kind should see (sequence or duration plants)."""
    kind = REGISTRY[name].kind
    wanted = (
        ["wrong_order", "missing_call", "extra_call", "unknown_op"]
        if kind == "sequence"
        else ["slow_span", "slow_self"]
    )
    return data["planted"].subset(np.array([PLANTS.index(k) for k in wanted]))


def test_the_registry_has_the_four_detectors() -> None:
    assert set(REGISTRY) >= {"lstm", "ngram", "robust", "lstm-duration"}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_init_only_stores_arguments(name: str) -> None:
    det = _make(name)
    learned = [k for k in vars(det) if k.endswith("_")]
    assert learned == []
    params = det.get_params()
    cls = REGISTRY[name]
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind == p.KEYWORD_ONLY:
                assert p.name in params
    assert type(det)(**params).get_params() == params
    with pytest.raises(ModelError, match="not fitted"):
        det.score(_empty())


def _empty() -> Sequences:
    return Sequences.from_lists([[4]], n_keys=5, durations=[[0.1]], self_times=[[0.1]])


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_fit_returns_self_and_planted_anomalies_score_higher(
    name: str, data: dict[str, Sequences]
) -> None:
    det = _make(name)
    assert det.fit(data["train"]) is det
    assert np.isfinite(det.threshold_) and det.threshold_ >= det.THRESHOLD_FLOOR
    assert 0.0 <= det.validation_fpr_ <= 0.05
    normal = det.score(data["normal"])
    planted = det.score(_relevant(name, data))
    assert planted.min() > np.quantile(normal, 0.95), (planted, np.sort(normal)[-5:])
    assert det.predict(_relevant(name, data)).all()
    assert det.predict(data["normal"]).mean() <= 0.05


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_fit_is_reproducible(name: str, data: dict[str, Sequences]) -> None:
    a = _make(name).fit(data["train"]).score(data["normal"])
    b = _make(name).fit(data["train"]).score(data["normal"])
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_save_load_round_trips(name: str, data: dict[str, Sequences], tmp_path: Path) -> None:
    det = _make(name).fit(data["train"])
    det.save(tmp_path / name)
    assert not list((tmp_path / name).glob("*.pkl"))
    again = TraceDetector.load(tmp_path / name)
    assert type(again) is type(det) and again.get_params() == det.get_params()
    both = np.concatenate([det.score(data["normal"]), det.score(data["planted"])])
    back = np.concatenate([again.score(data["normal"]), again.score(data["planted"])])
    assert np.allclose(both, back, equal_nan=True)
    assert again.threshold_ == det.threshold_


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_update_learns_a_false_positive(name: str, data: dict[str, Sequences]) -> None:
    det = _make(name).fit(data["train"])
    fp = _relevant(name, data).subset(np.array([0]))
    assert det.predict(fp).all()
    det.update(fp)
    assert not det.predict(fp).any()
    # one false positive does not make the other anomalies normal
    others = _relevant(name, data).subset(np.arange(1, _relevant(name, data).n_traces))
    if REGISTRY[name].kind == "duration":  # the other plant slows another span
        assert det.predict(others).all()


def test_incompatible_state_version_is_one_clear_error(
    data: dict[str, Sequences], tmp_path: Path
) -> None:
    det = _make("ngram").fit(data["train"])
    det.save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["state_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="state version 99") as err:
        TraceDetector.load(tmp_path)
    assert "\n" not in str(err.value)


def test_bad_parameters_are_model_errors(data: dict[str, Sequences]) -> None:
    with pytest.raises(ModelError, match="target_fpr"):
        REGISTRY["ngram"](target_fpr=2.0).fit(data["train"])
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


def test_split_is_a_partition() -> None:
    seqs = Sequences.from_lists([[4 + i % 3] for i in range(50)], n_keys=8)
    train, val = split(seqs, 0.2, 0)
    assert (train.n_traces, val.n_traces) == (40, 10)


def test_fit_threshold_leaves_the_ties_of_the_body_out_of_the_tail() -> None:
    """Most traces lose no time (score 0): the tail is the few that lost some, scaled by
    how much they lost, not by an average that counts the zeros."""
    s = np.zeros(286)
    s[:3] = [8.0, 10.0, 12.0]
    t = fit_threshold(s, 1e-4)
    # P(S > t) = 3/286 * exp(-t / 10) = 1e-4
    assert abs(t - 10.0 * np.log(3 / (286 * 1e-4))) < 1e-6
