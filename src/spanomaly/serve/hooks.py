"""What the server needs from online detection, as a Protocol (serve never imports the
pipeline: `spanomaly serve --model DIR` builds the detector and passes it in).

The dashboard's Models view shows `status()`, and its actions call `retrain` and
`feedback`; they run in a worker thread, never in the store writer's thread, so an
implementation may itself wait on `Writer.call`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class OnlineHook(Protocol):
    """Online detection with a loaded model: status, retraining and operator feedback."""

    def status(self) -> dict[str, Any]:
        """What is trained, on which period, thresholds, vocabulary size, counters."""
        ...

    def retrain(self, from_ns: int | None, to_ns: int | None) -> dict[str, Any]:
        """Fit the model again on the normal data of [from_ns, to_ns) and load it."""
        ...

    def feedback(self, finding_id: str) -> dict[str, Any]:
        """Mark a finding as a false positive and update the model with it."""
        ...
