"""`--engine dask` wiring: the Parquet store's partitions → `scale.dask` → findings back."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from spanomaly.errors import InputError
from spanomaly.pipeline.reads import trace_spans_query
from spanomaly.store.base import Store

if TYPE_CHECKING:
    from spanomaly.features.traces import FeatureConfig

log = logging.getLogger(__name__)


def default_scheduler() -> str:
    """$SPANOMALY_SCHEDULER, else a local cluster of one worker per CPU."""
    return os.environ.get("SPANOMALY_SCHEDULER") or f"local:{os.cpu_count() or 1}"


def span_partitions(
    store: Store, start_ns: int | None = None, end_ns: int | None = None
) -> list[list[str]]:
    """The files of each spans partition that may hold traces starting in the period."""
    from spanomaly.store.parquet import HOUR_NS, LOOKBACK_H, ParquetStore, hour_of

    if not isinstance(store, ParquetStore):
        raise InputError(
            "--engine dask: needs a Parquet store (--store parquet:DIR); "
            "`spanomaly export --parquet DIR` writes one from a DuckDB store"
        )
    margin = LOOKBACK_H * HOUR_NS  # a trace's spans lie within this of its partition hour
    lo = hour_of(start_ns - margin) if start_ns is not None else ""
    hi = hour_of(end_ns + margin) if end_ns is not None else "~"
    return [
        store.files("spans", part)
        for part in store.partitions("spans")
        if lo <= str(part["hour"]) <= hi
    ]


def trace_events(
    store: Store,
    scheduler: str | None,
    start_ns: int | None,
    end_ns: int | None,
    exclude: Iterable[tuple[int, int]],
    exclude_flagged: bool,
    config: FeatureConfig,
) -> pa.Table:
    """The training events of the period, prepared per partition on the cluster."""
    from spanomaly.scale import dask as scale

    sql, params = trace_spans_query(start_ns, end_ns, exclude, exclude_flagged)
    parts = span_partitions(store, start_ns, end_ns)
    findings = store.table("findings") if exclude_flagged else None
    with scale.connect(scheduler or default_scheduler()) as client:
        return scale.partition_events(client, parts, sql, params, config, findings)


def detect_traces(
    store: Store,
    model_dir: str | Path,
    start_ns: int | None,
    end_ns: int | None,
    scheduler: str | None,
) -> tuple[int, int, pa.Table]:
    """Score the traces of the period on the cluster; traces scored, anomalous, findings."""
    from spanomaly.scale import dask as scale

    sql, params = trace_spans_query(start_ns, end_ns)
    parts = span_partitions(store, start_ns, end_ns)
    log.info("scoring %d partitions on %s", len(parts), scheduler or default_scheduler())
    with scale.connect(scheduler or default_scheduler()) as client:
        return scale.score_partitions(client, parts, sql, params, model_dir)
