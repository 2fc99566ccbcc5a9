"""`spanomaly report`: evaluate the period against the store's labels, then write the HTML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spanomaly.pipeline.evaluation import evaluate
from spanomaly.store.base import Store


def report(
    store: Store,
    out_dir: Path,
    start_ns: int | None = None,
    end_ns: int | None = None,
    model_dir: str | Path | None = None,
    evaluation: dict[str, Any] | None = None,
    title: str = "spanomaly report",
) -> tuple[Path, dict[str, Any]]:
    """Write out_dir/index.html and results.json; returns the HTML path and the evaluation."""
    from spanomaly.report import write_report

    if evaluation is None:
        evaluation = evaluate(store, start_ns, end_ns, model_dir=model_dir)
    path = write_report(store, Path(out_dir), evaluation, start_ns, end_ns, title)
    return path, evaluation
