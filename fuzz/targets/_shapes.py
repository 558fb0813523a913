"""Regression shapes of the catalogue (tools/regressions) as fuzz variants.

A shape variant is the catalogue's OWN codemod applied in memory to the current source (never the real
files), so the variant a fuzz test finds is byte-for-byte the shape `python -m tripwire.tools.inject prove` injects;
a codemod whose target is gone raises NotApplicable instead of silently fuzzing the correct code.

- `shape_module(shape, "tripwire.engine.cache.snapshot_store")`: that one module rewritten, loaded as a sibling
  module of the same package (relative imports resolve to the real package), once per process.
- `shape_engine(shape)`: a temp copy of the engine package with the shape's edits, importable as
  `fuzzshape_<name>` (like fuzz.mutants), for targets that build a whole SimpleEngine.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_modules: dict[tuple[str, str], object] = {}
_engines: dict[str, object] = {}
_tmp_root: Path | None = None


def _changes(shape: str) -> dict[str, str]:
    from tripwire.tools.regressions import get  # libcst: only imported when a shape variant is requested

    return {ch.path: ch.after for ch in get(shape).transform(ROOT)}


def shape_module(shape: str, modname: str):
    """Module `modname` (e.g. engine.cache.snapshot_store) rewritten into regression shape `shape`."""
    key = (shape, modname)
    if key in _modules:
        return _modules[key]
    rel = modname.removeprefix("tripwire.").replace(".", "/") + ".py"
    changes = _changes(shape)
    if rel not in changes:
        raise RuntimeError(f"regression shape {shape!r} does not edit {rel} (it edits {sorted(changes)})")
    pkg, _, leaf = modname.rpartition(".")
    importlib.import_module(pkg)
    name = f"{pkg}._fuzzshape_{re.sub(r'[^0-9a-zA-Z]', '_', shape)}_{leaf}"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(ROOT / rel))
    mod = importlib.util.module_from_spec(spec)
    mod.__file__ = str(ROOT / rel)
    mod.__package__ = pkg
    sys.modules[name] = mod  # dataclasses resolve their module through sys.modules
    try:
        exec(compile(changes[rel], f"<{shape}>/{rel}", "exec"), mod.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _modules[key] = mod
    return mod


def shape_engine(shape: str):
    """The engine package with regression shape `shape` applied (a temp copy, imported once per process)."""
    global _tmp_root
    if shape in _engines:
        return _engines[shape]
    changes = _changes(shape)
    outside = [p for p in changes if not p.startswith("engine/")]
    if outside:
        raise RuntimeError(f"regression shape {shape!r} edits files outside engine/: {outside}")
    if _tmp_root is None:
        _tmp_root = Path(tempfile.mkdtemp(prefix="fuzz-shapes-"))
        sys.path.insert(0, str(_tmp_root))
    pkg = _tmp_root / f"fuzzshape_{re.sub(r'[^0-9a-zA-Z]', '_', shape)}"
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(ROOT / "engine", pkg, ignore=shutil.ignore_patterns("__pycache__", "server", "data"))
    for rel, after in changes.items():
        (pkg / rel[len("engine/"):]).write_text(after, encoding="utf-8")
    for f in pkg.rglob("*.py"):  # absolute self-imports would load the real engine
        src = f.read_text(encoding="utf-8")
        new = re.sub(r"\b(from|import) (?:tripwire\.)?engine(\.|\b)", lambda m: f"{m.group(1)} {pkg.name}{m.group(2)}", src)
        if new != src:
            f.write_text(new, encoding="utf-8")
    mod = importlib.import_module(pkg.name)
    for sub in ("simple", "worker", "admission", "guard", "errors", "types"):
        importlib.import_module(f"{pkg.name}.{sub}")
    _engines[shape] = mod
    return mod


def describe(*shapes: str) -> dict[str, str]:
    """Variant descriptions for @target(variants=...) without importing the catalogue at registration."""
    return {s: f"regression shape {s} (tools/regressions codemod; `python -m tripwire.tools.inject show {s}`)"
            for s in shapes}
