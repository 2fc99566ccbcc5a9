"""The model directory: the trace model, its log templates and the window model, loaded
together for detection (`spanomaly train --model DIR` writes them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spanomaly.errors import ModelError

if TYPE_CHECKING:
    from spanomaly.detect.model import TraceModel
    from spanomaly.detect.window_model import WindowModel
    from spanomaly.features.logs import TemplateMiner

TEMPLATES_FILE = "templates.json"  # the log templates, beside the trace model
POINT_DIR = "point"  # the window model, below the trace model


def load_templates(model_dir: str | Path) -> TemplateMiner:
    """The log templates saved with a trace model."""
    from spanomaly.features.logs import TemplateMiner

    path = Path(model_dir) / TEMPLATES_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelError(f"{path}: the model uses logs but its templates are missing") from exc
    try:
        return TemplateMiner.loads(text)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc


def save_templates(model_dir: str | Path, templates: TemplateMiner | None) -> None:
    """Write the templates beside the trace model (remove stale ones when there are none)."""
    path = Path(model_dir) / TEMPLATES_FILE
    if templates is not None:
        path.write_text(templates.dumps())
    else:
        path.unlink(missing_ok=True)


def has_templates(model_dir: str | Path) -> bool:
    """Whether the directory holds log templates."""
    return (Path(model_dir) / TEMPLATES_FILE).exists()


def has_trace_model(model_dir: str | Path | None) -> bool:
    """Whether the directory holds a trace model (a model of metrics alone does not)."""
    return model_dir is not None and (Path(model_dir) / "config.json").exists()


def load_points(model_dir: str | Path) -> WindowModel | None:
    """The window model under model_dir, or None when there is none."""
    from spanomaly.detect.window_model import WindowModel

    return WindowModel.load(Path(model_dir) / POINT_DIR)


def point_window_ns(model_dir: str | Path | None) -> int:
    """The window model's window length in ns (0 without a window model)."""
    from spanomaly.detect.window_model import window_length_ns

    return 0 if model_dir is None else window_length_ns(Path(model_dir) / POINT_DIR)


@dataclass
class Models:
    """What detection loads from a model directory."""

    traces: TraceModel | None  # None only where a window model is used alone
    templates: TemplateMiner | None  # when the trace model or the window model reads logs
    windows: WindowModel | None

    @property
    def window_s(self) -> float | None:
        """The instance windows' length (None without a window model)."""
        return self.windows.window_s if self.windows else None

    def trace_templates(self) -> TemplateMiner | None:
        """The templates the trace model's log events need (None when it reads no logs)."""
        return self.templates if self.traces and self.traces.feature_config.logs else None

    def window_templates(self) -> TemplateMiner | None:
        """The templates the window model's log shares need (None when it has none)."""
        return self.templates if self.windows is not None and self.windows.logs_ else None


def load_models(model_dir: str | Path, traces: bool = True) -> Models:
    """The trace model (with traces=False: where there is one), its templates (when a model
    reads logs) and the window model."""
    from spanomaly.detect.model import TraceModel

    has_traces = traces or has_trace_model(model_dir)
    trace_model = TraceModel.load(model_dir) if has_traces else None
    windows = load_points(model_dir)
    logs = (trace_model is not None and trace_model.feature_config.logs) or (
        windows is not None and windows.logs_
    )
    return Models(trace_model, load_templates(model_dir) if logs else None, windows)
