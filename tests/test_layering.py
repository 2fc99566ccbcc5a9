"""The one-way data flow of DESIGN.md: a stage never imports a stage to its right."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import spanomaly

PKG = Path(spanomaly.__file__).parent
# stages from left to right; a package may import those before it (and itself)
ORDER = ["ingest", "store", "features", "detect", "rca", "evaluate", "report", "serve", "scale"]
BASE = {"schema", "config", "errors", "timeparse", ""}
WIRING = {"pipeline", "cli", "__main__"}
OUTSIDE_FLOW = {"testbed"}  # the demo application: talks to spanomaly only over OTLP


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "spanomaly":
                found.add(parts[1] if len(parts) > 1 else "")
    return found


def violations() -> list[str]:
    """Every import of a stage to the right, as 'module imports stage'."""
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        top = rel.parts[0].removesuffix(".py")
        if top in WIRING:
            continue
        for target in _imports(path):
            if target in BASE or target == top:
                continue
            if top in BASE:
                bad.append(f"{rel} imports {target} (base modules import no stage)")
            elif top in OUTSIDE_FLOW or target in OUTSIDE_FLOW:
                bad.append(f"{rel} imports {target} (the testbed stands outside the flow)")
            elif target in WIRING:
                bad.append(f"{rel} imports {target} (only the CLI may import the wiring)")
            elif top in ORDER and target in ORDER and ORDER.index(target) > ORDER.index(top):
                bad.append(f"{rel} imports {target}, a stage to its right")
            elif top not in ORDER or target not in ORDER:
                bad.append(f"{rel} imports {target}: add the package to ORDER in this test")
    return sorted(bad)


def test_no_stage_imports_a_stage_to_its_right() -> None:
    assert violations() == []


def test_the_check_catches_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "spanomaly"
    (fake / "ingest").mkdir(parents=True)
    (fake / "store").mkdir()
    (fake / "ingest" / "bad.py").write_text("from spanomaly.store.duckdb import DuckDBStore\n")
    (fake / "store" / "good.py").write_text("from spanomaly.ingest.base import Chunk\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    assert violations() == ["ingest/bad.py imports store, a stage to its right"]
