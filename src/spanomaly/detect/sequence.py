"""Next-event models over trace event sequences: an LSTM (DeepLog style) and an n-gram baseline.

Both see a trace as `<start> k1 ... kn <end>` and give every target (each event and the end)
its probability under the prefix. An event's score is -log p; an event is anomalous when
the trace's largest score passes the threshold fitted on normal validation traces at the
target false-positive rate, or, with `top_k`, when its key is outside the k most likely.
Two rules hold whatever the threshold, each with its own reason: a key never seen in
training (unknown event) and a transition never seen in training (impossible transition,
including a trace that starts or ends where none did). A missing call shows as an
unexpected event where the call should have been, or as an early end.

The LSTM runs once over each whole trace (and once per distinct key sequence), so scoring
is linear in the number of events.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from spanomaly.detect.base import register
from spanomaly.detect.trace import EventScores, Reason, TraceDetector
from spanomaly.errors import ModelError
from spanomaly.features.traces import END, N_SPECIAL, START, UNK, Sequences

log = logging.getLogger(__name__)


def _transitions(data: Sequences) -> np.ndarray:
    """Codes prev * 2^32 + next of every transition, <start> and <end> included."""
    lengths = data.lengths
    n = data.n_events + data.n_traces
    prev = np.empty(n, dtype=np.int64)
    nxt = np.empty(n, dtype=np.int64)
    starts = data.offsets[:-1] + np.arange(data.n_traces)  # target rows of each trace
    ends = starts + lengths  # the <end> target row
    is_event = np.ones(n, dtype=bool)
    is_event[ends] = False
    nxt[is_event] = data.keys
    nxt[ends] = END
    prev[starts] = START
    after = np.ones(n, dtype=bool)
    after[starts] = False
    # the previous key of every other target is the event before it
    prev[after] = data.keys
    return prev * (1 << 32) + nxt


class SequenceDetector(TraceDetector):
    """What the LSTM and n-gram models share: rules, top-k, calibration."""

    kind = "sequence"
    THRESHOLD_FLOOR = float(np.log(2.0))  # an event with p >= 0.5 is the likeliest: normal

    def __init__(self, *, top_k: int | None = None, **base: Any) -> None:
        super().__init__(**base)
        self.top_k = top_k

    # -- rules ----------------------------------------------------------------------------

    def _learn_rules(self, data: Sequences, reset: bool) -> None:
        size = max(data.n_keys, getattr(self, "n_keys_", 0), len(getattr(self, "known_", ())))
        known = np.zeros(size, dtype=bool)
        if not reset:
            known[: len(self.known_)] = self.known_
        known[data.keys] = True
        known[:N_SPECIAL] = False
        self.known_ = known
        codes = np.unique(_transitions(data))
        self.transitions_ = codes if reset else np.union1d(self.transitions_, codes)

    def _rules(self, data: Sequences) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per target: unknown key, impossible transition (arrays of n_events + n_traces)."""
        n = data.n_events + data.n_traces
        starts = data.offsets[:-1] + np.arange(data.n_traces)
        ends = starts + data.lengths
        is_event = np.ones(n, dtype=bool)
        is_event[ends] = False
        unknown = np.zeros(n, dtype=bool)
        keys = data.keys
        unknown[is_event] = (
            (keys == UNK)
            | (keys >= len(self.known_))
            | ~self.known_[np.minimum(keys, len(self.known_) - 1)]
        )
        codes = _transitions(data)
        pos = np.searchsorted(self.transitions_, codes)
        pos = np.minimum(pos, len(self.transitions_) - 1)
        impossible = self.transitions_[pos] != codes if len(self.transitions_) else np.ones(n, bool)
        # an unknown key explains its own transitions
        prev_unknown = np.zeros(n, dtype=bool)
        prev_unknown[1:] = unknown[:-1]
        prev_unknown[starts] = False
        impossible &= ~unknown & ~prev_unknown
        return unknown, impossible, is_event

    # -- the contract ---------------------------------------------------------------------

    def _check_params(self) -> None:
        super()._check_params()
        if self.top_k is not None and self.top_k < 1:
            raise ModelError(f"{self.name}: top_k must be at least 1")

    def _fit(self, train: Sequences) -> None:
        self._learn_rules(train, reset=True)
        self._fit_model(train)

    def _calibrate(self, validation: Sequences, groups: np.ndarray | None = None) -> None:
        super()._calibrate(validation, groups)
        # the held-out traces are normal too: their keys and transitions are known from now on
        self._learn_rules(validation, reset=False)

    def _score_events(self, data: Sequences) -> EventScores:
        logp, rank = self._logp(data)
        unknown, impossible, is_event = self._rules(data)
        score = -logp
        outside = rank >= self.top_k if self.top_k is not None else np.zeros(len(rank), bool)
        reason = np.where(
            unknown,
            Reason.UNKNOWN,
            np.where(impossible, Reason.IMPOSSIBLE, Reason.UNEXPECTED),
        ).astype(np.int8)
        reason[~is_event & (reason == Reason.UNEXPECTED)] = Reason.EARLY_END
        rule = unknown | impossible | outside
        ev = EventScores(
            score=score[is_event],
            reason=reason[is_event],
            rule=rule[is_event],
            end_score=score[~is_event],
            end_rule=rule[~is_event],
            extra={
                "logp": logp[is_event],
                "rank": rank[is_event],
                "end_logp": logp[~is_event],
                "end_rank": rank[~is_event],
            },
        )
        return ev

    def _update(self, data: Sequences) -> None:
        self._learn_rules(data, reset=False)
        self.n_keys_ = max(self.n_keys_, data.n_keys)
        self._update_model(data)

    def expected(
        self, data: Sequences, traces: np.ndarray, positions: np.ndarray, k: int = 5
    ) -> list[list[tuple[int, float]]]:
        """The k most likely keys (id, probability) at each (trace, target position)."""
        self._check_fitted()
        traces = np.asarray(traces, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        if not len(traces):
            return []
        probs = self._distribution(data, traces, positions)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(int(i), float(p[i])) for i in row] for p, row in zip(probs, top, strict=True)]

    def _rule_state(self) -> dict[str, np.ndarray]:
        return {"known": self.known_, "transitions": self.transitions_}

    def _load_rules(self, arrays: dict[str, np.ndarray]) -> None:
        self.known_ = np.asarray(arrays["known"], dtype=bool)
        self.transitions_ = np.asarray(arrays["transitions"], dtype=np.int64)

    # -- to be written by a model ---------------------------------------------------------

    def _fit_model(self, train: Sequences) -> None:
        raise NotImplementedError

    def _update_model(self, data: Sequences) -> None:
        raise NotImplementedError

    def _logp(self, data: Sequences) -> tuple[np.ndarray, np.ndarray]:
        """Log-probability and rank of each target (events then end of each trace, in the
        layout of `_transitions`)."""
        raise NotImplementedError

    def _distribution(self, data: Sequences, traces: np.ndarray, pos: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# -- n-gram -----------------------------------------------------------------------------------

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _hash_step(h: np.ndarray, token: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (h ^ (token.astype(np.uint64) + np.uint64(1))) * _MIX


def _contexts(data: Sequences, order: int) -> tuple[np.ndarray, np.ndarray]:
    """For every target (events then <end> per trace): the hash of its order-1 previous
    tokens (<start> padded) and the target id."""
    lengths = data.lengths
    n = data.n_events + data.n_traces
    starts = data.offsets[:-1] + np.arange(data.n_traces)
    ends = starts + lengths
    is_event = np.ones(n, dtype=bool)
    is_event[ends] = False
    target = np.empty(n, dtype=np.int64)
    target[is_event] = data.keys
    target[ends] = END
    pos = np.arange(n) - np.repeat(starts, lengths + 1)  # position of the target in its trace
    h = np.full(n, np.uint64(order), dtype=np.uint64)
    for j in range(1, order):
        prev = np.full(n, START, dtype=np.int64)
        has = pos >= j
        prev[has] = target[np.flatnonzero(has) - j]
        h = _hash_step(h, prev)
    return h, target


def _pair(ctx: np.ndarray, target: np.ndarray) -> np.ndarray:
    return _hash_step(ctx, target)


def _lookup(table: np.ndarray, counts: np.ndarray, codes: np.ndarray) -> np.ndarray:
    if not len(table):
        return np.zeros(len(codes), dtype=np.float64)
    pos = np.minimum(np.searchsorted(table, codes), len(table) - 1)
    return np.where(table[pos] == codes, counts[pos], 0).astype(np.float64)


def _count(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, counts = np.unique(codes, return_counts=True)
    return values, counts.astype(np.int64)


def _merge(
    table: np.ndarray, counts: np.ndarray, new: np.ndarray, new_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    codes = np.concatenate([table, new])
    weights = np.concatenate([counts, new_counts])
    values, inverse = np.unique(codes, return_inverse=True)
    return values, np.bincount(inverse.reshape(-1), weights=weights).astype(np.int64)


@register
class NGramSequence(SequenceDetector):
    """An n-gram (Markov) next-event model with interpolated additive smoothing.

    p_m(x | last m-1 keys) = (c(ctx, x) + alpha * p_{m-1}(x | shorter ctx)) / (c(ctx) + alpha),
    down to a unigram with add-one smoothing over the vocabulary.
    """

    name = "ngram"

    def __init__(self, *, n: int = 3, alpha: float = 1.0, **base: Any) -> None:
        super().__init__(**base)
        self.n = n
        self.alpha = alpha

    def _check_params(self) -> None:
        super()._check_params()
        if self.n < 1:
            raise ModelError("ngram: n must be at least 1")
        if self.alpha <= 0:
            raise ModelError("ngram: alpha must be positive")

    def _tables(self, data: Sequences) -> list[tuple[np.ndarray, ...]]:
        out = []
        for m in range(1, self.n + 1):
            ctx, target = _contexts(data, m)
            out.append((*_count(ctx), *_count(_pair(ctx, target))))
        return out

    def _fit_model(self, train: Sequences) -> None:
        self.tables_ = self._tables(train)

    def _update_model(self, data: Sequences) -> None:
        """Add the traces' counts, weighted so that each of their events becomes likely
        (p >= exp(-threshold / 2) under its longest context): one false positive has to
        outweigh the many counts of the context it surprised."""
        ctx, target = _contexts(data, self.n)
        c_ctx, c_ctx_counts, pair, pair_counts = self.tables_[-1]
        n_ctx = _lookup(c_ctx, c_ctx_counts, ctx)
        n_pair = _lookup(pair, pair_counts, _pair(ctx, target))
        q = float(np.exp(-self.threshold_ / 2.0))
        need = (q * (n_ctx + self.alpha) - n_pair) / (1.0 - q)
        weight = int(np.ceil(max(float(need.max(initial=1.0)), 1.0)))
        new = self._tables(data)
        merged = []
        for (c, cc, p, pc), (c2, cc2, p2, pc2) in zip(self.tables_, new, strict=True):
            merged.append((*_merge(c, cc, c2, cc2 * weight), *_merge(p, pc, p2, pc2 * weight)))
        self.tables_ = merged

    def _prob(self, ctxs: list[np.ndarray], target: np.ndarray) -> np.ndarray:
        v = float(self.n_keys_)
        ctx_codes, ctx_counts, pair_codes, pair_counts = self.tables_[0]
        total = float(ctx_counts.sum())
        p = (_lookup(pair_codes, pair_counts, _pair(ctxs[0], target)) + 1.0) / (total + v)
        for m in range(1, self.n):
            ctx_codes, ctx_counts, pair_codes, pair_counts = self.tables_[m]
            c_ctx = _lookup(ctx_codes, ctx_counts, ctxs[m])
            c_pair = _lookup(pair_codes, pair_counts, _pair(ctxs[m], target))
            p = (c_pair + self.alpha * p) / (c_ctx + self.alpha)
        return p

    def _logp(self, data: Sequences) -> tuple[np.ndarray, np.ndarray]:
        ctxs = []
        target = np.zeros(0, dtype=np.int64)
        for m in range(1, self.n + 1):
            ctx, target = _contexts(data, m)
            ctxs.append(ctx)
        p = self._prob(ctxs, target)
        rank = np.zeros(len(p), dtype=np.int64)
        if self.top_k is not None and len(p):
            chunk = max(1, 2_000_000 // max(self.n_keys_, 1))
            for s in range(0, len(p), chunk):
                sl = slice(s, s + chunk)
                full = self._full([c[sl] for c in ctxs])
                rank[sl] = (full > p[sl, None]).sum(1)
        return np.log(p), rank

    def _full(self, ctxs: list[np.ndarray]) -> np.ndarray:
        """Probabilities of every key for each context (m x n_keys)."""
        m, v = len(ctxs[0]), self.n_keys_
        keys = np.tile(np.arange(v), m)
        rep = [np.repeat(c, v) for c in ctxs]
        return self._prob(rep, keys).reshape(m, v)

    def _distribution(self, data: Sequences, traces: np.ndarray, pos: np.ndarray) -> np.ndarray:
        rows = data.offsets[traces] + traces + pos  # target rows in the _contexts layout
        ctxs = [_contexts(data, m)[0][rows] for m in range(1, self.n + 1)]
        full = self._full(ctxs)
        full[:, [0, 1, 2]] = 0.0  # padding, unknown and start are never a next event
        return full

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = self._rule_state()
        for m, (c, cc, p, pc) in enumerate(self.tables_):
            arrays[f"ctx{m}"] = c
            arrays[f"ctx_count{m}"] = cc
            arrays[f"pair{m}"] = p
            arrays[f"pair_count{m}"] = pc
        return {}, arrays

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._load_rules(arrays)
        self.tables_ = [
            (
                np.asarray(arrays[f"ctx{m}"], dtype=np.uint64),
                np.asarray(arrays[f"ctx_count{m}"], dtype=np.int64),
                np.asarray(arrays[f"pair{m}"], dtype=np.uint64),
                np.asarray(arrays[f"pair_count{m}"], dtype=np.int64),
            )
            for m in range(self.n)
        ]


# -- LSTM -------------------------------------------------------------------------------------


@register
class LSTMSequence(SequenceDetector):
    """DeepLog's next-event LSTM, run over whole traces (PyTorch, CPU).

    Trained on the distinct key sequences of the training traces, each weighted by how many
    traces share it (the same loss as over every trace, at a fraction of the cost).
    """

    name = "lstm"

    def __init__(
        self,
        *,
        embedding_dim: int = 32,
        hidden_size: int = 64,
        num_layers: int = 2,
        epochs: int = 30,
        batch_size: int = 64,
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
                raise ModelError(f"lstm: {name} must be at least 1")

    def _fit_model(self, train: Sequences) -> None:
        from spanomaly.detect import _lstm

        rng = _lstm.seed(self.random_state)
        self.net_ = _lstm.make_net(train.n_keys, self.get_params(), duration_head=False)
        reps, _, counts = train.unique()
        distinct = train.subset(reps)
        self.loss_ = _lstm.train_next(
            self.net_, distinct, counts, self.epochs, self.batch_size, self.lr, rng
        )
        log.info(
            "lstm: %d traces, %d distinct sequences, final loss %.4f",
            train.n_traces,
            len(reps),
            self.loss_[-1] if self.loss_ else float("nan"),
        )

    def _update_model(self, data: Sequences) -> None:
        from spanomaly.detect import _lstm

        rng = _lstm.seed(self.random_state)
        self.net_.grow(data.n_keys)
        reps, _, counts = data.unique()
        steps = _lstm.fine_tune_steps(data.n_traces)
        _lstm.train_next(
            self.net_, data.subset(reps), counts, steps, self.batch_size, self.lr / 5, rng
        )

    def _distinct_logp(self, data: Sequences) -> tuple[np.ndarray, np.ndarray]:
        from spanomaly.detect import _lstm

        data = _lstm.within(data, self.net_)
        reps, inverse, _ = data.unique()
        distinct = data.subset(reps)
        logp_d, rank_d = _lstm.next_logp(self.net_, distinct)
        # map each trace's targets to those of its distinct sequence
        lengths = data.lengths + 1
        start_d = distinct.offsets[:-1] + np.arange(distinct.n_traces)
        src = np.repeat(start_d[inverse], lengths) + (
            np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        return logp_d[src], rank_d[src]

    def _logp(self, data: Sequences) -> tuple[np.ndarray, np.ndarray]:
        if data.n_traces == 0:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        logp, rank = self._distinct_logp(data)
        return logp, rank

    def _distribution(self, data: Sequences, traces: np.ndarray, pos: np.ndarray) -> np.ndarray:
        from spanomaly.detect import _lstm

        probs = _lstm.next_distribution(self.net_, _lstm.within(data, self.net_), traces, pos)
        probs[:, [0, 1, 2]] = 0.0
        return probs

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        from spanomaly.detect import _lstm

        arrays = self._rule_state()
        arrays.update({f"net.{k}": v for k, v in _lstm.state_arrays(self.net_).items()})
        return {"net_keys": int(self.net_.embedding.num_embeddings)}, arrays

    def _load_state(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        from spanomaly.detect import _lstm

        self._load_rules(arrays)
        self.net_ = _lstm.make_net(int(values["net_keys"]), self.get_params(), duration_head=False)
        _lstm.load_arrays(self.net_, {k[4:]: v for k, v in arrays.items() if k.startswith("net.")})
