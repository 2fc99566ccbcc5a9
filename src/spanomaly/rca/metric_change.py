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

A metric's surprise is -log10 of the two-sided normal tail of that z. An instance's
combines its metrics as an order statistic does: with m metrics compared, the chance that
k of them are each at least as surprising as its k-th most surprising one is at most
C(m, k) times that one's tail to the k-th power, so its surprise is the largest, over k, of
k times the k-th largest surprise less log10 C(m, k) (k = 1 is the most surprising metric
less log10 m: Bonferroni).
A resource fault moves several of the faulty instance's resources (its CPU, its memory,
its I/O), while a neighbour's single metric that follows it does not outweigh them however
far the tails compress its move. Only resource metrics count one by one: an instance's
symptoms (latency quantiles, load) are views of the same requests and count as one, their
strongest. `reason` names the most surprising metric and how many more took part. Resource metrics (CPU, memory, I/O: what a fault consumes) and
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
lat latency duration response rt p50 p90 p95 p99 load lod workload requests request req rps qps
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
    metrics: int = 1  # metrics that took part in the surprise (k of the order statistic)


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
        s = _two_sided(ev)
        weighted = np.where(role == "symptom", SYMPTOM_WEIGHT * s, s)
        j = int(np.argmax(weighted))
        surprise, k = combined_surprise(_independent(weighted, role))
        out.append(
            Evidence(
                str(inst), str(services[rows][0]), surprise, names[j], float(level[j]),
                None if change is None else float(change[j]), k,
            )
        )  # fmt: skip
    return out


def _independent(surprises: np.ndarray, role: np.ndarray) -> np.ndarray:
    """The surprises that count as separate evidence: each resource metric's, and the
    strongest symptom's (an instance's latency quantiles and load are views of the same
    requests, one phenomenon however many columns show it)."""
    symptoms = surprises[role == "symptom"]
    strongest = [symptoms.max()] if len(symptoms) else []
    return np.concatenate([surprises[role != "symptom"], strongest])


def combined_surprise(surprises: np.ndarray) -> tuple[float, int]:
    """The order-statistic surprise of m metrics' surprises (-log10 tails): the largest, over
    k, of k times the k-th largest less log10 C(m, k), never below 0; and that k."""
    m = len(surprises)
    ordered = np.sort(surprises)[::-1]
    ordered = ordered[ordered > 0]  # a metric that did not move takes no part
    if len(ordered) == 0:
        return 0.0, 0
    k = np.arange(1, len(ordered) + 1)
    top = k * ordered
    log_choose = np.array(
        [math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) for i in k]
    )
    combined = top - log_choose / math.log(10.0)
    best = int(np.argmax(combined))
    return max(float(combined[best]), 0.0), best + 1
