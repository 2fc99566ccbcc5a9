"""Settings shared by the CLI and the library: flags win over SPANOMALY_* env over defaults."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DB = "spanomaly.duckdb"
DEFAULT_MODEL_DIR = "spanomaly-model"
DEFAULT_FAULT_DURATION_S = 180.0
# Rows per batch handed from a decoder to the store: bounds memory and is one transaction.
BATCH_ROWS = 131_072


def db_path(flag: str | None = None) -> Path:
    """The store path: the flag, else $SPANOMALY_DB, else ./spanomaly.duckdb."""
    return Path(flag or os.environ.get("SPANOMALY_DB") or DEFAULT_DB)
