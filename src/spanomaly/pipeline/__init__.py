"""Wiring of the stages, the only place (with cli.py) that joins them.

- `ingest`: files → decoders → store, one transaction per file;
- `events`: trace events of a period, read from the store for the models;
- `traces`: collective anomalies: train / detect / feedback;
- `points`: instance windows, point detectors, root-cause ranking and evaluation.
"""

from spanomaly.pipeline.events import span_range, trace_events
from spanomaly.pipeline.ingest import IngestReport, Progress, ingest, open_store
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
