"""Fault labels and call edges in plain files: CSV, JSON (a list, or under one key) or JSON lines.

**Fault labels** (ground truth, read only by `evaluate`): one fault per record with

    start, end, service, instance, kind      (fault_id, params optional)

`start` and `end` are unix s/ms/us/ns or ISO-8601; `end` may be left out where
`--fault-duration` says how long faults last; `service` or `instance` (one is needed;
`instance` alone takes its service from a Kubernetes pod name); `kind` is the fault type.
CSV with that header, or JSON: `[{...}, ...]`, `{"faults": [...]}` or one object per line.

**Call edges** (a service graph without spans, for the ranking's graph rule): one edge per
record with `caller, callee` (or `source, target`, `parent, child`), optionally `calls`.

A record that lacks a field or holds a bad time is refused with its line (CSV, JSON lines)
or index (JSON), the others are stored.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from spanomaly.errors import FormatError
from spanomaly.ingest.base import Chunk, Reject
from spanomaly.ingest.csv import POD_SUFFIX
from spanomaly.ingest.files import read_all
from spanomaly.ingest.metric_times import parse_time_ns

FAULT_KEYS = ("start", "kind")
EDGE_NAMES = (("caller", "callee"), ("source", "target"), ("parent", "child"))


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of a CSV, JSON or JSON-lines file."""
    text = read_all(path).decode("utf-8", "replace").lstrip("\ufeff")
    head = text.lstrip()[:1]
    if head not in ("[", "{"):
        for no, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            yield f"line {no}", {k.strip(): v for k, v in row.items() if k}
        return
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if head == "[" or "\n" not in text.strip():  # one document, and a broken one
            raise FormatError(f"{path}: invalid JSON: {exc}") from None
        doc = None
    if doc is None:  # JSON lines
        for no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"line {no}", orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield f"line {no}", {"_error": f"invalid JSON: {exc}"}
        return
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        doc = lists[0] if len(lists) == 1 else [doc]
    for i, rec in enumerate(doc):
        yield f"[{i}]", rec


def _keys(data: bytes) -> set[str]:
    """Field names of a file's first record, from its first bytes."""
    text = data[:65536].decode("utf-8", "replace").lstrip("\ufeff").lstrip()
    if text[:1] in ("[", "{"):
        return {m.lower() for m in re.findall(r'"([A-Za-z_]+)"\s*:', text[:4096])}
    first = text.split("\n", 1)[0]
    return {c.strip().lower() for c in next(csv.reader(io.StringIO(first)), [])}


def is_fault_labels(data: bytes) -> bool:
    """Whether a file's first record has the fields of plain fault labels."""
    return fault_columns(list(_keys(data)))


def fault_columns(columns: list[str]) -> bool:
    """Whether a CSV header (or a record's keys) names the fields of plain fault labels."""
    keys = {c.strip().lower() for c in columns}
    return (
        set(FAULT_KEYS) <= keys
        and bool({"service", "instance"} & keys)
        and "inject_pod" not in keys
    )


def is_call_edges(data: bytes) -> bool:
    """Whether a file's first record is a caller/callee edge."""
    return edge_columns(list(_keys(data)))


def edge_columns(columns: list[str]) -> bool:
    """Whether a CSV header (or a record's keys) names a caller/callee edge."""
    keys = {c.strip().lower() for c in columns}
    return any(a in keys and b in keys for a, b in EDGE_NAMES) and "trace_id" not in keys


def _fault(rec: dict[str, Any], duration_ns: int) -> dict[str, Any]:
    rec = {str(k).lower(): v for k, v in rec.items()}
    if "_error" in rec:
        raise ValueError(rec["_error"])
    start = parse_time_ns(rec["start"])
    end = parse_time_ns(rec["end"]) if rec.get("end") not in (None, "") else start + duration_ns
    if end <= start:
        raise ValueError("end is not after start")
    instance = str(rec["instance"]).strip() if rec.get("instance") not in (None, "") else None
    service = str(rec.get("service") or "").strip() or (
        re.sub(POD_SUFFIX, "", instance) if instance else ""
    )
    kind = str(rec.get("kind") or "").strip()
    if not service or not kind:
        raise ValueError("needs kind and service (or instance)")
    params = rec.get("params")
    return {
        "fault_id": str(rec.get("fault_id") or f"{kind}:{instance or service}:{start // 10**9}"),
        "kind": kind, "service": service, "instance": instance,
        "start_ns": start, "end_ns": end,
        "params": None if params in (None, "") else (params if isinstance(params, str) else orjson.dumps(params).decode()),
    }  # fmt: skip


def decode_faults(path: Path, fault_duration_s: float) -> Iterator[Chunk]:
    """FAULTS rows of a plain label file."""
    import pyarrow as pa

    from spanomaly.schema import FAULTS

    rows, rejects, records = [], [], 0
    for where, rec in _records(path):
        records += 1
        try:
            if not isinstance(rec, dict):
                raise ValueError("not an object")
            rows.append(_fault(rec, round(fault_duration_s * 1e9)))
        except (KeyError, ValueError, TypeError, OverflowError) as exc:
            why = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            rejects.append(
                Reject(str(path), where, f"{why} (fields: start, end, service, instance, kind)")
            )
    yield Chunk("faults", pa.Table.from_pylist(rows, schema=FAULTS), rejects, records)


def decode_edges(path: Path) -> Iterator[Chunk]:
    """CALLS rows of an edge-list file."""
    import pyarrow as pa

    from spanomaly.schema import CALLS

    rows, rejects, records = {}, [], 0
    for where, rec in _records(path):
        records += 1
        low = {str(k).lower(): v for k, v in rec.items()} if isinstance(rec, dict) else {}
        pair = next(((low.get(a), low.get(b)) for a, b in EDGE_NAMES if a in low), (None, None))
        caller, callee = (str(x).strip() if x not in (None, "") else "" for x in pair)
        try:
            calls = int(float(low["calls"])) if low.get("calls") not in (None, "") else None
        except (TypeError, ValueError):
            calls = -1
        if not caller or not callee or (calls is not None and calls < 0):
            rejects.append(
                Reject(str(path), where, "needs caller and callee (and calls, if any, a count)")
            )
            continue
        rows[(caller, callee)] = {
            "caller": caller,
            "callee": callee,
            "calls": calls,
            "source": str(path),
        }
    yield Chunk("calls", pa.Table.from_pylist(list(rows.values()), schema=CALLS), rejects, records)
