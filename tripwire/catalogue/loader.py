"""The one loader of shaped code: a catalogue shape applied in memory, imported beside the real code.

The shape's own edits are applied to the current source (never to the real files), so what a fuzz variant runs is
byte-for-byte what `python -m tripwire.tools.inject prove` injects; an edit whose target is gone raises
`NotApplicable` instead of silently running the correct code.

- `load_engine(shape)`: a private copy of the whole engine package with the shape's edits, importable as
  `shape_<name>` (its imports pointed at the copy), once per process — for code that builds a `SimpleEngine`;
  `load_engine()` is the same for the correct code (the fuzzer never instruments the real modules).

Raises `KeyError` for an unknown shape and `RuntimeError` when the shape edits something the call cannot load.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import re
import sys
from pathlib import Path

from . import get

_PKG_DIR = Path(__file__).resolve().parents[1]
# A checkout keeps engine/ beside the tripwire/ folder; an installed wheel holds tripwire/engine/.
ROOT = _PKG_DIR if (_PKG_DIR / "engine").is_dir() else _PKG_DIR.parent
ENGINE_SUBMODULES = ("simple", "worker", "admission", "guard", "channel", "errors", "types")  # imported by load_engine

_engines: dict[str, object] = {}


def changes(shape: str) -> dict[str, str]:
    """Project-relative path -> the file's text with the shape applied (nothing is written)."""
    return {ch.path: ch.after for ch in get(shape).transform(ROOT)}


def load_engine(shape: str | None = None):
    """The engine package with `shape` applied (`None`: the correct code), as a private copy imported once per
    process, never the real `tripwire.engine`.

    Why a copy even of the correct code: the fuzzer swaps threading/time/os names inside the modules it runs, and a
    process running fuzz targets may also run a real engine (a pytest worker's session server, a user's app) whose
    threads would pick up the scheduler's primitives. The correct-code copy keeps the real module names and file
    names (its functions report `tripwire.engine.*` as their module: coverage, log names and mutation testing see
    the real engine); a shaped copy is named `shape_<name>` and its edited files `<shape>/engine/...`.
    """
    key = shape or ""
    if key in _engines:
        return _engines[key]
    edited = changes(shape) if shape else {}
    outside = [p for p in edited if not p.startswith("engine/")]
    if outside:
        raise RuntimeError(f"regression shape {shape!r} edits files outside engine/: {outside}")
    name = f"shape_{_ident(shape)}" if shape else "tripwire_private_engine"
    finder = _EngineCopy(name, shape, edited)
    sys.meta_path.insert(0, finder)
    mod = importlib.import_module(name)
    for sub in ENGINE_SUBMODULES:
        importlib.import_module(f"{name}.{sub}")
    _engines[key] = mod
    return mod


def engine_module(pkg, dotted: str):
    """Submodule `dotted` (e.g. "cache.snapshot_store") of a package `load_engine` returned, imported on demand."""
    return importlib.import_module(f"{pkg.__spec__.name}.{dotted}")


class _EngineCopy(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `name` and `name.<sub>` from engine/'s files (a shape's edited text where it has one), compiled
    afresh: a second, independent set of module objects. Absolute self-imports are pointed at the copy."""

    def __init__(self, name: str, shape: str | None, edited: dict[str, str]):
        self.name, self.shape, self.edited = name, shape, edited

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name and not fullname.startswith(self.name + "."):
            return None
        rel = "/".join(["engine", *fullname.split(".")[1:]])
        if (ROOT / rel / "__init__.py").is_file():
            rel, is_pkg = f"{rel}/__init__.py", True
        elif (ROOT / f"{rel}.py").is_file():
            rel, is_pkg = f"{rel}.py", False
        else:
            return None
        origin = f"<{self.shape}>/{rel}" if rel in self.edited else str(ROOT / rel)  # an edited file is not on disk
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=origin, is_package=is_pkg, loader_state=rel)
        spec.has_location = True
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        rel, filename = module.__spec__.loader_state, module.__spec__.origin
        edited = self.edited.get(rel)
        src = re.sub(r"\b(from|import) (?:tripwire\.)?engine(\.|\b)", lambda m: f"{m.group(1)} {self.name}{m.group(2)}",
                     (ROOT / rel).read_text(encoding="utf-8") if edited is None else edited)
        if edited is not None:
            linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)  # tracebacks show its lines
        if self.shape is None and module.__spec__.submodule_search_locations is None:
            # not for packages: `from . import x` resolves x by the package's __name__
            module.__name__ = "tripwire.engine" + module.__spec__.name[len(self.name):]
            # dataclasses resolve a class's string annotations through sys.modules[cls.__module__]
            importlib.import_module(module.__name__)
        exec(compile(src, filename, "exec"), module.__dict__)


def _ident(shape: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]", "_", shape)
