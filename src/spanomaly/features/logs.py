"""Log templates (Drain3) and log lines as trace events.

**Templates.** A log body is first *masked* in DuckDB (vectorised, one regular-expression
pass): uuids, long hex runs (trace and span ids, hashes), IP addresses and numbers (times,
dates, decimals) become Drain3's parameter mark `<*>`; which masks apply is configurable
(`TemplateConfig.masks`).
The distinct masked texts, far fewer than the lines, are mined once each by Drain3's
fixed-depth tree; every line then takes its text's template id. The masked values are the
line's parameters (a JSON list). At detection time lines are *matched* against the mined
templates, never mined: a line that fits none gets template id -1 (`UNSEEN`), its own signal.

Persistence is plain JSON of our own (`to_json` / `from_json`): template tokens, ids and
counts; the Drain3 tree is rebuilt from them. Drain3's own persistence uses jsonpickle,
which can run code while loading, so it is never used.

**Events.** A log line becomes an event of its trace with the key
`log | service | severity | template` (an unseen template reads `<unseen>`), interleaved
with the span events: a line follows the event of its own span, the span's lines in time
order (a line of an unknown span follows the span event that started last before it). Its duration and self time are 0; it blames its own service and
instance.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.errors import InputError, ModelError
from spanomaly.features.traces import EVENT_COLUMNS, KEY_SEPARATOR

# name -> regular expression of the values it masks (RE2); all masks run as one alternation
MASKS: dict[str, str] = {
    "uuid": "\\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\b",
    "hex": "\\b(0x)?[0-9a-fA-F]{16,}\\b",
    "ip": "\\b[0-9]{1,3}(\\.[0-9]{1,3}){3}(:[0-9]+)?\\b",
    "number": "\\b[0-9]+([.:,/-][0-9]+)*\\b",
}
PLACEHOLDER = "<*>"  # Drain3's own parameter mark
DEFAULT_MASKS = ("uuid", "hex", "ip", "number")
UNSEEN = -1
UNSEEN_TEXT = "<unseen>"
FORMAT = "spanomaly-log-templates"
MAX_TEMPLATE_CHARS = 160  # of the template text in an event key
ERROR_SEVERITIES = ("ERROR", "FATAL")
LOG_KEY_PREFIX = "log" + KEY_SEPARATOR  # event keys of log lines start with it


@dataclass(frozen=True)
class TemplateConfig:
    """How log bodies become templates; stored with the templates."""

    masks: tuple[str, ...] = DEFAULT_MASKS
    depth: int = 6  # Drain's tree: length, then the first depth - 3 tokens (time, level, logger)
    sim_th: float = 0.5
    max_children: int = 100
    extra_delimiters: tuple[str, ...] = ("=", ",", "[", "]", "(", ")", "{", "}")

    def __post_init__(self) -> None:
        bad = [m for m in self.masks if m not in MASKS]
        if bad:
            raise InputError(f"log masks: {', '.join(bad)} not among {', '.join(MASKS)}")
        if self.depth < 3:
            raise InputError("log template depth: must be at least 3")
        if not 0 < self.sim_th <= 1:
            raise InputError("log template similarity: must be in (0, 1]")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        doc = asdict(self)
        doc["masks"] = list(self.masks)
        doc["extra_delimiters"] = list(self.extra_delimiters)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TemplateConfig:
        """The config written by `to_json`."""
        return cls(
            masks=tuple(doc["masks"]),
            depth=int(doc["depth"]),
            sim_th=float(doc["sim_th"]),
            max_children=int(doc["max_children"]),
            extra_delimiters=tuple(doc["extra_delimiters"]),
        )


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    return con


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _pattern(masks: tuple[str, ...]) -> str:
    return "|".join(MASKS[m] for m in masks)


def mask_sql(expr: str, masks: tuple[str, ...] = DEFAULT_MASKS) -> str:
    """SQL replacing the masked kinds of values in a text by the placeholder, in one pass."""
    if not masks:
        return expr
    return f"regexp_replace({expr}, {_lit(_pattern(masks))}, {_lit(PLACEHOLDER)}, 'g')"


def params_sql(expr: str, masks: tuple[str, ...] = DEFAULT_MASKS) -> str:
    """SQL of the masked values of a text, in order, as a JSON list (text)."""
    if not masks:
        return "'[]'"
    return f"CAST(to_json(regexp_extract_all({expr}, {_lit(_pattern(masks))})) AS VARCHAR)"


def _masked(
    bodies: pa.Array | pa.ChunkedArray, config: TemplateConfig, params: bool = False
) -> pa.Table:
    """Per line: the masked text (and the parameters, when asked)."""
    con = _connect()
    try:
        con.register("_b", pa.table({"body": bodies}))
        extra = f", {params_sql('body', config.masks)} AS params" if params else ""
        return con.sql(
            f"SELECT {mask_sql('body', config.masks)} AS masked{extra} FROM _b"
        ).to_arrow_table()
    finally:
        con.close()


def _distinct(masked: pa.ChunkedArray | pa.Array) -> tuple[list[str], np.ndarray]:
    """The distinct texts and, per line, the index of its text."""
    enc = pc.dictionary_encode(masked)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.unify_dictionaries().combine_chunks() if enc.num_chunks else enc.combine_chunks()
    return enc.dictionary.to_pylist(), enc.indices.to_numpy(zero_copy_only=False)


class TemplateMiner:
    """Drain3 templates of log bodies: fitted on normal lines, matched at detection time."""

    def __init__(self, config: TemplateConfig | None = None) -> None:
        self.config = config

    @property
    def template_config(self) -> TemplateConfig:
        """The configuration (default when none given)."""
        return self.config or TemplateConfig()

    def _drain(self) -> Any:
        from drain3.drain import Drain

        c = self.template_config
        return Drain(
            depth=c.depth,
            sim_th=c.sim_th,
            max_children=c.max_children,
            extra_delimiters=c.extra_delimiters,
        )

    def fit(self, bodies: pa.Array | pa.ChunkedArray) -> TemplateMiner:
        """Mine the templates of the bodies (each distinct masked text once)."""
        self.drain_ = self._drain()
        return self.partial_fit(bodies)

    def partial_fit(self, bodies: pa.Array | pa.ChunkedArray) -> TemplateMiner:
        """Mine more bodies into the fitted templates (templates may widen)."""
        if not hasattr(self, "drain_"):
            self.drain_ = self._drain()
        masked = _masked(bodies, self.template_config).column("masked")
        texts, idx = _distinct(masked)
        counts = np.bincount(idx, minlength=len(texts)) if len(texts) else np.zeros(0, int)
        add = self.drain_.add_log_message
        for text, n in zip(texts, counts.tolist(), strict=True):
            cluster, _ = add(text)
            cluster.size += n - 1  # add counted one line; the text stands for n
        return self

    def extend(self, bodies: pa.Array | pa.ChunkedArray) -> int:
        """Mine the bodies no template fits into new templates, leaving every known
        template as it is (its text is part of event keys a model learnt); how many new."""
        before = self.n_templates
        unseen = pc.equal(self.transform(bodies, params=False).column("template_id"), UNSEEN)
        rest = pc.filter(bodies, unseen)
        if len(rest):
            self.partial_fit(rest)
        return self.n_templates - before

    def _check(self) -> None:
        if not hasattr(self, "drain_"):
            raise ModelError("the log templates are not fitted")

    @property
    def n_templates(self) -> int:
        """Number of templates mined."""
        self._check()
        return len(self.drain_.id_to_cluster)

    def template_text(self, template_id: int) -> str:
        """The template text of an id (UNSEEN_TEXT for UNSEEN)."""
        self._check()
        cluster = self.drain_.id_to_cluster.get(template_id)
        return UNSEEN_TEXT if cluster is None else cluster.get_template()

    def transform(self, bodies: pa.Array | pa.ChunkedArray, params: bool = True) -> pa.Table:
        """Per line: template_id (UNSEEN when none fits), template text and, unless
        params=False, the masked values (a JSON list)."""
        self._check()
        table = _masked(bodies, self.template_config, params)
        texts, idx = _distinct(table.column("masked"))
        drain = self.drain_
        ids = np.empty(len(texts), dtype=np.int64)
        names = []
        for i, text in enumerate(texts):
            # the search mining does (same similarity), without changing any template
            tokens = drain.get_content_as_tokens(text)
            cluster = drain.tree_search(drain.root_node, tokens, drain.sim_th, False)
            ids[i] = UNSEEN if cluster is None else cluster.cluster_id
            names.append(UNSEEN_TEXT if cluster is None else cluster.get_template())
        name_arr = pa.array(names, pa.string())
        take = pa.array(idx, pa.int64())
        out = pa.table(
            {
                "template_id": pa.array(ids[idx] if len(idx) else np.zeros(0, np.int64)),
                "template": name_arr.take(take) if len(idx) else pa.array([], pa.string()),
            }
        )
        return out.append_column("params", table.column("params")) if params else out

    # -- persistence ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The templates as a plain JSON document (no pickle, no jsonpickle)."""
        self._check()
        clusters = sorted(self.drain_.id_to_cluster.values(), key=lambda c: c.cluster_id)
        return {
            "format": FORMAT,
            "format_version": 1,
            "config": self.template_config.to_json(),
            "templates": [
                {"id": c.cluster_id, "tokens": list(c.log_template_tokens), "count": c.size}
                for c in clusters
            ],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TemplateMiner:
        """Rebuild the miner (its Drain3 tree) from `to_json`'s document."""
        from drain3.drain import LogCluster

        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ModelError("not a spanomaly log-templates document")
        try:
            miner = cls(TemplateConfig.from_json(doc["config"]))
            drain = miner._drain()
            for t in doc["templates"]:
                tokens = [str(x) for x in t["tokens"]]
                cluster = LogCluster(tokens, int(t["id"]))
                cluster.size = int(t["count"])
                drain.id_to_cluster[cluster.cluster_id] = cluster
                drain.add_seq_to_prefix_tree(drain.root_node, cluster)
            drain.clusters_counter = max(drain.id_to_cluster, default=0)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"broken log templates: {exc}") from exc
        miner.drain_ = drain
        return miner

    def dumps(self) -> str:
        """The JSON text."""
        return json.dumps(self.to_json())

    @classmethod
    def loads(cls, text: str) -> TemplateMiner:
        """The miner of `dumps`'s text."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ModelError(f"log templates: not JSON: {exc}") from exc
        return cls.from_json(doc)


# -- log lines as trace events ---------------------------------------------------------------


def weak_log_keys(keys: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
    """Per event key: whether it is a log line below WARN (`log | service | severity |
    template` with an informational severity, `<unseen>` template or not), weak evidence
    of a fault."""
    keys = pa.array(keys, pa.string()) if isinstance(keys, list) else keys
    if not len(keys):
        return np.zeros(0, dtype=bool)
    parts = pc.split_pattern(pc.fill_null(keys, ""), KEY_SEPARATOR, max_splits=3)
    severity = pc.utf8_upper(
        pc.fill_null(
            pc.list_element(
                pc.if_else(
                    pc.greater(pc.list_value_length(parts), 2), parts, pa.scalar(["", "", ""])
                ),
                2,
            ),
            "",
        )
    )
    strong = pc.is_in(severity, pa.array(["WARN", "WARNING", *ERROR_SEVERITIES]))
    weak = pc.and_(pc.starts_with(keys, LOG_KEY_PREFIX), pc.invert(strong))
    return np.asarray(pc.fill_null(weak, False).to_numpy(zero_copy_only=False), dtype=bool)


def log_events(logs: pa.Table, miner: TemplateMiner) -> pa.Table:
    """The event rows (EVENT_COLUMNS plus template_id and severity) of log lines, in no
    particular order.

    `logs` has LOGS columns time_ns, service, instance, trace_id, span_id, severity, body.
    """
    if logs.num_rows == 0:
        return _empty_log_events()
    t = miner.transform(logs.column("body"), params=False)
    sev = pc.fill_null(logs.column("severity"), "")
    template = pc.utf8_slice_codeunits(t.column("template"), 0, MAX_TEMPLATE_CHARS)
    service = pc.fill_null(logs.column("service"), "")
    key = pc.binary_join_element_wise(pa.scalar("log"), service, sev, template, KEY_SEPARATOR)
    n = logs.num_rows
    zeros = pa.array(np.zeros(n, dtype=np.int64))
    empty = pa.repeat(pa.scalar("", pa.string()), n)
    status = pc.if_else(pc.is_in(sev, pa.array(ERROR_SEVERITIES)), "error", "ok")
    cols = {
        "trace_id": logs.column("trace_id"),
        "span_id": logs.column("span_id"),
        "parent_id": logs.column("span_id"),
        "service": logs.column("service"),
        "instance": logs.column("instance"),
        "operation": pc.binary_join_element_wise(pa.scalar("log"), template, ": "),
        "parent_service": service,
        "callee": empty,
        "status_class": status,
        "blame_service": logs.column("service"),
        "blame_instance": logs.column("instance"),
        "key": key,
        "start_ns": logs.column("time_ns"),
        "duration_ns": zeros,
        "self_ns": zeros,
    }
    out = pa.table({c: cols[c] for c in EVENT_COLUMNS})
    out = out.append_column("template_id", t.column("template_id"))
    return out.append_column("severity", sev)


def sequence_events(log_rows: pa.Table) -> pa.Table:
    """The log events that enter trace sequences: every line.

    An informational line no template fits (`log | service | INFO | <unseen>`) is mostly
    data of another length (Drain3 compares lines of equal token count only), not a
    fault: it is weak evidence (`detect.model`), yet it is a line its span wrote, and a
    span that stops writing its lines is (`detect.line_counts`).
    """
    return log_rows


def _empty_log_events() -> pa.Table:
    cols = {
        c: pa.array([], pa.int64() if c.endswith("_ns") else pa.string()) for c in EVENT_COLUMNS
    }
    cols["template_id"] = pa.array([], pa.int64())
    cols["severity"] = pa.array([], pa.string())
    return pa.table(cols)


def interleave(span_events: pa.Table, log_rows: pa.Table) -> pa.Table:
    """Span events and log events of the same traces in one table, grouped by trace as
    span_events is. A line follows its own span's event (its span's lines by time); a line
    whose span is unknown follows the span event that started last at or before it. Lines
    of traces without span events are dropped.

    Placing a line by its span rather than by the trace's clock keeps the lines of
    concurrent spans from interleaving at random, which would make normal sequences vary.
    """
    if log_rows.num_rows == 0 or span_events.num_rows == 0:
        return span_events
    con = _connect()
    try:
        con.register(
            "_ev",
            span_events.append_column(
                "_rn", pa.array(np.arange(span_events.num_rows, dtype=np.float64))
            ),
        )
        con.register("_lg", log_rows.select(list(EVENT_COLUMNS)))
        cols = ", ".join(EVENT_COLUMNS)
        sql = f"""
        WITH first AS (SELECT trace_id, min(_rn) AS rn0 FROM _ev GROUP BY trace_id),
        placed AS (
          SELECT l.*, coalesce(own._rn, e._rn, f.rn0 - 1) + 0.5 AS _rn
          FROM _lg l JOIN first f USING (trace_id)
          LEFT JOIN _ev own ON own.trace_id = l.trace_id AND own.span_id = l.span_id
          ASOF LEFT JOIN _ev e ON e.trace_id = l.trace_id AND l.start_ns >= e.start_ns)
        SELECT {cols} FROM (
          SELECT {cols}, _rn, 0 AS _log FROM _ev
          UNION ALL SELECT {cols}, _rn, 1 AS _log FROM placed)
        ORDER BY _rn, _log, start_ns
        """
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


# shares of the instance's lines in the window, 0 without lines: a share does not change
# with how much is logged or whether logs were collected at all in a period
LOG_FEATURES = ("l.warning_share", "l.error_share", "l.unseen_share")


def window_counts(log_rows: pa.Table, window_s: float) -> pa.Table:
    """Per (window, service, instance) of log events (`log_events`): the shares of warning,
    error and unseen-template lines among the instance's lines, and the lines per second."""
    w = int(window_s * 1e9)
    con = _connect()
    try:
        con.register("_lg", log_rows)
        return con.sql(
            f"""SELECT (start_ns // {w}) * {w} AS time_ns, service, instance,
                   count(*) / {window_s} AS lines_s,
                   count(*) FILTER (WHERE severity = 'WARN') / count(*)
                     AS "l.warning_share",
                   count(*) FILTER (WHERE status_class = 'error') / count(*) AS "l.error_share",
                   count(*) FILTER (WHERE template_id = {UNSEEN}) / count(*) AS "l.unseen_share"
            FROM _lg WHERE instance IS NOT NULL GROUP BY ALL"""
        ).to_arrow_table()
    finally:
        con.close()


def with_window_counts(span_windows: pa.Table, counts: pa.Table) -> pa.Table:
    """Span windows (`features.windows.span_windows`) with the log counts of the same
    instance and window as more columns (0 where the instance wrote no line)."""
    con = _connect()
    try:
        con.register("_w", span_windows)
        con.register("_c", counts)
        extra = ", ".join(f'coalesce(c."{n}", 0) AS "{n}"' for n in LOG_FEATURES)
        return con.sql(
            f"SELECT w.*, {extra} FROM _w w LEFT JOIN _c c "
            "USING (time_ns, service, instance) ORDER BY time_ns, service, instance"
        ).to_arrow_table()
    finally:
        con.close()
