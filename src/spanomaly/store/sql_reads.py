"""The reads both stores answer with DuckDB SQL over tables (or views) named like the
schema's: spans, traces, metrics, whole tables, services, counts, orphans, free queries."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spanomaly.errors import StoreError
from spanomaly.schema import COLUMNS
from spanomaly.store.base import Orphans, Stats, TimeRange

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa


class SqlReads:
    """Read side of the Store port over a DuckDB connection `_con` whose tables or views
    carry the store's table names; a subclass refreshes its views in `_arrow`/`_rows`."""

    _con: duckdb.DuckDBPyConnection

    def _arrow(self, sql: str, params: list[object] | None = None) -> pa.Table:
        return self._con.sql(sql, params=params or None).to_arrow_table()

    def _rows(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        """A query's rows as tuples (no Arrow: what a CSV import reads back never loads it)."""
        return self._con.execute(sql, params).fetchall()

    @staticmethod
    def _window(column: str, window: TimeRange | None, params: list[object]) -> str:
        where = []
        window = window or TimeRange()
        if window.start_ns is not None:
            where.append(f"{column} >= ?")
            params.append(window.start_ns)
        if window.end_ns is not None:
            where.append(f"{column} < ?")
            params.append(window.end_ns)
        return " AND ".join(where) or "TRUE"

    def spans(self, window: TimeRange | None = None, services: list[str] | None = None) -> pa.Table:
        """Spans that start in the window, optionally of some services only."""
        params: list[object] = []
        where = self._window("start_ns", window, params)
        if services:
            where += " AND service IN (SELECT unnest(?))"
            params.append(services)
        return self._arrow(f"SELECT * FROM spans WHERE {where} ORDER BY start_ns", params)

    def traces(self, trace_ids: list[str]) -> pa.Table:
        """All spans of the given traces, ordered by trace and start time."""
        return self._arrow(
            "SELECT * FROM spans WHERE trace_id IN (SELECT unnest(?)) ORDER BY trace_id, start_ns",
            [trace_ids],
        )

    def metrics(self, window: TimeRange | None = None, names: list[str] | None = None) -> pa.Table:
        """Metric points in the window, optionally of some metric names only."""
        params: list[object] = []
        where = self._window("time_ns", window, params)
        if names:
            where += " AND name IN (SELECT unnest(?))"
            params.append(names)
        return self._arrow(f"SELECT * FROM metrics WHERE {where} ORDER BY time_ns", params)

    def table(self, name: str) -> pa.Table:
        """A whole table by name (faults, fault_traces, findings, ...)."""
        if name not in COLUMNS:
            raise StoreError(f"no table {name!r}; tables: {', '.join(COLUMNS)}")
        return self._arrow(f"SELECT * FROM {name}")

    def services(self) -> list[str]:
        """Names of the services that have spans, sorted."""
        return [
            r[0]
            for r in self._con.execute("SELECT DISTINCT service FROM spans ORDER BY 1").fetchall()
        ]

    def stats(self) -> Stats:
        """Counts over the whole store."""
        con = self._con
        spans, traces, lo, hi = con.execute(
            "SELECT count(*), count(DISTINCT trace_id), min(start_ns), "
            "max(start_ns + duration_ns) FROM spans"
        ).fetchall()[0]
        # services and instances of spans and of metrics (a store may hold metrics only)
        services, instances = con.execute(
            "SELECT list(DISTINCT service ORDER BY service) FILTER (WHERE service IS NOT NULL), "
            "count(DISTINCT instance) FROM (SELECT DISTINCT service, instance FROM spans "
            "UNION SELECT DISTINCT service, instance FROM metrics WHERE instance IS NOT NULL)"
        ).fetchall()[0]
        mlo, mhi, metrics = con.execute(
            "SELECT min(time_ns), max(time_ns), count(*) FROM metrics"
        ).fetchall()[0]
        logs = con.execute("SELECT count(*) FROM logs").fetchall()[0][0]
        faults = con.execute("SELECT count(*) FROM faults").fetchall()[0][0]
        syscalls = con.execute("SELECT count(*) FROM syscalls").fetchall()[0][0]
        lows = [v for v in (lo, mlo) if v is not None]
        highs = [v for v in (hi, mhi) if v is not None]
        return Stats(
            spans=spans,
            traces=traces,
            services=list(services or []),
            instances=instances,
            metrics=metrics,
            logs=logs,
            faults=faults,
            syscalls=syscalls,
            start_ns=min(lows) if lows else None,
            end_ns=max(highs) if highs else None,
        )

    def orphans(self, trace_ids: pa.Array | None = None, sample: int = 5) -> Orphans:
        """Spans whose parent span is not stored (optionally among some traces only): how
        many, and the first `sample` of them.

        With trace_ids, only the spans of those traces are read on either side (a parent
        shares its child's trace), so the check costs the size of an import, not of the
        store. Parent keys are matched by a 64-bit hash of (trace_id, span_id): the
        anti-join on one integer is 2-4x cheaper than on the two id strings. Every span
        reported is an orphan; one could be missed only if its parent's key collided with a
        stored span's key (odds about orphans x spans / 2**64).
        """
        spans = "SELECT trace_id, span_id, parent_id, service FROM spans"
        # the whole store is read twice rather than held in memory (DuckDB materialises a
        # CTE read twice; 1.04 M spans: about a third of the check's time); a scoped check
        # holds only its traces' spans and reads the store once
        how = "NOT MATERIALIZED"
        if trace_ids is not None:
            import pyarrow as pa

            self._con.register("_scope", pa.table({"trace_id": trace_ids}))
            spans += " WHERE trace_id IN (SELECT trace_id FROM _scope)"
            how = "MATERIALIZED"
        columns = ("trace_id", "span_id", "parent_id", "service")
        found = (
            f"WITH s AS {how} ({spans}) SELECT {', '.join(columns)} FROM s "
            "WHERE parent_id IS NOT NULL AND hash(trace_id, parent_id) NOT IN "
            "(SELECT hash(trace_id, span_id) FROM s)"
        )
        try:  # a count, then the sample where there is one (a window count costs 1.5x)
            count = int(self._rows(f"SELECT count(*) FROM ({found})")[0][0])
            rows = self._rows(f"{found} LIMIT {int(sample)}") if count and sample > 0 else []
        finally:
            if trace_ids is not None:
                self._con.unregister("_scope")
        return Orphans(count, [dict(zip(columns, r, strict=True)) for r in rows])

    def is_empty(self, table: str) -> bool:
        """Whether a table holds no rows."""
        return bool(self._rows(f"SELECT count(*) = 0 FROM (SELECT 1 FROM {table} LIMIT 1)")[0][0])

    def sql(self, query: str, params: list[object] | None = None) -> pa.Table:
        """Run a read query against the store's tables (for stages that need aggregates)."""
        return self._arrow(query, params)
