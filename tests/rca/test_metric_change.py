"""The metric evidence of a period: an instance's metrics combine as an order statistic."""

from __future__ import annotations

import math

import numpy as np

from spanomaly.rca.metric_change import combined_surprise, period_evidence

NS = 1_000_000_000


def test_one_metric_is_bonferroni() -> None:
    surprise, k = combined_surprise(np.array([10.0, 0.0, 0.0, 0.0]))
    assert k == 1 and math.isclose(surprise, 10.0 - math.log10(4))


def test_several_metrics_each_surprising_outweigh_one_a_little_more_so() -> None:
    many, k = combined_surprise(np.array([8.0, 7.0, 6.0, 0.0, 0.0, 0.0]))
    one, _ = combined_surprise(np.array([9.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    # k = 3: three metrics each at least 6 (1e-6 tails): 3 * 6 - log10 C(6, 3)
    assert k == 3 and math.isclose(many, 18.0 - math.log10(20)) and many > one


def test_nothing_surprising_is_zero() -> None:
    assert combined_surprise(np.zeros(5)) == (0.0, 0)
    assert combined_surprise(np.array([])) == (0.0, 0)


def test_period_evidence_names_the_most_surprising_metric_and_how_many_took_part() -> None:
    times = np.arange(20) * NS
    instances = np.array(["a"] * 10 + ["b"] * 10)
    z = np.zeros((20, 3))
    z[:10] = [7.0, 6.5, 6.0]  # a: its CPU, memory and I/O all moved
    z[10:] = [0.0, 8.0, 0.0]  # b: one metric moved further
    names = ["m.cpu", "m.mem", "m.io"]
    found = {e.instance: e for e in period_evidence(z, times, instances, instances, names, 0)}
    assert found["a"].surprise > found["b"].surprise
    assert (found["a"].feature, found["a"].metrics) == ("m.cpu", 3)
    assert (found["b"].feature, found["b"].metrics) == ("m.mem", 1)


def test_symptom_columns_of_one_instance_count_as_one() -> None:
    times = np.arange(20) * NS
    instances = np.array(["caller"] * 10 + ["faulty"] * 10)
    names = ["m.cpu", "m.mem", "m.lat_50", "m.lat_90", "m.lat_99"]
    z = np.zeros((20, 5))
    z[:10] = [0.0, 0.0, 9.0, 9.0, 9.0]  # the caller's latency quantiles: one phenomenon
    z[10:] = [6.0, 6.0, 0.0, 0.0, 0.0]  # the faulty instance's CPU and memory
    found = {e.instance: e for e in period_evidence(z, times, instances, instances, names, 0)}
    assert found["caller"].metrics == 1
    assert found["faulty"].surprise > found["caller"].surprise
