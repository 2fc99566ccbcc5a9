"""Duration models: flag the events that took too long for their key and context.

An event is out of its normal range when its self time (or its duration) lies above the
upper bound of the normal values for its key and context: the `quantile` (0.999) of the
training values. The time beyond the bound is the event's *excess*, in milliseconds; a
trace's score is the excess self time of all its events together: the time the request
lost to abnormal slowness. Self times split a trace's time between its spans without
counting a slow child again in its parents, and a delay that hits every call to a service
(a slow network) adds up over the calls. The event with the largest excess is the one the
explanation names (reason `slow span` for a span without children, `slow self time` for
one with: for a client span that is the network and queueing time of the call).

Why not a z-score: span times have heavy tails (a database call of 1 ms now and then takes
400 ms in normal operation), so scores scaled by the core spread of each key rank such
harmless outliers above a two-second delay of a whole service; a bound at a high quantile
and the time lost beyond it do not.

- `RobustDuration`: per key, the empirical median and `quantile` of log duration and log
  self time; for keys with fewer than 1 / (1 - quantile) training events the bound is at
  least the median plus the typical bound width of the well-sampled keys.
- `LSTMDuration`: a second head on a next-event LSTM predicts a Laplace distribution of the
  event's log duration and log self time from the trace's prefix and the event's key, so the
  same call gets its own normal range in each kind of request; the bound is its quantile.

Feedback (a false positive marked normal) widens the normal range of the keys it concerns
just enough that the trace's events lie inside it; the LSTM is fine-tuned on it as well.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from spanomaly.detect.base import register
from spanomaly.detect.trace import EventScores, Reason, TraceDetector
from spanomaly.errors import ModelError
from spanomaly.features.traces import Sequences

log = logging.getLogger(__name__)


def _group_quantiles(
    keys: np.ndarray, values: np.ndarray, n_keys: int, qs: tuple[float, ...]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per key: the count and the given quantiles of values (vectorised over all keys)."""
    count = np.bincount(keys, minlength=n_keys).astype(np.int64)
    out = [np.zeros(n_keys) for _ in qs]
    if not len(keys):
        return count, out
    starts = np.concatenate([[0], np.cumsum(count)[:-1]])
    has = count > 0
    order = np.lexsort((values, keys))
    s = values[order].astype(np.float64)
    for q, arr in zip(qs, out, strict=True):
        arr[has] = s[starts[has] + np.ceil(q * (count[has] - 1)).astype(np.int64)]
    return count, out


class DurationDetector(TraceDetector):
    """What both duration models share: bounds, time lost beyond them, widening on feedback."""

    kind = "duration"
    THRESHOLD_FLOOR = 1.0  # ms lost in a whole trace: less is never anomalous

    def __init__(self, *, quantile: float = 0.999, scale_floor: float = 0.05, **base: Any) -> None:
        super().__init__(**base)
        self.quantile = quantile
        self.scale_floor = scale_floor

    def _check_params(self) -> None:
        super()._check_params()
        if not 0.5 < self.quantile < 1:
            raise ModelError(f"{self.name}: quantile must be in (0.5, 1)")
        if not self.scale_floor > 0:
            raise ModelError(f"{self.name}: scale_floor must be positive")

    def _bounds(self, data: Sequences) -> tuple[np.ndarray, ...]:
        """Per event, in dataset B's log scale: (center, upper bound) of duration, of self
        time, and whether the key is known."""
        raise NotImplementedError

    def _widen(self, n_keys: int) -> None:
        if not hasattr(self, "widen_"):
            self.widen_ = np.ones((0, 2))
        if len(self.widen_) < n_keys:
            extra = np.ones((n_keys - len(self.widen_), 2))
            self.widen_ = np.concatenate([self.widen_, extra])

    def _ranges(self, data: Sequences) -> tuple[np.ndarray, ...]:
        """(center, bound) of duration and of self time per event, feedback applied."""
        c_d, b_d, c_s, b_s, known = self._bounds(data)
        self._widen(max(data.n_keys, self.n_keys_))
        w = self.widen_[data.keys]
        b_d = c_d + np.maximum(b_d - c_d, self.scale_floor) * w[:, 0]
        b_s = c_s + np.maximum(b_s - c_s, self.scale_floor) * w[:, 1]
        return c_d, b_d, c_s, b_s, known

    def _score_events(self, data: Sequences) -> EventScores:
        ev = EventScores.zeros(data)
        ev.aggregate = "sum"
        if not data.n_events:
            return ev
        assert data.log_duration is not None and data.log_self is not None
        c_d, b_d, c_s, b_s, known = self._ranges(data)
        ms = data.time_scale_us / 1000.0
        dur, own = np.expm1(data.log_duration) * ms, np.expm1(data.log_self) * ms
        up_d, up_s = np.expm1(b_d) * ms, np.expm1(b_s) * ms
        ex_d = np.where(known, np.maximum(dur - up_d, 0.0), 0.0)
        ex_s = np.where(known, np.maximum(own - up_s, 0.0), 0.0)
        ev.score = ex_s
        leaf = data.log_self >= data.log_duration - 1e-6
        ev.reason = np.where(leaf, Reason.SLOW, Reason.SLOW_SELF).astype(np.int8)
        ev.extra = {
            "excess_self_ms": ex_s,
            "excess_duration_ms": ex_d,
            "normal_duration_ms": np.expm1(c_d) * ms,
            "normal_self_ms": np.expm1(c_s) * ms,
            "upper_duration_ms": up_d,
            "upper_self_ms": up_s,
        }
        return ev

    def _update(self, data: Sequences) -> None:
        self._update_model(data)
        self.n_keys_ = max(self.n_keys_, data.n_keys)
        self._widen(self.n_keys_)
        assert data.log_duration is not None and data.log_self is not None
        c_d, b_d, c_s, b_s, known = self._ranges(data)
        w = self.widen_[data.keys]
        for col, x, c, b in ((0, data.log_duration, c_d, b_d), (1, data.log_self, c_s, b_s)):
            over = known & (x > b)
            if over.any():
                need = w[over, col] * (x[over] - c[over]) / (b[over] - c[over]) * 1.001
                factor = np.ones(len(self.widen_))
                np.maximum.at(factor, data.keys[over], need)
                self.widen_[:, col] = np.maximum(self.widen_[:, col], factor)

    def _update_model(self, data: Sequences) -> None:
        """Model-specific learning from normal traces (the widening follows)."""

    def _widen_state(self) -> dict[str, np.ndarray]:
        self._widen(self.n_keys_)
        return {"widen": self.widen_}


@register
class RobustDuration(DurationDetector):
    """Per key: median and upper quantile of log duration and log self time."""

    name = "robust"

    def _fit(self, train: Sequences) -> None:
        assert train.log_duration is not None and train.log_self is not None
        n = train.n_keys
        qs = (0.5, self.quantile)
        count, (c_d, b_d) = _group_quantiles(train.keys, train.log_duration, n, qs)
        _, (c_s, b_s) = _group_quantiles(train.keys, train.log_self, n, qs)
        # rare keys: at least the typical bound width of the well-sampled keys
        n_min = int(np.ceil(1.0 / (1.0 - self.quantile)))
        for c, b in ((c_d, b_d), (c_s, b_s)):
            well = count >= n_min
            pool = well if well.any() else count >= 2
            width = float(np.median(b[pool] - c[pool])) if pool.any() else 1.0
            rare = (count > 0) & (count < n_min)
            b[rare] = np.maximum(b[rare], c[rare] + width)
        self.count_ = count
        self.center_ = np.stack([c_d, c_s], axis=1)
        self.bound_ = np.stack([b_d, b_s], axis=1)
        self._widen(n)

    def _bounds(self, data: Sequences) -> tuple[np.ndarray, ...]:
        keys = data.keys
        inside = keys < len(self.count_)
        k = np.where(inside, keys, 0)
        known = inside & (self.count_[k] > 0)
        c, b = self.center_[k], self.bound_[k]
        return c[:, 0], b[:, 0], c[:, 1], b[:, 1], known

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, {
            "count": self.count_,
            "center": self.center_,
            "bound": self.bound_,
            **self._widen_state(),
        }

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.count_ = np.asarray(arrays["count"], dtype=np.int64)
        self.center_ = np.asarray(arrays["center"], dtype=np.float64)
        self.bound_ = np.asarray(arrays["bound"], dtype=np.float64)
        self.widen_ = np.asarray(arrays["widen"], dtype=np.float64)


@register
class LSTMDuration(DurationDetector):
    """A duration head on an LSTM over the trace's key prefix (Laplace NLL, PyTorch, CPU)."""

    name = "lstm-duration"

    def __init__(
        self,
        *,
        embedding_dim: int = 32,
        hidden_size: int = 64,
        num_layers: int = 1,
        epochs: int = 20,
        batch_size: int = 16,
        lr: float = 5e-3,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr

    def _check_params(self) -> None:
        super()._check_params()
        for name in ("embedding_dim", "hidden_size", "num_layers", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ModelError(f"lstm-duration: {name} must be at least 1")

    def _train(self, data: Sequences, epochs: int, lr: float) -> list[float]:
        from spanomaly.detect import _lstm

        assert data.log_duration is not None and data.log_self is not None
        rng = _lstm.seed(self.random_state)
        reps, inverse, _ = data.unique()
        distinct = data.subset(reps)
        u_event = inverse[data.trace_of_event()]
        order = np.argsort(u_event, kind="stable")  # events grouped by distinct sequence
        count = np.bincount(u_event, minlength=len(reps))
        return _lstm.train_duration(
            self.net_,
            distinct,
            np.cumsum(count) - count,
            count,
            data.positions()[order],
            data.log_duration[order],
            data.log_self[order],
            epochs,
            self.batch_size,
            lr,
            rng,
        )

    def _fit(self, train: Sequences) -> None:
        from spanomaly.detect import _lstm

        _lstm.seed(self.random_state)
        self.net_ = _lstm.make_net(train.n_keys, self.get_params(), duration_head=True)
        self.loss_ = self._train(train, self.epochs, self.lr)
        self.known_ = np.bincount(train.keys, minlength=train.n_keys) > 0
        self._widen(train.n_keys)

    def _update_model(self, data: Sequences) -> None:
        from spanomaly.detect import _lstm

        self.net_.grow(data.n_keys)
        self._train(data, _lstm.fine_tune_steps(data.n_traces), self.lr / 5)
        known = np.zeros(max(len(self.known_), data.n_keys), dtype=bool)
        known[: len(self.known_)] = self.known_
        known[data.keys] = True
        self.known_ = known

    def _bounds(self, data: Sequences) -> tuple[np.ndarray, ...]:
        from spanomaly.detect import _lstm

        keys = data.keys
        data = _lstm.within(data, self.net_)
        reps, inverse, _ = data.unique()
        distinct = data.subset(reps)
        params = _lstm.duration_params(self.net_, distinct)
        src = distinct.offsets[inverse[data.trace_of_event()]] + data.positions()
        p = params[src]
        known = (keys < len(self.known_)) & self.known_[np.minimum(keys, len(self.known_) - 1)]
        # the quantile of a Laplace distribution: loc + scale * log(1 / (2 (1 - q)))
        k = np.log(1.0 / (2.0 * (1.0 - self.quantile)))
        s_d = np.maximum(np.exp(p[:, 1]), self.scale_floor)
        s_s = np.maximum(np.exp(p[:, 3]), self.scale_floor)
        return p[:, 0], p[:, 0] + k * s_d, p[:, 2], p[:, 2] + k * s_s, known

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        from spanomaly.detect import _lstm

        arrays = {f"net.{k}": v for k, v in _lstm.state_arrays(self.net_).items()}
        arrays["known"] = self.known_
        arrays.update(self._widen_state())
        return {"net_keys": int(self.net_.embedding.num_embeddings)}, arrays

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        from spanomaly.detect import _lstm

        self.net_ = _lstm.make_net(int(values["net_keys"]), self.get_params(), duration_head=True)
        _lstm.load_arrays(self.net_, {k[4:]: v for k, v in arrays.items() if k.startswith("net.")})
        self.known_ = np.asarray(arrays["known"], dtype=bool)
        self.widen_ = np.asarray(arrays["widen"], dtype=np.float64)
