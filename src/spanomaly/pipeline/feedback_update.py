"""`spanomaly feedback`: a finding marked as a false positive updates the trace model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from spanomaly.errors import InputError, NotFoundError
from spanomaly.pipeline.model_dir import load_templates
from spanomaly.pipeline.reads import with_logs
from spanomaly.store.base import Store

if TYPE_CHECKING:
    import pyarrow as pa

    from spanomaly.detect.model import TraceModel


def feedback(
    store: Store, model_dir: str | Path, finding: str, normal: bool = True
) -> dict[str, object]:
    """Mark a finding as a false positive and update the model with its trace; a finding
    marked already changes nothing. The answer says what changed, and how many other
    trace findings of the store the updated model no longer flags (the reach of the mark:
    a new `detect` would not store them)."""
    if not normal:
        raise InputError("feedback: only --normal (a false positive) is supported")
    rows = store.sql(
        "SELECT finding_id, trace_id, entity, feedback FROM findings WHERE finding_id = ?",
        [finding],
    ).to_pylist()
    if not rows:
        raise NotFoundError(f"no finding {finding!r} in the store")
    trace_id = rows[0]["trace_id"]
    doc: dict[str, object] = {"finding": finding, "feedback": "normal", "model_updated": False}
    if rows[0]["feedback"] == "normal":
        return {**doc, "changed": "nothing: the finding was marked normal already"}
    if trace_id:
        doc.update(_update_model(store, model_dir, trace_id, finding))
    store.set_feedback([finding], "normal")
    doc["changed"] = (
        f"marked normal; the model learnt its trace and no longer flags {doc['clears']} other "
        "trace findings of the store" if doc["model_updated"] else "marked normal"
    )  # fmt: skip
    return doc


def _update_model(
    store: Store, model_dir: str | Path, trace_id: str, finding: str
) -> dict[str, object]:
    """Update the trace model with a trace; what changed, and the reach of the update."""
    from spanomaly.detect.model import TraceModel

    model = TraceModel.load(model_dir)
    update = model.update(_events(store, model, model_dir, [trace_id]))
    model.save(model_dir)
    others = (
        store.sql(
            "SELECT DISTINCT trace_id FROM findings WHERE entity = 'trace' AND trace_id IS NOT NULL "
            "AND feedback IS NULL AND finding_id <> ?",
            [finding],
        )
        .column("trace_id")
        .to_pylist()
    )
    clears = 0
    if others:
        result, _, _ = model.score(_events(store, model, model_dir, others))
        clears = int((~result.anomalous).sum())
    return {"model_updated": True, "trace_id": trace_id, **update, "clears": clears}


def _events(store: Store, model: TraceModel, model_dir: str | Path, ids: list[str]) -> pa.Table:
    """The events of some traces under the model's features (their log lines too)."""
    from spanomaly.features.traces import events as trace_events_of

    events = trace_events_of(store.traces(ids), model.feature_config)
    if model.feature_config.logs:  # the traces' log lines are events of them too
        events = with_logs(store, events, ids, load_templates(model_dir))
    return events
