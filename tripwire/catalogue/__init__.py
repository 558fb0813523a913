"""The bug-shape catalogue: every known bug shape, declared once, and the one way to put it back.

A shape (`base.Regression`) names the invariant it breaks, the edits that put the bug back into a copy of the
project (libcst codemods, or exact-text patches), and the detectors expected to fire: static rules, pytest node
ids, fuzz targets. Everything that needs a buggy engine takes it from here:

- `python -m tripwire.tools.inject` (show / prove) applies a shape to a copy of the project and runs its detectors;
- fuzz targets list shapes as their `--variant`s and load the shaped engine through `loader`;
- the report shows the proofs per invariant (`invariants.INVARIANTS`).

This package sits below both `tripwire.fuzz` and `tripwire.tools` and imports neither (nor the engine: it only
knows paths). Importing it is cheap: libcst loads only when a shape's edits are computed.

    from tripwire.catalogue import catalogue, get
    for reg in catalogue(): print(reg.name, reg.invariants, reg.detectors)

Add a shape: CONTRIBUTING.md, "Adding a regression shape and wiring its detectors".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Regression


def catalogue() -> list[Regression]:
    """Every shape, in catalogue order. Raises RuntimeError on a duplicate name."""
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
    """The shape called `name`. Raises KeyError naming where to look when there is none."""
    for r in catalogue():
        if r.name == name:
            return r
    raise KeyError(f"unknown regression {name!r}; `python -m tripwire.tools.inject list` shows the catalogue")


def describe(*shapes: str) -> dict[str, str]:
    """Variant descriptions for a fuzz target's `variants=` (no libcst import at target registration)."""
    return {s: f"regression shape {s} (`python -m tripwire.tools.inject show {s}`)" for s in shapes}


__all__ = ["catalogue", "get", "describe"]
