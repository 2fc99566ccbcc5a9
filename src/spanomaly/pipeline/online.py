"""Online detection while serving: completed traces and closed instance windows are scored
as the collector stores them, so findings appear without running `detect`.

The collector (`spanomaly.serve`) knows nothing of models: `cli serve --model DIR` builds an
`OnlineDetector` and hands it over. The collector calls `attach` with its store (the
detector takes its own cursor, so scoring never holds up the writer), `on_complete` with
each table of completed traces (from the tracker's thread: it only queues the ids), and
`start` / `stop`. A thread of the detector scores the queued traces every `interval_s`
and, once an instance window is older than `grace_s`, the windows that closed.
`retrain` and `feedback` are the dashboard's actions; they swap the model in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from spanomaly.detect.confirm import CONFIRM_GAP_S, CONFIRM_WITHIN_S, Confirmer
from spanomaly.errors import InputError
from spanomaly.ingest.base import Chunk
from spanomaly.pipeline.detection import detect_points
from spanomaly.pipeline.feedback_update import feedback
from spanomaly.pipeline.model_dir import POINT_DIR, Models, load_models, load_points
from spanomaly.pipeline.reads import with_logs
from spanomaly.pipeline.training import PointOptions, TrainOptions, train
from spanomaly.store.base import Store

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
DEFAULT_GRACE_S = 15.0  # a window is scored this long after it ends (late spans, metrics)
# ... and once the store holds data this far past its end: an OpenTelemetry SDK sends its
# spans up to 5 s after they end (BatchSpanProcessor's schedule delay), so one service's
# spans of a moment can follow another's by that much
EXPORT_DELAY_S = 5.0
SOURCE_STOPPED_S = 60.0  # spans or metrics this far behind the other have stopped coming
# findings from traces are kept as partners (detect.confirm) this long past their reach:
# a window's finding comes its grace time and more after the window
CONFIRM_LATE_S = 90.0
LEVEL_WINDOWS = 5  # an instance without a scored window for this many windows is gone


class OnlineDetector:
    """Scores completed traces and closed instance windows with the model in model_dir."""

    def __init__(
        self,
        model_dir: str | Path,
        interval_s: float = DEFAULT_INTERVAL_S,
        grace_s: float = DEFAULT_GRACE_S,
        train_options: TrainOptions | None = None,
        point_options: PointOptions | None = None,
        clock: Callable[[], int] = time.time_ns,
        confirm_gap_s: float = CONFIRM_GAP_S,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.clock = clock  # ns since the epoch: when instance windows close
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.train_options = train_options
        self.point_options = point_options
        self._store: Store | None = None
        self._cursor: Store | None = None
        self._models: Models | None = None  # the trace model, templates, window model
        self._window_ns: int | None = None
        self._point_info: dict[str, Any] | None = None
        self._closed_ns: int | None = None  # instance windows before this are scored
        self._latest: dict[str, int] = {}  # latest span start and metric time seen stored
        self._pending: list[pa.Array] = []
        # shared by traces and windows (detect.confirm; confirm_gap_s 0 stores every finding)
        self._confirmer = Confirmer(gap_s=confirm_gap_s, keep_s=CONFIRM_WITHIN_S + CONFIRM_LATE_S)
        self._trainings: list[tuple[int, int]] = []  # windows over these are not scored
        self._queue_lock = threading.Lock()
        self._model_lock = threading.RLock()  # scoring vs. a model swap
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.training = False
        self.counts = {
            "traces_scored": 0,
            "anomalous_traces": 0,
            "instances_scored": 0,
            "anomalous_windows": 0,
        }
        self.last_scored_ns: int | None = None
        self.errors = 0
        # the latest window of each (service, instance, source): (time_ns, score, threshold)
        self._levels: dict[tuple[str, str, str], tuple[int, float, float]] = {}

    # -- the collector's side ------------------------------------------------------------

    def attach(self, store: Store) -> None:
        """Use store (the collector's) for reading spans and writing findings."""
        self._store = store
        self._load()

    def on_complete(self, completed: pa.Table) -> None:
        """Queue the ids of completed traces (called from the tracker's thread)."""
        if completed.num_rows:
            with self._queue_lock:
                self._pending.append(completed.column("trace_id").combine_chunks())

    def start(self) -> None:
        """Start scoring in a thread of its own."""
        if self._store is None:
            raise RuntimeError("attach a store before start")
        self._cursor = self._store.cursor()
        if self._window_ns:
            self._closed_ns = self.clock() // self._window_ns * self._window_ns
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="spanomaly-online", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Score what is queued and the windows up to the last data, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._cursor is not None:
            try:
                self._score_traces()
                self._score_windows(final=True)
            except Exception:  # stopping must go on: the collector still has to close
                self.errors += 1
                log.exception("online scoring of the last traces and windows failed")
            self._cursor.close()
            self._cursor = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._score_traces()
                self._score_windows()
            except Exception:  # one bad round must not end online scoring
                self.errors += 1
                log.exception("online scoring failed; going on")

    # -- scoring ---------------------------------------------------------------------------

    def _load(self) -> None:
        if not (self.model_dir / "config.json").exists():
            log.info("%s holds no model yet: online scoring waits for one", self.model_dir)
            return
        with self._model_lock:
            models = self._models = load_models(self.model_dir)
            _one_compute_thread()
            point = models.windows
            self._window_ns = point.window_ns if point else None
            self._confirmer.set_window(self._window_ns / 1e9 if self._window_ns else None)
            self._confirmer.keep_s = self._confirmer.within_s + CONFIRM_LATE_S
            if self._window_ns and self._closed_ns is None and self._cursor is not None:
                # from the first window that starts after the model is loaded: the one
                # under way holds the training itself (it takes the collector's CPU)
                w = self._window_ns
                self._closed_ns = -(-self.clock() // w) * w
            self._point_info = (
                {
                    "detector": point.detector,
                    "window_s": point.window_s,
                    "sources": sorted(point.sources_),
                }
                if point
                else None
            )

    def _score_traces(self) -> None:
        with self._queue_lock:
            pending, self._pending = self._pending, []
        if not pending or self._cursor is None or self._models is None:
            return  # before a model is loaded, completed traces are not scored
        from spanomaly.features.traces import events as trace_events_of

        ids = pa.chunked_array(pending).unique().to_pylist()
        with self._model_lock:
            models = self._models
            assert models is not None and models.traces is not None
            spans = self._cursor.traces(ids)
            if spans.num_rows == 0:
                return
            events = trace_events_of(spans, models.traces.feature_config)
            templates = models.trace_templates()
            if templates is not None:  # the traces' log lines are events too
                events = with_logs(self._cursor, events, ids, templates)
            result = models.traces.detect(events)
            confirmed = self._confirmer.push(result.findings)
            if confirmed.num_rows:
                self._cursor.write(Chunk("findings", confirmed))  # type: ignore[arg-type]
        self.counts["traces_scored"] += len(result.trace_ids)
        self.counts["anomalous_traces"] += int(result.anomalous.sum())
        self.last_scored_ns = self.clock()

    def _score_windows(self, final: bool = False) -> None:
        w = self._window_ns
        if not w or self._closed_ns is None or self._cursor is None:
            return
        now = self.clock()
        closed = (now - int(self.grace_s * 1e9)) // w * w
        if final:
            closed = (now // w + 1) * w
        else:  # not past what the store holds: its writer may be behind the clock
            mark = self._stored_through()
            if mark is None:
                return
            closed = min(closed, (mark - int(EXPORT_DELAY_S * 1e9)) // w * w)
        if closed <= self._closed_ns:
            return
        levels: list[pa.Table] = []
        with self._model_lock:
            doc = detect_points(
                self._cursor,
                self.model_dir,
                self._closed_ns,
                closed,
                model=self._models,
                confirmer=self._confirmer,
                skip=self._trainings,
                levels=levels,
            )
        self._closed_ns = closed
        self._keep_levels(levels, closed)
        if doc:
            self.counts["instances_scored"] += doc["instances_scored"]
            self.counts["anomalous_windows"] += doc["anomalous_windows"]

    def _keep_levels(self, levels: list[pa.Table], closed_ns: int) -> None:
        """Remember each instance's latest window score; an instance without a window for
        LEVEL_WINDOWS windows (a pod gone) is forgotten."""
        if levels:
            table = pa.concat_tables(levels).sort_by("time_ns")
            latest = dict(self._levels)
            for r in table.to_pylist():  # one row per instance window, not per span
                key = (r["service"], r["instance"], r["source"])
                latest[key] = (r["time_ns"], r["score"], r["threshold"])
            self._levels = latest
        oldest = closed_ns - LEVEL_WINDOWS * (self._window_ns or 0)
        self._levels = {k: v for k, v in self._levels.items() if v[0] >= oldest}

    def lateness_s(self) -> float:
        """How long after its time a finding can still come: a window's is timed at the
        window's end and scored its grace and the export delay later."""
        return (self._window_ns or 0) / 1e9 + self.grace_s + EXPORT_DELAY_S + self.interval_s

    def levels(self) -> list[dict[str, Any]]:
        """The latest window score of each instance and source, with its threshold."""
        return [
            {
                "service": k[0],
                "instance": k[1],
                "source": k[2],
                "time_ns": v[0],
                "score": v[1],
                "threshold": v[2],
            }
            for k, v in sorted(self._levels.items())
        ]

    def suspects(self, start_ns: int, end_ns: int, top: int = 3) -> list[dict[str, Any]]:
        """The ranking's top suspects of [start, end] (rca's rank, service, instance,
        operation, score)."""
        from spanomaly.pipeline.rank import rank_period

        if self._store is None:
            return []
        cursor = self._store.cursor()
        try:
            rows = rank_period(cursor, start_ns, end_ns, "both", "ranked", self.model_dir)
        finally:
            cursor.close()
        keep = ("rank", "service", "instance", "operation", "score")
        return [{k: r.get(k) for k in keep} for r in rows.slice(0, top).to_pylist()]

    def _stored_through(self) -> int | None:
        """How far the store holds data (None: none yet): the earlier of the latest span
        start and the latest metric time, since either writer may lag (windows scored
        before their spans arrived read as traffic gone on every instance); a source a
        minute behind the other has stopped and is not waited for. Each source is read
        from its own last mark on, so DuckDB skips every row group that ends before it."""
        assert self._cursor is not None and self._closed_ns is not None
        start = {k: self._latest.get(k, 0) for k in ("spans", "metrics")}  # first: all
        row = self._cursor.sql(
            "SELECT (SELECT max(start_ns) FROM spans WHERE start_ns >= $1) AS spans, "
            "(SELECT max(time_ns) FROM metrics WHERE time_ns >= $2) AS metrics",
            [start["spans"], start["metrics"]],
        ).to_pylist()[0]
        for source, t in row.items():
            if t is not None:
                self._latest[source] = max(int(t), self._latest.get(source, int(t)))
        if not self._latest:
            return None
        ahead = max(self._latest.values())
        return min(t for t in self._latest.values() if t >= ahead - int(SOURCE_STOPPED_S * 1e9))

    # -- the dashboard's side ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What is loaded (period, detectors, thresholds, vocabulary) and what was scored."""
        from spanomaly.detect.trace_findings import iso
        from spanomaly.features.traces import N_SPECIAL

        with self._model_lock:
            model = self._models.traces if self._models is not None else None
            point = self._point_info
        doc: dict[str, Any] = {
            "model": str(self.model_dir),
            "loaded": model is not None,
            "training": self.training,
            "scored": dict(self.counts),
            "last_scored": iso(self.last_scored_ns),
            "queued_traces": sum(len(a) for a in self._pending),
            "errors": self.errors,
            # findings from traces waiting for a partner, and those none came for
            "unconfirmed": {"held": self._confirmer.held, "dropped": self._confirmer.dropped},
        }
        if model is not None:
            trained = model.trained_on_
            doc["trained_on"] = {
                "from": iso(trained.get("from_ns")),
                "to": iso(trained.get("to_ns")),
                "traces": trained.get("traces"),
                "events": trained.get("events"),
                "feedback_traces": trained.get("feedback_traces", 0),
            }
            # event keys known now (feedback adds keys), special tokens not counted
            doc["vocabulary"] = len(model.vocabulary_.tokens) - N_SPECIAL
            doc["detectors"] = {
                role: {"name": det.name, "threshold": det.threshold_}
                for role, det in model.detectors_.items()
            }
        if point is not None:
            doc["point"] = point
        return doc

    def retrain(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        exclude: Iterable[tuple[int, int]] = (),
        point_window_s: float | None = None,
        point_sources: tuple[str, ...] | None = None,
        target_fpr: float | None = None,
        point_target_fpr: float | None = None,
    ) -> dict[str, Any]:
        """Fit new models on the period, then swap them in for the loaded ones.

        The point model keeps the loaded one's window and sources unless given; target_fpr,
        when given, sets the trace and point detectors' target false-positive rate,
        point_target_fpr the point detectors' alone.
        """
        if self._store is None:
            raise RuntimeError("attach a store before retrain")
        point = self.point_options
        loaded = load_points(self.model_dir)
        if point is None and loaded is not None:
            point = PointOptions(
                detector=loaded.detector,
                window_s=loaded.window_s,
                # the sources the loaded model was fitted on; none (a period too short
                # for a window) is no reason to try none again
                sources=tuple(loaded.sources_) or PointOptions().sources,
            )
        point = point or PointOptions()
        if point_window_s is not None:
            if point_window_s <= 0:
                raise InputError("point_window_s: must be positive")
            point = replace(point, window_s=point_window_s)
        if point_sources is not None:
            point = replace(point, sources=tuple(point_sources))
        options = self.train_options
        for name, fpr in (("target_fpr", target_fpr), ("point_target_fpr", point_target_fpr)):
            if fpr is not None and not 0 < fpr < 1:
                raise InputError(f"{name}: must be in (0, 1)")
        if target_fpr is not None:
            point = replace(point, target_fpr=target_fpr)
            options = replace(options or TrainOptions(), target_fpr=target_fpr)
        if point_target_fpr is not None:
            point = replace(point, target_fpr=point_target_fpr)
        self.training = True
        began = self.clock()
        cursor = self._store.cursor()
        self.model_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".train-", dir=self.model_dir.parent))
        try:
            doc = _in_background(
                lambda: train(cursor, staging, start_ns, end_ns, exclude, None, options, point)
            )
            with self._model_lock:
                old = self.model_dir.with_name(self.model_dir.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                if self.model_dir.exists():
                    self.model_dir.rename(old)
                staging.rename(self.model_dir)
                shutil.rmtree(old, ignore_errors=True)
                self._load()
                # an instance window over the training holds the training's CPU, which
                # the services' normal does not: it is not scored
                self._trainings = [*self._trainings[-9:], (began, self.clock())]
        finally:
            self.training = False
            cursor.close()
            shutil.rmtree(staging, ignore_errors=True)
        doc["model"] = str(self.model_dir)
        return doc

    def feedback(self, finding_id: str) -> dict[str, Any]:
        """Mark a finding as a false positive; its trace updates the loaded model."""
        if self._store is None:
            raise RuntimeError("attach a store before feedback")
        cursor = self._store.cursor()
        try:
            with self._model_lock:
                doc = feedback(cursor, self.model_dir, finding_id)
                self._load()
        finally:
            cursor.close()
        return doc


__all__ = ["DEFAULT_GRACE_S", "DEFAULT_INTERVAL_S", "POINT_DIR", "OnlineDetector"]


TRAIN_NICE = 10  # training is background work: the services and the intake keep the CPU


def _one_compute_thread() -> None:
    """Keep PyTorch's scoring bursts (the LSTM) to one core: online scoring runs beside the
    services it watches, and a burst over every core stalls their requests for as long
    (the demo's slow calls across services at one moment)."""
    import sys

    torch = sys.modules.get("torch")  # loaded with a model that needs it
    if torch is not None and torch.get_num_threads() > 1:
        torch.set_num_threads(1)


def _in_background(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run work on a thread of its own at a lower CPU priority (nice TRAIN_NICE, on Linux:
    the priority is per thread there, and threads it starts inherit it), and wait for it."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            if hasattr(os, "setpriority"):  # where not allowed: the normal priority
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRAIN_NICE)
            out["doc"] = work()
        except BaseException as exc:  # handed to the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=run, name="spanomaly-train", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["doc"]
