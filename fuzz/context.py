"""What a target body sees during one scheduled execution (``Context``)."""

from __future__ import annotations

import asyncio
import random
from typing import Any, Callable

from .prims import instrument
from .sched import Scheduler


class Context:
    """What a target body sees: scheduler, seeded streams, instrumentation, external events, checks."""

    def __init__(self, sched: Scheduler, run_seed: int, variant: str | None):
        self.sched = sched
        self.seed = run_seed
        self.variant = variant
        self.data = random.Random(f"{run_seed}:data")
        self.faults = random.Random(f"{run_seed}:faults")
        self._restore: list[Callable[[], None]] = []
        self._quiescence: list[Callable[[], Any]] = []
        self._cleanup: list[Callable[[], Any]] = []
        self.state: dict[str, Any] = {}

    # instrumentation
    def instrument(self, module, **kw) -> None:
        self._restore.append(instrument(module, **kw))

    def external(self, name: str, fn: Callable[[], Any], enabled: Callable[[], bool] | None = None):
        return self.sched.external(name, fn, enabled)

    def spawn(self, fn: Callable, *args, name: str = "thread"):
        t = self.sched.spawn(fn, args, name=name)
        self.sched.point("thread.start", name)
        return t

    def at_quiescence(self, fn: Callable[[], Any]) -> None:
        self._quiescence.append(fn)

    def on_cleanup(self, fn: Callable[[], Any]) -> None:
        """Called after the run (also after aborted runs), outside the scheduler."""
        self._cleanup.append(fn)

    def check(self, cond: bool, message: str, details: str = "") -> None:
        self.sched.check(cond, message, details)

    def fail(self, kind: str, message: str, details: str = "") -> None:
        self.sched.fail(kind, message, details)

    async def quiescent(self) -> None:
        """Wait until no thread can run and no timer is pending (other than blocked-forever waits)."""
        fut = asyncio.get_running_loop().create_future()
        self.sched.quiesce_waiters.append(fut)
        await fut

    def engine(self):
        """The engine package under test: the real one, or the mutant copy named by the variant."""
        if self.variant:
            from tripwire.catalogue.loader import load_engine
            return load_engine(self.variant)
        from tripwire import engine
        return engine

    @property
    def now(self) -> float:
        return self.sched.vnow
