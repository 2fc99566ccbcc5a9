"""Traces as event sequences: assembly, event keys, vocabulary, datasets A and B.

A trace is the sequence of its spans (events), ordered by start time or, as an option, in
span-tree order (depth first, siblings by start time). Each event gets a *key* (the
representative of DESIGN.md) built from configurable fields:

    parent_service  service of the parent span ('' for a root)
    service         service of the span
    operation       span name; a raw URL (ids, numbers, uuids, hashes) is templated when no
                    route template exists, and a bare `HTTP GET` client span with a URL gets
                    the templated path
    callee          for a client span: the service and operation it calls (its single remote
                    child, else peer.service); '' otherwise. Client spans are often named
                    `HTTP GET` alone, so without it every call of a service looks alike
    status_class    ok | 4xx | error (status error or HTTP 5xx)
    instance, kind  available, not in the default

Dataset A is the key ids per trace (`Sequences.keys`, flat, with `offsets` marking the
traces); dataset B is each event's duration and self time on a log scale
(`log1p(x / time_scale)`). Self time is the duration minus the union of the children's
intervals; for a client span it is the network and queueing time of the call, which the
explanation attributes to the callee (`blame_service`, `blame_instance`). A client span
whose call never reached a traced server (a reset connection, a timeout) is blamed on the
service (and, where one instance answers at that address, the instance) that answered
other calls to the same address (host:port of its URL) in the same batch.

Everything is vectorised: DuckDB for the joins and the ordering, Arrow and numpy after.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.errors import InputError
from spanomaly.schema import SPAN_IDENTITY

KEY_FIELDS = (
    "parent_service",
    "service",
    "operation",
    "callee",
    "status_class",
    "instance",
    "kind",
)
DEFAULT_KEY_FIELDS = ("parent_service", "service", "operation", "callee", "status_class")
ORDERS = ("start", "tree")
KEY_SEPARATOR = " | "

PAD, UNK, START, END = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<unk>", "<start>", "<end>")
N_SPECIAL = len(SPECIAL_TOKENS)

# Columns of the events table (one row per span, ordered by trace then event order).
EVENT_COLUMNS = (
    *SPAN_IDENTITY, "parent_service", "callee", "status_class", "blame_service",
    "blame_instance", "key", "start_ns", "duration_ns", "self_ns",
)  # fmt: skip
# Columns of SPANS that `events` reads; others are ignored, missing optional ones are null.
SPAN_COLUMNS = (
    *SPAN_IDENTITY, "kind", "start_ns", "duration_ns", "status", "http_method", "http_route",
    "http_status_code", "http_url", "peer_service",
)  # fmt: skip
_REQUIRED = ("trace_id", "span_id", "service", "operation", "start_ns", "duration_ns")
_HTTP_VERBS = "GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS"


@dataclass(frozen=True)
class FeatureConfig:
    """How traces become sequences; stored in the model's config.json."""

    key_fields: tuple[str, ...] = DEFAULT_KEY_FIELDS
    order: str = "start"  # start | tree
    time_scale_us: float = 1000.0  # dataset B is log1p(x / time_scale): ~linear below it
    logs: bool = False  # log lines are events too (features.logs), templates in the model

    def __post_init__(self) -> None:
        bad = [f for f in self.key_fields if f not in KEY_FIELDS]
        if bad or not self.key_fields:
            raise InputError(
                f"key fields: {', '.join(bad) or 'none given'} not among {', '.join(KEY_FIELDS)}"
            )
        if self.order not in ORDERS:
            raise InputError(f"event order: {self.order!r} is not one of {', '.join(ORDERS)}")
        if not self.time_scale_us > 0:
            raise InputError("time scale: must be positive")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        doc = asdict(self)
        doc["key_fields"] = list(self.key_fields)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> FeatureConfig:
        """The config written by `to_json`."""
        return cls(
            key_fields=tuple(doc["key_fields"]),
            order=doc["order"],
            time_scale_us=float(doc["time_scale_us"]),
            logs=bool(doc.get("logs", False)),
        )


# -- templating -------------------------------------------------------------------------------


def template_sql(expr: str) -> str:
    """SQL that turns a raw URL or path into a template: ids, numbers, hashes to placeholders.

    The scheme and host and the query string go; in the path, uuids become `{uuid}`, e-mail
    addresses `{email}`, hex runs of 16 or more `{hash}`, all-digit segments `{n}` and
    segments that mix letters with three or more digits `{id}`.
    """
    e = f"regexp_replace({expr}, '^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*', '')"
    e = f"regexp_replace({e}, '[?#].*$', '')"
    e = (
        f"regexp_replace({e}, '[0-9a-fA-F]{{8}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-"
        "[0-9a-fA-F]{4}-[0-9a-fA-F]{12}', '{uuid}', 'g')"
    )
    e = f"regexp_replace({e}, '[^/@ ]+@[^/@ ]+[.][a-zA-Z]+', '{{email}}', 'g')"
    e = f"regexp_replace({e}, '/[0-9a-fA-F]{{16,}}(/|$)', '/{{hash}}\\1', 'g')"
    for _ in range(2):  # consecutive numeric segments share a slash: a second pass gets them
        e = f"regexp_replace({e}, '/[0-9]+([/.]|$)', '/{{n}}\\1', 'g')"
    mixed = "/[A-Za-z_-]*[0-9][A-Za-z_-]*[0-9][A-Za-z_-]*[0-9][A-Za-z0-9_-]*(/|$)"
    return f"regexp_replace({e}, '{mixed}', '/{{id}}\\1', 'g')"


def _operation_sql() -> str:
    """The event's operation: route template, else templated URL, else the span name."""
    verb = f"^(HTTP )?({_HTTP_VERBS})$"
    return (
        "CASE WHEN contains(operation, '/') THEN "
        "  CASE WHEN coalesce(http_route, '') <> '' "
        "    THEN regexp_replace(operation, '/[^ ]*', http_route) "
        f"    ELSE {template_sql('operation')} END "
        f"WHEN coalesce(http_url, '') <> '' AND regexp_matches(operation, '{verb}') "
        f"  THEN operation || ' ' || coalesce(nullif(http_route, ''), {template_sql('http_url')}) "
        "ELSE operation END"
    )


# -- assembly ---------------------------------------------------------------------------------


def _with_columns(spans: pa.Table) -> pa.Table:
    missing = [c for c in _REQUIRED if c not in spans.column_names]
    if missing:
        raise InputError(f"spans: missing column {', '.join(missing)}")
    cols = {}
    for name in SPAN_COLUMNS:
        if name in spans.column_names:
            cols[name] = spans.column(name)
        else:
            typ = pa.int32() if name == "http_status_code" else pa.string()
            cols[name] = pa.nulls(spans.num_rows, typ)
    return pa.table(cols)


def events(spans: pa.Table, config: FeatureConfig | None = None) -> pa.Table:
    """One row per span with the event columns, ordered by trace (first start) then event.

    `spans` has the SPANS columns (only trace_id, span_id, service, operation, start_ns and
    duration_ns are required). The table is grouped by trace: all events of one trace are
    contiguous, traces ordered by their first start time.
    """
    config = config or FeatureConfig()
    if spans.num_rows == 0:
        return pa.table({c: pa.array([], _event_type(c)) for c in EVENT_COLUMNS})
    con = duckdb.connect()
    try:
        con.execute("SET preserve_insertion_order = false")
        con.register("_spans", _with_columns(spans))
        return con.sql(_events_sql(config)).to_arrow_table()
    finally:
        con.close()


def _event_type(column: str) -> pa.DataType:
    return pa.int64() if column.endswith("_ns") else pa.string()


def _events_sql(config: FeatureConfig) -> str:
    key_parts = ", ".join(f"coalesce(CAST({f} AS VARCHAR), '')" for f in config.key_fields)
    cte = f"""
    s AS (
      SELECT trace_id, span_id, parent_id, service, instance, kind, start_ns, duration_ns,
             {_operation_sql()} AS operation,
             CASE WHEN status = 'error' OR http_status_code >= 500 THEN 'error'
                  WHEN http_status_code >= 400 THEN '4xx' ELSE 'ok' END AS status_class,
             peer_service,
             CASE WHEN kind = 'client' THEN lower(regexp_extract(
               coalesce(http_url, ''), '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#@]+@)?([^/?#]+)', 2))
             END AS addr
      FROM _spans),
    j AS (
      SELECT s.*, coalesce(p.service, '') AS parent_service, p.start_ns AS parent_start_ns,
             p.span_id IS NOT NULL AS has_parent,
             min(s.start_ns) OVER (PARTITION BY s.trace_id) AS trace_start_ns
      FROM s LEFT JOIN s p ON p.trace_id = s.trace_id AND p.span_id = s.parent_id),
    c AS (
      SELECT trace_id, parent_id, service, instance, operation, start_ns,
             start_ns + duration_ns AS end_ns, service <> parent_service AS remote,
             max(start_ns + duration_ns) OVER (
               PARTITION BY trace_id, parent_id ORDER BY start_ns, span_id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
      FROM j WHERE has_parent),
    a AS (
      SELECT trace_id, parent_id AS span_id,
             sum(greatest(end_ns - greatest(start_ns, coalesce(prev_end, start_ns)), 0))
               AS covered_ns,
             count(*) FILTER (WHERE remote) AS n_remote,
             count(*) FILTER (WHERE NOT remote) AS n_local,
             min(service) FILTER (WHERE remote) AS r_service,
             max(service) FILTER (WHERE remote) AS r_service_max,
             min(instance) FILTER (WHERE remote) AS r_instance,
             max(instance) FILTER (WHERE remote) AS r_instance_max,
             min(operation) FILTER (WHERE remote) AS r_operation
      FROM c GROUP BY 1, 2),
    e AS (
      SELECT j.*, CAST(greatest(j.duration_ns - coalesce(a.covered_ns, 0), 0) AS BIGINT) AS self_ns,
             coalesce(a.n_local = 0 AND a.r_service = a.r_service_max, FALSE) AS calls_one,
             a.n_remote, a.r_service, a.r_operation,
             CASE WHEN a.r_instance = a.r_instance_max THEN a.r_instance END AS r_instance
      FROM j LEFT JOIN a ON a.trace_id = j.trace_id AND a.span_id = j.span_id),
    m AS (
      SELECT addr, min(r_service) AS m_service,
             CASE WHEN count(DISTINCT r_instance) = 1
                   AND count(r_instance) = count(*) THEN min(r_instance) END AS m_instance
      FROM e WHERE kind = 'client' AND calls_one AND coalesce(addr, '') <> ''
      GROUP BY addr HAVING count(DISTINCT r_service) = 1),
    f AS (
      SELECT e.*,
             CASE WHEN calls_one THEN r_service
                    || CASE WHEN n_remote = 1 THEN ' ' || r_operation ELSE '' END
                  WHEN kind = 'client' AND coalesce(peer_service, '') <> '' THEN peer_service
                  ELSE '' END AS callee,
             CASE WHEN calls_one THEN r_service
                  WHEN kind = 'client' AND m.m_service IS NOT NULL THEN m.m_service
                  WHEN kind = 'client' AND coalesce(peer_service, '') <> '' THEN peer_service
                  ELSE service END AS blame_service,
             CASE WHEN calls_one THEN r_instance
                  WHEN kind = 'client' AND m.m_service IS NOT NULL THEN m.m_instance
                  WHEN kind = 'client' AND coalesce(peer_service, '') <> '' THEN NULL
                  ELSE instance END AS blame_instance
      FROM e LEFT JOIN m ON e.n_remote IS DISTINCT FROM 1 AND e.addr = m.addr
        AND (coalesce(e.peer_service, '') = '' OR e.peer_service = m.m_service))"""
    select = (
        "SELECT trace_id, span_id, parent_id, service, instance, operation, parent_service, "
        "callee, status_class, blame_service, blame_instance, "
        f"concat_ws('{KEY_SEPARATOR}', {key_parts}) AS key, "
        "start_ns, duration_ns, self_ns"
    )
    if config.order == "start":
        # a server span's clock may round its start below its client parent's: never before it
        return (
            f"WITH {cte} {select} FROM f ORDER BY trace_start_ns, trace_id, "
            "greatest(start_ns, coalesce(parent_start_ns, start_ns)), duration_ns DESC, span_id"
        )
    return f"""
    WITH RECURSIVE {cte},
    r AS (
      SELECT trace_id, span_id, parent_id, has_parent,
             row_number() OVER (PARTITION BY trace_id, CASE WHEN has_parent THEN parent_id END
                                ORDER BY start_ns, span_id) AS rk
      FROM j),
    tree(trace_id, span_id, path) AS (
      SELECT trace_id, span_id, [rk] FROM r WHERE NOT has_parent
      UNION ALL
      SELECT r.trace_id, r.span_id, list_append(tree.path, r.rk)
      FROM r JOIN tree ON r.trace_id = tree.trace_id AND r.parent_id = tree.span_id
      WHERE r.has_parent AND len(tree.path) < 512)
    {select} FROM f LEFT JOIN tree USING (trace_id, span_id)
    ORDER BY trace_start_ns, trace_id, coalesce(path, [9223372036854775807]), start_ns, span_id
    """


# -- vocabulary -------------------------------------------------------------------------------


class Vocabulary:
    """Event keys to ids: 0 padding, 1 unknown, 2 start, 3 end, then keys by frequency."""

    def __init__(self, keys: list[str] | tuple[str, ...] = ()) -> None:
        self.tokens: list[str] = [*SPECIAL_TOKENS, *keys]
        self._index = pa.array(self.tokens, pa.string())

    @classmethod
    def fit(cls, keys: pa.Array | pa.ChunkedArray | list[str], min_count: int = 1) -> Vocabulary:
        """The keys seen at least min_count times, most frequent first (ties by name)."""
        counts = pc.value_counts(pa.chunked_array([keys]) if isinstance(keys, list) else keys)
        values = counts.field("values").to_numpy(zero_copy_only=False).astype(object)
        n = counts.field("counts").to_numpy()
        keep = n >= min_count
        values, n = values[keep], n[keep]
        order = np.lexsort((values.astype(str), -n))
        return cls([str(v) for v in values[order]])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, keys: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
        """Ids of the keys (int64); unknown keys get UNK."""
        if isinstance(keys, list):
            keys = pa.array(keys, pa.string())
        ids = pc.index_in(keys, value_set=self._index)
        ids = pc.fill_null(ids, UNK)
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        out = ids.to_numpy(zero_copy_only=False).astype(np.int64)
        out[out < N_SPECIAL] = UNK  # a key that happens to spell a special token
        return out

    def add(self, keys: list[str]) -> list[int]:
        """Add new keys (feedback); returns the ids of all given keys."""
        known = {t: i for i, t in enumerate(self.tokens)}
        for k in keys:
            if k not in known:
                known[k] = len(self.tokens)
                self.tokens.append(k)
        self._index = pa.array(self.tokens, pa.string())
        return [known[k] for k in keys]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"special": list(SPECIAL_TOKENS), "keys": self.tokens[N_SPECIAL:]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Vocabulary:
        """The vocabulary written by `to_json`."""
        if list(doc.get("special", [])) != list(SPECIAL_TOKENS):
            raise InputError("vocabulary: special tokens differ from this version's")
        return cls([str(k) for k in doc["keys"]])

    def dumps(self) -> str:
        """The JSON text."""
        return json.dumps(self.to_json(), indent=0)


# -- datasets A and B -------------------------------------------------------------------------


@dataclass
class Sequences:
    """Dataset A (key ids) and B (log durations) of many traces, flat, with trace offsets.

    Events of trace i are `keys[offsets[i]:offsets[i+1]]` (no start or end tokens: the
    models add them). `events` holds the per-event metadata in the same order, where the
    sequences come from spans.
    """

    keys: np.ndarray
    offsets: np.ndarray
    n_keys: int
    log_duration: np.ndarray | None = None
    log_self: np.ndarray | None = None
    events: pa.Table | None = None
    trace_ids: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # time_scale_us of dataset B

    @property
    def time_scale_us(self) -> float:
        """The unit of dataset B: log1p(x / time_scale); 1 ms unless told."""
        return float(self.meta.get("time_scale_us", 1000.0))

    @property
    def n_traces(self) -> int:
        """Number of traces."""
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        """Number of events."""
        return len(self.keys)

    @property
    def lengths(self) -> np.ndarray:
        """Events per trace."""
        return np.diff(self.offsets)

    def trace_of_event(self) -> np.ndarray:
        """The trace index of every event."""
        return np.repeat(np.arange(self.n_traces), self.lengths)

    def event_index(self, traces: np.ndarray) -> np.ndarray:
        """Indices of the events of the given traces, in order."""
        traces = np.asarray(traces, dtype=np.int64)
        lengths = self.lengths[traces]
        starts = self.offsets[traces]
        if lengths.sum() == 0:
            return np.zeros(0, dtype=np.int64)
        first = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return first + np.arange(lengths.sum())

    def positions(self) -> np.ndarray:
        """The position of every event within its trace (0 for the first)."""
        return np.arange(self.n_events) - np.repeat(self.offsets[:-1], self.lengths)

    def unique(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct key sequences: (a representative trace of each, the distinct sequence of
        every trace, how many traces share each).

        Traces are compared by two 64-bit polynomial hashes of their ids and their length
        (a false match needs a 128-bit collision).
        """
        n = self.n_traces
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        lengths = self.lengths
        h = np.zeros((n, 3), dtype=np.uint64)
        h[:, 2] = lengths.astype(np.uint64)
        full = lengths > 0
        if self.n_events:
            pos = self.positions()
            values = self.keys.astype(np.uint64) + np.uint64(1)
            with np.errstate(over="ignore"):
                for col, base in ((0, 0x9E3779B97F4A7C15), (1, 0xC2B2AE3D27D4EB4F)):
                    powers = np.cumprod(np.full(int(lengths.max()), base, dtype=np.uint64))
                    terms = values * powers[pos]
                    h[full, col] = np.add.reduceat(terms, self.offsets[:-1][full])
        _, first, inverse, counts = np.unique(
            h, axis=0, return_index=True, return_inverse=True, return_counts=True
        )
        return first.astype(np.int64), inverse.reshape(-1).astype(np.int64), counts

    def subset(self, traces: np.ndarray) -> Sequences:
        """The sequences of the given trace indices, in that order."""
        traces = np.asarray(traces, dtype=np.int64)
        idx = self.event_index(traces)
        offsets = np.concatenate([[0], np.cumsum(self.lengths[traces])]).astype(np.int64)
        return Sequences(
            keys=self.keys[idx],
            offsets=offsets,
            n_keys=self.n_keys,
            log_duration=None if self.log_duration is None else self.log_duration[idx],
            log_self=None if self.log_self is None else self.log_self[idx],
            events=None if self.events is None else self.events.take(pa.array(idx)),
            trace_ids=None if self.trace_ids is None else self.trace_ids[traces],
            meta=dict(self.meta),
        )

    @classmethod
    def from_lists(
        cls,
        seqs: list[list[int]],
        n_keys: int,
        durations: list[list[float]] | None = None,
        self_times: list[list[float]] | None = None,
    ) -> Sequences:
        """Sequences of ids given as lists (tests, log-key data sets such as HDFS)."""
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        flat = np.fromiter((k for s in seqs for k in s), dtype=np.int64, count=int(lengths.sum()))

        def _flat(values: list[list[float]] | None) -> np.ndarray | None:
            if values is None:
                return None
            return np.fromiter(
                (v for s in values for v in s), dtype=np.float32, count=int(lengths.sum())
            )

        return cls(
            keys=flat,
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            n_keys=n_keys,
            log_duration=_flat(durations),
            log_self=_flat(self_times),
        )


def log_time(ns: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Durations in ns to dataset B's scale: log1p(x / time_scale)."""
    return np.log1p(np.asarray(ns, dtype=np.float64) / (config.time_scale_us * 1000.0)).astype(
        np.float32
    )


def sequences(events_table: pa.Table, vocab: Vocabulary, config: FeatureConfig) -> Sequences:
    """Datasets A and B of an events table (as `events` returns it)."""
    trace = events_table.column("trace_id")
    n = events_table.num_rows
    if n:
        codes = pc.dictionary_encode(trace).combine_chunks().indices.to_numpy()
        starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
    else:
        starts = np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([starts, [n]]).astype(np.int64)
    trace_ids = (
        trace.take(pa.array(starts)).to_numpy(zero_copy_only=False).astype(object)
        if n
        else np.zeros(0, dtype=object)
    )
    return Sequences(
        keys=vocab.encode(events_table.column("key")),
        offsets=offsets,
        n_keys=len(vocab),
        log_duration=log_time(events_table.column("duration_ns").to_numpy(), config),
        log_self=log_time(events_table.column("self_ns").to_numpy(), config),
        events=events_table,
        trace_ids=trace_ids,
        meta={"time_scale_us": config.time_scale_us},
    )
