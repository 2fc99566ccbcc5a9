"""What decoders hand to the store: chunks of rows for one table, and rejected records.

A decoder reads one file (or a group of files of one format) and yields `Chunk`s. A chunk
holds either an Arrow table in the table's schema (see `spanomaly.schema`) or, for formats
DuckDB reads faster itself (CSV), a `SqlSource`: a SELECT that yields every input row once,
with some of the table's columns (by name; the others stay null) plus `_source` (file name),
and a `reject` expression over those columns that says why a row is refused (or is null).
The store reads the input once, evaluating the check as it reads, and inserts only the rows
it passes. Every chunk is written in one transaction, so a bad chunk never changes what the
store holds. A source may also offer a `fast` SELECT: the same rows, without `_source`, that
raises an error on any row the checked path would refuse or rewrite (and on any malformed
line); a store may run it first, in one statement, and fall back to the checked path when it
raises (clean input, the common case, is then read only once and never staged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pyarrow as pa

TableName = Literal["spans", "metrics", "logs", "faults", "fault_traces", "calls", "syscalls"]


@dataclass(frozen=True)
class Reject:
    """One record (or one whole file) that could not be accepted, and why."""

    source: str
    record: str
    reason: str

    def message(self) -> str:
        """One line naming the file, the record and the reason."""
        return (
            f"{self.source}: {self.record}: {self.reason}"
            if self.record
            else (f"{self.source}: {self.reason}")
        )


@dataclass(frozen=True)
class SqlSource:
    """A DuckDB SELECT producing table columns plus `_source`, and its reject check."""

    sql: str
    reject: str = "NULL"  # SQL over the table's columns: why a row is refused, or NULL
    reader_rejects: bool = False  # CSV lines refused by DuckDB's reader sit in reject_errors
    fast: str | None = None  # the optimistic SELECT (see the module docstring), or None
    # columns of the fast path computed only after its rows are deduplicated: SQL over the
    # fast SELECT's columns (a service from the pod name, a constant status), so the rows
    # held for deduplication stay narrow
    derived: dict[str, str] = field(default_factory=dict)


@dataclass
class Chunk:
    """Rows for one table, with the records of the same input that were rejected."""

    table: TableName
    data: pa.Table | SqlSource | None
    rejects: list[Reject] = field(default_factory=list)
    # records read from the input for this chunk, where the decoder knows it cheaply
    records: int | None = None


@dataclass(frozen=True)
class DecodeOptions:
    """Options that change how files are decoded."""

    column_map: dict[str, str] = field(default_factory=dict)
    time_unit: str = "ns"  # unit of time columns mapped from CSV: s|ms|us|ns
    duration_unit: str = "ns"
    fault_duration_s: float = 180.0
    batch_rows: int = 131_072
    # wide metric CSVs: how a column name splits into service, instance and metric
    # (`spanomaly.ingest.wide_metrics`); None: the default rule
    series: str | None = None
