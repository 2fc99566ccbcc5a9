"""`spanomaly feedback`: a finding marked as a false positive updates the trace model."""

from __future__ import annotations

from pathlib import Path

from spanomaly.errors import InputError
from spanomaly.pipeline.model_dir import load_templates
from spanomaly.pipeline.reads import with_logs
from spanomaly.store.base import Store


def feedback(
    store: Store, model_dir: str | Path, finding: str, normal: bool = True
) -> dict[str, object]:
    """Mark a finding as a false positive and update the model with its trace."""
    from spanomaly.detect.model import TraceModel
    from spanomaly.features.traces import events as trace_events_of

    if not normal:
        raise InputError("feedback: only --normal (a false positive) is supported")
    rows = store.sql(
        "SELECT finding_id, trace_id, entity FROM findings WHERE finding_id = ?", [finding]
    ).to_pylist()
    if not rows:
        raise InputError(f"--finding: no finding {finding!r} in the store")
    trace_id = rows[0]["trace_id"]
    doc: dict[str, object] = {"finding": finding, "feedback": "normal", "model_updated": False}
    if trace_id:
        model = TraceModel.load(model_dir)
        events = trace_events_of(store.traces([trace_id]), model.feature_config)
        if model.feature_config.logs:  # the trace's log lines are events of it too
            events = with_logs(store, events, [trace_id], load_templates(model_dir))
        update = model.update(events)
        model.save(model_dir)
        doc.update(model_updated=True, trace_id=trace_id, **update)
    store.set_feedback([finding], "normal")
    return doc
