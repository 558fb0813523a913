"""The package import graph is layered and acyclic.

Layers (lowest first): `sanitizer` (the MLX thread sanitizer) imports nothing here; `engine` may import
`sanitizer` (its MLX entry guard is a sanitizer client); `engine`, `invariants` and the bug-shape
`catalogue` are independent of each other; `fuzz` may import `engine`, `sanitizer` and `catalogue`; `tools`
may import anything; nothing imports `tools` except `tools` itself.
Module-level cycles are forbidden everywhere: an import cycle makes import order matter and has hidden
errors before (a swallowed ImportError in a target registry).

Imports are read statically (stdlib `ast`), including function-local ones, so a lazy import that breaks a layer
is caught too; `TYPE_CHECKING` blocks are ignored.
"""

from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PARTS = ("sanitizer", "engine", "invariants", "fuzz", "tools", "tripwire/catalogue")
ALLOWED = {  # part -> parts it may import
    "sanitizer": set(),
    "engine": {"sanitizer"},
    "invariants": set(),
    "catalogue": set(),
    "fuzz": {"engine", "sanitizer", "catalogue"},
    "tools": {"sanitizer", "engine", "invariants", "fuzz", "catalogue"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "tripwire":  # tripwire/catalogue/... is already under the import name
        parts.pop(0)
    if parts[-1] == "__init__":
        parts.pop()
    return "tripwire." + ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, modname: str, is_pkg: bool, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for n in ast.walk(node))
    base = modname if is_pkg else modname.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                target = f"{pkg}.{node.module}" if node.module else pkg
            else:
                target = node.module or ""
            # `from pkg import submodule` needs the submodule, not the package's own namespace; any other
            # name is read from the package (its __init__ must have run).
            subs = {f"{target}.{a.name}" for a in node.names} & modules
            out.update(subs)
            if len(subs) < len(node.names):
                out.add(target)
    return {m for m in out if m.startswith("tripwire.")}


def _graph() -> dict[str, set[str]]:
    files = {}
    for part in PARTS:
        for path in (ROOT / part).rglob("*.py"):
            files[_module_name(path)] = path
    graph = {}
    for mod, path in files.items():
        raw = _imports(path, mod, path.name == "__init__.py", set(files))
        graph[mod] = {m for m in raw if m in files and m != mod}
    return graph


def _part(mod: str) -> str:
    return mod.split(".")[1]


def test_parts_import_only_the_layers_below_them():
    bad = sorted(f"{mod} imports {dep}" for mod, deps in _graph().items() for dep in deps
                 if _part(dep) != _part(mod) and _part(dep) not in ALLOWED[_part(mod)])
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_no_module_level_import_cycles():
    graph = _graph()
    # Package __init__ re-exports make every submodule "import" its package; a cycle through an __init__
    # that only re-exports is still a cycle of import order, so it counts.
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []
    counter = [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert not sccs, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in sccs)
