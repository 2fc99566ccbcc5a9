"""A testbed run's store, copied afresh for each variant a benchmark scores on it."""

from __future__ import annotations

import shutil
from pathlib import Path


def fresh_copy(db: Path, out: Path, name: str) -> tuple[Path, Path]:
    """The store copied to out/<name>.duckdb without findings, and an empty out/model-<name>."""
    import duckdb

    copy = out / f"{name}.duckdb"
    shutil.copy(db, copy)
    con = duckdb.connect(str(copy))
    con.execute("DELETE FROM findings")
    con.close()
    model = out / f"model-{name}"
    shutil.rmtree(model, ignore_errors=True)
    return copy, model
