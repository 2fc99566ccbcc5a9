"""Log lines that stop being written: per span key, the fewest lines a normal span wrote.

An exception thrown inside a handler often changes no timing and logs nothing new: the
handler simply stops before the lines it writes further on. So, per span event key, the
spans of that key in traces that carry log lines are counted with the fewest lines any of
them wrote itself. A span of a key seen at least `MIN_SEEN` times, each writing at least
one line, that writes fewer lines than any of them, in a trace that carries log lines (so
that logs were collected for it), is missing lines: a rule, as an impossible transition
is. New normal data (feedback, `adapt`) lowers the fewest or adds keys, never raises them.

Persistence: `line_counts.json` in the model directory (key, spans seen, fewest lines),
where the model learnt from traces with log lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.errors import ModelError
from spanomaly.features.logs import LOG_KEY_PREFIX

MIN_SEEN = 50  # spans of a key that must all have written lines before any is missing
FILE = "line_counts.json"


def own_lines(events: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per event row: whether it is a span event of a trace that carries log lines, the
    number of lines its own span wrote, and whether it is a log line."""
    n = events.num_rows
    if n == 0:
        return np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, bool)
    con = duckdb.connect()
    try:
        con.register(
            "_ev",
            events.select(["trace_id", "span_id", "key"]).append_column(
                "_rn", pa.array(np.arange(n, dtype=np.int64))
            ),
        )
        prefix = LOG_KEY_PREFIX.replace("'", "''")
        out = con.sql(f"""
            WITH e AS (SELECT _rn, trace_id, span_id, starts_with(key, '{prefix}') AS is_log
                       FROM _ev),
            lines AS (SELECT trace_id, span_id, count(*) AS n FROM e WHERE is_log
                      GROUP BY ALL),
            tr AS (SELECT DISTINCT trace_id FROM e WHERE is_log)
            SELECT e._rn, e.is_log, (tr.trace_id IS NOT NULL AND NOT e.is_log) AS counted,
                   coalesce(lines.n, 0) AS n
            FROM e LEFT JOIN tr USING (trace_id) LEFT JOIN lines USING (trace_id, span_id)
            ORDER BY e._rn
        """).fetchnumpy()
    finally:
        con.close()
    return (
        np.asarray(out["counted"], dtype=bool),
        np.asarray(out["n"], dtype=np.int64),
        np.asarray(out["is_log"], dtype=bool),
    )


@dataclass
class LineCounts:
    """Per span key: how many spans were seen in traces with lines, the fewest lines one
    wrote."""

    seen: dict[str, int] = field(default_factory=dict)
    fewest: dict[str, int] = field(default_factory=dict)

    def update(self, events: pa.Table) -> LineCounts:
        """Count the spans of these normal events (fit is an update from nothing)."""
        counted, n, _ = own_lines(events)
        if not counted.any():
            return self
        keys = events.column("key").to_numpy(zero_copy_only=False)[counted]
        lines = n[counted]
        uniq, inv = np.unique(keys.astype(str), return_inverse=True)
        seen = np.bincount(inv)
        low = np.full(len(uniq), np.iinfo(np.int64).max)
        np.minimum.at(low, inv, lines)
        for k, s, m in zip(uniq.tolist(), seen.tolist(), low.tolist(), strict=True):
            self.seen[k] = self.seen.get(k, 0) + int(s)
            self.fewest[k] = min(self.fewest.get(k, int(m)), int(m))
        return self

    def missing(self, events: pa.Table) -> np.ndarray:
        """Per event row: a span event that wrote fewer lines than any normal span of its
        key (seen at least MIN_SEEN times, each with a line), in a trace with lines."""
        counted, n, _ = own_lines(events)
        out = np.zeros(events.num_rows, dtype=bool)
        if not counted.any() or not self.fewest:
            return out
        sure = {k: m for k, m in self.fewest.items() if m >= 1 and self.seen[k] >= MIN_SEEN}
        if not sure:
            return out
        names = list(sure)
        at = pc.index_in(events.column("key"), value_set=pa.array(names, pa.string()))
        at = pc.fill_null(at, len(names)).to_numpy(zero_copy_only=False)
        need = np.array([*sure.values(), 0], dtype=np.int64)[at]
        return counted & (n < need)

    def to_json(self) -> dict[str, Any]:
        """The counts as a JSON document."""
        return {"min_seen": MIN_SEEN, "seen": self.seen, "fewest": self.fewest}

    def save(self, directory: str | Path) -> None:
        """Write line_counts.json into directory (none without counts: no log lines)."""
        path = Path(directory) / FILE
        if self.seen:
            path.write_text(json.dumps(self.to_json()))
        else:
            path.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | Path) -> LineCounts:
        """The counts of a model directory (none where the file is absent: an older model)."""
        path = Path(directory) / FILE
        if not path.exists():
            return cls()
        try:
            doc = json.loads(path.read_text())
            return cls({str(k): int(v) for k, v in doc["seen"].items()},
                       {str(k): int(v) for k, v in doc["fewest"].items()})  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"{path}: broken line counts: {exc}") from exc
