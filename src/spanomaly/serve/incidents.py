"""Findings grouped into incidents: per service, findings at most `gap_s` apart are one.

An incident opens with its service's first finding and ends once `gap_s` (plus the lateness
of window findings, `late_s`) passes without another. What it carries is what an alert
says: its start and last finding, the instance (the ranking's first of the service when the
incident is first sent, else the first finding's) and kind of evidence it opened with (they
name the alert and stay fixed), how many findings, the first reasons, the largest
score-to-threshold ratio (severity) and the ranking's top suspects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_GAP_S = 60.0  # findings on one service less than a minute apart: one incident
MAX_REASONS = 3
CRITICAL_RATIO = 2.0  # a score twice its threshold or more: severity critical


@dataclass
class Incident:
    """One service's run of findings."""

    id: str
    service: str
    instance: (
        str  # the ranking's first instance of the service when first sent, else the first finding's
    )
    kind: str  # evidence of the first finding: trace, instance or span
    start_ns: int
    end_ns: int  # the latest finding's time
    findings: int = 0
    max_ratio: float = 0.0
    reasons: list[str] = field(default_factory=list)
    instances: dict[str, int] = field(default_factory=dict)  # findings per instance
    detectors: dict[str, int] = field(default_factory=dict)  # findings per detector
    suspects: list[dict[str, Any]] = field(default_factory=list)
    resolved: bool = False
    announced: bool = False  # sent once: the labels (instance) stay as they were sent

    @property
    def severity(self) -> str:
        """critical where a score reached CRITICAL_RATIO times its threshold, else warning."""
        return "critical" if self.max_ratio >= CRITICAL_RATIO else "warning"

    def to_json(self) -> dict[str, Any]:
        """The incident as the webhook and the API send it (times in ns and ISO-8601)."""
        from spanomaly.timeparse import iso

        return {
            "id": self.id,
            "status": "resolved" if self.resolved else "firing",
            "service": self.service,
            "instance": self.instance,
            "kind": self.kind,
            "severity": self.severity,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "start": iso(self.start_ns),
            "end": iso(self.end_ns),
            "findings": self.findings,
            "instances": dict(self.instances),
            "detectors": dict(self.detectors),
            "max_ratio": round(self.max_ratio, 3),
            "reasons": list(self.reasons),
            "suspects": list(self.suspects),
        }


class Incidents:
    """The open incidents and the counts of every finding seen (per service and detector)."""

    def __init__(self, gap_s: float = DEFAULT_GAP_S, late_s: float = 0.0) -> None:
        self.gap_ns = int(gap_s * 1e9)
        self.late_ns = int(late_s * 1e9)
        self.open: dict[str, Incident] = {}  # by service
        self.counts: dict[tuple[str, str], int] = {}  # findings per (service, detector)
        self.opened = 0
        self.resolved = 0

    def add(self, findings: pa.Table) -> list[Incident]:
        """Take new findings (FINDINGS rows, any order); the incidents opened or grown."""
        findings = _usable(findings)
        if findings.num_rows == 0:
            return []
        for key, n in _counted(findings).items():
            self.counts[key] = self.counts.get(key, 0) + n
        changed: dict[str, Incident] = {}
        for r in findings.sort_by("time_ns").to_pylist():  # one row per finding, not span
            incident = self._take(r)
            changed[incident.id] = incident
        return list(changed.values())

    def _take(self, r: dict[str, Any]) -> Incident:
        service, t = r["service"], int(r["time_ns"])
        current = self.open.get(service)
        if current is None or t - current.end_ns > self.gap_ns:
            if current is not None:  # a gap inside what arrived late: the old one ends
                current.resolved = True
            current = self.open[service] = _opened(r)
            self.opened += 1
        current.end_ns = max(current.end_ns, t)
        current.findings += 1
        instance = r["instance"] or ""
        current.instances[instance] = current.instances.get(instance, 0) + 1
        current.detectors[r["detector"]] = current.detectors.get(r["detector"], 0) + 1
        threshold = r["threshold"]
        if threshold and threshold > 0:
            current.max_ratio = max(current.max_ratio, float(r["score"]) / float(threshold))
        reason = r["reason"]
        if reason and reason not in current.reasons and len(current.reasons) < MAX_REASONS:
            current.reasons.append(reason)
        return current

    def expire(self, now_ns: int) -> list[Incident]:
        """Resolve the incidents whose last finding is older than the gap (and lateness)."""
        done = [i for i in self.open.values() if now_ns - i.end_ns > self.gap_ns + self.late_ns]
        for incident in done:
            incident.resolved = True
            del self.open[incident.service]
        self.resolved += len(done)
        return done


def _usable(findings: pa.Table) -> pa.Table:
    """Findings with a service and a time, not marked normal by an operator."""
    if findings.num_rows == 0:
        return findings
    keep = pc.and_(pc.is_valid(findings.column("service")), pc.is_valid(findings.column("time_ns")))
    if "feedback" in findings.column_names:
        keep = pc.and_(
            keep, pc.invert(pc.fill_null(pc.equal(findings.column("feedback"), "normal"), False))
        )
    return findings.filter(keep)


def _counted(findings: pa.Table) -> dict[tuple[str, str], int]:
    grouped = findings.group_by(["service", "detector"]).aggregate([("finding_id", "count")])
    return {
        (s, d): n
        for s, d, n in zip(
            grouped.column("service").to_pylist(),
            grouped.column("detector").to_pylist(),
            grouped.column("finding_id_count").to_pylist(),
            strict=True,
        )
    }


def _opened(r: dict[str, Any]) -> Incident:
    service, t = r["service"], int(r["time_ns"])
    ident = hashlib.sha1(f"{service}\0{t}".encode()).hexdigest()[:16]
    return Incident(
        id=ident,
        service=service,
        instance=r["instance"] or "",
        kind=r["entity"] or "",
        start_ns=t,
        end_ns=t,
    )
