"""`spanomaly adapt`: a trained model learns a new deployment's normal from a short period.

After a redeploy (new pods, new log lines, other levels) the model keeps what it knew and
learns the period's normal on top:

- log templates: lines no known template fits are mined into new templates; the known
  ones stay as they are (their text is part of the event keys the trace model learnt);
- trace model: the period's traces are learnt as normal, the update feedback makes (new
  event keys join the vocabulary, their transitions become possible, the sequence model
  takes a few fine-tuning steps, the duration ranges widen to hold them);
- window model: a feature whose level in the period lies outside its learnt range moves
  its service's normal there (`Normalizer.relevel`); the detectors and thresholds stay.

The model's config.json records each adaptation (period, traces, what changed).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from spanomaly.errors import InputError
from spanomaly.pipeline.features import PeriodData, edges, instance_windows, read_period
from spanomaly.pipeline.model_dir import (
    POINT_DIR,
    has_templates,
    load_points,
    load_templates,
    save_templates,
)
from spanomaly.store.base import Store


def adapt(
    store: Store, model_dir: str | Path, start_ns: int | None, end_ns: int | None
) -> dict[str, Any]:
    """Update the model in model_dir with the normal traces, log lines and windows of
    [start, end) of the store; what changed."""
    from spanomaly.detect.model import TraceModel
    from spanomaly.detect.trace_findings import iso

    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise InputError("--from must be before --to")
    model = TraceModel.load(model_dir)
    with_logs = bool(model.feature_config.logs) and has_templates(model_dir)
    config = replace(model.feature_config, logs=False)
    data = read_period(store, start_ns, end_ns, [], config, lines=with_logs)
    if data.events.num_rows == 0:
        raise InputError("adapt: no traces start in the period: give --from/--to of normal data")
    doc: dict[str, Any] = {"model": str(model_dir), "from": iso(start_ns), "to": iso(end_ns)}
    templates = load_templates(model_dir) if with_logs else None
    if templates is not None:
        lines = data.lines
        doc["log_lines"] = 0 if lines is None else lines.num_rows
        doc["new_templates"] = 0 if not doc["log_lines"] else templates.extend(lines.column("body"))  # type: ignore[union-attr]  # fmt: skip
    doc["traces"] = model.update(data.trace_events(templates))
    doc["windows"] = _relevel(store, model_dir, data, (start_ns, end_ns), templates)
    record = {k: doc[k] for k in ("from", "to", "traces", "windows")}
    model.trained_on_["adapted"] = [*model.trained_on_.get("adapted", []), record]
    save_templates(model_dir, templates)
    model.save(model_dir)
    return doc


def _relevel(
    store: Store,
    model_dir: str | Path,
    data: PeriodData,
    period: tuple[int | None, int | None],
    templates: Any,
) -> dict[str, Any] | None:
    """Move the window model's normal levels to the period's; None without a window model."""
    points = load_points(model_dir)
    if points is None:
        return None
    windows = instance_windows(
        store, data, period, points.profile_, points.window_s,
        templates if points.logs_ else None, edges(*period),
    )  # fmt: skip
    moved = points.relevel(windows.sources)
    points.save(Path(model_dir) / POINT_DIR)
    counts = {s: windows.sources[s].n for s in points.sources_ if s in windows.sources}
    return {"windows": counts, "moved": moved}
