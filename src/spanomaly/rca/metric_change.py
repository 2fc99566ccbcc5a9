"""Root-cause evidence of metrics: how far each instance's metrics moved over a period.

Per-window surprises, summed, measure the wrong thing for metrics: a fault holds a metric
at its new level for minutes, and its *change* against the recent past shows only in the
first windows, while a metric that flaps keeps changing all along; and windows a second
apart are no independent evidence. So an instance's evidence over a period is one number
per metric:

- its **level**: the median, over the period's windows, of the z-score against the
  service's normal windows (`features.windows.Normalizer`, robust by construction: ranks
  among the normal values, tails past them in robust tail scales, floored at 1 % of the
  level, so a metric flat in training does not turn noise into certainty); the median, so
  that a fault that lasts counts and a blip does not;
- its **change**: where windows before the period's start exist (the recent past of a
  continuous recording), the level minus the median z of those windows; a shift that was
  already there before the anomaly (a deployment whose levels differ from the training
  recording's) is no evidence of it. The evidence is the level as far as the change leads
  away from normal (the smaller of the two, where they agree in sign; none otherwise);
  without a recent past, the level.

Its surprise is -log10 of the two-sided normal tail of that z, less log10 of the number
of metrics compared (Bonferroni); the instance's is that of its most surprising metric,
which `reason` names. Resource metrics (CPU, memory, I/O: what a fault consumes) and
symptom metrics (latency, load, errors: what spreads from a faulty callee to its callers)
are told apart by name (`metric_role`): an instance whose only evidence is symptoms is
down-weighted by SYMPTOM_WEIGHT, as the ranking's graph rule does for a caller of a
more anomalous callee.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

SYMPTOM_WEIGHT = 0.5
_SYMPTOM_TEXT = """
lat latency duration response rt p50 p90 p95 p99 load workload requests request req rps qps
throughput calls errors error err failures availability success status
"""
SYMPTOM_WORDS = frozenset(_SYMPTOM_TEXT.split())


def metric_role(name: str) -> str:
    """'symptom' for latency, traffic and error metrics, else 'resource'."""
    words = set(re.split(r"[^0-9a-z]+", name.lower()))
    return "symptom" if words & SYMPTOM_WORDS else "resource"


@dataclass(frozen=True)
class Evidence:
    """One instance's evidence over a period."""

    instance: str
    service: str
    surprise: float
    feature: str
    level: float
    change: float | None


def _two_sided(z: np.ndarray) -> np.ndarray:
    """-log10 of P(|Z| >= |z|) for a standard normal Z."""
    from scipy.special import log_ndtr

    return -(math.log(2.0) + log_ndtr(-np.abs(z))) / math.log(10.0)


def period_evidence(
    z: np.ndarray,
    times: np.ndarray,
    instances: np.ndarray,
    services: np.ndarray,
    names: list[str],
    start_ns: int,
) -> list[Evidence]:
    """Evidence per instance from the z-scores of its windows (rows) per metric (columns);
    windows before start_ns are the recent past."""
    out = []
    role = np.array([metric_role(n) for n in names])
    bonferroni = math.log10(max(len(names), 1))
    for inst in np.unique(instances):  # one pass per instance
        rows = instances == inst
        now = rows & (times >= start_ns)
        if not now.any():
            continue
        level = np.median(z[now], axis=0)
        past = rows & (times < start_ns)
        change = level - np.median(z[past], axis=0) if past.any() else None
        ev = level if change is None else np.where(
            level * change > 0, np.sign(level) * np.minimum(np.abs(level), np.abs(change)), 0.0
        )  # fmt: skip
        s = np.maximum(_two_sided(ev) - bonferroni, 0.0)
        weighted = np.where(role == "symptom", SYMPTOM_WEIGHT * s, s)
        j = int(np.argmax(weighted))
        out.append(
            Evidence(
                str(inst), str(services[rows][0]), float(weighted[j]), names[j],
                float(level[j]), None if change is None else float(change[j]),
            )
        )  # fmt: skip
    return out
