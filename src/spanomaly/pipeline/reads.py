"""What the pipeline reads from the store for a period: trace events, log lines, metric
points, findings and the time range of the data."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyarrow as pa

from spanomaly.store.base import Store

if TYPE_CHECKING:
    from spanomaly.features.logs import TemplateMiner
    from spanomaly.features.traces import FeatureConfig

log = logging.getLogger(__name__)

_SPAN_FEATURE_COLUMNS = (
    "trace_id, span_id, parent_id, service, instance, operation, kind, start_ns, duration_ns, "
    "status, http_method, http_route, http_status_code, http_url, peer_service"
)


def period_conditions(
    column: str, start_ns: int | None, end_ns: int | None, end_inclusive: bool = False
) -> tuple[list[str], list[object]]:
    """SQL conditions (and their parameters) keeping `column` within [start, end)."""
    where: list[str] = []
    params: list[object] = []
    if start_ns is not None:
        where.append(f"{column} >= ?")
        params.append(start_ns)
    if end_ns is not None:
        where.append(f"{column} {'<=' if end_inclusive else '<'} ?")
        params.append(end_ns)
    return where, params


def _trace_filter(
    start_ns: int | None,
    end_ns: int | None,
    exclude: Iterable[tuple[int, int]] = (),
    exclude_flagged: bool = False,
) -> tuple[str, list[object]]:
    """SQL selecting the ids of traces whose first span starts in the period."""
    having, params = period_conditions("min(start_ns)", start_ns, end_ns)
    for lo, hi in exclude:
        having.append("NOT (min(start_ns) >= ? AND min(start_ns) < ?)")
        params.extend([lo, hi])
    sql = f"SELECT trace_id FROM spans GROUP BY trace_id HAVING {' AND '.join(having) or 'TRUE'}"
    if exclude_flagged:
        sql += (
            " EXCEPT SELECT trace_id FROM findings WHERE entity = 'trace' "
            "AND trace_id IS NOT NULL AND feedback IS DISTINCT FROM 'normal'"
        )
    return sql, params


def trace_spans_query(
    start_ns: int | None = None,
    end_ns: int | None = None,
    exclude: Iterable[tuple[int, int]] = (),
    exclude_flagged: bool = False,
) -> tuple[str, list[object]]:
    """SQL (over tables `spans` and `findings`) of the spans of the traces starting in the
    period, and its parameters: run on the store, or on one partition by a Dask worker."""
    ids_sql, params = _trace_filter(start_ns, end_ns, exclude, exclude_flagged)
    lower = "s.start_ns >= ? AND " if start_ns is not None else ""
    sql = f"SELECT {_SPAN_FEATURE_COLUMNS} FROM spans s WHERE {lower}s.trace_id IN ({ids_sql})"
    return sql, ([start_ns] if start_ns is not None else []) + params


def trace_events(
    store: Store,
    start_ns: int | None = None,
    end_ns: int | None = None,
    exclude: Iterable[tuple[int, int]] = (),
    exclude_flagged: bool = False,
    config: FeatureConfig | None = None,
    templates: TemplateMiner | None = None,
) -> pa.Table:
    """The events (`features.traces.events`) of the traces starting in the period; with
    templates, their log lines interleaved as events too (`features.logs`)."""
    from spanomaly.features import traces as trace_features

    sql, params = trace_spans_query(start_ns, end_ns, exclude, exclude_flagged)
    events = trace_features.events(store.sql(sql, params), config)
    if templates is None:
        return events
    from spanomaly.features import logs as log_features

    ids_sql, id_params = _trace_filter(start_ns, end_ns, exclude, exclude_flagged)
    lines = trace_logs(store, ids_sql, id_params)
    log_events = log_features.sequence_events(log_features.log_events(lines, templates))
    return log_features.interleave(events, log_events)


def trace_logs(store: Store, ids_sql: str, params: list[object]) -> pa.Table:
    """The log lines of the traces ids_sql selects; service and instance taken from the
    line's span where the line lacks them."""
    return store.sql(
        "SELECT l.time_ns, coalesce(l.service, s.service) AS service, "
        "coalesce(l.instance, s.instance) AS instance, l.trace_id, l.span_id, l.severity, "
        "l.body FROM logs l LEFT JOIN spans s ON s.trace_id = l.trace_id "
        f"AND s.span_id = l.span_id WHERE l.trace_id IN ({ids_sql}) "
        # one order whatever the plan: templates are mined in the order lines come
        "ORDER BY l.time_ns, l.trace_id, l.span_id, l.body",
        params,
    )


def with_logs(
    store: Store, events: pa.Table, trace_ids: list[str], templates: TemplateMiner
) -> pa.Table:
    """The events of some traces with their log lines interleaved (`features.logs`)."""
    from spanomaly.features import logs as log_features

    lines = trace_logs(store, "SELECT unnest(?::VARCHAR[])", [trace_ids])
    log_events = log_features.sequence_events(log_features.log_events(lines, templates))
    return log_features.interleave(events, log_events)


def log_bodies(
    store: Store,
    start_ns: int | None,
    end_ns: int | None,
    exclude: Iterable[tuple[int, int]] = (),
    exclude_flagged: bool = False,
) -> pa.Table:
    """The log lines (as `trace_logs`) of the traces starting in the period."""
    ids_sql, params = _trace_filter(start_ns, end_ns, exclude, exclude_flagged)
    return trace_logs(store, ids_sql, params)


def span_range(store: Store) -> tuple[int | None, int | None]:
    """The first and the last span start in the store (None, None when it holds none)."""
    row = store.sql("SELECT min(start_ns) AS lo, max(start_ns) AS hi FROM spans").to_pylist()[0]
    return row["lo"], row["hi"]


def data_range(store: Store) -> tuple[int | None, int | None]:
    """The first and the last time of spans and instance metrics together."""
    row = store.sql(
        "SELECT least((SELECT min(start_ns) FROM spans), (SELECT min(time_ns) FROM metrics "
        "WHERE instance IS NOT NULL)) AS lo, greatest((SELECT max(start_ns) FROM spans), "
        "(SELECT max(time_ns) FROM metrics WHERE instance IS NOT NULL)) AS hi"
    ).to_pylist()[0]
    return row["lo"], row["hi"]


def metric_points(store: Store, start_ns: int | None, end_ns: int | None) -> pa.Table:
    """The instance metric points (time, service, instance, name, value, kind) of a period."""
    where, params = period_conditions("time_ns", start_ns, end_ns)
    where.append("instance IS NOT NULL")
    return store.sql(
        "SELECT time_ns, service, instance, name, value, kind FROM metrics WHERE "
        + " AND ".join(where),
        params,
    )


def flagged_traces(store: Store) -> pa.Array:
    """Ids of the traces with findings not marked normal: not normal data to learn from."""
    return store.sql(
        "SELECT DISTINCT trace_id FROM findings WHERE entity = 'trace' "
        "AND trace_id IS NOT NULL AND feedback IS DISTINCT FROM 'normal'"
    ).column("trace_id")


def findings_between(store: Store, start_ns: int | None, end_ns: int | None) -> pa.Table:
    """The findings of [start, end] not marked normal, by time."""
    where, params = period_conditions("time_ns", start_ns, end_ns, end_inclusive=True)
    where.append("feedback IS DISTINCT FROM 'normal'")
    return store.sql(f"SELECT * FROM findings WHERE {' AND '.join(where)} ORDER BY time_ns", params)


def fault_labels(store: Store, start_ns: int | None, end_ns: int | None) -> pa.Table:
    """The fault labels (kind, service, instance, start_ns, end_ns) overlapping the period:
    read only to train a detector that requires labels, and by evaluate."""
    where, params = [], []
    if start_ns is not None:
        where.append("end_ns > ?")
        params.append(start_ns)
    if end_ns is not None:
        where.append("start_ns < ?")
        params.append(end_ns)
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    return store.sql(
        f"SELECT kind, service, instance, start_ns, end_ns FROM faults{cond} ORDER BY start_ns",
        params,
    )
