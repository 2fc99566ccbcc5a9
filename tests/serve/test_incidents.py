"""Findings grouped into incidents (serve.incidents)."""

from __future__ import annotations

import pyarrow as pa

from spanomaly.schema import FINDINGS
from spanomaly.serve.incidents import Incidents

S = 1_000_000_000


def _findings(*rows: tuple[str, float, str, float]) -> pa.Table:
    """(service, time s, instance, score) rows, threshold 1."""
    n = len(rows)
    return pa.table(
        {
            "finding_id": [f"f{k}-{r[0]}-{r[1]}" for k, r in enumerate(rows)],
            "time_ns": [int(r[1] * S) for r in rows],
            "detector": ["ecod"] * n,
            "entity": ["instance"] * n,
            "trace_id": [None] * n,
            "span_id": [None] * n,
            "service": [r[0] for r in rows],
            "instance": [r[2] for r in rows],
            "operation": [None] * n,
            "score": [r[3] for r in rows],
            "threshold": [1.0] * n,
            "reason": [f"reason {k % 5}" for k in range(n)],
            "details": [None] * n,
            "feedback": [None] * n,
        },
        schema=FINDINGS,
    )


def test_findings_a_gap_apart_or_less_are_one_incident_per_service() -> None:
    inc = Incidents(gap_s=60)
    changed = inc.add(_findings(("a", 0, "a-1", 1.5), ("a", 60, "a-2", 3.0), ("b", 30, "b-1", 1.2)))
    assert {i.service for i in changed} == {"a", "b"}
    a = inc.open["a"]
    assert (a.start_ns, a.end_ns, a.findings) == (0, 60 * S, 2)
    assert a.instance == "a-1" and a.instances == {"a-1": 1, "a-2": 1}
    assert a.severity == "critical" and inc.open["b"].severity == "warning"
    assert inc.counts == {("a", "ecod"): 2, ("b", "ecod"): 1}


def test_an_incident_ends_a_gap_and_the_lateness_after_its_last_finding() -> None:
    inc = Incidents(gap_s=60, late_s=20)
    inc.add(_findings(("a", 0, "a-1", 2.0)))
    assert inc.expire(80 * S) == []
    (done,) = inc.expire(81 * S)
    assert done.resolved and done.to_json()["status"] == "resolved"
    assert inc.open == {} and inc.resolved == 1
    (again,) = inc.add(_findings(("a", 200, "a-1", 2.0)))
    assert again.id != done.id and inc.opened == 2


def test_a_late_gap_splits_an_incident_and_normal_feedback_is_left_out() -> None:
    inc = Incidents(gap_s=10)
    changed = inc.add(_findings(("a", 0, "a-1", 2.0), ("a", 100, "a-1", 2.0)))
    assert [i.resolved for i in sorted(changed, key=lambda i: i.start_ns)] == [True, False]
    marked = _findings(("c", 5, "c-1", 9.0)).set_column(13, "feedback", pa.array(["normal"]))
    assert inc.add(marked) == [] and "c" not in inc.open


def test_reasons_are_the_first_distinct_few() -> None:
    inc = Incidents()
    inc.add(_findings(*[("a", t, "a-1", 2.0) for t in range(10)]))
    assert inc.open["a"].reasons == ["reason 0", "reason 1", "reason 2"]
