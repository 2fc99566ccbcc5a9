"""Screenshots of the browser tests, kept where CI collects test artifacts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def keep(shot: Path) -> None:
    """Copy a screenshot to $SPANOMALY_TEST_ARTIFACTS where it is set."""
    artifacts = os.environ.get("SPANOMALY_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / shot.name)
