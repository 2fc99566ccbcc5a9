"""Trace assembly, featurisation and scoring per Parquet partition on Dask workers.

A partition (`store.parquet`: one hour, one trace-id bucket) holds whole traces, so a
worker turns its spans into events and scores them on its own. The model travels once to
each worker as the bytes of its directory (JSON and safetensors, no pickle of the model);
a worker loads it once and keeps it for every later partition. Workers read the Parquet
files themselves: on a real cluster the dataset folder must be on storage every worker
sees at the same path (NFS, a shared volume), and spanomaly installed on every worker.

Dask is imported inside the functions: `spanomaly --help` does not pay for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa

from spanomaly.errors import ClusterError, InputError
from spanomaly.schema import FINDINGS, SPANS

if TYPE_CHECKING:
    from distributed import Client

    from spanomaly.detect.model import TraceModel
    from spanomaly.features.traces import FeatureConfig

log = logging.getLogger(__name__)

DEFAULT_WORKER_MEMORY = "4GiB"  # memory limit of each worker of a local:N cluster
_MODELS: dict[str, TraceModel] = {}  # per worker process: model digest -> loaded model


@contextmanager
def connect(scheduler: str, memory_limit: str = DEFAULT_WORKER_MEMORY) -> Iterator[Client]:
    """A Dask client: `local:N` starts N one-thread worker processes here, else the address
    of a running scheduler (tcp://host:8786)."""
    from distributed import Client, LocalCluster

    if scheduler.startswith("local:"):
        try:
            n = int(scheduler[6:])
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"--scheduler: {scheduler!r}: local:N needs N >= 1 workers")
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=":0",  # any free port: never a clash with another cluster
            env={"OMP_NUM_THREADS": "1"},
        )
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(scheduler, timeout=30)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"--scheduler: cannot reach {scheduler}: {exc}") from exc
    try:
        yield client
    finally:
        client.close()


def model_payload(model_dir: str | Path) -> tuple[str, dict[str, bytes]]:
    """The files of a model directory as bytes, and their digest (the model's identity)."""
    files = {p.name: p.read_bytes() for p in sorted(Path(model_dir).iterdir()) if p.is_file()}
    digest = hashlib.sha256()
    for name, data in files.items():
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest(), files


def _model(digest: str, files: dict[str, bytes]) -> TraceModel:
    """The model of digest on this worker, loaded from its files once."""
    from spanomaly.detect.model import TraceModel

    if digest not in _MODELS:
        with tempfile.TemporaryDirectory(prefix="spanomaly-model-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            _MODELS[digest] = TraceModel.load(tmp)
        log.info("worker %s: model %s loaded", os.getpid(), digest[:12])
    return _MODELS[digest]


def _partition_spans(
    files: list[str], sql: str, params: list[object], findings: pa.Table | None
) -> pa.Table:
    """The spans selected by sql (over `spans` and `findings`) from one partition's files."""
    con = duckdb.connect(config={"threads": 1})
    try:
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(f"CREATE VIEW spans AS SELECT * FROM read_parquet([{listed}])")
        con.register("findings", findings if findings is not None else FINDINGS.empty_table())
        return con.sql(sql, params=params or None).to_arrow_table()
    finally:
        con.close()


def _events_task(
    index: int,
    files: list[str],
    sql: str,
    params: list[object],
    config: dict[str, Any],
    findings: pa.Table | None,
) -> pa.Table:
    """Events of one partition, with the partition index and row order for the merge."""
    from spanomaly.features import traces as trace_features

    events = trace_features.events(
        _partition_spans(files, sql, params, findings),
        trace_features.FeatureConfig.from_json(config),
    )
    n = events.num_rows
    return events.append_column("_part", pa.array(np.full(n, index), pa.int64())).append_column(
        "_row", pa.array(np.arange(n), pa.int64())
    )


def _score_task(
    files: list[str], sql: str, params: list[object], digest: str, model: dict[str, bytes]
) -> tuple[int, int, pa.Table]:
    """Traces scored, anomalous, and findings of one partition."""
    from spanomaly.features import traces as trace_features

    trace_model = _model(digest, model)
    spans = _partition_spans(files, sql, params, None)
    events = trace_features.events(spans, trace_model.feature_config)
    if events.num_rows == 0:
        return 0, 0, FINDINGS.empty_table()
    result = trace_model.detect(events)
    return len(result.trace_ids), int(result.anomalous.sum()), result.findings


def _peak_rss() -> int:
    """Peak resident memory of this process, bytes (VmHWM: ru_maxrss would also count the
    parent's memory that a forked-then-exec'd worker inherits)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_peak_memory(client: Client) -> dict[str, int]:
    """Peak resident memory of every worker process so far, bytes, by worker address."""
    return dict(client.run(_peak_rss))


def _gather(client: Client, futures: list[Any], done: Callable[[int], None] | None) -> list[Any]:
    """Results of futures in completion order; a task's error as one ClusterError line."""
    from distributed import as_completed

    out = []
    try:
        for i, fut in enumerate(as_completed(futures), 1):
            out.append(fut.result())
            if done:
                done(i)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"the Dask cluster failed: {exc}") from exc
    return out


def partition_events(
    client: Client,
    partitions: list[list[str]],
    sql: str,
    params: list[object],
    config: FeatureConfig,
    findings: pa.Table | None = None,
) -> pa.Table:
    """Events of the traces sql selects, assembled per partition on the workers, in the
    order `features.traces.events` gives over all of them (traces by first start)."""
    from spanomaly.features.traces import EVENT_COLUMNS, events

    shared = client.scatter(findings, broadcast=True) if findings is not None else None
    futures = [
        client.submit(_events_task, i, files, sql, params, config.to_json(), shared, pure=False)
        for i, files in enumerate(partitions)
    ]
    tables = [t for t in _gather(client, futures, None) if t.num_rows]
    if not tables:
        return events(SPANS.empty_table(), config)
    con = duckdb.connect()
    try:
        con.register("_events", pa.concat_tables(tables))
        cols = ", ".join(EVENT_COLUMNS)
        return con.sql(
            f"SELECT {cols} FROM _events ORDER BY min(start_ns) OVER (PARTITION BY trace_id), "
            "trace_id, _part, _row"
        ).to_arrow_table()
    finally:
        con.close()


def score_partitions(
    client: Client,
    partitions: list[list[str]],
    sql: str,
    params: list[object],
    model_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int, pa.Table]:
    """Score the traces sql selects, one task per partition, the model sent once to each
    worker; traces scored, anomalous, and the findings of all partitions."""
    digest, files = model_payload(model_dir)
    model = client.scatter(files, broadcast=True, hash=False)
    futures = [
        client.submit(_score_task, part, sql, params, digest, model, pure=False)
        for part in partitions
    ]
    done = (lambda i: progress(i, len(futures))) if progress else None
    results = _gather(client, futures, done)
    found = [f for _, _, f in results if f.num_rows]
    findings = pa.concat_tables(found) if found else FINDINGS.empty_table()
    return sum(r[0] for r in results), sum(r[1] for r in results), findings
