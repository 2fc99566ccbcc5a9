"""Wiring of the stages, the only place (with cli.py) that joins them.

- `ingest`: files → decoders → store, one transaction per file;
- `events`: trace events of a period, read from the store for the models;
- `traces`: collective anomalies: train / detect / feedback;
- `points`: instance windows, point detectors, root-cause ranking and evaluation.

The names of `events`, `traces` and `points` are imported on first use: an import only
(`spanomaly ingest`, the collector) then loads neither the models' code nor what they import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from spanomaly.pipeline.ingest import IngestReport, Progress, ingest, open_store

if TYPE_CHECKING:
    from spanomaly.pipeline.events import span_range, trace_events
    from spanomaly.pipeline.points import (
        POINT_DIR,
        POINT_SOURCES,
        PointOptions,
        detect_points,
        evaluate,
        load_points,
        rca,
        train_points,
    )
    from spanomaly.pipeline.traces import (
        DETECT_CHUNK_S,
        TrainOptions,
        detect,
        feedback,
        train,
        train_models,
    )

# name -> submodule that defines it
_LAZY = {
    "span_range": "events",
    "trace_events": "events",
    "POINT_DIR": "points",
    "POINT_SOURCES": "points",
    "PointOptions": "points",
    "detect_points": "points",
    "evaluate": "points",
    "load_points": "points",
    "rca": "points",
    "train_points": "points",
    "DETECT_CHUNK_S": "traces",
    "TrainOptions": "traces",
    "detect": "traces",
    "feedback": "traces",
    "train": "traces",
    "train_models": "traces",
}


def __getattr__(name: str) -> object:
    """A name of events, traces or points, imported on first use (PEP 562)."""
    if name in ("events", "points", "traces"):  # the submodules themselves
        return importlib.import_module(f"{__name__}.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DETECT_CHUNK_S",
    "POINT_DIR",
    "POINT_SOURCES",
    "IngestReport",
    "PointOptions",
    "Progress",
    "TrainOptions",
    "detect",
    "detect_points",
    "evaluate",
    "feedback",
    "ingest",
    "load_points",
    "open_store",
    "rca",
    "span_range",
    "trace_events",
    "train",
    "train_models",
    "train_points",
]
