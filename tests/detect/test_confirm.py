"""Confirmation of findings from traces: a lone moment never stands, a lasting one does."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from spanomaly.detect.confirm import Confirmer, confirm_link, needs_confirmation, partnered, runs
from spanomaly.schema import FINDINGS

S = 1_000_000_000
T0 = 1_700_000_000 * S


def _findings(rows: list[tuple[float, str, str]]) -> pa.Table:
    """Findings at T0 + seconds, with detector and instance; service from the instance."""
    n = len(rows)
    data = {name: [None] * n for name in FINDINGS.names}
    data["finding_id"] = [f"f{i}" for i in range(n)]
    data["time_ns"] = [T0 + int(t * S) for t, _, _ in rows]
    data["detector"] = [d for _, d, _ in rows]
    data["instance"] = [i for _, _, i in rows]
    data["service"] = [i.rsplit("-", 1)[0] for _, _, i in rows]
    data["score"] = [2.0] * n
    data["entity"] = ["instance" if d.startswith("point:") else "trace" for _, d, _ in rows]
    return pa.Table.from_pydict(data, schema=FINDINGS)


def test_partnered_needs_two_other_moments_of_the_same_key() -> None:
    t = (np.array([0, 1, 5, 9, 50, 100, 200, 200.3, 210]) * S).astype(np.int64)
    keys = np.array(["a", "a", "a", "a", "a", "b", "c", "c", "c"])
    got = partnered(t, keys, 2 * S, 30 * S, np.full(len(t), 2))
    # a's 0-9: each has two others 2-30 s away and 2 s apart; 50 is too far, b alone;
    # c's 200 and 200.3 are one moment (a stall): 210 and they confirm nothing
    assert got.tolist() == [True, True, True, True, False, False, False, False, False]
    # needing one other moment: c's stall and 210 confirm each other
    one = partnered(t, keys, 2 * S, 30 * S, np.full(len(t), 1))
    assert one.tolist() == [True, True, True, True, False, False, True, True, True]


def test_a_stall_of_one_moment_is_held_a_lasting_fault_passes() -> None:
    stall = [(0.0, "duration:robust", "books-1"), (0.3, "duration:robust", "books-1")]
    fault = [(20.0 + s, "duration:robust", "movies-1") for s in np.arange(0, 10, 1.5)]
    window = [(5.0, "point:ecod:traces", "evaluation-1")]
    pair = [(40.0, "point:ecod:traces", "books-2"), (45.0, "point:ecod:traces", "books-2")]
    metric = [(7.0, "point:ecod:metrics", "frontend-2")]  # one burst of disk reads
    leak = [(60.0, "point:ecod:metrics", "frontend-1"), (65.0, "point:ecod:metrics", "frontend-1")]
    log = [(80.0, "point:ecod:logs", "books-1")]  # an error logged stands alone
    table = _findings(stall + fault + window + metric + pair + leak + log)
    got = Confirmer(window_s=5.0).push(table)
    # two windows in a row confirm each other; two trace findings would not
    assert sorted(got.column("instance").to_pylist()) == (
        ["books-1"] + ["books-2"] * 2 + ["frontend-1"] * 2 + ["movies-1"] * 7
    )


def test_a_blip_before_an_unrelated_fault_is_not_confirmed_by_it() -> None:
    # a lone slow call 3.6 s before a fault starts on its instance, and a window (5 s,
    # timed at its end) of a host stall 5.8 s before one: quiet, then the fault
    fault = [(10.0 + s, "duration:robust", "movies-1") for s in np.arange(0, 8, 0.5)]
    blip = [(10.0 - 3.6, "duration:robust", "movies-1")]
    stall = [(10.0 - 5.8, "point:ecod:traces", "movies-2")]
    fault2 = [(10.0 + s, "duration:robust", "movies-2") for s in np.arange(0, 8, 0.5)]
    got = Confirmer(window_s=5.0, within_s=10.0).push(_findings(blip + fault + stall + fault2))
    times = sorted(set(got.column("time_ns").to_pylist()))
    assert times[0] == T0 + 10 * S  # the faults' own findings, none of the blips
    assert got.num_rows == len(fault) + len(fault2)
    # without the quiet stretch (the blip 1 s before), it is the fault's start
    early = [(9.0, "duration:robust", "movies-1")]
    got = Confirmer(window_s=5.0, within_s=10.0).push(_findings(early + fault))
    assert got.num_rows == len(fault) + 1


def test_a_metric_window_needs_the_next_window_not_a_slow_call() -> None:
    # a stall of the host: the CPU window and a slow call 3 s later on the same instance
    stall = [(10.0, "point:ecod:metrics", "movies-2"), (13.0, "duration:robust", "movies-2")]
    assert Confirmer(window_s=5.0).push(_findings(stall)).num_rows == 0
    # a leak: two metric windows in a row; a trace window confirms one as well
    leak = [(10.0, "point:ecod:metrics", "frontend-2"), (15.0, "point:ecod:metrics", "frontend-2")]
    mixed = [(10.0, "point:ecod:metrics", "books-2"), (15.0, "point:ecod:traces", "books-2")]
    assert Confirmer(window_s=5.0).push(_findings(leak + mixed)).num_rows == 4


def test_runs_chain_findings_of_a_key_over_short_gaps_and_windows() -> None:
    t = (np.array([0, 2, 4, 9, 9, 20, 24]) * S).astype(np.int64)
    keys = np.array(["a", "a", "a", "a", "b", "a", "a"])
    span = np.array([0, 0, 0, 0, 0, 0, 5]) * S  # the last covers 19-24
    got = runs(t, keys, span, int(confirm_link(2.0, 5.0) * S))
    # a: 0-2-4 chained (2 s steps), 9 after 5 s quiet, 20 and the window 19-24 together
    assert got[0] == got[1] == got[2] != got[3]
    assert got[5] == got[6] != got[3]
    assert len({got[3], got[4]}) == 2  # b's run is its own


def test_streaming_pushes_give_the_batch_result() -> None:
    rng = np.random.default_rng(3)
    rows = [
        (float(t), str(rng.choice(["duration:robust", "point:ecod:traces", "point:ecod:logs"])),
         str(rng.choice(["a-1", "a-2", "b-1"])))
        for t in np.sort(rng.uniform(0, 300, 120))
    ]  # fmt: skip
    table = _findings(rows)
    batch = set(Confirmer().push(table).column("finding_id").to_pylist())
    online = Confirmer(keep_s=120.0)
    streamed: list[str] = []
    for lo in range(0, 120, 7):  # in arrival order, a few at a time
        streamed += online.push(table.slice(lo, 7)).column("finding_id").to_pylist()
    assert len(streamed) == len(set(streamed))  # each finding is stored once
    assert set(streamed) == batch
    assert online.held + online.dropped + len(streamed) == 120


def test_gap_zero_passes_everything() -> None:
    table = _findings([(0.0, "duration:robust", "books-1"), (1.0, "point:ecod:logs", "books-1")])
    assert Confirmer(gap_s=0).push(table).num_rows == 2
    assert needs_confirmation(table).tolist() == [True, False]
