"""Plain repetition (no scheduler): the same target body on real threads and real (scaled) time."""

from __future__ import annotations

import asyncio
import random
import threading as _rt
import time as _rtime

from .context import Context
from .registry import load_targets
from .target import Target


class _PlainThread:
    def __init__(self, th):
        self.th = th

    @property
    def state(self):
        return "runnable" if self.th.is_alive() else "done"


class PlainContext(Context):
    """The same target body with no scheduler: real threads, real (scaled) time, events at random moments."""

    def __init__(self, run_seed: int, variant: str | None):
        self.sched = None
        self.seed = run_seed
        self.variant = variant
        self.data = random.Random(f"{run_seed}:data")
        self.faults = random.Random(f"{run_seed}:faults")
        self._rng = random.Random(f"{run_seed}:plain")
        self._restore, self._quiescence, self._cleanup, self.state = [], [], [], {}
        self._threads: list[_rt.Thread] = []
        self._isolated: set[str] = set()
        self._t0 = _rtime.monotonic()

    def instrument(self, module, **kw) -> None:
        pass

    def isolate(self, module) -> None:
        pass

    def load(self, fn, *args):
        return fn(*args)

    def filesystem(self):
        """Plain repetition instruments nothing, so the code under test uses the real disk: a temp dir."""
        from .memfs import DiskFS
        fs = DiskFS()
        self._cleanup.append(fs.cleanup)
        return fs

    def external(self, name, fn, enabled=None):
        loop = asyncio.get_running_loop()
        delay = self._rng.random() * 0.005

        def fire():
            if enabled is None or enabled():
                fn()
            else:
                loop.call_later(0.0005, fire)
        loop.call_later(delay, fire)

    def spawn(self, fn, *args, name="thread"):
        th = _rt.Thread(target=fn, args=args, name=name, daemon=True)
        th.start()
        self._threads.append(th)
        return _PlainThread(th)

    async def quiescent(self) -> None:
        for th in self._threads:
            await asyncio.get_running_loop().run_in_executor(None, th.join, 2.0)
        await asyncio.sleep(0.01)

    failed: str | None = None

    _main = None

    def _record(self, message):
        if self.failed is None:
            self.failed = message
            if self._main is not None:  # end the run now (a failed check may leave the body hanging)
                self._main.get_loop().call_soon_threadsafe(self._main.cancel)

    def check(self, cond, message, details=""):
        if not cond:
            self._record(message)
            raise AssertionError(message)

    def fail(self, kind, message, details=""):
        self._record(f"{kind}: {message}")
        raise AssertionError(f"{kind}: {message}")

    @property
    def now(self) -> float:
        from .prims import PLAIN_TIME_SCALE
        return (_rtime.monotonic() - self._t0) / PLAIN_TIME_SCALE


def run_plain(tgt: Target | str, runs: int, *, variant: str | None = None, seed: int = 0,
              timeout: float = 5.0, kinds: dict | None = None) -> tuple[int, float]:
    """Plain repetition (no scheduler): returns (runs that failed, elapsed seconds).

    ``kinds`` (optional dict) receives a count per outcome type (AssertionError = invariant, TimeoutError = hang).
    """
    if isinstance(tgt, str):
        tgt = load_targets()[tgt]
    hits = 0
    t0 = _rtime.perf_counter()
    for i in range(runs):
        ctx = PlainContext(seed * 100003 + i, variant)

        async def main():
            ctx._main = asyncio.current_task()
            await tgt.body(ctx)
            await ctx.quiescent()
        outcome = None
        try:
            asyncio.run(asyncio.wait_for(main(), timeout))
        except BaseException as e:  # noqa: BLE001 - any failure (assertion, deadlock timeout, guard) is a hit
            outcome = "hang" if isinstance(e, TimeoutError) else type(e).__name__
        if ctx.failed:
            outcome = "invariant"
        if outcome is not None:
            hits += 1
            if kinds is not None:
                kinds[outcome] = kinds.get(outcome, 0) + 1
        for c in ctx._cleanup:
            try:
                c()
            except Exception:  # noqa: BLE001
                pass
    return hits, _rtime.perf_counter() - t0
