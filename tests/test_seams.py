"""The private names detectors rely on are declared once (`tripwire.engine.seams`) and match the code.

Both directions: every declared name exists where it is declared, and every private engine name used by a
detector — a fuzz target poking at an engine object, a regression codemod's scope, a configured static rule —
is declared. A rename that forgets a detector fails here instead of turning that detector silent.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from tripwire.engine.seams import SEAMS

ROOT = Path(__file__).resolve().parent.parent


def _defined(path: str) -> dict[str, set[str]]:
    """Names bound at module level (and functions nested in module-level functions) and per class (methods,
    class attributes, `self.X = ...` anywhere)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    out: dict[str, set[str]] = {"<module>": set()}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out["<module>"].add(node.name)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # functions nested in a module-level function (the routes inside create_app) count as module names
            out["<module>"].update(sub.name for sub in ast.walk(node)
                                   if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and sub is not node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out["<module>"].update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out["<module>"].update(t.id for t in targets if isinstance(t, ast.Name))
        if isinstance(node, ast.ClassDef):
            names = out.setdefault(node.name, set())
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(sub.name)
                elif isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store) and \
                        isinstance(sub.value, ast.Name) and sub.value.id == "self":
                    names.add(sub.attr)
                elif isinstance(sub, (ast.Assign, ast.AnnAssign)):
                    targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
    return out


def _declared() -> dict[str, set[str]]:
    """Scope name ("Class" or "<module>") -> every name declared for it, across files."""
    out: dict[str, set[str]] = {}
    for scopes in SEAMS.values():
        for scope, names in scopes.items():
            out.setdefault(scope, set()).update(names)
    return out


@pytest.mark.parametrize("path", sorted(SEAMS))
def test_every_declared_name_exists(path):
    defined = _defined(path)
    missing = [f"{scope}.{name}" for scope, names in SEAMS[path].items() for name in names
               if name not in defined.get(scope, set())]
    assert not missing, f"{path}: declared in tripwire.engine.seams but gone from the code: {missing}"


def test_every_codemod_scope_is_declared():
    declared = _declared()
    scopes = set()
    shape_files = sorted((ROOT / "tripwire" / "catalogue").glob("*_shapes.py"))
    assert shape_files, "no catalogue shape modules found"
    for f in shape_files:
        for args in re.findall(r"inside\(([^)]*)\)", f.read_text(encoding="utf-8")):
            parts = re.findall(r'"([^"]+)"', args)
            scopes.add(tuple(parts))
    undeclared = []
    for parts in sorted(scopes):
        cls, name = (parts[0], parts[1]) if len(parts) == 2 else ("<module>", parts[0])
        if name not in declared.get(cls, set()) and not (len(parts) == 1 and parts[0] in declared):
            undeclared.append(".".join(parts))
    assert not undeclared, f"codemod scopes missing from tripwire.engine.seams: {undeclared}"


def test_every_private_engine_name_a_fuzz_target_touches_is_declared():
    declared = set().union(*_declared().values())
    used = set()
    for f in ("fuzz/targets/engine_targets.py", "fuzz/targets/cache_targets.py"):
        tree = ast.parse((ROOT / f).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "ctx", "sched")):
                used.add(node.attr)
    assert not used - declared, f"private engine names used by fuzz targets, not declared: {sorted(used - declared)}"


def test_every_private_name_in_the_rule_config_is_declared():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["tripwire"]["rules"]
    declared = set().union(*_declared().values())
    used = set()
    for opts in cfg.values():
        for key in ("barrier", "barriers", "queues"):
            v = opts.get(key)
            used.update([v] if isinstance(v, str) else v or [])
        used.update(opts.get("locks", {}))
    used = {u for u in used if u.startswith("_")}
    assert used and not used - declared, f"rule config names not declared: {sorted(used - declared)}"
