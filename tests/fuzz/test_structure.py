"""The fuzz package's structure: one job per module, imports layered without cycles, loud target imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tripwire import fuzz

PKG = Path(fuzz.__file__).resolve().parent
NAME = fuzz.__name__


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([NAME, *parts])


def _imports(path: Path) -> set[str]:
    """Every module of this package that ``path`` imports (module level and inside functions)."""
    me = _module_name(path)
    pkg_parts = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(pkg_parts[:len(pkg_parts) - node.level + 1]) if node.level else ""
            mod = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            for alias in node.names:
                out.add(f"{mod}.{alias.name}")
                out.add(mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == NAME or m.startswith(NAME + ".")}


def test_fuzz_import_graph_is_acyclic():
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {d for d in _imports(p) if d in modules and d != m} for m, p in modules.items()}
    # a package __init__ importing its own children is not a cycle through the child
    for m in graph:
        graph[m] = {d for d in graph[m] if not d.startswith(m + ".") or not modules[m].name == "__init__.py"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if d == NAME:  # the package facade re-exports; modules import their siblings directly
                continue
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_core_was_split():
    assert not (PKG / "core.py").exists()
    sizes = {p.name: len(p.read_text().splitlines()) for p in PKG.glob("*.py")}
    assert sizes["execute.py"] < 250 and sizes["explore.py"] < 200


def test_a_broken_target_module_import_fails_loudly():
    code = ("import sys; sys.modules['numpy'] = None\n"
            f"from {NAME}.registry import load_targets\n"
            "load_targets()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "import of numpy halted" in p.stderr, p.stdout + p.stderr
