"""The PyTorch parts of the LSTM detectors: the network, batching, training and inference.

Imported only when an LSTM detector is fitted, scored or loaded, so that `spanomaly --help`
and the n-gram path never import torch.

One forward pass runs over whole traces: the input of a trace is `<start> k1 ... kn`, the
state after each prefix predicts the next key (`k1 ... kn <end>`: next-event head) and,
given that key, the log duration and log self time of the event (duration head: a Laplace
location and scale for each). Scoring is linear in the number of events, and identical key
sequences are run once (their outputs depend on the keys only).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from spanomaly.features.traces import END, PAD, START, UNK, Sequences

log = logging.getLogger(__name__)

LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 5.0


class NextEventNet(nn.Module):
    """Embedding, LSTM, a next-key head and optionally a duration head."""

    def __init__(
        self,
        n_keys: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        duration_head: bool,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_keys, embedding_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True)
        self.next = nn.Linear(hidden_size, n_keys)
        self.duration = (
            nn.Sequential(
                nn.Linear(hidden_size + embedding_dim, hidden_size),
                nn.Tanh(),
                nn.Linear(hidden_size, 4),
            )
            if duration_head
            else None
        )

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        """LSTM states after each prefix (B x T x H)."""
        out, _ = self.lstm(self.embedding(inputs))
        return out

    def durations(self, hidden: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Laplace location and log scale of log duration and log self time (B x T x 4)."""
        assert self.duration is not None
        out = self.duration(torch.cat([hidden, self.embedding(keys)], dim=-1))
        loc = out[..., 0::2]
        log_scale = out[..., 1::2].clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
        return torch.stack([loc[..., 0], log_scale[..., 0], loc[..., 1], log_scale[..., 1]], -1)

    def grow(self, n_keys: int) -> None:
        """Make room for new keys (feedback): new rows start small and unlikely."""
        old = self.embedding.num_embeddings
        if n_keys <= old:
            return
        with torch.no_grad():
            emb = nn.Embedding(n_keys, self.embedding.embedding_dim, padding_idx=PAD)
            emb.weight[:old] = self.embedding.weight
            emb.weight[old:] = self.embedding.weight[PAD + 1 :].mean(0)
            head = nn.Linear(self.next.in_features, n_keys)
            head.weight[:old] = self.next.weight
            head.weight[old:] = 0.0
            head.bias[:old] = self.next.bias
            head.bias[old:] = self.next.bias.min()
        self.embedding, self.next = emb, head


def make_net(n_keys: int, params: dict[str, int], duration_head: bool) -> NextEventNet:
    """A fresh network of the detector's sizes."""
    return NextEventNet(
        n_keys,
        int(params["embedding_dim"]),
        int(params["hidden_size"]),
        int(params["num_layers"]),
        duration_head,
    )


def state_arrays(net: nn.Module) -> dict[str, np.ndarray]:
    """The network's weights as numpy arrays (for safetensors)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


def load_arrays(net: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load weights written by `state_arrays` (shapes must match)."""
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})


# -- batching ---------------------------------------------------------------------------------


def pad(data: Sequences, traces: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Inputs `<start> k1..kn` and targets `k1..kn <end>` of some traces, padded (B x T)."""
    lengths = data.lengths[traces]
    b, t = len(traces), int(lengths.max()) + 1 if len(traces) else 1
    inputs = np.full((b, t), PAD, dtype=np.int64)
    targets = np.full((b, t), PAD, dtype=np.int64)
    inputs[:, 0] = START
    idx = data.event_index(traces)
    rows = np.repeat(np.arange(b), lengths)
    cols = np.arange(len(idx)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keys = data.keys[idx]
    inputs[rows, cols + 1] = keys
    targets[rows, cols] = keys
    targets[np.arange(b), lengths] = END
    return torch.from_numpy(inputs), torch.from_numpy(targets), lengths


def token_batches(lengths: np.ndarray, budget: int) -> Iterator[np.ndarray]:
    """Indices grouped by similar length, each group at most `budget` padded tokens."""
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (lengths[order[end]] + 1) * (end - start + 1) <= budget:
            end += 1
        yield order[start:end]
        start = end


# -- the next-event model ---------------------------------------------------------------------


def train_next(
    net: NextEventNet,
    data: Sequences,
    weights: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
) -> list[float]:
    """Weighted cross-entropy training over (distinct) sequences; the loss per epoch."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    w_all = torch.from_numpy(weights.astype(np.float32))
    history = []
    net.train()
    for epoch in range(epochs):
        order = rng.permutation(data.n_traces)
        total, norm = 0.0, 0.0
        for start in range(0, len(order), batch_size):
            batch = np.sort(order[start : start + batch_size])
            inputs, targets, lengths = pad(data, batch)
            logits = net.next(net.hidden(inputs))
            ce = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=PAD,
                reduction="none",
            ).reshape(targets.shape)
            w = w_all[batch]
            denom = (w * torch.from_numpy(lengths + 1).float()).sum()
            loss = (ce.sum(1) * w).sum() / denom
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            total += float(loss.detach()) * float(denom)
            norm += float(denom)
        history.append(total / max(norm, 1.0))
        log.debug("next-event epoch %d: loss %.4f", epoch + 1, history[-1])
    net.eval()
    return history


@torch.inference_mode()
def next_logp(
    net: NextEventNet, data: Sequences, budget: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Log-probability and rank (0 = most likely) of every target `k1..kn <end>`.

    Arrays of n_events + n_traces entries: trace i's targets are at
    `offsets[i] + i .. offsets[i+1] + i` (its events, then its end).
    """
    net.eval()
    n_pos = data.n_events + data.n_traces
    logp = np.zeros(n_pos, dtype=np.float64)
    rank = np.zeros(n_pos, dtype=np.int64)
    starts = data.offsets[:-1] + np.arange(data.n_traces)
    for batch in token_batches(data.lengths, budget):
        inputs, targets, lengths = pad(data, batch)
        logits = net.next(net.hidden(inputs))
        lp = torch.log_softmax(logits, -1)
        obs = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        rk = (lp > obs.unsqueeze(-1)).sum(-1)
        rows = np.repeat(np.arange(len(batch)), lengths + 1)
        cols = np.arange(rows.size) - np.repeat(np.cumsum(lengths + 1) - (lengths + 1), lengths + 1)
        dest = np.repeat(starts[batch], lengths + 1) + cols
        logp[dest] = obs.numpy()[rows, cols]
        rank[dest] = rk.numpy()[rows, cols]
    return logp, rank


@torch.inference_mode()
def next_distribution(
    net: NextEventNet, data: Sequences, traces: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """Probabilities of every key as the target at (trace, position): (m x n_keys)."""
    net.eval()
    out = np.zeros((len(traces), net.next.out_features), dtype=np.float64)
    uniq, inv = np.unique(traces, return_inverse=True)
    budget = max(1, 4_000_000 // net.next.out_features)  # padded tokens per batch
    for batch in token_batches(data.lengths[uniq], budget):
        inputs, _, _ = pad(data, uniq[batch])
        hidden = net.hidden(inputs)
        local = np.full(len(uniq), -1)
        local[batch] = np.arange(len(batch))
        rows = np.flatnonzero(np.isin(inv, batch))
        h = hidden[torch.from_numpy(local[inv[rows]]), torch.from_numpy(positions[rows])]
        out[rows] = torch.softmax(net.next(h), -1).numpy()
    return out


# -- the duration model -----------------------------------------------------------------------


def _laplace_nll(x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    return (x - loc).abs() * torch.exp(-log_scale) + log_scale


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices starts[i] .. starts[i] + lengths[i] - 1 of every i, concatenated."""
    total = int(lengths.sum())
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return offsets + np.arange(total)


def train_duration(
    net: NextEventNet,
    distinct: Sequences,
    member_start: np.ndarray,
    member_count: np.ndarray,
    positions: np.ndarray,
    log_duration: np.ndarray,
    log_self: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
) -> list[float]:
    """Laplace NLL training of the duration head.

    The network runs once per distinct key sequence (its outputs depend on the keys only);
    the loss is taken over every event of every trace that shares it. The events are grouped
    by distinct sequence: those of sequence u are rows member_start[u] ..
    member_start[u] + member_count[u] - 1 of positions, log_duration and log_self.
    """
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    history = []
    net.train()
    for epoch in range(epochs):
        order = rng.permutation(distinct.n_traces)
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = np.sort(order[start : start + batch_size])
            counts = member_count[batch]
            n_events = int(counts.sum())
            if n_events == 0:
                continue
            inputs, targets, _ = pad(distinct, batch)
            hidden = net.hidden(inputs)
            idx = _ranges(member_start[batch], counts)
            r = torch.from_numpy(np.repeat(np.arange(len(batch)), counts))
            c = torch.from_numpy(positions[idx])
            xd = torch.from_numpy(log_duration[idx])
            xs = torch.from_numpy(log_self[idx])
            out = net.durations(hidden[r, c], targets[r, c])
            loss = (
                _laplace_nll(xd, out[:, 0], out[:, 1]) + _laplace_nll(xs, out[:, 2], out[:, 3])
            ).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            total += float(loss.detach()) * n_events
            count += n_events
        history.append(total / max(count, 1))
        log.debug("duration epoch %d: loss %.4f", epoch + 1, history[-1])
    net.eval()
    return history


@torch.inference_mode()
def duration_params(net: NextEventNet, data: Sequences, budget: int = 65536) -> np.ndarray:
    """Laplace (loc, log scale) of log duration and log self time of every event (n x 4)."""
    net.eval()
    out = np.zeros((data.n_events, 4), dtype=np.float64)
    for batch in token_batches(data.lengths, budget):
        if data.lengths[batch].sum() == 0:
            continue
        inputs, targets, lengths = pad(data, batch)
        pred = net.durations(net.hidden(inputs), targets).numpy()
        rows = np.repeat(np.arange(len(batch)), lengths)
        cols = np.arange(rows.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[data.event_index(batch)] = pred[rows, cols]
    return out


def within(data: Sequences, net: NextEventNet) -> Sequences:
    """The data with keys the network has no row for mapped to unknown."""
    n = net.embedding.num_embeddings
    if data.n_events == 0 or int(data.keys.max()) < n:
        return data
    keys = np.where(data.keys < n, data.keys, UNK)
    return dataclasses.replace(data, keys=keys, n_keys=n)


def seed(random_state: int) -> np.random.Generator:
    """Seed torch for a reproducible fit; a numpy generator for the shuffles."""
    torch.manual_seed(random_state)
    return np.random.default_rng(random_state)


def fine_tune_steps(n: int) -> int:
    """Feedback updates: a few steps, more for more traces (DeepLog's online update)."""
    return int(min(50, 10 + 5 * math.log1p(n)))
