"""The scale-out store: a Hive-partitioned Parquet dataset that other engines read as it is.

Layout under the root folder (the same as `spanomaly export --parquet DIR` writes):

```
DIR/_spanomaly.json                         {"format": "spanomaly-parquet", "buckets": 16}
DIR/spans/hour=2023-01-30T14/bucket=7/part-<uuid>.parquet
DIR/metrics/hour=2023-01-30T14/part-<uuid>.parquet      (logs alike)
DIR/faults/part-<uuid>.parquet                          (fault_traces, findings alike)
```

- A trace belongs to the hour of its first span's start and to bucket
  `int(md5(trace_id)[:8], 16) % N` (N = `buckets`, default 16, fixed when the dataset is
  created): no trace spans two partitions, so a worker assembles whole traces from one
  partition. Spark computes the bucket as `conv(substr(md5(trace_id), 1, 8), 16, 10) % 16`.
- Spans of a trace that is stored already go to its stored partition (looked up among the
  partitions within `LOOKBACK_H` hours of the new spans), so a trace whose spans arrive in two
  batches still lands in one partition.
- Writes are idempotent on each table's key: duplicates are dropped on write (within the
  batch, then against the stored rows of the target partitions); reads do not deduplicate.
- Every write goes to a staging folder first and is moved into place by atomic renames when
  its transaction commits; a failing write leaves the stored files untouched. One process
  writes at a time (a lock file, like DuckDB's), or one per writer name
  (`parquet:DIR#NAME`) where the writers get disjoint traces; any number read.
- Reads and `sql` are DuckDB queries over views named like the tables.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa

from spanomaly.errors import InputError, StoreError, StoreLockedError
from spanomaly.ingest.base import Chunk
from spanomaly.schema import KEYS, TABLES
from spanomaly.store.base import Stats, WriteResult
from spanomaly.store.duckdb import DuckDBStore
from spanomaly.store.layout import (
    DEFAULT_BUCKETS,
    HOUR_NS,
    META_FILE,
    PARTITIONS,
    copy_sql,
    ddl,
    export_tables,
    hour_of,
    partitioned_sql,
    quote,
    write_meta,
)
from spanomaly.store.sql_reads import SqlReads

log = logging.getLogger(__name__)

LOOKBACK_H = 1  # hours around new spans searched for the stored partition of their trace
_HIVE = "hive_partitioning = true, hive_types = {'hour': VARCHAR, 'bucket': INTEGER}"


def _file_list(files: list[str]) -> str:
    return "[" + ", ".join(f"'{quote(f)}'" for f in files) + "]"


def _parquet_files(folder: Path) -> list[str]:
    """Parquet files under folder, sorted, leaving out hidden and underscore names."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        found += [
            os.path.join(dirpath, f)
            for f in filenames
            if f.endswith(".parquet") and not f.startswith((".", "_"))
        ]
    return sorted(found)


def open_dataset(spec: str, read_only: bool = False) -> ParquetStore:
    """The dataset of a `--store parquet:DIR[#WRITER]` value (the part after 'parquet:')."""
    root, _, writer = spec.partition("#")
    if not root:
        raise InputError("--store parquet:DIR: the folder is missing")
    return ParquetStore(root, read_only=read_only, writer=writer or None)


class ParquetStore(SqlReads):
    """Spans, metrics, logs, labels and findings as a partitioned Parquet dataset: reads are
    DuckDB queries over views of its files (`SqlReads`), writes are staged in an in-memory
    DuckDB store of its own and copied into the partitions on commit."""

    def __init__(
        self,
        root: str | Path,
        read_only: bool = False,
        buckets: int = DEFAULT_BUCKETS,
        writer: str | None = None,
    ) -> None:
        """Open (or create) the dataset at root; an existing dataset keeps its bucket count.

        writer: a name for this writer. Writers of different names may write the dataset at
        the same time, and must then be given disjoint traces (collectors behind a load
        balancer that routes by trace id); one writer per name (and one unnamed writer).
        """
        if writer is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", writer):
            raise InputError(f"parquet store writer {writer!r}: use letters, digits, _ . -")
        self.writer = writer or "default"
        self.root = Path(root)
        self.path = str(root)
        self.span_key_with_start = False
        self.read_only = read_only
        meta = self.root / META_FILE
        if meta.exists():
            try:
                doc = json.loads(meta.read_text())
                buckets = int(doc["buckets"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"{meta}: not a spanomaly Parquet dataset ({exc})") from exc
        elif read_only and not self.root.exists():
            raise StoreError(f"{self.root}: no Parquet store here (ingest or export first)")
        self.buckets = buckets
        self._lock: int | None = None
        self._stage: DuckDBStore | None = None
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            if not meta.exists():
                write_meta(self.root, buckets)
            for stale in self.root.glob(f"_staging-{self.writer}-*"):  # left by one that died
                shutil.rmtree(stale, ignore_errors=True)
            self._stage = DuckDBStore(":memory:")
        self._con = duckdb.connect()
        self._con.execute("SET preserve_insertion_order = false")
        for name in TABLES:
            self._con.execute(ddl(name, f"_empty_{name}"))
        self._shown: dict[str, list[str]] = {}
        self._depth = 0
        self._staging: Path | None = None
        self._pending: list[tuple[Path, Path]] = []  # (staged file, its place on commit)

    def _take_lock(self) -> None:
        name = "_lock" if self.writer == "default" else f"_lock-{self.writer}"
        fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreLockedError(
                f"{self.root}: the Parquet store is open for writing by another process "
                f"(writer {self.writer})"
            ) from exc
        self._lock = fd

    # -- files and views -------------------------------------------------------------------

    def files(self, table: str, partition: dict[str, object] | None = None) -> list[str]:
        """Committed Parquet files of a table, optionally of one partition only."""
        folder = self.root / table
        for col in PARTITIONS.get(table, ()):
            if partition and col in partition:
                folder = folder / f"{col}={partition[col]}"
        return _parquet_files(folder)

    def partitions(self, table: str = "spans") -> list[dict[str, object]]:
        """The committed partitions of a table, e.g. [{'hour': '2023-01-30T14', 'bucket': 7}]."""
        cols = PARTITIONS.get(table, ())
        found = set()
        for path in self.files(table):
            rel = Path(path).relative_to(self.root / table).parts[: len(cols)]
            found.add(tuple(p.split("=", 1)[1] for p in rel))
        return [
            {c: int(v) if c == "bucket" else v for c, v in zip(cols, values, strict=True)}
            for values in sorted(found)
        ]

    def _all_files(self, table: str, hours: tuple[str, str] | None = None) -> list[str]:
        """Committed and (this transaction's) staged files of a table, optionally of the
        hour partitions between hours[0] and hours[1]."""
        files = self.files(table)
        if self._staging is not None:
            depth = len(self._staging.parts)
            files += [str(f) for f, _ in self._pending if f.parts[depth] == table]
        if hours is None:
            return files
        lo, hi = hours
        out = []
        for f in files:
            part = next((p for p in Path(f).parts if p.startswith("hour=")), None)
            if part is not None and lo <= part[5:] <= hi:
                out.append(f)
        return out

    def _refresh(self) -> None:
        """Point the views at the files there are now (other processes may have added some)."""
        for name in TABLES:
            files = self._all_files(name)
            if files == self._shown.get(name):
                continue
            cols = ", ".join(f'"{c}"' for c in TABLES[name].names)
            source = (
                f"read_parquet({_file_list(files)}, hive_partitioning = false)"
                if files
                else f"_empty_{name}"
            )
            self._con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {cols} FROM {source}")
            self._shown[name] = files

    def _arrow(self, sql: str, params: list[object] | None = None) -> pa.Table:
        self._refresh()
        return super()._arrow(sql, params)

    def _rows(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        self._refresh()
        return super()._rows(sql, params)

    def services(self) -> list[str]:
        """Names of the services that have spans, sorted."""
        self._refresh()
        return super().services()

    def stats(self) -> Stats:
        """Counts over the whole dataset."""
        self._refresh()
        return super().stats()

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Writes inside stay in a staging folder until the end, then move into place."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._check_writable()
        self._staging = self.root / f"_staging-{self.writer}-{uuid.uuid4()}"
        self._depth = 1
        try:
            yield
            for staged, final in self._pending:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._pending = []
            self._staging = None
            self._depth = 0

    def _check_writable(self) -> None:
        if self._stage is None:
            raise StoreError(f"{self.root}: the Parquet store is open read-only")

    def write(self, chunk: Chunk) -> WriteResult:
        """Store a chunk (one transaction); rows whose key is stored already are skipped."""
        self._check_writable()
        assert self._stage is not None
        stage_con = self._stage._con
        with self.transaction():
            result = self._stage.write(chunk)
            try:
                written = self._flush(chunk.table, stage_con)
            finally:
                self._stage.delete(chunk.table)
        result.duplicates += result.inserted - written
        result.inserted = written
        return result

    def _flush(self, table: str, con: duckdb.DuckDBPyConnection) -> int:
        """Write the staged rows of a table that are not stored yet; how many."""
        if not con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]:
            return 0
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _keyed AS {self._keyed_sql(table, con)}")
            keys = KEYS[table]
            stored = self._target_files(table, con)
            if keys and stored:
                match = " AND ".join(f"t.{k} IS NOT DISTINCT FROM b.{k}" for k in keys)
                con.execute(
                    "DELETE FROM _keyed b WHERE EXISTS (SELECT 1 FROM read_parquet("
                    f"{_file_list(stored)}, hive_partitioning = false) t WHERE {match})"
                )
            n = con.execute("SELECT count(*) FROM _keyed").fetchall()[0][0]
            if n:
                self._copy(table, con)
            return int(n)
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0]
            raise StoreError(f"{self.root}: cannot store {table}: {first}") from exc
        finally:
            con.execute("DROP TABLE IF EXISTS _keyed")

    def _keyed_sql(self, table: str, con: duckdb.DuckDBPyConnection) -> str:
        """The staged rows with their partition columns (a trace's stored one if any)."""
        if table != "spans":
            return partitioned_sql(table, table, self.buckets)
        lo, hi = con.execute("SELECT min(start_ns), max(start_ns) FROM spans").fetchall()[0]
        stored = self._all_files("spans", (hour_of(lo - LOOKBACK_H * HOUR_NS), hour_of(hi)))
        fresh = partitioned_sql("spans", "spans", self.buckets)
        if not stored:
            return fresh
        return (
            f"SELECT n.* REPLACE (coalesce(k.hour, n.hour) AS hour, "
            f"coalesce(k.bucket, n.bucket) AS bucket) FROM ({fresh}) n LEFT JOIN ("
            "SELECT trace_id, arg_min(hour, hour || bucket) AS hour, "
            "arg_min(bucket, hour || bucket) AS bucket "
            f"FROM read_parquet({_file_list(stored)}, {_HIVE}) "
            "WHERE trace_id IN (SELECT trace_id FROM spans) GROUP BY trace_id) k "
            "ON k.trace_id = n.trace_id"
        )

    def _target_files(self, table: str, con: duckdb.DuckDBPyConnection) -> list[str]:
        """Stored files of the partitions the staged rows go to."""
        parts = PARTITIONS.get(table)
        files = self._all_files(table)
        if not parts:
            return files
        wanted = {
            "/".join(f"{c}={v}" for c, v in zip(parts, row, strict=True))
            for row in con.execute(f"SELECT DISTINCT {', '.join(parts)} FROM _keyed").fetchall()
        }
        depth = len(parts)
        return [f for f in files if "/".join(Path(f).parts[-1 - depth : -1]) in wanted]

    def _copy(self, table: str, con: duckdb.DuckDBPyConnection) -> None:
        """Write _keyed into the staging folder and note where each file goes on commit."""
        assert self._staging is not None
        target = self._staging / table
        before = set(_parquet_files(target))
        con.execute(copy_sql(table, "SELECT * FROM _keyed", target))
        for path in _parquet_files(target):
            if path not in before:
                staged = Path(path)
                self._pending.append((staged, self.root / staged.relative_to(self._staging)))

    def set_feedback(self, finding_ids: list[str], feedback: str | None) -> int:
        """Record operator feedback on findings: the findings files are rewritten as one."""
        self._check_writable()
        self._refresh()
        old = self._all_files("findings")
        n = self._con.execute(
            "SELECT count(*) FROM findings WHERE finding_id IN (SELECT unnest(?))", [finding_ids]
        ).fetchall()[0][0]
        if not n:
            return 0
        with self.transaction():
            assert self._staging is not None
            target = self._staging / "findings"
            value = "NULL" if feedback is None else f"'{quote(feedback)}'"
            select = (
                f"SELECT * REPLACE (CASE WHEN finding_id IN (SELECT id FROM _ids) THEN {value} "
                "ELSE feedback END AS feedback) FROM findings"
            )
            self._con.register("_ids", pa.table({"id": pa.array(finding_ids, pa.string())}))
            try:
                self._con.execute(copy_sql("findings", select, target))
            finally:
                self._con.unregister("_ids")
            for path in _parquet_files(target):
                self._pending.append((Path(path), self.root / "findings" / Path(path).name))
        for path in old:  # the new file holds every finding: the old ones go
            Path(path).unlink(missing_ok=True)
        return int(n)

    def export_parquet(self, out_dir: Path) -> dict[str, int]:
        """Copy the dataset to out_dir (same layout, same bucket count)."""
        self._refresh()
        return export_tables(self._con, Path(out_dir), self.buckets)

    def close(self) -> None:
        """Release the write lock and the query engine."""
        if self._stage is not None:
            self._stage.close()
            self._stage = None
        self._con.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def cursor(self) -> ParquetStore:
        """Another reader of the dataset, for use from another thread (its own views and
        connection; it does not write)."""
        return ParquetStore(self.root, read_only=True)

    def __enter__(self) -> ParquetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
