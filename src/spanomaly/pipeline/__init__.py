"""Wiring of the stages, the only place (with cli.py) that joins them.

- `ingest`: files → decoders → store, one transaction per file;
- `reads`: what is read from the store for a period (trace events, log lines, metrics);
- `features`: the feature sets of a period, each built once (events, log events, windows);
- `model_dir`: the model directory (trace model, templates, window model);
- `training`: the normal period → features → trace model and window model;
- `detection`: models → per chunk features → scores → confirmation → findings stored;
- `feedback_update`: a false positive updates the trace model;
- `adapt`: a short normal period of a new deployment updates the whole model;
- `rank` and `evaluation`: root-cause ranking, and its figures against fault labels;
- `online`, `demo`, `report`, `scaled`: the collector's detector, the main job, the HTML
  report, the Dask engine.

The names of the model modules are imported on first use: an import only (`spanomaly
ingest`, the collector) then loads neither the models' code nor what they import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from spanomaly.pipeline.ingest import IngestReport, Progress, ingest, open_store, pull_prometheus

if TYPE_CHECKING:
    from spanomaly.pipeline.adapt import adapt
    from spanomaly.pipeline.detection import DETECT_CHUNK_S, detect, detect_points
    from spanomaly.pipeline.evaluation import evaluate
    from spanomaly.pipeline.feedback_update import feedback
    from spanomaly.pipeline.model_dir import POINT_DIR, load_points
    from spanomaly.pipeline.rank import rca
    from spanomaly.pipeline.reads import span_range, trace_events
    from spanomaly.pipeline.training import (
        POINT_SOURCES,
        PointOptions,
        TrainOptions,
        train,
        train_points,
    )

# name -> submodule that defines it
_LAZY = {
    "adapt": "adapt",
    "DETECT_CHUNK_S": "detection",
    "detect": "detection",
    "detect_points": "detection",
    "evaluate": "evaluation",
    "feedback": "feedback_update",
    "POINT_DIR": "model_dir",
    "load_points": "model_dir",
    "rca": "rank",
    "span_range": "reads",
    "trace_events": "reads",
    "POINT_SOURCES": "training",
    "PointOptions": "training",
    "TrainOptions": "training",
    "train": "training",
    "train_points": "training",
}
_SUBMODULES = (
    "detection", "evaluation", "feedback_update", "model_dir", "rank", "reads", "training",
)  # fmt: skip


def __getattr__(name: str) -> object:
    """A name of the model modules, imported on first use (PEP 562)."""
    if name in _SUBMODULES or name in ("online", "demo", "report", "scaled", "features"):
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
    "adapt",
    "detect",
    "detect_points",
    "evaluate",
    "feedback",
    "ingest",
    "load_points",
    "open_store",
    "pull_prometheus",
    "rca",
    "span_range",
    "trace_events",
    "train",
    "train_points",
]
