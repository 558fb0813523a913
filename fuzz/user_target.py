"""User targets: an ordinary ``async def`` (or a function returning a coroutine) in the user's own code.

``path/to/file.py::name`` loads the file as module ``<file stem>`` (its directory first on ``sys.path``, as
when running a script); ``pkg.module:name`` imports the module (the current directory on ``sys.path``, as
``python -m`` does). The code under test needs no fuzzer import: for every execution the target's module
and every module under an ``instrument`` prefix get their threading/queue/time/asyncio names swapped for
the scheduler's primitives, and modules under an ``instrument`` prefix are also rewritten on import with
preemption points at shared-state accesses (``fuzz.instrument_ast``). A failed ``assert`` is an invariant
failure.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable

from .context import Context
from .project import file_key
from .instrument_ast import install, installed_prefixes
from .target import Target


class TargetSpecError(ValueError):
    """A user target spec that does not name a loadable function (the message says what to fix)."""


def is_user_spec(spec: str) -> bool:
    return "::" in spec or ":" in spec


def _load_file(path: Path, cwd: Path) -> ModuleType:
    if not path.is_absolute():
        path = cwd / path
    path = path.resolve()
    if not path.is_file():
        raise TargetSpecError(f"no such file: {path}")
    name = path.stem
    mod = sys.modules.get(name)
    if mod is not None and Path(getattr(mod, "__file__", "") or "").resolve() == path:
        return mod
    if mod is not None:  # another module already owns the stem: load under a private name
        name = f"_fuzz_user_{abs(hash(str(path))):x}_{path.stem}"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def load_user_target(spec: str, *, instrument: Iterable[str] = (), cwd: str | Path | None = None) -> Target:
    """The Target running ``spec`` ("file.py::name" or "pkg.module:name").

    Raises:
        TargetSpecError: malformed spec, missing file or module, missing or non-callable name. Errors raised
            while importing the user's module propagate unchanged (they are the user's, with their traceback).
    """
    instrument = tuple(p for p in instrument if p)
    base = Path(cwd or os.getcwd())
    if instrument:
        install(instrument)
    if "::" in spec:
        file, _, fname = spec.rpartition("::")
        mod = _load_file(Path(file), base)
        ref = f"{Path(mod.__file__).resolve()}::{fname}"
        display = f"{Path(file).name}::{fname}"
        key = file_key(mod.__file__, fname)
    elif ":" in spec:
        modname, _, fname = spec.partition(":")
        if str(base) not in sys.path:
            sys.path.insert(0, str(base))
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name and modname.startswith(e.name):
                raise TargetSpecError(f"cannot import module {modname!r} from {base} (is it on sys.path?)") from None
            raise
        ref = display = key = spec
    else:
        raise TargetSpecError(f"{spec!r} is neither a built-in target nor 'file.py::name' / 'pkg.module:name'")
    if instrument:  # the target's own module too, when a prefix names it (a file target is loaded directly)
        install(instrument)
    fn = getattr(mod, fname, None)
    fn = getattr(fn, "__fuzz_inner__", fn)  # a @schedules test: explore the undecorated function
    if fn is None or not callable(fn):
        names = sorted(n for n, v in vars(mod).items() if inspect.iscoroutinefunction(v) and not n.startswith("_"))
        raise TargetSpecError(f"{mod.__name__} has no function {fname!r}"
                              + (f"; async functions there: {', '.join(names)}" if names else ""))
    return Target(display, (inspect.getdoc(fn) or "").split("\n")[0], _body(fn, mod, instrument), uses="user",
                  callbacks="explore", ref=ref, instrument=instrument, key=key)


def _modules(own: ModuleType | None, prefixes: tuple[str, ...]) -> list[ModuleType]:
    mods = [own] if own is not None else []
    prefixes = tuple(prefixes) + tuple(installed_prefixes())  # also --fuzz-instrument / earlier install()
    for name, m in list(sys.modules.items()):
        if m is not None and m is not own and any(name == p or name.startswith(p + ".") for p in prefixes):
            mods.append(m)
    return mods


def body_for(fn: Callable, own: ModuleType | None, prefixes: tuple[str, ...]):
    """A target body calling ``fn()`` with ``own`` and the instrumented modules' names swapped."""
    return _body(fn, own, prefixes)


def _body(fn: Callable, own: ModuleType | None, prefixes: tuple[str, ...]):
    async def body(ctx: Context) -> None:
        for m in _modules(own, prefixes):
            ctx.instrument(m)
        try:
            r = fn()
            if inspect.isawaitable(r):
                await r
        except AssertionError as e:
            # the user's frames only (this adapter's frame is noise in their report)
            tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
            ctx.fail("invariant", str(e) or "assertion failed",
                     "".join(traceback.format_exception(type(e), e, tb)))
    return body
