"""Instance windows: RED metrics from spans, metric windows, normalisation, host metrics."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from spanomaly.features import windows as win
from spanomaly.features.graph import adjacency, dependency_graph
from spanomaly.features.traces import events
from tests.rca import scenario as sc


def test_span_windows_charge_the_gap_to_the_callee() -> None:
    spans = sc.spans()
    ev = events(spans)
    t = ev.column("start_ns").to_numpy()
    train = ev.filter(pa.array(t < sc.TRAIN[1]))
    profile = win.SelfTimeProfile().fit(train)
    assert len(profile.keys) > 5 and (profile.upper_ms >= profile.median_ms).all()
    table = win.span_windows(ev, profile)
    assert set(win.SPAN_FEATURES) <= set(table.column_names)
    rows = table.to_pylist()
    during = [r for r in rows if sc.NET_FAULT[0] <= r["time_ns"] < sc.NET_FAULT[1] - 60 * sc.NS]
    before = [r for r in rows if r["time_ns"] < sc.TRAIN[1]]

    def lost(rs: list[dict], service: str) -> float:
        return float(np.mean([r["t.excess_ms_s"] for r in rs if r["service"] == service]))

    assert lost(during, "order-service") > 50 * max(lost(before, "order-service"), 0.1)
    assert lost(during, "gateway") < 1.0  # the gateway's client span waits, order pays
    slow = [r["operation"] for r in during if r["service"] == "order-service"]
    assert all(op == "HTTP POST" for op in slow)
    gw = [r for r in before if r["service"] == "gateway"]
    assert abs(np.mean([r["t.requests_s"] for r in gw]) - 2.5) < 0.1  # one per 0.4 s


def test_metric_windows_normaliser_and_host_metrics() -> None:
    table = win.metric_windows(sc.metrics())
    assert {"m.CpuUsage", "m.MemoryUsage", "m.NodeCpu"} <= set(table.column_names)
    assert win.host_metrics(table) == ["m.NodeCpu"]
    w = win.combine(table)
    t = w.column("time_ns")
    norm = win.Normalizer(recent=5).fit(w.take(t < sc.TRAIN[1]))
    X = norm.transform(w)
    names = norm.feature_names()
    assert names[:3] == ["z.m.CpuUsage", "z.m.MemoryUsage", "z.m.NodeCpu"] and len(names) == 6
    normal = X[t < sc.TRAIN[1]][:, :3]
    assert abs(normal.mean()) < 0.2 and 0.7 < normal.std() < 1.3  # about standard normal
    hit = w.X[:, w.names.index("m.CpuUsage")] > 400  # the CPU fault's windows
    assert hit.sum() == 3 and set(w.column("instance")[hit]) == {sc.instance("auth-service")}
    cpu = names.index("z.m.CpuUsage")
    assert X[hit, cpu].min() > 10  # 480 against a normal of 50: far past the normal range
    assert X[hit, names.index("d.m.CpuUsage")].max() > 10  # and a change against the past
    weighed = norm.transform(w, predictive=True)  # tails whose scale is an estimate: less sure
    assert 5 < weighed[hit, cpu].min() < X[hit, cpu].min()
    again = win.Normalizer.from_json(norm.to_json())
    np.testing.assert_allclose(again.transform(w), X)
    assert norm.normal("auth-service", "m.CpuUsage") == pytest_approx(50.0, 3.0)


def pytest_approx(value: float, tol: float) -> object:
    import pytest

    return pytest.approx(value, abs=tol)


def test_recent_median_looks_back_per_instance() -> None:
    keys = pa.table(
        {"time_ns": [0, 1, 2, 3, 0, 1], "service": ["s"] * 6, "instance": ["a"] * 4 + ["b"] * 2}
    )
    w = win.InstanceWindows(keys, np.zeros((6, 1)), ["x"])
    z = np.array([[1.0], [3.0], [5.0], [7.0], [10.0], [20.0]])
    med = win.recent_median(z, w, 2)
    np.testing.assert_allclose(med[:, 0], [0.0, 1.0, 2.0, 4.0, 0.0, 10.0])


def test_dependency_graph() -> None:
    g = dependency_graph(events(sc.spans().slice(0, 2000)))
    callees, callers = adjacency(g)
    assert callees["gateway"] >= {"order-service", "user-service"}
    assert callers["order-service"] == {"gateway"}


def test_errors_count_where_they_start_not_where_they_surface() -> None:
    spans = sc.spans().slice(0, 4000)
    ids = spans.column("span_id").to_pylist()
    parent = dict(zip(ids, spans.column("parent_id").to_pylist(), strict=True))
    services = spans.column("service").to_pylist()
    failed: set[str] = set()
    for sid, svc in zip(ids, services, strict=True):
        if svc == "order-service" and parent.get(sid) is not None:  # order-service fails...
            while sid is not None:  # ...and every caller up to the root with it
                failed.add(sid)
                sid = parent.get(sid)
    status = ["error" if s in failed else "ok" for s in ids]
    spans = spans.set_column(spans.schema.get_field_index("status"), "status", pa.array(status))
    ev = events(spans)
    table = win.span_windows(ev, win.SelfTimeProfile().fit(ev))
    share: dict[str, float] = {}
    for r in table.to_pylist():
        share[r["service"]] = max(share.get(r["service"], 0.0), r["t.error_share"] or 0.0)
    assert share["order-service"] > 0.5
    assert share.get("gateway", 0.0) == 0.0  # its errors come from order-service


def _one_feature(times: list[int], values: list[float], instance: str = "a") -> win.InstanceWindows:
    keys = pa.table(
        {"time_ns": times, "service": ["s"] * len(times), "instance": [instance] * len(times)}
    )
    return win.InstanceWindows(keys, np.asarray(values, dtype=float)[:, None], ["m.x"])


def test_latest_holds_out_the_last_times() -> None:
    w = _one_feature([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], [0.0] * 10)
    held = w.latest(0.2)
    assert held.tolist() == [False] * 8 + [True] * 2
    assert not _one_feature([5, 5], [0.0, 1.0]).latest(0.2).any()  # one time: nothing held


def test_few_normal_windows_make_the_maximum_less_rare() -> None:
    """Past the largest of 20 normal values is about 1 in 40, not 1 in 400 (the grid)."""
    rng = np.random.default_rng(0)
    few = _one_feature(list(range(20)), rng.normal(10.0, 1.0, 20).tolist())
    many = _one_feature(list(range(2000)), rng.normal(10.0, 1.0, 2000).tolist())
    top = float(few.X.max())
    z_few = win.Normalizer(recent=0).fit(few).zscores(_one_feature([0], [top + 1e-9]))[0, 0]
    assert 1.5 < z_few < 2.5  # Phi^-1(1 - 0.5 / 21) = 1.98
    z_many = win.Normalizer(recent=0).fit(many).zscores(_one_feature([0], [14.0]))[0, 0]
    assert z_many > 3.0


def test_change_counts_only_away_from_normal() -> None:
    """Errors stopping after an incident are no anomaly; errors starting are."""
    normal = _one_feature(list(range(50)), [0.0] * 25 + [0.01] * 25)
    norm = win.Normalizer(recent=3).fit(normal)
    w = _one_feature(list(range(8)), [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.0, 0.0])
    X = norm.transform(w)
    d = X[:, 1]
    assert d[3] > 5  # the burst starts: a change away from normal
    # back to normal: the drop of 40 is not counted, only the value's own distance from
    # normal (a zero lies in the lower half of these normal values)
    assert (np.abs(d[6:]) < 1).all() and (np.abs(d) <= np.abs(X[:, 0]) + 1e-9).all()


def test_faster_or_fewer_errors_is_no_symptom() -> None:
    """Latency below normal is normal (z 0); a request rate below normal is not."""
    rng = np.random.default_rng(0)
    n = 200
    keys = pa.table({"time_ns": list(range(n)), "service": ["s"] * n, "instance": ["a"] * n})
    X = np.column_stack([rng.normal(10.0, 1.0, n), rng.normal(50.0, 5.0, n)])
    w = win.InstanceWindows(keys, X, ["t.requests_s", "t.latency_p95_ms"])
    norm = win.Normalizer(recent=0).fit(w)
    low = win.InstanceWindows(keys.slice(0, 1), np.array([[2.0, 5.0]]), w.names)
    z = norm.zscores(low)[0]
    assert z[0] < -4 and z[1] == 0.0


def _metric_windows_of(values: np.ndarray) -> win.InstanceWindows:
    t = np.arange(len(values), dtype=np.int64) * 60 * 10**9
    keys = pa.table({"time_ns": t, "service": ["a"] * len(values), "instance": ["a"] * len(values)})
    return win.InstanceWindows(keys, values[:, None], ["m.x"])


def test_tails_past_the_normal_range_weigh_how_well_they_are_known() -> None:
    rng = np.random.default_rng(3)
    # a quantised latency metric: most values on a bucket edge, one bucket up now and then
    sparse = np.where(rng.random(80) < 0.9, 0.0249, 0.0495)
    w = _metric_windows_of(np.r_[sparse, 0.475, 0.0495])
    norm = win.Normalizer(recent=0).fit(w.take(np.arange(80)))
    assert norm.zscores(w)[80, 0] == win.Z_CLIP  # detection: past the range is past it
    z = norm.zscores(w, predictive=True)[:, 0]
    assert 4 < z[80] < 10  # ten times a bucket edge, 80 windows: rare, not certainty
    assert abs(z[81]) < 2.5  # the upper bucket itself is normal
    wide = rng.exponential(1.0, 2000)  # a tail measured on a hundred values
    w = _metric_windows_of(np.r_[wide, 20.0])
    z = win.Normalizer(recent=0).fit(w.take(np.arange(2000))).zscores(w, predictive=True)[:, 0]
    assert z[-1] > 5  # far past a well-measured tail
    k = win._tail_values(np.array([2000.0]))
    np.testing.assert_allclose(win._beyond(np.array([0.5]), k), 0.5, rtol=0.01)  # near the edge


def test_relevel_adds_a_new_level_and_leaves_levels_inside_the_range() -> None:
    """A new deployment's level outside the learnt range joins the normal (the old level
    stays normal too); a level inside the range changes nothing."""
    rng = np.random.default_rng(1)
    old = _one_feature(list(range(300)), rng.normal(10.0, 1.0, 300).tolist())
    norm = win.Normalizer(recent=0).fit(old)
    grid = norm.grid.copy()
    assert norm.relevel(_one_feature([0, 1], [10.2, 9.9])) == {}
    assert np.array_equal(norm.grid, grid)
    assert norm.zscores(_one_feature([0], [20.0]))[0, 0] > 5
    assert norm.relevel(_one_feature([0, 1], [20.0, 20.4])) == {"s": 1}
    z = norm.zscores(_one_feature([0, 1, 2], [20.1, 10.0, 30.0]))[:, 0]
    assert abs(z[0]) < 2.5 and abs(z[1]) < 2.5 and z[2] > 5
