"""A replica slower than its peers for the whole run, training included."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from spanomaly.detect.peer_check import PeerCheck
from spanomaly.features.windows import InstanceWindows


def _windows(n: int, slow: float, seed: int) -> InstanceWindows:
    """n windows of five services with two instances each; b-2 is `slow` times slower."""
    rng = np.random.default_rng(seed)
    names = [(s, f"{s}-{k}") for s in ("a", "b", "c", "d", "e") for k in (1, 2)]
    keys = pa.table(
        {
            "time_ns": np.repeat(np.arange(n), len(names)),
            "service": [s for _ in range(n) for s, _ in names],
            "instance": [i for _ in range(n) for _, i in names],
        }
    )
    latency = rng.lognormal(np.log(20.0), 0.1, n * len(names))
    latency[keys.column("instance").to_numpy(zero_copy_only=False) == "b-2"] *= slow
    rate = rng.normal(10.0, 0.5, n * len(names))
    return InstanceWindows(
        keys, np.column_stack([rate, latency]), ["t.requests_s", "t.latency_p50_ms"]
    )


def test_the_odd_replica_is_flagged_and_its_healthy_peer_is_not() -> None:
    check = PeerCheck().fit(_windows(200, 4.0, 0))  # the odd replica in the training too
    test = _windows(50, 4.0, 1)
    score, _ = check.score(test)
    inst = test.column("instance").astype(str)
    flagged = score > check.limit
    assert flagged[inst == "b-2"].mean() > 0.9
    assert not flagged[inst != "b-2"].any()
    again = PeerCheck.from_json(check.to_json())
    assert np.array_equal(again.score(test)[0], score) and again.limit == check.limit


def test_an_instance_without_peers_scores_zero() -> None:
    w = _windows(20, 1.0, 2)
    lone = w.take(np.asarray(w.column("instance")).astype(str) == "a-1")
    check = PeerCheck().fit(w)
    assert not check.score(lone)[0].any()
