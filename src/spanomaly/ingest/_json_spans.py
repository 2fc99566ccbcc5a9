"""Shared pieces of the JSON span decoders (Jaeger, Zipkin): parsing, field normalisation
and turning per-record column lists into chunks of SPANS tables.

Decoding JSON is per object by nature; the decoders walk the parsed document once to list
the span records, then build each column with a list comprehension and hand one Arrow
table per chunk to `split_valid`, which does the checks column-wise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.errors import FormatError
from spanomaly.ingest.base import Chunk, Reject
from spanomaly.ingest.validate import split_valid
from spanomaly.schema import SPANS

_BOM = b"\xef\xbb\xbf"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
KINDS = frozenset(("internal", "server", "client", "producer", "consumer"))
# Nullable twin of SPANS: tables are built with it, split_valid drops the bad rows and casts.
_BUILD = pa.schema([f.with_nullable(True) for f in SPANS])


@dataclass(frozen=True, slots=True)
class Record:
    """One span record of a document: where it is (for messages), the raw JSON and context."""

    path: str  # e.g. "data[0].spans" or "span"
    index: int
    raw: Any
    context: Any = None


Columns = dict[str, list[Any]]


def load_json(data: bytes, source: str) -> Any:
    """The parsed document; malformed JSON or invalid UTF-8 is a one-line FormatError."""
    try:
        return orjson.loads(data.removeprefix(_BOM))
    except orjson.JSONDecodeError as exc:
        msg = " ".join(str(exc).split())
        raise FormatError(f"{source}: not valid JSON: {msg}") from None


def raw_id(value: object) -> str | None:
    """An id as the document gives it when it is a string, else null (normalised later)."""
    return value if isinstance(value, str) else None


def _normalise_ids(table: pa.Table) -> pa.Table:
    """Ids trimmed, lower-cased and left-padded with zeros to 32 / 16 hex, column-wise.

    Jaeger and Zipkin drop leading zeros of ids. Longer or non-hex ids stay as they are so
    that validation rejects them, and an empty id stays empty. A parent id that is empty or
    all zeros means no parent (a root span).
    """
    for name, width in (("trace_id", 32), ("span_id", 16), ("parent_id", 16)):
        col = pc.utf8_lower(pc.utf8_trim_whitespace(table[name]))
        padded = pc.utf8_lpad(col, width=width, padding="0")
        col = pc.if_else(pc.equal(pc.utf8_length(col), 0), col, padded)
        if name == "parent_id":
            root = pc.fill_null(pc.match_substring_regex(col, "^0*$"), False)
            col = pc.if_else(root, pa.scalar(None, pa.string()), col)
        table = table.set_column(table.schema.get_field_index(name), _BUILD.field(name), col)
    return table


def micros_to_ns(value: object) -> int | None:
    """Microseconds (JSON number or decimal string) as integer ns; null if not a usable number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            return None
    if isinstance(value, int):
        ns = value * 1000
    elif isinstance(value, float) and math.isfinite(value):
        ns = round(value * 1000)
    else:
        return None
    return ns if _INT64_MIN <= ns <= _INT64_MAX else None


def http_status(value: object) -> int | None:
    """An HTTP status code from an int, a float or a string; null unless it is 100..999."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 100 <= value <= 999:
        return value
    return None


def text(value: object) -> str | None:
    """A string attribute value; other scalars as their JSON text, null stays null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def first(tags: Mapping[str, Any], *keys: str) -> Any:
    """The value of the first of keys present (and not null) in tags, else None."""
    for key in keys:
        value = tags.get(key)
        if value is not None:
            return value
    return None


def is_true(value: object) -> bool:
    """True for JSON true or the string "true" (any case)."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def status(error: bool, tags: Mapping[str, Any], http_code: int | None) -> str:
    """'error' when the source marks an error, else the OTel status code, else from HTTP 5xx."""
    if error:
        return "error"
    code = tags.get("otel.status_code")
    if isinstance(code, str):
        code = code.strip().upper()
        if code == "ERROR":
            return "error"
        if code == "OK":
            return "ok"
    if http_code is not None and http_code >= 500:
        return "error"
    return "unset"


def kind(value: object) -> str:
    """A span kind of the schema from a Jaeger tag or Zipkin field; 'unspecified' otherwise."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in KINDS:
            return low
    return "unspecified"


def attributes_json(tags: Mapping[str, Any]) -> str:
    """Compact JSON object of the tags ("{}" when there are none)."""
    try:
        return orjson.dumps(tags).decode()
    except TypeError:  # an integer beyond 64 bits: the standard library writes it
        return json.dumps(tags, separators=(",", ":"), ensure_ascii=False, default=str)


def table_from_columns(columns: Columns) -> pa.Table:
    """A table of SPANS columns (nullable) from per-column Python lists, ids normalised."""
    arrays = [pa.array(columns[f.name], f.type) for f in _BUILD]
    return _normalise_ids(pa.Table.from_arrays(arrays, schema=_BUILD))


def label(record: Record, id_key: str) -> str:
    """'path[i]', with the raw span id where the record has one."""
    where = f"{record.path}[{record.index}]"
    raw = record.raw
    span_id = raw.get(id_key) if isinstance(raw, dict) else None
    return f"{where} ({id_key}={span_id!r})" if span_id is not None else where


def chunks(
    records: Sequence[Record],
    source: str,
    batch_rows: int,
    problem: Callable[[Record], str | None],
    columns: Callable[[list[Record]], Columns],
    id_key: str,
    document_rejects: Sequence[Reject] = (),
) -> Iterator[Chunk]:
    """Chunks of at most batch_rows span records; always at least one (it may be empty).

    `problem` names what makes a record unusable before any column is built (not an object,
    a required field missing); `columns` builds the SPANS columns of the usable ones;
    `split_valid` rejects the rows that fail the column checks. Rejects of the document
    itself (a trace that is not an object, ...) go with the first chunk.
    """
    step = max(1, batch_rows)
    for start in range(0, max(len(records), 1), step):
        batch = records[start : start + step]
        rejects = list(document_rejects) if start == 0 else []
        good: list[Record] = []
        for rec in batch:
            why = problem(rec)
            if why is None:
                good.append(rec)
            else:
                rejects.append(Reject(source, label(rec, id_key), why))
        table, bad = split_valid(table_from_columns(columns(good)), source, _labeller(good, id_key))
        yield Chunk(table="spans", data=table, rejects=rejects + bad, records=len(batch))


def _labeller(records: Sequence[Record], id_key: str) -> Callable[[int], str]:
    return lambda i: label(records[i], id_key)


def missing(raw: object, required: Sequence[str]) -> str | None:
    """Why a raw span is structurally unusable: not an object, or a required field absent."""
    if not isinstance(raw, dict):
        return f"span is not a JSON object (got {type_name(raw)})"
    absent = [key for key in required if raw.get(key) is None]
    if absent:
        return "missing " + ", ".join(absent)
    return None


def type_name(value: object) -> str:
    """The JSON type name of a parsed value, for messages."""
    return {
        dict: "object",
        list: "array",
        str: "string",
        int: "number",
        float: "number",
        bool: "boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)
