"""What the collector can be handed besides its store: online detection (`Online`).

serve/ never imports the pipeline; `spanomaly serve --model DIR` builds the object and
passes it to `create_app`. The dashboard's Models view shows `status()`, and its actions
call `retrain` and `feedback` in a worker thread (never the store writer's thread).
"""

from __future__ import annotations

from typing import Any, Protocol


class Online(Protocol):
    """Online detection with a loaded model: status, retraining and operator feedback."""

    def status(self) -> dict[str, Any]:
        """The loaded model (period, detectors, thresholds, vocabulary) and counters."""
        ...

    def retrain(self, start_ns: int | None = None, end_ns: int | None = None) -> dict[str, Any]:
        """Fit new models on the period and swap them in (blocks: call from a worker)."""
        ...

    def feedback(self, finding_id: str) -> dict[str, Any]:
        """Mark a finding as a false positive and update the model with it."""
        ...
