"""Prometheus range queries: the JSON answer of `/api/v1/query_range`, from a file or pulled.

    spanomaly ingest answer.json                       # a saved answer
    spanomaly ingest prometheus+http://HOST:9090 --query 'rate(process_cpu_seconds_total[1m])'
        --from T --to T --step 15

Each series of the matrix is one metric: its name is `__name__` (else the query's text, a
query without a name being an expression), its service and instance come from labels: the
first of SERVICE_LABELS / INSTANCE_LABELS present, or those given with `--map
service=LABEL,instance=LABEL,name=LABEL`. Every other label is kept in `attributes`. A
value that is not a number refuses that point, naming the series and time (`NaN`, which
Prometheus writes for gaps, is skipped).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from spanomaly.errors import FormatError, InputError
from spanomaly.ingest.base import Chunk, DecodeOptions, Reject
from spanomaly.ingest.files import read_all

URL_PREFIX = "prometheus+"
SERVICE_LABELS = ("service", "service_name", "job", "app", "container", "namespace")
INSTANCE_LABELS = ("instance", "service_instance_id", "pod", "container", "host")
MAX_POINTS = 11_000  # Prometheus refuses a range query of more points per series


def is_answer(data: bytes) -> bool:
    """Whether the first bytes look like a query_range (or query) answer."""
    head = data[:4096]
    return head.lstrip()[:1] == b"{" and b'"resultType"' in head and b'"result"' in head


def _pick(labels: dict[str, str], mapped: str | None, choices: tuple[str, ...]) -> str | None:
    """The label that names it: the one mapped, else the first of choices present."""
    if mapped is not None:
        return mapped if mapped in labels else None
    return next((k for k in choices if labels.get(k)), None)


def decode_answer(
    doc: Any, source: str, options: DecodeOptions, query: str | None = None
) -> Iterator[Chunk]:
    """Metric points of one parsed answer (`{"status", "data": {"resultType", "result"}}`)."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("result"), list):
        reason = doc.get("error") if isinstance(doc, dict) else None
        raise FormatError(f"{source}: not a Prometheus query answer ({reason or 'no data.result'})")
    tables: list[pa.Table] = []
    rejects: list[Reject] = []
    records = 0
    for i, series in enumerate(data["result"]):
        points = series.get("values") or ([series["value"]] if "value" in series else [])
        records += len(points)
        table = _series(series, i, points, source, options, query, rejects)
        if table is not None:
            tables.append(table)
    from spanomaly.schema import METRICS

    out = pa.concat_tables(tables) if tables else METRICS.empty_table()
    yield Chunk("metrics", out, rejects, records)


def _series(
    series: dict[str, Any], i: int, points: list[Any], source: str, options: DecodeOptions,
    query: str | None, rejects: list[Reject],
) -> pa.Table | None:  # fmt: skip
    """The points of one series as METRICS rows (bad points rejected one by one)."""
    from spanomaly.schema import METRICS

    m = options.column_map
    labels = {str(k): str(v) for k, v in (series.get("metric") or {}).items()}
    name = (labels.get(m["name"]) if "name" in m else labels.get("__name__")) or query or "value"
    service_key = _pick(labels, m.get("service"), SERVICE_LABELS)
    instance_key = _pick(labels, m.get("instance"), INSTANCE_LABELS)
    keys = {service_key, instance_key}
    service = labels.get(service_key) if service_key else None
    instance = (labels.get(instance_key) if instance_key else None) or service
    service = service or instance
    where = f"series {i} ({name})"
    if service is None:
        rejects.append(
            Reject(source, where, "no service or instance label (use --map service=LABEL)")
        )
        return None
    t, v, bad = _numbers(points)
    for k in bad[:5]:
        rejects.append(Reject(source, where, f"point {points[k]!r} is not [time, value]"))
    rejects.extend(Reject(source, where, "more bad points") for _ in bad[5:6])
    keep = ~np.isnan(v) & ~np.isin(np.arange(len(v)), bad)
    n = int(keep.sum())
    used = {"__name__", m.get("name"), *keys}
    attrs = {k: val for k, val in sorted(labels.items()) if k not in used}
    text = orjson.dumps(attrs).decode() if attrs else None
    columns = {"time_ns": np.round(t[keep] * 1e9).astype(np.int64), "service": [service] * n,
               "instance": [instance] * n, "name": [name] * n, "kind": ["gauge"] * n,
               "value": v[keep], "attributes": [text] * n}  # fmt: skip
    return pa.table(
        {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in METRICS}, schema=METRICS
    )


def _numbers(points: list[Any]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Times and values of [time, "value"] pairs as floats, and the indices of bad pairs."""
    try:
        arr = np.asarray(points, dtype=object).reshape(len(points), 2)
        return arr[:, 0].astype(float), arr[:, 1].astype(float), []
    except (TypeError, ValueError):  # some pair is bad: find which, pair by pair
        pass
    t, v, bad = np.zeros(len(points)), np.full(len(points), np.nan), []
    for k, p in enumerate(points):  # only for a series with a bad point
        try:
            t[k], v[k] = float(p[0]), float(p[1])
        except (TypeError, ValueError, IndexError, KeyError):
            bad.append(k)
    return t, v, bad


def decode_file(path: Path, options: DecodeOptions) -> Iterator[Chunk]:
    """Metric points of a saved query_range answer."""
    try:
        doc = orjson.loads(read_all(path))
    except orjson.JSONDecodeError as exc:
        raise FormatError(f"{path}: invalid JSON: {exc}") from exc
    yield from decode_answer(doc, str(path), options)


def _ranges(start_ns: int, end_ns: int, step_s: float) -> Iterator[tuple[float, float]]:
    """(start, end) unix seconds of query ranges of at most MAX_POINTS steps each."""
    span = step_s * (MAX_POINTS - 1)
    t = start_ns / 1e9
    while t <= end_ns / 1e9:
        hi = min(t + span, end_ns / 1e9)
        yield t, hi
        t = hi + step_s


def pull(
    url: str, queries: list[str], start_ns: int, end_ns: int, step_s: float,
    options: DecodeOptions, timeout_s: float = 30.0,
) -> Iterator[Chunk]:  # fmt: skip
    """Metric points of each query over [start, end] at step, from a running Prometheus
    (`prometheus+http://HOST:9090`)."""
    import httpx

    if not queries:
        raise InputError(f"{url}: give at least one --query EXPR")
    if step_s <= 0 or start_ns >= end_ns:
        raise InputError(f"{url}: --from must be before --to and --step positive")
    base = url.removeprefix(URL_PREFIX).rstrip("/")
    with httpx.Client(timeout=timeout_s) as client:
        for query in queries:
            for lo, hi in _ranges(start_ns, end_ns, step_s):
                params = {"query": query, "start": lo, "end": hi, "step": step_s}
                try:
                    answer = client.get(f"{base}/api/v1/query_range", params=params)
                except httpx.HTTPError as exc:
                    raise InputError(f"{base}: cannot reach Prometheus: {exc}") from exc
                try:
                    doc = answer.json()
                except ValueError as exc:
                    raise FormatError(f"{base}: answer {answer.status_code} is not JSON") from exc
                if answer.status_code != 200 or doc.get("status") != "success":
                    raise InputError(
                        f"{base}: query {query!r}: {doc.get('error') or answer.status_code}"
                    )
                yield from decode_answer(doc, f"{base} {query!r}", options, query)
