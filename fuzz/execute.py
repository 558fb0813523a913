"""Executing ONE schedule of a target: a fresh FuzzLoop thread, the baton scheduler, a watchdog."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading as _rt
import time as _rtime
import traceback

from . import affinity
from . import sched as _s
from .context import Context
from .sched import Failure, FuzzAbort, FuzzLoop, Scheduler
from .target import Target


# Targets whose threads may be reused workers (see sched._Worker): their code keeps no thread-local state.
REUSE_THREADS = ("fake", "toy")


@dataclasses.dataclass
class RunResult:
    failure: Failure | None
    choices: list[int]
    trace_hash: str
    steps: int
    decisions: int
    preemptions: int
    deviations: int
    sched: Scheduler | None = None
    leaked: list[str] = dataclasses.field(default_factory=list)
    run_seed: int = 0
    switches: int = 0  # baton hand-offs between OS threads (Scheduler.switches)


def execute(tgt: Target, chooser, run_seed: int, *, variant: str | None = None,
            record_trace: bool = True, watchdog_s: float | None = None) -> RunResult:
    """Run one schedule of ``tgt`` in a fresh loop thread, with a watchdog for bypassing blocking calls."""
    if _s.ACTIVE is not None:
        raise RuntimeError("a fuzz execution is already active in this process")
    reuse = tgt.uses in REUSE_THREADS
    sched = Scheduler(chooser, timers=tgt.timers, max_steps=tgt.max_steps, record_trace=record_trace,
                      callbacks=tgt.callbacks, reuse_threads=reuse)
    sched.cpus = affinity.choose(tgt.uses)  # one core for this schedule's threads (they run one at a time)
    ctx = Context(sched, run_seed, variant)
    done = _rt.Event()
    wd = tgt.watchdog_s if watchdog_s is None else watchdog_s

    def runner():
        loop = None
        if not reuse and sched.cpus is not None:  # a fresh thread: pinned here, the threads it starts inherit it
            affinity.pin_current_thread(sched.cpus)
        try:
            sched.adopt_loop_thread("loop")
            loop = FuzzLoop(sched)
            sched.loop = loop
            asyncio.set_event_loop(loop)

            async def main():
                await tgt.body(ctx)
                await ctx.quiescent()
                for q in ctx._quiescence:
                    r = q()
                    if asyncio.iscoroutine(r):
                        await r

            loop.run_until_complete(main())
        except FuzzAbort:
            pass
        except BaseException as e:  # noqa: BLE001
            if sched.failure is None:
                sched.failure = Failure("exception", f"{type(e).__name__}: {e}",
                                        "".join(traceback.format_exception(e)))
        finally:
            sched.aborting = True
            if sched.loop_task is not None:
                sched.loop_task.state = "done"
            try:
                leaked = sched.finish_threads(timeout=min(2.0, 3 * wd))
                ctx.state["_leaked"] = leaked
            except BaseException:  # noqa: BLE001
                pass
            if loop is not None:
                try:
                    for t in asyncio.all_tasks(loop):
                        t._log_destroy_pending = False
                        try:  # unwind aborted coroutines now, not later in the garbage collector
                            t.get_coro().close()
                        except BaseException:  # noqa: BLE001
                            pass
                    loop.close()
                except BaseException:  # noqa: BLE001
                    pass
            asyncio.set_event_loop(None)
            if reuse:
                _rt.current_thread().name = _s._Worker.IDLE_NAME
            done.set()

    _s.ACTIVE = sched
    try:
        if reuse:
            _s._Worker.take().start(runner, "fuzz-loop", sched.cpus)
        else:
            _rt.Thread(target=runner, name="fuzz-loop", daemon=True).start()
        last = -1
        stalled_since = _rtime.monotonic()
        while not done.wait(min(0.05, wd / 4)):
            if sched.progress != last or sched.unwatched:
                last = sched.progress
                stalled_since = _rtime.monotonic()
                continue
            if _rtime.monotonic() - stalled_since > wd and not sched.aborting:
                cur = sched.current
                stack = ""
                if cur is not None and cur.ident is not None:
                    fr = sys._current_frames().get(cur.ident)
                    if fr is not None:
                        stack = "".join(traceback.format_stack(fr))
                if sched.failure is None:
                    sched.failure = Failure(
                        "blocking-call",
                        f"task {getattr(cur, 'name', '?')} made no progress for {wd}s: a blocking call bypassed "
                        "the scheduler (use the instrumented primitives)", stack)
                sched.aborting = True
                if sched.loop_task is not None and cur is not sched.loop_task:
                    _s._pass(sched.loop_task.sem)
                if not done.wait(3.0):
                    ctx.state["_leaked"] = ["loop"]
                break
    finally:
        for r in reversed(ctx._restore):
            r()
        for c in ctx._cleanup:
            try:
                c()
            except Exception:  # noqa: BLE001
                pass
        _s.ACTIVE = None
    preempt = sum(1 for opts, d, c, cur in sched.decisions if c != d and cur in opts)
    dev = sum(1 for opts, d, c, cur in sched.decisions if c != d)
    return RunResult(sched.failure, list(sched.choices), sched.trace_hash, sched.steps, len(sched.decisions),
                     preempt, dev, sched, ctx.state.get("_leaked", []), run_seed,
                     sched.switches)
