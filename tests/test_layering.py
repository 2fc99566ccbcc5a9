"""The one-way data flow of docs/architecture.md: a stage never imports a stage to its right,
and no two modules import each other, directly or round a longer loop.

The cycle check reads every import a module holds, at module level or inside a function
(a function-level import that closes a loop is a cycle all the same: the two modules cannot
be understood or tested apart), except those under `if TYPE_CHECKING:`, which never run.
`from spanomaly.x import y` counts as importing `spanomaly.x.y` where y is a module, else
`spanomaly.x`."""

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


# -- import cycles ----------------------------------------------------------------------------


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = ["spanomaly", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _run_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import of a module, anywhere in it, but those under `if TYPE_CHECKING:`."""
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in skipped
    ]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the spanomaly modules it imports."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _run_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]  # fmt: skip
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def cycles(root: Path) -> list[list[str]]:
    """The import cycles between modules (each once, as a path that returns to its start)."""
    graph, found, done = import_graph(root), [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                loop = path[path.index(nxt) :]
                key = frozenset(loop)
                if key not in done:
                    done.add(key)
                    found.append([*loop, nxt])
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        seen = {start}
        visit(start, [start])
    return found


def test_no_import_cycle_between_modules() -> None:
    assert [" -> ".join(c) for c in cycles(PKG)] == []


def test_the_cycle_check_catches_a_cycle(tmp_path: Path) -> None:
    fake = tmp_path / "spanomaly"
    (fake / "store").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "store" / "__init__.py").write_text("")
    (fake / "store" / "a.py").write_text("from spanomaly.store.b import B\n")
    (fake / "store" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nfrom spanomaly.store import c\n"
        "if TYPE_CHECKING:\n    from spanomaly.store.a import A\n"
    )
    (fake / "store" / "c.py").write_text("X = 1\n")
    assert cycles(fake) == []
    (fake / "store" / "c.py").write_text("def f():\n    from spanomaly.store.a import A\n")
    assert cycles(fake) == [["spanomaly.store.a", "spanomaly.store.b", "spanomaly.store.c",
                             "spanomaly.store.a"]]  # fmt: skip
