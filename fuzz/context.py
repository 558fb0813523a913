"""What a target body sees during one scheduled execution (``Context``)."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any, Callable

from .prims import instrument, isolate
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
        self._isolated: set[str] = set()
        self._request_ids: Callable[..., str] | None = None

    # instrumentation
    def instrument(self, module, **kw) -> None:
        self._restore.append(instrument(module, **kw))

    def isolate(self, module) -> None:
        """Undo, when this schedule ends, what it did to ``module``'s state (``prims.isolate``): the next schedule
        sees the module as this one found it. Call it before instrumenting the module."""
        self._restore.append(isolate(module))

    def external(self, name: str, fn: Callable[[], Any], enabled: Callable[[], bool] | None = None):
        return self.sched.external(name, fn, enabled)

    def spawn(self, fn: Callable, *args, name: str = "thread"):
        t = self.sched.spawn(fn, args, name=name)
        self.sched.point("thread.start", name)
        return t

    def filesystem(self):
        """A fresh, empty in-memory filesystem for this schedule (``memfs.MemFS``; its empty directory is
        ``.root``): swap it into code under test with ``ctx.instrument(module, fs=fs)``, inspect it with
        ``fs.files()`` / ``fs.os``. No disk I/O; nothing of it outlives the schedule."""
        from .memfs import MemFS
        return MemFS()

    def request_ids(self) -> Callable[..., str]:
        """A stand-in for ``engine.ids.new_request_id`` numbered per schedule (``<prefix>-fuzz<n>``; one counter per
        schedule, shared by every module given it): swap it in with ``ctx.instrument(mod, extra={"new_request_id":
        ctx.request_ids()})``. Why: the engine's ids carry a random per-process prefix and a process-global counter,
        and they reach the trace (temp file names, request ids in switch points), so a trace differed between
        processes (a replayed artifact never matched its hash) and depended on the schedules run before it."""
        if self._request_ids is None:
            counter = itertools.count(1)

            def new_request_id(prefix: str = "req") -> str:
                return f"{prefix}-fuzz{next(counter):x}"
            self._request_ids = new_request_id
        return self._request_ids

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

    def load(self, fn: Callable[..., Any], *args) -> Any:
        """``fn(*args)`` for a one-time, possibly slow load (a catalogue shape applied and imported, once per
        process): the watchdog does not count it as a blocking call (on a loaded machine it can take seconds)."""
        self.sched.unwatched += 1
        try:
            return fn(*args)
        finally:
            self.sched.unwatched -= 1

    def engine(self):
        """The engine package under test: a private copy of the correct code, or of the shaped code the variant
        names (``tripwire.catalogue.loader.load_engine``, loaded once per process; never the real modules, which a
        live engine in the same process may be using); its modules' state is isolated to this schedule."""
        from tripwire.catalogue.loader import load_engine
        return self.isolated_engine(self.load(load_engine, self.variant))

    def isolated_engine(self, pkg):
        """``pkg`` (a package ``load_engine`` returned), it and its ``ENGINE_SUBMODULES`` isolated to this schedule
        (other submodules, e.g. the cache's, are isolated by the targets that use them: ``isolate``)."""
        from tripwire.catalogue.loader import ENGINE_SUBMODULES
        for mod in [pkg, *(getattr(pkg, sub) for sub in ENGINE_SUBMODULES)]:
            if mod.__spec__.name not in self._isolated:
                self._isolated.add(mod.__spec__.name)
                self.isolate(mod)
        return pkg

    @property
    def now(self) -> float:
        return self.sched.vnow
