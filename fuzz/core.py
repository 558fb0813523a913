"""Executing one schedule of a target, exploring many, artifacts, replay and shrink."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import threading as _rt
import time as _rtime
import traceback
from pathlib import Path
from typing import Any, Awaitable, Callable

from . import sched as _s
from .prims import instrument
from .sched import Failure, FuzzAbort, FuzzLoop, Scheduler
from .strategies import HypothesisChooser, ReplayChooser, make_explorer

ROOT = Path(__file__).resolve().parent.parent
FAILURE_DIR = ROOT / ".fuzz" / "failures"


# --------------------------------------------------------------------------- targets
@dataclasses.dataclass
class Target:
    name: str
    description: str
    body: Callable[["Context"], Awaitable[None]]
    timers: str = "idle"
    watchdog_s: float = 2.0
    max_steps: int = 20000
    variants: dict[str, str] = dataclasses.field(default_factory=dict)  # bad-shape name -> description
    uses: str = "fake"  # fake step / real tiny model / toy


TARGETS: dict[str, Target] = {}


def target(name: str, description: str, *, timers: str = "idle", watchdog_s: float = 2.0,
           max_steps: int = 20000, variants: dict[str, str] | None = None, uses: str = "fake"):
    def deco(fn):
        TARGETS[name] = Target(name, description, fn, timers, watchdog_s, max_steps, variants or {}, uses)
        return fn
    return deco


def load_targets() -> dict[str, Target]:
    from . import targets  # noqa: F401  (registers)
    return TARGETS


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


def execute(tgt: Target, chooser, run_seed: int, *, variant: str | None = None,
            record_trace: bool = True, watchdog_s: float | None = None) -> RunResult:
    """Run one schedule of ``tgt`` in a fresh loop thread, with a watchdog for bypassing blocking calls."""
    if _s.ACTIVE is not None:
        raise RuntimeError("a fuzz execution is already active in this process")
    sched = Scheduler(chooser, timers=tgt.timers, max_steps=tgt.max_steps, record_trace=record_trace)
    ctx = Context(sched, run_seed, variant)
    done = _rt.Event()
    wd = tgt.watchdog_s if watchdog_s is None else watchdog_s

    def runner():
        loop = None
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
            done.set()

    _s.ACTIVE = sched
    th = _rt.Thread(target=runner, name="fuzz-loop", daemon=True)
    try:
        th.start()
        last = -1
        stalled_since = _rtime.monotonic()
        while not done.wait(min(0.05, wd / 4)):
            if sched.progress != last:
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
                    sched.loop_task.sem.release()
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
                     preempt, dev, sched, ctx.state.get("_leaked", []))


# --------------------------------------------------------------------------- plain repetition
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
        self._t0 = _rtime.monotonic()

    def instrument(self, module, **kw) -> None:
        pass

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


# --------------------------------------------------------------------------- artifacts
_GIT: str | None = None


def git_commit() -> str:
    global _GIT
    if _GIT is None:
        try:
            _GIT = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=5).stdout.strip() or "unknown"
        except Exception:  # noqa: BLE001
            _GIT = "unknown"
    return _GIT


def write_artifact(tgt: Target, spec: str, run_seed: int, res: RunResult, variant: str | None,
                   directory: Path | None = None) -> Path:
    directory = Path(directory or FAILURE_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    name = tgt.name + (f"@{variant}" if variant else "")
    path = directory / f"{name}-{res.trace_hash[:12]}.json"
    data = dict(target=tgt.name, variant=variant, strategy=spec, seed=run_seed, choices=res.choices,
                trace_hash=res.trace_hash, failure=dataclasses.asdict(res.failure),
                preemptions=res.preemptions, steps=res.steps, python=platform.python_version(),
                git_commit=git_commit(), trace_tail=format_trace(res.sched, limit=20) if res.sched else "")
    path.write_text(json.dumps(data, indent=1))
    return path


def replay_command(path: Path) -> str:
    try:
        rel = path.resolve().relative_to(ROOT)
    except ValueError:
        rel = path
    return f"python -m tripwire.fuzz replay {rel}"


# --------------------------------------------------------------------------- exploration
@dataclasses.dataclass
class Report:
    target: str
    strategy: str
    seed: int
    schedules: int = 0
    failures: list[tuple[int, RunResult, Path | None]] = dataclasses.field(default_factory=list)
    elapsed: float = 0.0
    exhausted: bool = False

    @property
    def rate(self) -> float:
        return self.schedules / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def first_found(self) -> int | None:
        return self.failures[0][0] if self.failures else None


def run(tgt: Target | str, *, strategy: str = "random", budget: int = 100, seed: int = 0,
        variant: str | None = None, stop_on_failure: bool = True, artifacts: Path | None | bool = True,
        progress: Callable[[Report], None] | None = None, record_trace: bool = False,
        time_limit: float | None = None) -> Report:
    if isinstance(tgt, str):
        tgt = load_targets()[tgt]
    ex = make_explorer(strategy, seed, budget)
    rep = Report(tgt.name, ex.spec, seed)
    t0 = _rtime.perf_counter()
    for run_seed, chooser in ex.runs():
        res = execute(tgt, chooser, run_seed, variant=variant, record_trace=record_trace)
        ex.feed(res.sched)
        rep.schedules += 1
        if res.failure is not None:
            path = None
            if artifacts:
                if not record_trace:  # re-run with the trace on, for the artifact's readable tail
                    res2 = execute(tgt, ReplayChooser(res.choices), run_seed, variant=variant)
                    if res2.failure is not None and res2.trace_hash == res.trace_hash:
                        res = res2
                path = write_artifact(tgt, ex.spec, run_seed, res, variant,
                                      None if artifacts is True else artifacts)
            res.sched = res.sched if record_trace or artifacts else None
            rep.failures.append((rep.schedules, res, path))
        else:
            res.sched = None
        rep.elapsed = _rtime.perf_counter() - t0
        if progress:
            progress(rep)
        if rep.failures and stop_on_failure:
            break
        if time_limit is not None and rep.elapsed > time_limit:
            break
    rep.exhausted = bool(getattr(ex, "exhausted", False))
    rep.elapsed = _rtime.perf_counter() - t0
    return rep


def load_artifact(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def replay(path: str | Path, repeat: int = 1) -> list[RunResult]:
    art = load_artifact(path)
    tgt = load_targets()[art["target"]]
    return [execute(tgt, ReplayChooser(art["choices"]), art["seed"], variant=art.get("variant"))
            for _ in range(repeat)]


def run_hypothesis(tgt: Target | str, data, variant: str | None = None, seed: int = 0) -> RunResult:
    """Run one schedule drawing every decision from Hypothesis ``data`` (use inside @given(st.data()))."""
    if isinstance(tgt, str):
        tgt = load_targets()[tgt]
    return execute(tgt, HypothesisChooser(data), seed, variant=variant, record_trace=False)


# --------------------------------------------------------------------------- shrinking
def _same_failure(a: Failure | None, b: Failure) -> bool:
    return a is not None and a.kind == b.kind


def shrink(path: str | Path, *, max_runs: int = 400, log: Callable[[str], None] = lambda s: None):
    """Truncate, bounded search seeded from the failure, then delta debugging. Returns (result, choices, runs)."""
    art = load_artifact(path)
    tgt = load_targets()[art["target"]]
    variant = art.get("variant")
    seed = art["seed"]
    want = Failure(**art["failure"])
    runs = 0

    def attempt(choices) -> RunResult | None:
        nonlocal runs
        runs += 1
        r = execute(tgt, ReplayChooser(choices), seed, variant=variant, record_trace=False)
        return r if _same_failure(r.failure, want) else None

    base = attempt(art["choices"])
    if base is None:
        raise RuntimeError("the artifact does not reproduce; cannot shrink")
    choices: list[int | None] = list(base.choices)
    # 1. truncate: shortest prefix (default policy afterwards) that still fails
    lo, hi = 0, len(choices)
    while lo < hi and runs < max_runs:
        mid = (lo + hi) // 2
        r = attempt(choices[:mid])
        if r is not None:
            hi = mid
        else:
            lo = mid + 1
    choices = choices[:hi]
    log(f"truncate: {len(base.choices)} -> {len(choices)} choices")

    # deviation form: None where the recorded choice equals the default
    def normalize(ch):
        r = execute(tgt, ReplayChooser(ch), seed, variant=variant, record_trace=False)
        dec = r.sched.decisions
        return [c if c != d else None for (_o, d, c, _cur) in dec][:len(ch)], r

    choices, _ = normalize(choices)
    # 2. bounded search seeded from the failure: try every single deviation kept alone, then pairs
    devs = [i for i, c in enumerate(choices) if c is not None]
    log(f"deviations in failing schedule: {len(devs)}")
    found = None
    for k in (1, 2):
        if len(devs) <= k or found:
            break
        import itertools
        for combo in itertools.combinations(devs, k):
            if runs >= max_runs:
                break
            cand = [choices[i] if i in combo else None for i in range(len(choices))]
            if attempt(cand) is not None:
                found = cand
                break
    if found:
        choices = found
        log(f"bounded search: failure with {sum(c is not None for c in choices)} deviation(s)")
    # 3. delta debugging (ddmin) over the remaining deviations
    devs = [i for i, c in enumerate(choices) if c is not None]
    n = 2
    while len(devs) >= 2 and runs < max_runs:
        chunk = max(1, len(devs) // n)
        reduced = False
        for start in range(0, len(devs), chunk):
            drop = set(devs[start:start + chunk])
            cand = [None if i in drop else c for i, c in enumerate(choices)]
            if attempt(cand) is not None:
                choices = cand
                devs = [i for i in devs if i not in drop]
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if n >= len(devs):
                break
            n = min(len(devs), n * 2)
    while choices and choices[-1] is None:
        choices.pop()
    final = execute(tgt, ReplayChooser(choices), seed, variant=variant, record_trace=True)
    log(f"ddmin: {sum(c is not None for c in choices)} deviation(s) after {runs} runs")
    return final, choices, runs


def format_trace(sched: Scheduler | None, limit: int = 20, highlight_switches: bool = True) -> str:
    """A readable trace: consecutive events of one task collapsed, the last ``limit`` lines."""
    if sched is None:
        return ""
    lines: list[str] = []
    prev_task = None
    for ev in sched.trace:
        if ev.kind == "exit" and ev.task == prev_task:
            continue
        where = f"  @ {ev.where}" if ev.where not in ("-", "?") else ""
        text = f"{ev.step:5d}  {ev.task:<22} {ev.kind:<16} {ev.detail:<28}{where}"
        if ev.task == prev_task and lines and ev.kind in ("callback",) and lines[-1].split()[2] == "callback":
            lines[-1] = text
        else:
            lines.append(text)
        prev_task = ev.task
    if sched.failure is not None:
        lines.append(f"  !!   {sched.failure.summary()}")
    if len(lines) > limit:
        lines = [f"  ... {len(lines) - limit} earlier events"] + lines[-limit:]
    return "\n".join(lines)
