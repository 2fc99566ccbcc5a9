"""Fault labels (ground truth): the Nezha `label.json` lists into FAULTS rows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import orjson

from spanomaly.errors import FormatError
from spanomaly.ingest.base import Chunk, Reject
from spanomaly.ingest.csv import POD_SUFFIX
from spanomaly.ingest.files import read_all
from spanomaly.schema import names

_POD_SUFFIX = re.compile(POD_SUFFIX)


def decode_nezha_labels(path: Path, fault_duration_s: float) -> Iterator[Chunk]:
    """Faults from a label.json: {hour: [{inject_timestamp, inject_pod, inject_type}, ...]}."""
    try:
        doc = orjson.loads(read_all(path))
    except orjson.JSONDecodeError as exc:
        raise FormatError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: expected an object of hour -> fault list")
    rows: dict[str, list[object]] = {n: [] for n in names("faults")}
    rejects: list[Reject] = []
    span_ns = round(fault_duration_s * 1e9)
    records = 0
    for hour, entries in doc.items():
        for i, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            records += 1
            record = f"[{hour!r}][{i}]"
            try:
                start = round(float(entry["inject_timestamp"]) * 1e9)
                pod = str(entry["inject_pod"])
                kind = str(entry["inject_type"])
            except (KeyError, TypeError, ValueError) as exc:
                rejects.append(
                    Reject(
                        str(path),
                        record,
                        f"needs inject_timestamp, inject_pod, inject_type ({exc!r})",
                    )
                )
                continue
            rows["fault_id"].append(f"{kind}:{pod}:{start // 1_000_000_000}")
            rows["kind"].append(kind)
            rows["service"].append(_POD_SUFFIX.sub("", pod))
            rows["instance"].append(pod)
            rows["start_ns"].append(start)
            rows["end_ns"].append(start + span_ns)
            rows["params"].append(orjson.dumps(entry).decode())
    import pyarrow as pa

    from spanomaly.schema import FAULTS

    yield Chunk("faults", pa.table(rows, schema=FAULTS), rejects, records)
