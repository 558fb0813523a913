"""The regression catalogue: every known bug shape, a codemod that puts it back, and who must catch it.

    from tripwire.tools.regressions import catalogue, get
    for reg in catalogue(): print(reg.name, reg.invariants, reg.detectors)

Add a shape: see CONTRIBUTING.md, "Adding a regression shape and wiring its detectors".
"""

from __future__ import annotations

from .base import NOT_APPLICABLE, Codemod, Edit, FileChange, NotApplicable, Regression


def catalogue() -> list[Regression]:
    from .cache_shapes import CACHE_REGRESSIONS
    from .engine_shapes import ENGINE_REGRESSIONS
    from .server_shapes import SERVER_REGRESSIONS

    regs = [*ENGINE_REGRESSIONS, *SERVER_REGRESSIONS, *CACHE_REGRESSIONS]
    names = [r.name for r in regs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RuntimeError(f"duplicate regression names: {dupes}")
    return regs


def get(name: str) -> Regression:
    for r in catalogue():
        if r.name == name:
            return r
    raise KeyError(f"unknown regression {name!r}; `python -m tripwire.tools.inject list` shows the catalogue")


__all__ = ["NOT_APPLICABLE", "Codemod", "Edit", "FileChange", "NotApplicable", "Regression", "catalogue", "get"]
