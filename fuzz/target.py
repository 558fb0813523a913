"""The fuzz target type and the registry of built-in targets (filled by ``@target`` as modules import).

This module is the bottom layer of the package's target handling: ``fuzz.targets.*`` import it to
register, and ``fuzz.registry`` imports ``fuzz.targets`` to load them all (no cycle).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Awaitable, Callable

if TYPE_CHECKING:
    from .context import Context


@dataclasses.dataclass
class Target:
    """A scenario to explore: ``body(ctx)`` sets it up and checks its invariant.

    ``callbacks``: "fifo" runs ready asyncio callbacks in order (the built-in targets' historical schedule
    space); "explore" lets the strategy pick which ready task/callback runs next at every loop step.
    """

    name: str
    description: str
    body: Callable[["Context"], Awaitable[None]]
    timers: str = "idle"
    watchdog_s: float = 2.0
    max_steps: int = 20000
    variants: dict[str, str] = dataclasses.field(default_factory=dict)  # bad-shape name -> description
    uses: str = "fake"  # fake step / real tiny model / toy / user
    callbacks: str = "fifo"
    ref: str | None = None  # user targets: the spec that loads it again ("file.py::name", "pkg.mod:name")
    instrument: tuple[str, ...] = ()  # user targets: module prefixes rewritten with preemption points
    key: str | None = None  # user targets: machine-independent name failures are shared under (default: name)


TARGETS: dict[str, Target] = {}


def target(name: str, description: str, *, timers: str = "idle", watchdog_s: float = 2.0,
           max_steps: int = 20000, variants: dict[str, str] | None = None, uses: str = "fake",
           callbacks: str = "fifo"):
    """Register the decorated ``async def body(ctx)`` as built-in target ``name``."""
    def deco(fn):
        TARGETS[name] = Target(name, description, fn, timers, watchdog_s, max_steps, variants or {}, uses,
                               callbacks)
        return fn
    return deco
