"""Fault recall, alarms, false alarms and trace FPR as DESIGN.md defines them."""

from __future__ import annotations

import pyarrow as pa

from spanomaly.evaluate import metrics as M

S = 1_000_000_000


def _faults(*windows: tuple[int, int]) -> pa.Table:
    return pa.table(
        {
            "fault_id": [f"f{i}" for i in range(len(windows))],
            "kind": ["network_delay"] * len(windows),
            "service": ["a"] * len(windows),
            "start_ns": [w[0] * S for w in windows],
            "end_ns": [w[1] * S for w in windows],
        }
    )


def _findings(*rows: tuple[int, str, str]) -> pa.Table:
    return pa.table(
        {
            "time_ns": pa.array([r[0] * S for r in rows], pa.int64()),
            "service": pa.array([r[1] for r in rows], pa.string()),
            "trace_id": pa.array([r[2] for r in rows], pa.string()),
        }
    )


def test_a_fault_is_detected_by_a_finding_up_to_60_s_after_its_end() -> None:
    faults = _faults((100, 280), (1000, 1180), (2000, 2180))
    found = _findings((99, "a", "t0"), (330, "a", "t1"), (1241, "a", "t2"), (2100, "b", "t3"))
    assert M.detected_faults(found, faults).tolist() == [True, False, True]
    assert M.detected_faults(_findings(), faults).tolist() == [False] * 3


def test_the_slack_after_a_fault_stops_at_the_next_faults_start() -> None:
    faults = _faults((100, 115), (123, 138), (300, 320))  # dense: 8 s between the first two
    _, ends = M.fault_windows(faults)
    assert (ends // S).tolist() == [122, 198, 380]
    found = _findings((125, "a", "t0"))  # the second fault's finding, not the first's
    assert M.detected_faults(found, faults).tolist() == [False, True, False]
    ttd = M.time_to_detect(found, faults)
    assert ttd[1] == 2.0 and ttd[0] != ttd[0]  # NaN: not detected


def test_alarms_group_findings_per_service_while_they_keep_coming() -> None:
    found = _findings(
        (0, "a", "1"), (50, "a", "2"), (100, "a", "3"),  # one alarm: gaps under 60 s
        (200, "a", "4"),  # a new one: 100 s since the last
        (10, "b", "5"),  # another service, its own alarm
    )  # fmt: skip
    alarms = M.alarms(found)
    assert alarms.to_pylist() == [
        {"service": "a", "start_ns": 0, "end_ns": 100 * S, "findings": 3},
        {"service": "b", "start_ns": 10 * S, "end_ns": 10 * S, "findings": 1},
        {"service": "a", "start_ns": 200 * S, "end_ns": 200 * S, "findings": 1},
    ]
    faults = _faults((190, 250))
    assert M.false_alarms(alarms, faults) == 2  # only the alarm at 200 s is inside
    assert M.alarms(_findings()).num_rows == 0


def test_trace_fpr_counts_traces_outside_fault_windows() -> None:
    traces = pa.table(
        {
            "trace_id": ["t0", "t1", "t2", "t3", "t4"],
            "start_ns": [0, 10 * S, 20 * S, 100 * S, 150 * S],
        }
    )
    faults = _faults((90, 100))  # window [90, 160] s with the slack
    found = _findings((1, "a", "t0"), (101, "a", "t3"), (5, "a", "t0"))
    rate, flagged, total = M.trace_fpr(traces, found, faults)
    assert (flagged, total) == (1, 3) and abs(rate - 1 / 3) < 1e-12


def test_summarize_restricts_to_the_period() -> None:
    faults = _faults((100, 280), (5000, 5180))
    traces = pa.table({"trace_id": ["x", "y"], "start_ns": [3600 * S, 110 * S]})
    found = _findings((120, "a", "y"), (3601, "b", "x"))
    s = M.summarize(found, faults, traces, 0, 3600 * S)
    assert (s.faults, s.detected, s.fault_recall) == (1, 1, 1.0)
    assert (s.alarms, s.false_alarms, s.traces, s.flagged_traces) == (1, 0, 0, 0)
    late = M.summarize(found, faults, traces, 3600 * S, 7200 * S)
    assert (late.faults, late.false_alarms, late.trace_fpr, late.false_alarms_per_hour) == (
        1,
        1,
        1.0,
        1.0,
    )
    assert late.to_json()["detected"] == 0
