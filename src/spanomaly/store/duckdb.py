"""The default store: one DuckDB file, its tables public and queryable with SQL."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from spanomaly.errors import FormatError, StoreError, StoreLockedError
from spanomaly.ingest.base import Chunk, Reject, SqlSource
from spanomaly.schema import COLUMNS, KEYS, SPAN_IDENTITY, arrow_schema, names
from spanomaly.store.base import WriteResult
from spanomaly.store.layout import ddl, duck_type
from spanomaly.store.sql_reads import SqlReads

if TYPE_CHECKING:  # Arrow and numpy load with the first Arrow write or read, not before
    import pyarrow as pa

    from spanomaly.store.key_hashes import FreshKeys

log = logging.getLogger(__name__)

MAX_REJECT_MESSAGES = 50
# Time columns that are part of a table's key: a stored twin of a row lies in its batch's
# time range.
_KEY_TIMES = {"metrics": "time_ns"}
# A key column that is distinct within most batches: when it is, the batch holds no
# duplicate keys and needs no DISTINCT ON (hashing one column costs far less than grouping
# every row; 1 M OTLP spans: about 0.5 s less)
_USUALLY_UNIQUE = {"spans": "span_id"}
# Tables whose key is text only: a transaction that starts writing one while it is empty
# remembers a hash of each key it writes instead of probing the stored keys (`key_hashes.FreshKeys`)
_TEXT_KEYED = {"spans"}
# Row groups an Arrow insert buffers before it compresses and writes them out. DuckDB's
# default (5) writes 5 row groups at once after about 600,000 rows and leaves the rest to
# the commit (1 M OTLP spans: a 1 s stall in one write and a 0.55 s commit); one at a time
# spreads that work over the writes, which overlap with decoding, for the same CPU.
_WRITE_BUFFER_ROW_GROUPS = 1
# Spans live in two tables behind the view `spans`, which readers and users query: `spans_all`
# holds every column, `spans_core` the columns a plain CSV of spans fills, and a write that
# fills no other column goes there. DuckDB appends a column of NULLs at about the cost of a
# column of values: the ten columns such a CSV leaves empty cost 0.15 s per million spans,
# a tenth of the whole import (bench/RESULTS.md).
SPAN_TABLES = ("spans_all", "spans_core")
CORE_SPAN_COLUMNS = (*SPAN_IDENTITY, "start_ns", "duration_ns", "status")


def _spans_view() -> str:
    """CREATE VIEW of `spans`: the rows of both span tables, the columns of SPANS."""
    fields = COLUMNS["spans"]
    core = ", ".join(
        f'"{f.name}"'
        if f.name in CORE_SPAN_COLUMNS
        else f'CAST(NULL AS {duck_type(f.type)}) AS "{f.name}"'
        for f in fields
    )
    every = ", ".join(f'"{f.name}"' for f in fields)
    return (
        f"CREATE VIEW IF NOT EXISTS spans AS SELECT {every} FROM spans_all "
        f"UNION ALL SELECT {core} FROM spans_core"
    )


def _create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the store's tables where missing; a store whose `spans` is a table (written
    before the two span tables) has it renamed to `spans_all`."""
    kinds = dict(
        con.execute(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = 'main' AND table_catalog = current_database()"
        ).fetchall()
    )
    if kinds.get("spans") == "BASE TABLE":
        con.execute("ALTER TABLE spans RENAME TO spans_all")
    for name in COLUMNS:
        if name != "spans":
            con.execute(ddl(name))
    con.execute(ddl("spans", "spans_all"))
    con.execute(ddl("spans", "spans_core", CORE_SPAN_COLUMNS))
    con.execute(_spans_view())


def _open(
    path: str, read_only: bool, config: dict[str, str | int | bool] | None = None
) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(path, read_only=read_only, config=config or {})
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            pid = re.search(r"PID (\d+)", text)
            who = f" (PID {pid.group(1)})" if pid else ""
            raise StoreLockedError(
                f"{path}: the store is open for writing by another process{who}; "
                "stop it, or talk to it through its HTTP API"
            ) from exc
        raise StoreError(f"{path}: cannot open the store: {text.splitlines()[0]}") from exc
    except duckdb.Error as exc:
        raise StoreError(f"{path}: cannot open the store: {str(exc).splitlines()[0]}") from exc


def _physical(table: str, columns: list[str] | None) -> str:
    """The table a write of these columns goes to (see SPAN_TABLES)."""
    if table != "spans":
        return table
    return "spans_core" if columns and set(columns) <= set(CORE_SPAN_COLUMNS) else "spans_all"


def _unique(table: str, data: pa.Table) -> bool:
    """Whether the batch surely holds no key twice: its usually unique key column is
    distinct and never null."""
    column = _USUALLY_UNIQUE.get(table)
    if column is None or not data.num_rows:
        return False
    import pyarrow.compute as pc  # Arrow writes only: a CSV import never loads it

    return bool(pc.count_distinct(data[column]).as_py() == data.num_rows)


def _key_match(table: str, key: str) -> str:
    """SQL matching a stored row's key column to the batch's.

    Span ids are never null in a stored row (every span decoder and SPAN_REJECT_SQL refuse
    a null id), so spans match by plain equality, which DuckDB joins about twice as fast;
    other keys may hold nulls and match with IS NOT DISTINCT FROM.
    """
    if table == "spans":
        return f"t.{key} = b.{key}"
    return f"t.{key} IS NOT DISTINCT FROM b.{key}"


class DuckDBStore(SqlReads):
    """Spans, metrics, logs, labels and findings in a DuckDB file (or in memory)."""

    def __init__(
        self,
        path: str | Path = ":memory:",
        read_only: bool = False,
        config: dict[str, str | int | bool] | None = None,
        span_key_with_start: bool = False,
    ) -> None:
        """Open (or create) the store; config holds DuckDB settings (threads, ...).

        span_key_with_start: a span is a duplicate of a stored one only when its start time
        matches too (a re-sent span's does). The duplicate check then reads only the row
        groups of the batch's time range instead of every stored key, so a long-running
        collector's writes do not slow down as the store grows.
        """
        self.path = str(path)
        self.span_key_with_start = span_key_with_start
        if self.path != ":memory:" and not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if read_only and self.path != ":memory:" and not Path(self.path).exists():
            raise StoreError(f"{self.path}: no store here (ingest something first)")
        self._con = _open(self.path, read_only, config)
        self._depth = 0  # nesting of transaction()
        self._clean = False  # inside a transaction that has written nothing yet
        self._fresh: dict[str, FreshKeys | None] = {}  # per table, in this transaction
        self._owner = True  # False for a cursor(): closing it leaves the database open
        self._con.execute("SET preserve_insertion_order = false")
        if not read_only:
            _create_tables(self._con)

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several writes into one transaction: all of them stay, or none."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._con.execute("BEGIN TRANSACTION")
        self._depth = 1
        self._clean = True
        self._fresh = {}
        try:
            yield
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0
            self._clean = False
            self._fresh = {}

    def write(self, chunk: Chunk) -> WriteResult:
        """Store a chunk in one transaction; rows whose key is stored already are skipped."""
        result = WriteResult(rejected=len(chunk.rejects), rejects=list(chunk.rejects))
        if chunk.data is None:
            return result
        try:
            with self.transaction():
                if isinstance(chunk.data, SqlSource):
                    self._write_sql(chunk.table, chunk.data, result)
                else:
                    self._write_arrow(chunk.table, chunk.data, result)
                self._clean = False
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0]
            if isinstance(chunk.data, SqlSource):  # DuckDB read the input itself: input's fault
                raise FormatError(first) from exc
            raise StoreError(f"{self.path}: cannot store {chunk.table}: {first}") from exc
        return result

    def _insert_sql(
        self,
        table: str,
        source: str,
        within: str = "",
        columns: list[str] | None = None,
        distinct: bool = True,
        probe: bool = True,
    ) -> str:
        """INSERT of the source's rows whose key is not stored yet (one per key where
        `distinct`: the source may repeat a key); columns left out stay NULL. probe=False:
        the caller knows no key of the source is stored."""
        cols = ", ".join(f'"{c}"' for c in columns or names(table))
        into = f"{_physical(table, columns)} ({cols})"
        keys = KEYS[table]
        if keys and distinct:
            source = f"(SELECT DISTINCT ON ({', '.join(keys)}) {cols} FROM {source})"
        if not keys or not probe or self.is_empty(table):
            return f"INSERT INTO {into} SELECT {cols} FROM {source}"
        match = " AND ".join(_key_match(table, k) for k in keys) + within
        return (
            f"INSERT INTO {into} SELECT {cols} FROM {source} b "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {match})"
        )

    @staticmethod
    def _later_twins(table: str, staged: str) -> str:
        """SQL: rowids of the staged good rows whose key an earlier good row holds.

        Only a hash of the key goes through a hash table, and only the rows of a repeated hash
        through the window, which compares the keys themselves (equal keys, nulls included,
        hash alike). DISTINCT ON would carry every column of every row through its table.
        """
        keys = ", ".join(KEYS[table])
        return (
            f"SELECT rowid FROM {staged} WHERE _reason IS NULL AND hash({keys}) IN "
            f"(SELECT hash({keys}) AS h FROM {staged} WHERE _reason IS NULL GROUP BY h "
            f"HAVING count(*) > 1) QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY rowid) > 1"
        )

    def _twin_range(self, table: str, data: pa.Table) -> str:
        """SQL that narrows the check for stored twins to the batch's time range, where the
        key holds the time (metrics; spans with span_key_with_start): zone maps then skip
        the older row groups."""
        column = _KEY_TIMES.get(table)
        if table == "spans" and self.span_key_with_start:
            column = "start_ns"
        if column is None or not data.num_rows:
            return ""
        import pyarrow.compute as pc

        bounds = pc.min_max(data[column])
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if lo is None:
            return ""
        extra = f" AND t.{column} BETWEEN {int(lo)} AND {int(hi)}"
        if column not in KEYS[table]:
            extra += f" AND t.{column} = b.{column}"
        return extra

    def _fresh_keys(self, table: str) -> FreshKeys | None:
        """The key hashes this transaction wrote into table, if it was empty when the
        transaction first wrote to it and every write since was hashed; else None."""
        if table not in self._fresh:
            fresh = table in _TEXT_KEYED and self._depth and self.is_empty(table)
            from spanomaly.store.key_hashes import FreshKeys

            self._fresh[table] = FreshKeys() if fresh else None
        return self._fresh[table]

    def _write_arrow(self, table: str, data: pa.Table, result: WriteResult) -> None:
        data = data.select(names(table)).cast(arrow_schema(table))
        total = data.num_rows
        fresh = self._fresh_keys(table)
        from spanomaly.store.key_hashes import key_hashes

        hashes = key_hashes(data, KEYS[table]) if fresh is not None else None
        if fresh is None or hashes is None:
            self._fresh[table] = None  # keys this write cannot hash: probe from now on
            inserted = self._insert_arrow(table, data, not _unique(table, data), probe=True)
        else:
            seen, distinct = fresh.check_and_add(hashes)
            inserted = 0
            if seen.any():  # a twin may be stored: those rows are probed
                inserted += self._insert_arrow(table, data.filter(seen), not distinct, True)
                data = data.filter(~seen)
            inserted += self._insert_arrow(table, data, not distinct, probe=False)
        result.inserted += inserted
        result.duplicates += total - inserted

    def _insert_arrow(self, table: str, data: pa.Table, distinct: bool, probe: bool) -> int:
        """INSERT the batch's rows (one per key where distinct); probe: skip the rows whose
        key is stored already. Returns the rows inserted."""
        if not data.num_rows:
            return 0
        self._con.register("_batch", data)
        try:
            if probe:
                within = self._twin_range(table, data)
                sql = self._insert_sql(table, "_batch", within=within, distinct=distinct)
            else:
                sql = self._insert_sql(table, "_batch", distinct=distinct, probe=False)
            with self._bulk_insert():
                return int(self._con.execute(sql).fetchall()[0][0])
        finally:
            self._con.unregister("_batch")

    @contextlib.contextmanager
    def _bulk_insert(self) -> Iterator[None]:
        """Run the statements inside on one DuckDB thread, writing out each row group as it
        fills (both settings are the database's; restored after).

        An insert from Arrow on two threads writes each thread's rows into row groups of
        their own, which the checkpoint then rewrites: 1 M OTLP spans took 3.6 s to insert
        plus 2-3.6 s to checkpoint into 135 MB, against 1.8 s plus 0.65 s to commit into
        70 MB on one thread (bench/RESULTS.md). The other core stays with the decoder. See
        _WRITE_BUFFER_ROW_GROUPS for the row groups.
        """
        threads, groups = self._con.execute(
            "SELECT current_setting('threads'), current_setting('write_buffer_row_group_count')"
        ).fetchall()[0]
        changes = {}
        if int(threads) > 1:
            changes["threads"] = (1, int(threads))
        if int(groups) != _WRITE_BUFFER_ROW_GROUPS:
            changes["write_buffer_row_group_count"] = (_WRITE_BUFFER_ROW_GROUPS, int(groups))
        for name, (new, _) in changes.items():
            self._con.execute(f"SET {name} = {new}")
        try:
            yield
        finally:
            for name, (_, old) in changes.items():
                self._con.execute(f"SET {name} = {old}")

    def _write_fast(self, table: str, data: SqlSource, result: WriteResult) -> None:
        """The optimistic write: one INSERT from the source's `fast` SELECT, which raises on
        any row the checked path would refuse or rewrite (the caller then falls back).

        The rows are materialised once in memory (no table written and read back); only the
        rows whose key hash repeats go through DISTINCT ON (over every row it cost as much as
        the whole insert); the source's `derived` columns are computed after that, so the rows
        held stay narrow (1.04 M TrainTicket spans: 50 MB less). A temporary sequence counts
        the rows read, so duplicates are rows read minus rows inserted (nothing is refused).
        """
        con = self._con
        keys = ", ".join(KEYS[table])
        con.execute("CREATE OR REPLACE TEMP SEQUENCE _rows_read START WITH 0 MINVALUE 0")
        con.execute("SELECT nextval('_rows_read')")
        described = con.execute(f"SELECT * FROM ({data.fast}) LIMIT 0").description
        present = {d[0] for d in described} | set(data.derived)
        columns = [c for c in names(table) if c in present]
        cols = ", ".join(
            f'{data.derived[c]} AS "{c}"' if c in data.derived else f'"{c}"' for c in columns
        )
        source = (
            f"(WITH _src AS MATERIALIZED (SELECT *, hash({keys}) AS _h FROM ({data.fast}) "
            "WHERE nextval('_rows_read') IS NOT NULL), "
            "_rep AS (SELECT _h FROM _src GROUP BY _h HAVING count(*) > 1) "
            f"SELECT {cols} FROM _src WHERE _h NOT IN (SELECT _h FROM _rep) UNION ALL "
            f"SELECT DISTINCT ON ({keys}) {cols} FROM _src WHERE _h IN (SELECT _h FROM _rep))"
        )
        inserted = con.execute(
            self._insert_sql(table, source, columns=columns, distinct=False)
        ).fetchone()[0]
        total = con.execute("SELECT currval('_rows_read')").fetchone()[0]
        con.execute("DROP SEQUENCE _rows_read")
        result.inserted += inserted
        result.duplicates += total - inserted

    def _write_sql(self, table: str, data: SqlSource, result: WriteResult) -> None:
        """Try the source's fast SELECT where it has one and nothing was written in this
        transaction yet (its failure rolls the transaction back); else, or when it fails, the
        checked path below."""
        if data.fast and self._clean and KEYS[table]:
            try:
                self._write_fast(table, data, result)
                return
            except duckdb.Error as exc:
                log.debug("fast read refused (%s): reading again with per-row checks", exc)
                self._con.execute("ROLLBACK")
                self._con.execute("BEGIN TRANSACTION")
        self._write_checked(table, data, result)

    def _write_checked(self, table: str, data: SqlSource, result: WriteResult) -> None:
        """Read the input once into a temporary table with each row's reject reason, then
        insert its good rows without duplicates.

        The read counts the rows, so duplicates are rows read minus refused minus inserted; bad
        rows never reach the table, so a good row never loses to a bad twin and nothing has to
        be taken back (deleting from rows appended in the same transaction is costly in DuckDB).
        """
        con = self._con
        staged = "_read"
        total = con.execute(  # the file name only where a message needs it
            f"CREATE OR REPLACE TEMP TABLE {staged} AS SELECT * REPLACE "
            "(CASE WHEN _reason IS NOT NULL THEN _source END AS _source) "
            f"FROM (SELECT *, {data.reject} AS _reason FROM ({data.sql}))"
        ).fetchone()[0]
        if data.reader_rejects:
            self._collect_reader_rejects(result)
        bad = 0
        if data.reject != "NULL":
            bad = con.execute(
                f"SELECT count(*) FROM {staged} WHERE _reason IS NOT NULL"
            ).fetchone()[0]
            if bad:
                self._name_rejects(table, staged, result)
        described = con.execute(f"SELECT * FROM {staged} LIMIT 0").description
        columns = [c for c in names(table) if c in {d[0] for d in described}]
        good = f"(SELECT * FROM {staged} WHERE _reason IS NULL"
        if KEYS[table]:
            good += f" AND rowid NOT IN ({self._later_twins(table, staged)})"
        sql = self._insert_sql(table, good + ")", columns=columns, distinct=False)
        inserted = con.execute(sql).fetchone()[0]
        self._fresh[table] = None  # keys written without their hashes
        con.execute(f"DROP TABLE {staged}")
        result.inserted += inserted
        result.rejected += bad
        result.duplicates += total - bad - inserted

    def _name_rejects(self, table: str, staged: str, result: WriteResult) -> None:
        """Messages for the first refused rows, naming their file and key."""
        keys = KEYS[table] or names(table)[:2]
        label = " || ', ' || ".join(
            f"'{k}=' || coalesce(CAST({k} AS VARCHAR), 'null')" for k in keys
        )
        rows = self._con.execute(
            f"SELECT _source, {label}, _reason FROM {staged} WHERE _reason IS NOT NULL "
            f"LIMIT {MAX_REJECT_MESSAGES}"
        ).fetchall()
        result.rejects.extend(Reject(str(s), r, why) for s, r, why in rows)

    def _collect_reader_rejects(self, result: WriteResult) -> int:
        """Lines DuckDB's CSV reader refused (wrong column count, bad UTF-8, bad numbers)."""
        try:
            rows = self._con.execute(
                "SELECT s.file_path, e.line, e.column_name, e.error_type, e.error_message "
                "FROM reject_errors e JOIN reject_scans s USING (scan_id, file_id) ORDER BY 1, 2"
            ).fetchall()
        except duckdb.CatalogException:
            return 0
        lines = {(path, line) for path, line, *_ in rows}
        result.rejected += len(lines)
        seen: set[tuple[str, int]] = set()
        for path, line, column, _etype, message in rows:
            if (path, line) in seen:
                continue
            seen.add((path, line))
            if len(result.rejects) < MAX_REJECT_MESSAGES:
                where = f"line {line}" + (f", column {column}" if column else "")
                result.rejects.append(Reject(path, where, str(message).splitlines()[0]))
        self._con.execute("DROP TABLE IF EXISTS reject_errors")
        self._con.execute("DROP TABLE IF EXISTS reject_scans")
        return len(lines)

    # -- export ----------------------------------------------------------------------------

    def export_parquet(self, out_dir: Path) -> dict[str, int]:
        """Every table as Parquet under out_dir/<table>/, in the layout of the Parquet store:
        spans by hour of their trace's first span and trace-id bucket, metrics and logs by
        hour (`spanomaly.store.parquet`); the folder opens as `--store parquet:DIR`."""
        from spanomaly.store.layout import export_tables

        return export_tables(self._con, Path(out_dir))

    def set_feedback(self, finding_ids: list[str], feedback: str | None) -> int:
        """Record operator feedback ('normal' or None) on findings; how many were found."""
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            n = con.execute(
                "SELECT count(*) FROM findings WHERE finding_id IN (SELECT unnest(?))",
                [finding_ids],
            ).fetchone()[0]
            con.execute(
                "UPDATE findings SET feedback = ? WHERE finding_id IN (SELECT unnest(?))",
                [feedback, finding_ids],
            )
            con.execute("COMMIT")
        except duckdb.Error as exc:
            con.execute("ROLLBACK")
            first = str(exc).splitlines()[0]
            raise StoreError(f"{self.path}: cannot store feedback: {first}") from exc
        return int(n)

    def set_log_templates(
        self, templates: pa.Table, start_ns: int | None = None, end_ns: int | None = None
    ) -> int:
        """Fill `template_id` and `params` of the log lines (of a period) whose body is in
        templates (body, template_id, params: a body determines both); how many lines."""
        where, params = ["logs.body = t.body"], []
        for op, v in ((">=", start_ns), ("<", end_ns)):
            if v is not None:
                where.append(f"logs.time_ns {op} ?")
                params.append(v)
        self._con.register("_templates", templates)
        try:
            with self.transaction():
                row = self._con.execute(
                    "UPDATE logs SET template_id = t.template_id, params = t.params "
                    f"FROM _templates t WHERE {' AND '.join(where)}",
                    params,
                ).fetchone()
        finally:
            self._con.unregister("_templates")
        return int(row[0]) if row else 0

    def delete(self, table: str, where: str = "TRUE", params: list[object] | None = None) -> int:
        """Delete the rows of a table that match a SQL condition (all by default); how many.
        For spans, from both span tables (see SPAN_TABLES) in one transaction."""
        tables = SPAN_TABLES if table == "spans" else (table,)
        with self.transaction():
            return sum(
                int(self._con.execute(f"DELETE FROM {t} WHERE {where}", params).fetchone()[0])
                for t in tables
            )

    def cursor(self) -> DuckDBStore:
        """Another connection to the same database, for use from another thread.

        DuckDB connections are not shared between threads; a cursor reads what is committed
        and may write too (its transactions are its own). Closing it leaves this one open.
        """
        other = object.__new__(DuckDBStore)
        other.path = self.path
        other.span_key_with_start = self.span_key_with_start
        other._con = self._con.cursor()
        other._depth = 0
        other._clean = False
        other._fresh = {}
        other._owner = False
        other._con.execute("SET preserve_insertion_order = false")
        return other

    def close(self) -> None:
        """Checkpoint and close the file (a cursor: just its connection)."""
        if self._owner:
            with contextlib.suppress(duckdb.Error):  # read-only stores cannot checkpoint
                self._con.execute("CHECKPOINT")
        self._con.close()

    def __enter__(self) -> DuckDBStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
