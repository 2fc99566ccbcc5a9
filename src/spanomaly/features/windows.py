"""Instance windows: one point per instance per time window, for the point detectors.

Each instance (pod, container, process) in each window (default 60 s) becomes a vector of

- the metrics the store holds for it (`m.<name>`: CPU, memory, I/O, network, system
  calls, ...), averaged over the window; and
- RED metrics derived from its spans (`t.<name>`): request rate, error share, latency
  p50 / p95 / p99 of the requests it served, mean self time, and two features that compare
  each span with the normal of its own operation (a `SelfTimeProfile` fitted on normal
  data): the time lost above the operation's normal range per second (`t.excess_ms_s`) and
  the share of spans above it (`t.slow_share`). Self time is charged where the events
  table charges it (`blame_instance`): a client span's own time (network and queueing) to
  the callee, so a slow network of the callee shows on the callee.

`Normalizer` turns the raw vectors into z-scores against the normal of the instance's
*service* (the rank of the value among the service's normal windows, as a standard normal
quantile, with exponential tails past the normal range), so instances of one service are
comparable with each other and every feature is on one scale, and adds, for each feature,
the deviation from the instance's own recent past (`d.<name>`: the z-score minus the
median of its previous `recent` windows). Metrics that describe the host rather than the
instance (the same value reported by several instances at once) are told apart by
`host_metrics` and left out.

Everything is DuckDB over Arrow and numpy over columns; the only loop runs over
instances.
"""

from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

NS = 1_000_000_000
DEFAULT_WINDOW_S = 60.0
# operations that mark an error where spans carry no status (Spring Boot's error controller)
DEFAULT_ERROR_OPERATIONS = ("%ErrorController.error%",)
KEY_COLUMNS = ("time_ns", "service", "instance")
SPAN_FEATURES = (
    "t.requests_s",
    "t.error_share",
    "t.latency_p50_ms",
    "t.latency_p95_ms",
    "t.latency_p99_ms",
    "t.self_ms",
    "t.excess_ms_s",
    "t.slow_share",
)


@dataclass
class InstanceWindows:
    """Feature vectors of instance windows: keys (time_ns, service, instance) and X."""

    keys: pa.Table
    X: np.ndarray
    names: list[str]
    # per window: the operation that lost the most time there (span windows), or null
    operation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))

    @property
    def n(self) -> int:
        """Number of windows."""
        return self.keys.num_rows

    def column(self, name: str) -> np.ndarray:
        """One key column as numpy (time_ns int64, service and instance object)."""
        col = self.keys.column(name)
        if name == "time_ns":
            return col.to_numpy().astype(np.int64)
        return col.to_numpy(zero_copy_only=False).astype(object)

    def select(self, names: list[str] | tuple[str, ...]) -> InstanceWindows:
        """The same windows with some features only (those present)."""
        idx = [self.names.index(n) for n in names if n in self.names]
        return InstanceWindows(
            self.keys, self.X[:, idx], [self.names[i] for i in idx], self.operation
        )

    def take(self, rows: np.ndarray) -> InstanceWindows:
        """Some windows (row indices or a boolean mask)."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        op = self.operation[rows] if len(self.operation) == self.n else self.operation
        return InstanceWindows(self.keys.take(pa.array(rows)), self.X[rows], self.names, op)

    def latest(self, fraction: float) -> np.ndarray:
        """Mask of the windows in the latest `fraction` of the distinct window times (at least
        one time, never all): a hold-out that lies after everything it is compared with."""
        t = self.column("time_ns")
        times = np.unique(t)
        if len(times) < 2:
            return np.zeros(self.n, dtype=bool)
        k = min(max(round(len(times) * fraction), 1), len(times) - 1)
        return t >= times[len(times) - k]

    def groups(self) -> np.ndarray:
        """Group id of each window: same time and service (for peer comparison)."""
        if self.n == 0:
            return np.zeros(0, dtype=np.int64)
        t = self.column("time_ns")
        s = self.column("service").astype(str)
        _, inverse = np.unique(np.rec.fromarrays([t, s]), return_inverse=True)
        return inverse.reshape(-1).astype(np.int64)


# -- self-time profile ------------------------------------------------------------------------


@dataclass
class SelfTimeProfile:
    """The normal self time of every event key: median and upper bound (a high quantile)."""

    quantile: float = 0.99
    min_count: int = 5
    keys: list[str] = field(default_factory=list)
    median_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    upper_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mad_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def fit(self, events: pa.Table) -> SelfTimeProfile:
        """Learn the profile from the events (`features.traces.events`) of normal traces."""
        con = duckdb.connect()
        try:
            con.register("_ev", events.select(["key", "self_ns"]))
            rows = con.execute(
                "SELECT key, median(self_ns) / 1e6, quantile_cont(self_ns, ?) / 1e6, "
                "mad(self_ns) / 1e6 FROM _ev GROUP BY key HAVING count(*) >= ? ORDER BY key",
                [self.quantile, self.min_count],
            ).fetchall()
        finally:
            con.close()
        self.keys = [r[0] for r in rows]
        self.median_ms = np.array([r[1] for r in rows], dtype=np.float64)
        self.upper_ms = np.array([r[2] for r in rows], dtype=np.float64)
        self.mad_ms = np.array([r[3] for r in rows], dtype=np.float64)
        return self

    def table(self) -> pa.Table:
        """The profile as a table (key, median_ms, upper_ms, mad_ms)."""
        return pa.table(
            {
                "key": pa.array(self.keys, pa.string()),
                "median_ms": self.median_ms,
                "upper_ms": self.upper_ms,
                "mad_ms": self.mad_ms,
            }
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "quantile": self.quantile,
            "min_count": self.min_count,
            "keys": self.keys,
            "median_ms": self.median_ms.tolist(),
            "upper_ms": self.upper_ms.tolist(),
            "mad_ms": self.mad_ms.tolist(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SelfTimeProfile:
        """The profile written by `to_json`."""
        return cls(
            quantile=float(doc["quantile"]),
            min_count=int(doc["min_count"]),
            keys=[str(k) for k in doc["keys"]],
            median_ms=np.asarray(doc["median_ms"], dtype=np.float64),
            upper_ms=np.asarray(doc["upper_ms"], dtype=np.float64),
            mad_ms=np.asarray(doc["mad_ms"], dtype=np.float64),
        )


# -- raw windows ------------------------------------------------------------------------------


def _error_sql(patterns: tuple[str, ...]) -> str:
    likes = " OR ".join(f"operation LIKE '{p.replace(chr(39), '')}'" for p in patterns)
    return f"(status_class = 'error' OR {likes or 'FALSE'})"


def span_windows(
    events: pa.Table,
    profile: SelfTimeProfile,
    window_s: float = DEFAULT_WINDOW_S,
    error_operations: tuple[str, ...] = DEFAULT_ERROR_OPERATIONS,
) -> pa.Table:
    """RED metrics per (window, service, instance) from an events table.

    Requests are the spans an instance serves (roots and spans whose parent runs in another
    service); latency percentiles are of those; errors are the error-status spans and error
    marker spans where an error starts (none of their children failed: a failed call fails
    its callers too), charged like self time to the instance the events table blames (the
    callee, for a call that never reached a server); self time is what the events table
    charges to the instance. The time a call spends outside its server (a client span's
    own time) is charged to the callee, except where a caller's slow calls of the window
    spread over two or more callee instances, a third of them or more away from the one
    with most: a slow
    network or callee slows the calls to it from every caller, a starved caller (CPU
    throttled, say) slows its calls to every callee, so those are charged to the caller.
    """
    w = int(window_s * NS)
    cols = ["trace_id", "span_id", "parent_id", "service", "instance", "parent_service"]
    cols += ["operation", "status_class", "key", "blame_service", "blame_instance"]
    cols += ["start_ns", "duration_ns", "self_ns"]
    con = duckdb.connect()
    try:
        con.execute("SET preserve_insertion_order = false")
        con.register("_ev", events.select(cols))
        con.register("_prof", profile.table())
        err = _error_sql(error_operations)
        return con.sql(
            f"""
            WITH failed AS (
              SELECT trace_id, span_id, parent_id, start_ns, blame_service, blame_instance
              FROM _ev WHERE {err}),
            origin AS (
              SELECT (f.start_ns // {w}) * {w} AS time_ns, f.blame_service AS service,
                     f.blame_instance AS instance, count(*) AS errors
              FROM failed f ANTI JOIN failed c
                ON c.trace_id = f.trace_id AND c.parent_id = f.span_id
              WHERE f.blame_instance IS NOT NULL GROUP BY ALL),
            served AS (
              SELECT (start_ns // {w}) * {w} AS time_ns, service, instance,
                     count(*) FILTER (WHERE parent_service <> service) AS requests,
                     quantile_cont(duration_ns, 0.5) FILTER (WHERE parent_service <> service)
                       / 1e6 AS p50,
                     quantile_cont(duration_ns, 0.95) FILTER (WHERE parent_service <> service)
                       / 1e6 AS p95,
                     quantile_cont(duration_ns, 0.99) FILTER (WHERE parent_service <> service)
                       / 1e6 AS p99
              FROM _ev WHERE instance IS NOT NULL GROUP BY ALL),
            judged AS (
              SELECT (e.start_ns // {w}) * {w} AS time_ns, e.service AS caller_service,
                     e.instance AS caller, e.blame_service, e.blame_instance, e.operation,
                     e.self_ns / 1e6 AS self_ms,
                     greatest(e.self_ns / 1e6 - p.upper_ms, 0) AS excess_ms,
                     e.self_ns / 1e6 > p.upper_ms AS slow,
                     e.instance IS NOT NULL AND e.blame_instance <> e.instance AS gap
              FROM _ev e LEFT JOIN _prof p ON p.key = e.key
              WHERE e.blame_instance IS NOT NULL),
            gap_callees AS (
              SELECT time_ns, caller, blame_instance, count(*) AS n
              FROM judged WHERE gap AND slow GROUP BY ALL),
            starved AS (  -- slow calls spread: a third or more away from the top callee
              SELECT time_ns, caller FROM gap_callees GROUP BY ALL
              HAVING count(*) >= 2 AND 3 * max(n) <= 2 * sum(n)),
            charged AS (
              SELECT j.time_ns,
                     CASE WHEN j.gap AND s.caller IS NOT NULL THEN j.caller_service
                          ELSE j.blame_service END AS service,
                     CASE WHEN j.gap AND s.caller IS NOT NULL THEN j.caller
                          ELSE j.blame_instance END AS instance,
                     j.operation, j.self_ms, j.excess_ms, j.slow
              FROM judged j LEFT JOIN starved s USING (time_ns, caller)),
            per_op AS (
              SELECT time_ns, service, instance, operation, sum(excess_ms) AS lost
              FROM charged GROUP BY ALL),
            top_op AS (
              SELECT time_ns, service, instance, arg_max(operation, lost) AS operation,
                     max(lost) AS lost
              FROM per_op GROUP BY ALL),
            own AS (
              SELECT time_ns, service, instance, avg(self_ms) AS self_ms,
                     coalesce(sum(excess_ms), 0) AS excess_ms,
                     avg(CASE WHEN slow THEN 1.0 WHEN slow IS NULL THEN NULL ELSE 0.0 END)
                       AS slow_share
              FROM charged GROUP BY ALL)
            SELECT time_ns, service, instance,
                   coalesce(s.requests, 0) / {window_s} AS "t.requests_s",
                   coalesce(g.errors, 0) / greatest(coalesce(s.requests, 0), 1)
                     AS "t.error_share",
                   s.p50 AS "t.latency_p50_ms", s.p95 AS "t.latency_p95_ms",
                   s.p99 AS "t.latency_p99_ms",
                   o.self_ms AS "t.self_ms",
                   coalesce(o.excess_ms, 0) / {window_s} AS "t.excess_ms_s",
                   coalesce(o.slow_share, 0) AS "t.slow_share",
                   CASE WHEN t.lost > 0 THEN t.operation END AS operation
            FROM served s FULL JOIN own o USING (time_ns, service, instance)
                 FULL JOIN origin g USING (time_ns, service, instance)
                 LEFT JOIN top_op t USING (time_ns, service, instance)
            ORDER BY time_ns, service, instance
            """
        ).to_arrow_table()
    finally:
        con.close()


def metric_windows(
    metrics: pa.Table, window_s: float = DEFAULT_WINDOW_S, names: list[str] | None = None
) -> pa.Table:
    """Metric points per (window, service, instance), one column `m.<name>` per metric.

    `metrics` has the METRICS columns (time_ns, service, instance, name, value, and
    optionally kind); points without an instance (node or whole-service metrics) are left
    out. The value is the mean over the window; non-finite values are ignored. A ``sum``
    (a counter, cumulative as OpenTelemetry SDKs send it by default) becomes its rate per
    second between consecutive points of the instance; a drop (a restart) gives no rate.
    """
    w = int(window_s * NS)
    if metrics.num_rows == 0:
        return pa.table({c: pa.array([], pa.int64() if c == "time_ns" else pa.string())
                         for c in KEY_COLUMNS})  # fmt: skip
    con = duckdb.connect()
    try:
        con.execute("SET preserve_insertion_order = false")
        cols = ["time_ns", "service", "instance", "name", "value"]
        if "kind" in metrics.column_names:
            con.register("_raw", metrics.select([*cols, "kind"]))
            con.execute(
                "CREATE TEMP VIEW _m AS SELECT time_ns, service, instance, name, CASE "
                "WHEN kind IS DISTINCT FROM 'sum' THEN value "
                "WHEN value < lag(value) OVER w THEN NULL "
                "ELSE (value - lag(value) OVER w) "
                "/ nullif((time_ns - lag(time_ns) OVER w) / 1e9, 0) END AS value "
                "FROM _raw WINDOW w AS (PARTITION BY instance, name ORDER BY time_ns)"
            )
        else:
            con.register("_m", metrics.select(cols))
        if names is None:
            names = [
                r[0]
                for r in con.execute(
                    "SELECT DISTINCT name FROM _m WHERE instance IS NOT NULL ORDER BY 1"
                ).fetchall()
            ]
        if not names:
            return metric_windows(metrics.slice(0, 0), window_s)
        cols = ", ".join(
            f'avg(value) FILTER (WHERE name = ${i + 1} AND isfinite(value)) AS "m.{n}"'
            for i, n in enumerate(names)
        )
        return con.sql(
            f"SELECT (time_ns // {w}) * {w} AS time_ns, coalesce(service, instance) AS service, "
            f"instance, {cols} FROM _m WHERE instance IS NOT NULL GROUP BY ALL "
            "ORDER BY time_ns, service, instance",
            params=list(names),
        ).to_arrow_table()
    finally:
        con.close()


def host_metrics(table: pa.Table, share: float = 0.5) -> list[str]:
    """Metric columns that describe the host rather than the instance: in most windows the
    same non-zero value is reported by two or more instances at once (node CPU, node
    memory), so they cannot tell the instances of a host apart. Round values (multiples of
    0.001) are not counted: they coincide by chance; metrics mostly made of them are kept."""
    if table.num_rows == 0:
        return []
    t = table.column("time_ns").to_numpy()
    out = []
    for name in table.column_names:  # one pass per metric
        if not name.startswith("m."):
            continue
        v = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        # round values (multiples of 0.001) coincide by chance; others do not
        ok = np.isfinite(v) & (np.abs(v * 1000.0 - np.round(v * 1000.0)) > 1e-6)
        if ok.sum() < 0.5 * np.isfinite(v).sum() or ok.sum() < 2:
            continue
        pairs = np.rec.fromarrays([t[ok], v[ok]])
        _, inverse, counts = np.unique(pairs, return_inverse=True, return_counts=True)
        if (counts[inverse.reshape(-1)] > 1).mean() > share:
            out.append(name)
    return out


def combine(*tables: pa.Table) -> InstanceWindows:
    """Outer-join window tables on (time_ns, service, instance) into one feature matrix."""
    tables = tuple(t for t in tables if t is not None and t.num_rows)
    if not tables:
        return InstanceWindows(
            pa.table({"time_ns": pa.array([], pa.int64()), "service": pa.array([], pa.string()),
                      "instance": pa.array([], pa.string())}),
            np.zeros((0, 0)), [],
        )  # fmt: skip
    con = duckdb.connect()
    try:
        names: list[str] = []
        selects = []
        for i, t in enumerate(tables):
            con.register(f"_t{i}", t)
            feats = [c for c in t.column_names if c not in KEY_COLUMNS and c != "operation"]
            names += feats
            selects.append((i, feats, "operation" in t.column_names))
        keys = " UNION ".join(
            f"SELECT time_ns, service, instance FROM _t{i}" for i, _, _ in selects
        )
        joins = " ".join(
            f"LEFT JOIN _t{i} USING (time_ns, service, instance)" for i, _, _ in selects
        )
        ops = [f"_t{i}.operation" for i, _, has in selects if has]
        op = f"coalesce({', '.join(ops)})" if ops else "CAST(NULL AS VARCHAR)"
        quoted = ", ".join(f'"{n}"' for n in names)
        table = con.sql(
            f"SELECT time_ns, service, instance, {op} AS operation, {quoted} "
            f"FROM ({keys}) k {joins} ORDER BY time_ns, service, instance"
        ).to_arrow_table()
    finally:
        con.close()
    X = np.column_stack(
        [table.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in names]
    ) if names else np.zeros((table.num_rows, 0))  # fmt: skip
    return InstanceWindows(
        table.select(list(KEY_COLUMNS)),
        X,
        names,
        table.column("operation").to_numpy(zero_copy_only=False).astype(object),
    )


# -- normalisation ----------------------------------------------------------------------------


GRID = 201  # quantiles kept per (service, feature)
Z_CLIP = 40.0
_RATES = ("t.requests_s", "t.excess_ms_s", "t.slow_share", "t.error_share")
# span features where only more is a symptom: requests served faster than normal, or with
# fewer errors, are no anomaly (fewer requests may be: the request rate keeps both sides)
UPPER_ONLY = tuple(f for f in SPAN_FEATURES if f != "t.requests_s")


TAIL_MIN = 5  # values the tail scales are measured on, at least, however few the windows


def _tail_values(n: np.ndarray) -> np.ndarray:
    """How many of n values measure a tail: the outer 5 %, at least TAIL_MIN (if there)."""
    n = np.asarray(n, dtype=np.float64)
    return np.maximum(np.maximum(np.floor(0.05 * n), np.minimum(TAIL_MIN, n - 1)), 1.0)


def _beyond(excess: np.ndarray, k: np.ndarray) -> np.ndarray:
    """-log of the tail probability past the normal range's edge, `excess` in tail scales.

    The scale is a mean of k values, itself uncertain: the tail is the exponential's
    posterior predictive (a Lomax tail, k log(1 + excess / k)), which falls as the
    exponential near the edge but only polynomially far past it. A quantised metric whose
    few outer values sit on one bucket edge then reads ten times its normal as rare, not as
    certainty; with many tail values it is the exponential. Root cause weighs surprises
    with it (they are compared as probabilities across instances and sources); detection
    keeps the exponential, its threshold being learnt on held-out windows anyway, and a
    leak past a short training's range must still stand out."""
    return k * np.log1p(excess / k)


def _grid(x: np.ndarray) -> tuple[np.ndarray, float, float, float, int]:
    """Quantile grid of the finite values, the scales of the upper and lower tails (mean
    excess of the outer 5 %, at least TAIL_MIN values, over their start; floored by 1 % of
    the spread or level; 0 where the outer values are all equal, as in a quantised metric,
    and the tail is unknown), that floor, and the number of values."""
    x = np.sort(x[np.isfinite(x)])
    q = np.quantile(x, np.linspace(0.0, 1.0, GRID))
    k = int(_tail_values(np.array(len(x))))
    spread = float(q[-1] - q[0])
    floor = max(0.01 * spread, 0.01 * abs(float(np.median(x))), 1e-6)
    hi = float(np.mean(x[-k:] - x[-k])) if len(x) > 1 else 0.0
    lo = float(np.mean(x[k - 1] - x[:k])) if len(x) > 1 else 0.0
    hi, lo = (max(v, floor) if v > 0 else 0.0 for v in (hi, lo))
    return q, hi, lo, floor, len(x)


@dataclass
class Normalizer:
    """Per service and feature, each value as a z-score of its rank among the service's
    normal windows (probability integral transform), plus the change against the recent
    past.

    Fitted on normal windows: per (service, feature) a grid of quantiles. A value becomes
    the normal quantile of its mid-rank among the n normal values (read from the grid), so a
    value past the largest of few windows is as rare as 1 in 2(n + 1), not 1 in 2 * GRID;
    z = Phi^-1(F(x)); beyond the normal
    range the tail probability keeps falling exponentially (the scale being the mean excess
    of the outer 5 %, or of all services where the service's values never reached past
    their edge; `predictive` accounts for that scale being an estimate), so CPU
    at eighty times its normal is a larger z than at twice. So
    every feature of every service is about standard normal in normal operation, and the
    instances of one service are compared on one scale. Services not seen in training use
    the grid pooled over all services; a missing value is the service's normal (z 0),
    except rates, which are zero. z is clipped to +-40; for the span features of UPPER_ONLY
    (latency, self time, errors) a value below normal is normal (z 0).
    """

    recent: int = 10
    names: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    grid: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, GRID)))
    upper: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    lower: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    count: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def fit(self, windows: InstanceWindows) -> Normalizer:
        """Learn the quantile grids per service from normal windows."""
        self.names = list(windows.names)
        svc = windows.column("service").astype(str)
        self.services = sorted(set(svc.tolist()))
        d, m = len(self.names), len(self.services)
        grid = np.zeros((m + 1, d, GRID))
        upper = np.ones((m + 1, d))
        lower = np.ones((m + 1, d))
        count = np.full((m + 1, d), float(GRID))
        X = self._fill_rates(windows.X)
        for j in range(d):  # pooled first: the fallback
            col = X[:, j]
            if np.isfinite(col).any():
                grid[m, j], upper[m, j], lower[m, j], floor, count[m, j] = _grid(col)
                upper[m, j], lower[m, j] = upper[m, j] or floor, lower[m, j] or floor
        for i, s in enumerate(self.services):  # services x features: a few thousand
            rows = X[svc == s]
            for j in range(d):
                if np.isfinite(rows[:, j]).sum() >= 10:
                    grid[i, j], upper[i, j], lower[i, j], floor, count[i, j] = _grid(rows[:, j])
                    # a tail not seen (no spread at the edge): the tail of all services
                    upper[i, j] = upper[i, j] or max(upper[m, j], floor)
                    lower[i, j] = lower[i, j] or max(lower[m, j], floor)
                else:
                    grid[i, j], upper[i, j], lower[i, j] = grid[m, j], upper[m, j], lower[m, j]
                    count[i, j] = count[m, j]
        self.grid, self.upper, self.lower, self.count = grid, upper, lower, count
        return self

    def relevel(
        self, windows: InstanceWindows, outer: float = 0.05, share: float = 0.25
    ) -> dict[str, int]:
        """Move each service's normal to the level of a new deployment's normal windows.

        Per (service, feature) whose median in `windows` lies outside the central
        1 - 2 * outer of the learnt range, the normal becomes a mixture: the learnt
        quantiles with the new values as a `share` of it, so both the old and the new level
        are normal (a short period shows a level, not how it varies, and forgetting the old
        one would flag its return). A level inside that range changes nothing, so a few
        windows of a new deployment move only what they clearly show moved. Per service,
        how many features moved.
        """
        svc = windows.column("service").astype(str)
        index = {s: i for i, s in enumerate(self.services)}
        cols = [windows.names.index(n) if n in windows.names else -1 for n in self.names]
        lo, hi = int(outer * (GRID - 1)), int((1 - outer) * (GRID - 1))
        moved: dict[str, int] = {}
        X = self._fill_rates(windows.X)
        for s in sorted(set(svc.tolist()) & set(index)):
            rows, i = X[svc == s], index[s]
            for j, c in enumerate(cols):
                vals = rows[:, c] if c >= 0 else np.zeros(0)
                vals = vals[np.isfinite(vals)]
                if not len(vals):
                    continue
                level, g = float(np.median(vals)), self.grid[i, j]
                if g[lo] <= level <= g[hi]:
                    continue
                reps = int(np.ceil(GRID * share / (1 - share) / len(vals)))
                mixed = np.concatenate([g, np.repeat(vals, reps)])
                self.grid[i, j] = np.quantile(mixed, np.linspace(0.0, 1.0, GRID))
                moved[s] = moved.get(s, 0) + 1
        return moved

    def _fill_rates(self, X: np.ndarray) -> np.ndarray:
        X = X.copy()
        for j, n in enumerate(self.names):
            if n in _RATES:
                X[~np.isfinite(X[:, j]), j] = 0.0
        return X

    def feature_names(self) -> list[str]:
        """Names of the transformed features: z.<name> then, with recent > 0, d.<name>."""
        z = [f"z.{n}" for n in self.names]
        return z + ([f"d.{n}" for n in self.names] if self.recent > 0 else [])

    def zscores(self, windows: InstanceWindows, predictive: bool = False) -> np.ndarray:
        """z-scores against the service's normal, missing values at the normal (0); with
        `predictive`, past the normal range from the tails' predictive (`_beyond`)."""
        from scipy.special import ndtri_exp

        cols = [windows.names.index(n) if n in windows.names else -1 for n in self.names]
        X = np.full((windows.n, len(self.names)), np.nan)
        for j, c in enumerate(cols):
            if c >= 0:
                X[:, j] = windows.X[:, c]
        X = self._fill_rates(X)
        index = {s: i for i, s in enumerate(self.services)}
        row = np.array(
            [index.get(s, len(self.services)) for s in windows.column("service").astype(str)],
            dtype=np.int64,
        )
        z = np.zeros_like(X)
        for j in range(len(self.names)):  # one pass per feature, vectorised over windows
            g = self.grid[row, j]  # (windows, GRID)
            n = self.count[row, j]
            x = X[:, j]
            ok = np.isfinite(x)
            below = (g < x[:, None]).sum(axis=1)
            equal = (g == x[:, None]).sum(axis=1)
            share = (below + 0.5 * equal) / GRID  # the value's mid-rank share in the grid
            # tail probabilities among n normal values, each side at least 0.5 / (n + 1)
            p_up = (n * (1.0 - share) + 0.5) / (n + 1.0)
            p_dn = (n * share + 0.5) / (n + 1.0)
            log_up = np.log(np.minimum(p_up, 0.5))
            log_dn = np.log(np.minimum(p_dn, 0.5))
            over = np.maximum(x - g[:, -1], 0.0) / self.upper[row, j]
            under = np.maximum(g[:, 0] - x, 0.0) / self.lower[row, j]
            if predictive:
                k = _tail_values(n)
                over, under = _beyond(over, k), _beyond(under, k)
            log_up = np.where(x > g[:, -1], log_up - over, log_up)
            log_dn = np.where(x < g[:, 0], log_dn - under, log_dn)
            zj = np.where(p_up < p_dn, -ndtri_exp(log_up), ndtri_exp(log_dn))
            z[:, j] = np.where(ok, zj, 0.0)
        z[~np.isfinite(z)] = 0.0
        for j, name in enumerate(self.names):
            if name in UPPER_ONLY:
                z[:, j] = np.maximum(z[:, j], 0.0)
        return np.clip(z, -Z_CLIP, Z_CLIP)

    def transform(self, windows: InstanceWindows, predictive: bool = False) -> np.ndarray:
        """The feature matrix the detectors see: z, and the change against the recent past
        (towards the abnormal only)."""
        z = self.zscores(windows, predictive)
        if self.recent <= 0 or windows.n == 0:
            return z
        d = z - recent_median(z, windows, self.recent)
        # a change counts only as far as it leads away from normal: a value going back to
        # normal after an incident (errors stopping) is no anomaly of its own
        d = np.where(d * z > 0, np.sign(d) * np.minimum(np.abs(d), np.abs(z)), 0.0)
        return np.hstack([z, d])

    def normal(self, service: str, name: str) -> float | None:
        """The median of a raw feature among the service's normal windows."""
        if name not in self.names:
            return None
        i = self.services.index(service) if service in self.services else len(self.services)
        return float(self.grid[i, self.names.index(name), GRID // 2])

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "recent": self.recent,
            "names": self.names,
            "services": self.services,
            "grid": self.grid.tolist(),
            "upper": self.upper.tolist(),
            "lower": self.lower.tolist(),
            "count": self.count.tolist(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Normalizer:
        """The normalizer written by `to_json`."""
        m, d = len(doc["services"]) + 1, len(doc["names"])
        return cls(
            recent=int(doc["recent"]),
            names=list(doc["names"]),
            services=list(doc["services"]),
            grid=np.asarray(doc["grid"], dtype=np.float64).reshape(m, d, GRID),
            upper=np.asarray(doc["upper"], dtype=np.float64).reshape(m, d),
            lower=np.asarray(doc["lower"], dtype=np.float64).reshape(m, d),
            count=np.asarray(doc.get("count", np.full((m, d), GRID)), dtype=np.float64).reshape(
                m, d
            ),
        )


def recent_median(z: np.ndarray, windows: InstanceWindows, k: int) -> np.ndarray:
    """For each window, the median z of the same instance's previous k windows (0 if none)."""
    out = np.zeros_like(z)
    inst = windows.column("instance").astype(str)
    t = windows.column("time_ns")
    order = np.lexsort((t, inst))
    inst_sorted = inst[order]
    bounds = np.flatnonzero(np.r_[True, inst_sorted[1:] != inst_sorted[:-1], True])
    for a, b in itertools.pairwise(bounds):  # one pass per instance
        rows = order[a:b]
        block = z[rows]
        n = len(rows)
        if n < 2:
            continue
        padded = np.vstack([np.full((k, z.shape[1]), np.nan), block])
        view = np.lib.stride_tricks.sliding_window_view(padded[:-1], k, axis=0)[:n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: an instance's first window
            med = np.nanmedian(view, axis=2)
        out[rows] = np.nan_to_num(med, nan=0.0)
    return out


def dumps(doc: dict[str, Any]) -> str:
    """JSON text of a normalizer or profile document."""
    return json.dumps(doc)
