"""The one loader of shaped code: a catalogue shape applied in memory, imported beside the real code.

The shape's own edits are applied to the current source (never to the real files), so what a fuzz variant runs is
byte-for-byte what `python -m tripwire.tools.inject prove` injects; an edit whose target is gone raises
`NotApplicable` instead of silently running the correct code.

- `load_module(shape, "tripwire.engine.cache.snapshot_store")`: that one module rewritten, loaded as a sibling
  module of the same package (its relative imports resolve to the real package), once per process.
- `load_engine(shape)`: a temporary copy of the whole engine package with the shape's edits, importable as
  `shape_<name>` (its imports rewritten to the copy), once per process — for code that builds a `SimpleEngine`.

Raises `KeyError` for an unknown shape and `RuntimeError` when the shape edits something the call cannot load.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import sys
import tempfile
from pathlib import Path

from . import get

_PKG_DIR = Path(__file__).resolve().parents[1]
# A checkout keeps engine/ beside the tripwire/ folder; an installed wheel holds tripwire/engine/.
ROOT = _PKG_DIR if (_PKG_DIR / "engine").is_dir() else _PKG_DIR.parent
ENGINE_SUBMODULES = ("simple", "worker", "admission", "guard", "errors", "types")  # imported by load_engine

_modules: dict[tuple[str, str], object] = {}
_engines: dict[str, object] = {}
_tmp_root: Path | None = None


def changes(shape: str) -> dict[str, str]:
    """Project-relative path -> the file's text with the shape applied (nothing is written)."""
    return {ch.path: ch.after for ch in get(shape).transform(ROOT)}


def load_module(shape: str, modname: str):
    """Module `modname` (dotted, e.g. tripwire.engine.cache.snapshot_store) rewritten into `shape`."""
    key = (shape, modname)
    if key in _modules:
        return _modules[key]
    rel = modname.removeprefix("tripwire.").replace(".", "/") + ".py"
    edited = changes(shape)
    if rel not in edited:
        raise RuntimeError(f"regression shape {shape!r} does not edit {rel} (it edits {sorted(edited)})")
    pkg, _, leaf = modname.rpartition(".")
    importlib.import_module(pkg)
    name = f"{pkg}._shape_{_ident(shape)}_{leaf}"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(ROOT / rel))
    mod = importlib.util.module_from_spec(spec)
    mod.__file__ = str(ROOT / rel)
    mod.__package__ = pkg
    sys.modules[name] = mod  # dataclasses resolve their module through sys.modules
    try:
        exec(compile(edited[rel], f"<{shape}>/{rel}", "exec"), mod.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _modules[key] = mod
    return mod


def load_engine(shape: str):
    """The engine package with `shape` applied: a temporary copy, imported once per process."""
    global _tmp_root
    if shape in _engines:
        return _engines[shape]
    edited = changes(shape)
    outside = [p for p in edited if not p.startswith("engine/")]
    if outside:
        raise RuntimeError(f"regression shape {shape!r} edits files outside engine/: {outside}")
    if _tmp_root is None:
        _tmp_root = Path(tempfile.mkdtemp(prefix="tripwire-shapes-"))
        sys.path.insert(0, str(_tmp_root))
    pkg = _tmp_root / f"shape_{_ident(shape)}"
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(ROOT / "engine", pkg, ignore=shutil.ignore_patterns("__pycache__", "server", "data"))
    for rel, after in edited.items():
        (pkg / rel[len("engine/"):]).write_text(after, encoding="utf-8")
    for f in pkg.rglob("*.py"):  # absolute self-imports would load the real engine
        src = f.read_text(encoding="utf-8")
        new = re.sub(r"\b(from|import) (?:tripwire\.)?engine(\.|\b)", lambda m: f"{m.group(1)} {pkg.name}{m.group(2)}",
                     src)
        if new != src:
            f.write_text(new, encoding="utf-8")
    mod = importlib.import_module(pkg.name)
    for sub in ENGINE_SUBMODULES:
        importlib.import_module(f"{pkg.name}.{sub}")
    _engines[shape] = mod
    return mod


def _ident(shape: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]", "_", shape)
