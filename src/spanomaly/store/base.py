"""The Store port: what every storage backend offers the stages to its right."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from spanomaly.ingest.base import Chunk, Reject

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class WriteResult:
    """What one write did: rows stored, rows already stored (duplicates), rows rejected."""

    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)


@dataclass(frozen=True)
class TimeRange:
    """A half-open time range [start_ns, end_ns); None leaves that side open."""

    start_ns: int | None = None
    end_ns: int | None = None


@dataclass
class Orphans:
    """Spans whose parent is not stored: how many, and the first few (their trace_id,
    span_id, parent_id and service)."""

    count: int
    sample: list[dict[str, object]] = field(default_factory=list)


@dataclass
class Stats:
    """Counts over the whole store, as `spanomaly stats --json` reports them."""

    spans: int
    traces: int
    services: list[str]
    instances: int
    metrics: int
    logs: int
    faults: int
    start_ns: int | None
    end_ns: int | None
    syscalls: int = 0

    def to_json(self) -> dict[str, object]:
        """The JSON document of `spanomaly stats --json` (and of the server's /api/stats)."""
        return {
            "spans": self.spans,
            "traces": self.traces,
            "services": self.services,
            "instances": self.instances,
            "metrics": self.metrics,
            "logs": self.logs,
            "faults": self.faults,
            "syscalls": self.syscalls,
            "from": _iso(self.start_ns),
            "to": _iso(self.end_ns),
        }


def _iso(ns: int | None) -> str | None:
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


class Store(Protocol):
    """Storage of spans, metrics, logs, labels and findings; writes are idempotent by key."""

    def transaction(self) -> AbstractContextManager[None]:
        """Group several writes into one transaction: all of them stay, or none."""
        ...

    def write(self, chunk: Chunk) -> WriteResult:
        """Store a chunk in one transaction; rows whose key is stored already are skipped."""
        ...

    def spans(self, window: TimeRange | None = None, services: list[str] | None = None) -> pa.Table:
        """Spans that start in the window, optionally of some services only."""
        ...

    def traces(self, trace_ids: list[str]) -> pa.Table:
        """All spans of the given traces."""
        ...

    def metrics(self, window: TimeRange | None = None, names: list[str] | None = None) -> pa.Table:
        """Metric points in the window, optionally of some metric names only."""
        ...

    def table(self, name: str) -> pa.Table:
        """A whole small table (faults, fault_traces, findings)."""
        ...

    def services(self) -> list[str]:
        """Names of the services that have spans, sorted."""
        ...

    def stats(self) -> Stats:
        """Counts over the whole store."""
        ...

    def orphans(self, trace_ids: pa.Array | None = None, sample: int = 5) -> Orphans:
        """Spans whose parent is not stored (optionally among some traces only): how many,
        and the first `sample` of them."""
        ...

    def is_empty(self, table: str) -> bool:
        """Whether a table holds no rows."""
        ...

    def export_parquet(self, out_dir: Path) -> dict[str, int]:
        """Write every table as Hive-partitioned Parquet under out_dir; rows per table."""
        ...

    def sql(self, query: str, params: list[object] | None = None) -> pa.Table:
        """Run a read query against the store's tables (for stages that need aggregates)."""
        ...

    def set_feedback(self, finding_ids: list[str], feedback: str | None) -> int:
        """Record operator feedback ('normal' or None) on findings; how many were found."""
        ...

    def cursor(self) -> Store:
        """Another handle on the same data for another thread of this process."""
        ...

    def close(self) -> None:
        """Flush and release the store."""
        ...
