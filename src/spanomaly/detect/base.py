"""The one detector contract: every detector (sequence, duration, point, semi-supervised,
supervised) has this shape, the scikit-learn / PyOD one.

    det = REGISTRY["ecod"](target_fpr=1e-3)   # __init__ only stores its keyword arguments
    det.fit(X)                                 # -> det; learned state ends in `_`
    det.fit(X, y)                              # detectors with requires_labels: labels per row
    det.score(X)                               # per row, higher = more anomalous
    det.predict(X)                             # score > threshold_
    det.save(folder); Detector.load(folder)    # JSON + safetensors, never pickle

A row is a trace (X: `Sequences`, kinds `sequence` and `duration`, `detect/trace.py`) or an
instance window (X: a feature matrix, kind `point`, `detect/point.py`). `fit` holds out
`validation_fraction` of the rows (whole `groups` together), or the rows the boolean mask
`validation=` marks, or takes separate held-out data as `validation=`; it fits the model on
the rest and sets `threshold_` on the held-out (normal) rows at `target_fpr` with
`fit_threshold`. Labels and the data being scored never touch a threshold. Detectors that
need labels (`requires_labels`) take them as `y` and fit and calibrate on all rows
(`HOLD_OUT = False`): their threshold is their own (a decision value of 0, a distance of
one eps), not a quantile of held-out rows.

A detector says what it wants from its features: `cls.params_for(FeatureInfo(...))` gives
the constructor arguments that suit them (ECOD: `normal_tail` where the features are
z-scores), so no caller names a detector.

Adding a detector: subclass the family's base (`TraceDetector`, `PointDetector`), set
`name` (unique over all kinds), write its hooks, decorate it with `@register`; the contract
test (`tests/detect/test_contract.py`) runs over every registered detector.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import numpy as np

from spanomaly.errors import ModelError

# Version of the on-disk detector state; a different version cannot be loaded.
STATE_VERSION = 1

REGISTRY: dict[str, type[Detector]] = {}


D = TypeVar("D", bound="type[Detector]")


def register(cls: D) -> D:
    """Class decorator: make a detector known by its `name` (unique over all kinds)."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ModelError(f"two detectors are named {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


def detectors(kind: str | None = None) -> dict[str, type[Detector]]:
    """Every registered detector (of one kind), by name; imports the detect modules first,
    so that a detector is known wherever its module lies in the package."""
    package = importlib.import_module("spanomaly.detect")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"spanomaly.detect.{info.name}")
    return {n: c for n, c in sorted(REGISTRY.items()) if kind is None or c.kind == kind}


@dataclass(frozen=True)
class FeatureInfo:
    """What a caller knows of the features it gives a detector (see `params_for`)."""

    # each feature is a z-score of a normaliser: standard normal in normal operation
    z_scores: bool = False


# -- helpers every family shares ---------------------------------------------------------------


def _gpd_pwm(excess: np.ndarray) -> tuple[float, float]:
    """Shape xi and scale sigma of a generalised Pareto fit (probability-weighted moments)."""
    x = np.sort(excess)
    n = len(x)
    a0 = float(x.mean())
    p = (np.arange(1, n + 1) - 0.35) / n
    a1 = float(np.mean((1.0 - p) * x))
    denom = a0 - 2.0 * a1
    if a0 <= 0 or denom <= 0:
        return 0.0, max(a0, 1e-12)
    k = a0 / denom - 2.0
    sigma = 2.0 * a0 * a1 / denom
    return -k, max(sigma, 1e-12)


def fit_threshold(
    scores: np.ndarray, target_fpr: float, tail: float = 0.05, min_tail: int = 20
) -> float:
    """The score above which a share target_fpr of normal rows lies.

    The empirical quantile where at least ten validation rows lie above it; otherwise the
    peaks-over-threshold estimate: a generalised Pareto distribution fitted to the scores
    above the (1 - tail) quantile, extrapolated to target_fpr; where that quantile leaves
    fewer than `min_tail` scores (a small validation set), an exponential tail fitted to the
    scores above the eleventh largest or a lower one (at most half; scores tied with it, the zeros
    of traces that lost no time, are left out of the tail) instead, since a Pareto shape
    cannot be told from so few. Never below the largest score the quantile could
    see; with too few distinct tail scores, the largest score.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    n = len(s)
    if n == 0:
        return float("inf")
    if target_fpr * n >= 10:
        return float(np.quantile(s, 1.0 - target_fpr, method="higher"))
    floor = float(np.quantile(s, 1.0 - 10.0 / n if n > 10 else 0.0, method="higher"))
    u = float(np.quantile(s, 1.0 - tail, method="lower"))
    excess = s[s > u] - u
    if len(excess) >= min_tail and np.ptp(excess) > 0:
        xi, sigma = _gpd_pwm(excess)
        ratio = target_fpr * n / len(excess)
        if abs(xi) < 1e-6:
            t = u + sigma * np.log(1.0 / ratio)
        else:
            t = u + sigma / xi * (ratio**-xi - 1.0)
        if xi < 0:  # bounded tail: never past its end point
            t = min(t, u + sigma / -xi)
        return float(max(t, floor))
    k = min(max(len(excess), 10), n // 2)
    if k < 3:
        return float(s[-1])
    u = float(s[n - k - 1])
    above = s[s > u] - u  # strictly above: scores tied at u (often 0: nothing lost) are
    if not len(above):  # the body, not the tail; P(S > t) = P(S > u) exp(-(t - u) / scale)
        return float(s[-1])
    t = u + float(above.mean()) * np.log(len(above) / (target_fpr * n))
    return float(max(t, s[-1]))


def split_rows(
    n: int, fraction: float, random_state: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A random (train, validation) split of n rows, as sorted indices; whole groups stay
    together; at least one row on each side where there are two."""
    rng = np.random.default_rng(random_state)
    if groups is None:
        order = rng.permutation(n)
        n_val = min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    ids = np.unique(groups)
    order = rng.permutation(ids)
    n_val = min(max(round(len(ids) * fraction), 1), len(ids) - 1) if len(ids) >= 2 else 0
    val = np.isin(groups, order[:n_val])
    return np.flatnonzero(~val), np.flatnonzero(val)


def _finite(value: Any) -> Any:
    """JSON has no infinity: a non-finite float is written as null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# -- the base ---------------------------------------------------------------------------------


class Detector:
    """Base of every detector: parameters, the fit template, persistence."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # sequence | duration | point
    # fit needs labels y (supervised, semi-supervised); False: y is ignored
    requires_labels: ClassVar[bool] = False
    # False: fit and calibrate on all rows (the labelled detectors, whose threshold is
    # their own); True: calibrate on held-out rows
    HOLD_OUT: ClassVar[bool] = True
    ROWS: ClassVar[str] = "rows"  # what a row is, in messages
    MIN_FIT_ROWS: ClassVar[int] = 1
    # learned scalars and arrays every detector of a family saves (besides its _state)
    _COMMON_STATE: ClassVar[tuple[str, ...]] = ()
    _COMMON_ARRAYS: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, *, target_fpr: float = 1e-3, validation_fraction: float = 0.2, random_state: int = 0
    ) -> None:
        self.target_fpr = target_fpr
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    @classmethod
    def params_for(cls, features: FeatureInfo) -> dict[str, Any]:
        """Constructor arguments that suit these features (none by default)."""
        return {}

    # -- parameters -----------------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.kind == p.KEYWORD_ONLY and p.name not in names:
                    names.append(p.name)
        return names

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {n: getattr(self, n) for n in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_params(self) -> None:
        if not 0 < self.target_fpr < 1:
            raise ModelError(f"{self.name}: target_fpr must be in (0, 1), not {self.target_fpr}")
        if not 0 < self.validation_fraction < 1:
            raise ModelError(f"{self.name}: validation_fraction must be in (0, 1)")

    # -- fitting --------------------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        groups: np.ndarray | None = None,
        validation: Any = None,
    ) -> Self:
        """Fit on normal rows (labelled ones where `requires_labels`); the threshold on the
        held-out rows: `validation` (a boolean mask over X's rows, or separate data of X's
        kind), else a random share of the rows (of the groups, where given)."""
        self._check_params()
        X = self._check_input(X)
        n = self._n_rows(X)
        if n < self.MIN_FIT_ROWS:
            raise ModelError(f"{self.name}: {n} {self.ROWS} to train on, "
                             f"need at least {self.MIN_FIT_ROWS}")  # fmt: skip
        labels = None if y is None else np.asarray(y)
        if labels is None and self.requires_labels:
            raise ModelError(f"{self.name}: needs labels (y), one per {self.ROWS[:-1]}")
        if labels is not None and len(labels) != n:
            raise ModelError(f"{self.name}: {len(labels)} labels for {n} {self.ROWS}")
        g = None if groups is None else np.asarray(groups)
        if not self.HOLD_OUT:
            self._learn(X, labels, g)
            self._calibrate(X, g)
            return self
        if validation is not None and not _is_mask(validation):
            self._learn(X, labels, g)
            self._calibrate(self._check_input(validation), None)
            return self
        tr, val = self._split(n, g, validation)
        self._learn(
            self._take(X, tr),
            None if labels is None else labels[tr],
            None if g is None else g[tr],
        )
        self._calibrate(self._take(X, val), None if g is None else g[val])
        return self

    def _split(
        self, n: int, groups: np.ndarray | None, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if mask is None:
            return split_rows(n, self.validation_fraction, self.random_state, groups)
        held = np.asarray(mask, dtype=bool)
        if held.shape != (n,) or held.all() or not held.any():
            raise ModelError(f"{self.name}: validation must mark some but not all {self.ROWS}")
        return np.flatnonzero(~held), np.flatnonzero(held)

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise ModelError(f"{self.name}: not fitted; call fit first")

    # -- written by a family (trace, point) ------------------------------------------------

    def _check_input(self, X: Any) -> Any:
        """X as the family holds it; ModelError on the wrong type, shape or NaN."""
        raise NotImplementedError

    def _n_rows(self, X: Any) -> int:
        raise NotImplementedError

    def _take(self, X: Any, rows: np.ndarray) -> Any:
        raise NotImplementedError

    def _learn(self, X: Any, y: np.ndarray | None, groups: np.ndarray | None) -> None:
        """Fit the model on the training rows (the family's bookkeeping, then `_fit`)."""
        raise NotImplementedError

    def _calibrate(self, X: Any, groups: np.ndarray | None) -> None:
        """Set threshold_ (and whatever else) from the held-out rows."""
        raise NotImplementedError

    # -- written by a detector ------------------------------------------------------------

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Learned state: JSON-able values and named arrays."""
        raise NotImplementedError

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    # -- persistence ----------------------------------------------------------------------

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything needed to rebuild the fitted detector: (config, arrays)."""
        self._check_fitted()
        values, arrays = self._state()
        arrays = dict(arrays, **{k: getattr(self, k) for k in self._COMMON_ARRAYS})
        config = {
            "detector": self.name,
            "kind": self.kind,
            "state_version": STATE_VERSION,
            "params": self.get_params(),
            "fitted": {k: _finite(getattr(self, k)) for k in self._COMMON_STATE},
            "state": values,
        }
        return config, arrays

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        """The detector that `state` described; ModelError unless it is a `cls`."""
        name = config.get("detector")
        known = detectors()
        if name not in known or not issubclass(known[name], cls):
            fits = ", ".join(n for n, c in known.items() if issubclass(c, cls))
            raise ModelError(f"unknown detector {name!r}; known: {fits}")
        if config.get("state_version") != STATE_VERSION:
            raise ModelError(
                f"detector {name}: state version {config.get('state_version')} is not "
                f"{STATE_VERSION}; retrain with this version of spanomaly"
            )
        try:  # a detector whose parameters or state changed since the model was saved
            det = known[name](**config["params"])
            for k, v in config["fitted"].items():
                setattr(det, k, float("inf") if v is None and k == "threshold_" else v)
            for k in det._COMMON_ARRAYS:
                setattr(det, k, np.asarray(arrays[k], dtype=np.float64))
            det._load_state(config["state"], arrays)
        except (TypeError, KeyError) as exc:
            raise ModelError(f"detector {name}: the saved model does not fit this version of "
                             f"spanomaly ({type(exc).__name__}: {exc}); retrain") from exc  # fmt: skip
        return det  # type: ignore[return-value]

    def save(self, directory: str | Path, prefix: str = "") -> None:
        """Write <prefix>config.json and <prefix>weights.safetensors into directory."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config, arrays = self.state()
        (directory / f"{prefix}config.json").write_text(
            json.dumps(config, indent=2, allow_nan=False)
        )
        save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()},
            directory / f"{prefix}weights.safetensors",
        )

    @classmethod
    def load(cls, directory: str | Path, prefix: str = "") -> Self:
        """A detector written by `save`."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        directory = Path(directory)
        try:
            config = json.loads((directory / f"{prefix}config.json").read_text())
            arrays = load_file(directory / f"{prefix}weights.safetensors")
        except (OSError, ValueError, SafetensorError) as exc:
            raise ModelError(f"{directory}: cannot read the detector: {exc}") from exc
        return cls.from_state(config, arrays)


def _is_mask(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == bool
