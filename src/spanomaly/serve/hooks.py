"""What the collector can be handed besides its store: online detection (`Online`).

serve/ never imports the pipeline; `spanomaly serve --model DIR` builds the object
(`spanomaly.pipeline.online.OnlineDetector`) and passes it to `create_app`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import pyarrow as pa

from spanomaly.store.base import Store


class Online(Protocol):
    """Scores traces as they complete and instance windows as they close."""

    def attach(self, store: Store) -> None:
        """Use the collector's store (the detector opens its own cursor on it)."""
        ...

    def on_complete(self, completed: pa.Table) -> None:
        """Completed traces (`serve.completion.COMPLETED`), from the tracker's thread."""
        ...

    def start(self) -> None:
        """Start scoring."""
        ...

    def stop(self) -> None:
        """Score what is queued, then stop."""
        ...

    def status(self) -> dict[str, Any]:
        """The loaded model (period, detectors, thresholds, vocabulary) and counters."""
        ...

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
        """Fit new models on the period and swap them in (blocks: call from a worker)."""
        ...

    def lateness_s(self) -> float:
        """How long after its time a finding can still be stored (a window's: its length,
        the grace and the export delay)."""
        ...

    def levels(self) -> list[dict[str, Any]]:
        """The latest window score of each instance and source (service, instance, source,
        time_ns, score, threshold)."""
        ...

    def suspects(self, start_ns: int, end_ns: int, top: int = 3) -> list[dict[str, Any]]:
        """The ranking's top suspects of a period (rank, service, instance, operation,
        score)."""
        ...

    def feedback(self, finding_id: str) -> dict[str, Any]:
        """Mark a finding as a false positive and update the model with it."""
        ...
