"""The baton scheduler: one real thread runs at a time, every switch point is a decision.

Managed tasks:
  * ``loop``   - the thread running the FuzzLoop; runnable when it has a ready callback or a due timer.
  * ``thread`` - real threads started through the scheduler (worker threads, executor calls, writers).
  * ``event``  - external-event pseudo-threads (cancel, disconnect, cleanup) executed on the loop thread
                 when chosen; each fires at most once.
  * clock      - pseudo option (id -1) that advances the virtual clock to the next deadline
                 (only offered as a choice when the target uses ``timers="explore"``; otherwise time
                 advances only when nothing else can run).

A decision is recorded only when two or more options exist; the chosen task ids form the *choice list*
that ``replay`` feeds back. The *trace* is the list of events (task, kind, detail, source location);
its sha256 is the trace hash.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import hashlib
import heapq
import os
import selectors
import sys
import threading as _rt
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from . import affinity
from .baton import LockBaton, make_baton

_get_ident = _rt.get_ident  # bound once: me() runs at every switch point
from .hb import HappensBefore

_FUZZ_DIR = os.path.dirname(os.path.abspath(__file__))
_STDLIB_DIRS = tuple(
    os.path.dirname(os.path.abspath(m.__file__)) for m in (asyncio, concurrent.futures)
) + (os.path.dirname(os.path.abspath(_rt.__file__)),)
_ROOT = os.path.dirname(_FUZZ_DIR)

CLOCK_ID = -1

# The scheduler of the execution in progress (one at a time per process).
ACTIVE: "Scheduler | None" = None


class FuzzAbort(BaseException):
    """Raised inside managed threads and the loop to unwind an aborted execution."""


@dataclass
class Failure:
    kind: str  # deadlock, self-deadlock, guard, invariant, blocking-call, exception, thread-exception, ...
    message: str
    details: str = ""

    def summary(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class Event:
    step: int
    task: str
    kind: str
    detail: str
    where: str
    actor: str = ""  # on the loop thread: the asyncio task whose step was running (not part of the key)

    def key(self) -> str:
        return f"{self.task}|{self.kind}|{self.detail}|{self.where}"


def _short(path: str) -> str:
    if path.startswith(_ROOT + os.sep):
        return path[len(_ROOT) + 1:]
    return os.path.basename(path)


# Per code object, keyed by its id: (skipped by user_location, skipped by light_stack, short file name, function
# name, the code object, its location without a line). Computed once per code object: the path tests ran on every
# switch point and frame.
# Keyed by identity, not equality: code objects compare (and hash) equal across files - a shaped engine copy's
# unchanged functions equal the real engine's - so an equality key reported whichever file the process saw first
# (and hashing a code object on every frame was the slower lookup). The entry keeps its code object alive, so the
# id is never reused while the entry exists.
_CODE_INFO: dict = {}


def _code_info(code) -> tuple:
    info = _CODE_INFO.get(id(code))
    if info is None:
        fn = code.co_filename
        fuzz_own = fn.startswith(_FUZZ_DIR) and "/targets/" not in fn
        short = _short(fn)
        info = _CODE_INFO[id(code)] = (
            (fuzz_own and not fn.endswith("fake_backend.py")) or fn.startswith(_STDLIB_DIRS),
            fuzz_own, short, code.co_name, code, f"{short} ({code.co_name})")
    return info


def coroutine_location(fr) -> str:
    """Where a task's step resumes: ``file:line (function)`` of its innermost coroutine frame ``fr``, without the
    line in the scheduler's own code and the stdlib's (``file (function)``): those lines change with tripwire's
    edits and Python's patch releases, and a trace hash that moved with them would not match its saved failure
    after an upgrade. The code under test keeps its lines."""
    code = fr.f_code
    info = _CODE_INFO.get(id(code)) or _code_info(code)
    return info[5] if info[0] else _frame_location(fr, code, info)


# Per (code id, instruction offset): the ``file:line (function)`` string a location there reads. Switch points recur
# at the same few call sites thousands of times per run; computing the line (a line-table scan) and formatting it
# each time was most of a location's cost. Only code objects kept alive by ``_CODE_INFO`` get entries, so the ids
# are never reused while an entry exists.
_LOCATIONS: dict = {}


def _frame_location(f, code, info) -> str:
    """``file:line (function)`` of frame ``f`` running ``code`` (``info``: its ``_code_info``), cached per offset.
    The line is the frame's own ``f_lineno`` the first time: what every later visit at that offset reads too."""
    key = (id(code), f.f_lasti)
    loc = _LOCATIONS.get(key)
    if loc is None:
        loc = _LOCATIONS[key] = f"{info[2]}:{f.f_lineno} ({info[3]})"
    return loc


def user_location(skip_fuzz: bool = True, depth: int = 2) -> str:
    """file:line (function) of the first frame outside fuzz/ and the stdlib threading/asyncio code."""
    f = sys._getframe(depth)
    if not skip_fuzz:
        while f is not None:
            fn = f.f_code.co_filename
            if not fn.startswith(_STDLIB_DIRS):
                return f"{_short(fn)}:{f.f_lineno} ({f.f_code.co_name})"
            f = f.f_back
        return "?"
    cache = _CODE_INFO
    while f is not None:
        code = f.f_code
        info = cache.get(id(code)) or _code_info(code)
        if not info[0]:
            return _frame_location(f, code, info)
        f = f.f_back
    return "?"


def raw_stack(depth: int = 2, limit: int = 12) -> list[tuple]:
    """The caller's stack as (code, instruction offset) pairs outside fuzz/ (cheap: no line numbers, nothing
    formatted; it runs on every lock acquire); ``format_stack`` turns it into lines."""
    out = []
    f = sys._getframe(depth)
    walked = 0
    cache = _CODE_INFO
    while f is not None and len(out) < limit and walked < 2 * limit:  # bounded: runs on every lock acquire
        code = f.f_code
        if not (cache.get(id(code)) or _code_info(code))[1]:
            out.append((code, f.f_lasti))
        f = f.f_back
        walked += 1
    return out


def _line_at(code, offset: int) -> int | None:
    """The source line of the instruction at byte ``offset`` in ``code`` (what ``frame.f_lineno`` reports there)."""
    if offset < 0:
        return code.co_firstlineno
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line
    return None


def format_stack(raw: list[tuple] | None) -> list[str]:
    """``raw_stack`` output as ``file:line in function`` lines (what ``light_stack`` returns)."""
    return [f"{_code_info(code)[2]}:{_line_at(code, offset)} in {code.co_name}" for code, offset in raw or ()]


def light_stack(limit: int = 12, depth: int = 2) -> list[str]:
    return format_stack(raw_stack(depth + 1, limit))


def _baton():
    """A task's baton (``baton.make_baton``): held while the task must wait; releasing it lets the task run. Binary:
    a second release before the task waited again is a no-op, which only the abort paths do."""
    return make_baton()


def _pass(baton) -> None:
    """Hand ``baton`` to its task (idempotent: abort paths may hand it twice)."""
    baton.release()


_MASK_UNKNOWN = frozenset((-1,))  # equal to no CPU set affinity.choose() gives, nor to None


class _Worker:
    """A reusable daemon OS thread that runs jobs one after another, each in a fresh ``contextvars.Context``.

    Why: starting a thread costs ~0.25 ms of CPU plus two hand-offs here, several times per schedule (the loop
    thread, writers, executor calls). Only for targets whose code keeps no thread-local state across a thread's
    life (``Target.uses`` "fake"/"toy": checked, neither the engine nor the toy code uses ``threading.local``); user
    and real-MLX targets (MLX streams are thread-local) get a fresh thread per task.
    """

    __slots__ = ("go", "job", "thread", "ident", "cpus", "pinned")
    IDLE_NAME = "fuzz-pool:idle"  # a parked worker is no task's thread (jobs rename it before signalling the end)
    IDLE: list["_Worker"] = []  # idle workers of the process (one execution is active at a time)
    MAX_IDLE = 16

    def __init__(self):
        self.go = _baton()
        self.job: Callable[[], None] | None = None
        self.cpus: frozenset[int] | None = None  # the CPU set the next job runs on (affinity.choose)
        # The set this thread is restricted to now (None: all allowed). Unknown at first: a new thread inherits the
        # mask of the thread that started it, so the first job always sets its own.
        self.pinned: frozenset[int] | None = _MASK_UNKNOWN
        self.thread = _rt.Thread(target=self._main, name=self.IDLE_NAME, daemon=True)
        self.thread.start()
        self.ident = self.thread.ident

    def _main(self) -> None:
        while True:
            self.go.acquire()
            job, self.job = self.job, None
            if self.cpus != self.pinned:  # a syscall only when this job's execution runs elsewhere
                affinity.pin_current_thread(self.cpus)
                self.pinned = self.cpus
            try:
                contextvars.Context().run(job)
            except BaseException:  # noqa: BLE001 - jobs report their own failures; the worker must survive
                pass
            idle = _Worker.IDLE
            if len(idle) >= _Worker.MAX_IDLE:
                return
            idle.append(self)

    @classmethod
    def take(cls) -> "_Worker":
        """An idle worker, or a new one; give it work with ``start``."""
        try:
            return cls.IDLE.pop()
        except IndexError:
            return cls()

    def start(self, job: Callable[[], None], name: str, cpus: frozenset[int] | None = None) -> None:
        """Run ``job`` on this worker, restricted to ``cpus`` (None: every allowed CPU)."""
        self.thread.name = f"fuzz:{name}"
        self.job = job
        self.cpus = cpus
        self.go.release()


class Task:
    __slots__ = ("id", "name", "kind", "sem", "state", "wait", "thread", "ident", "fn", "enabled",
                 "fired", "pending_event", "sched", "busy", "exited")

    def __init__(self, sched: "Scheduler", tid: int, name: str, kind: str):
        self.sched = sched
        self.id = tid
        self.name = name
        self.kind = kind
        self.sem = _baton()
        self.state = "runnable"  # runnable | blocked | done
        self.wait: tuple | None = None  # (desc, ready_fn, deadline, owner_fn)
        self.thread: _rt.Thread | None = None
        self.ident: int | None = None
        self.fn: Callable | None = None
        self.enabled: Callable[[], bool] | None = None
        self.fired = False
        self.pending_event: "Task | None" = None
        self.busy = False  # loop task: inside a callback / event (runnable regardless of the ready queue)
        self.exited = None  # on a reused worker thread: released once the task's job returned

    def __repr__(self) -> str:
        return f"<{self.kind} {self.id}:{self.name} {self.state}>"


class _ClockOption:
    id = CLOCK_ID
    name = "clock"
    kind = "clock"
    state = "runnable"


CLOCK = _ClockOption()

_CALLBACK_ID_BASE = 1000  # option ids of ready asyncio callbacks (task ids stay below)


class _CallbackOption:
    """A ready asyncio callback offered as a scheduling option (``callbacks="explore"``)."""

    __slots__ = ("id", "name", "index")
    kind = "callback"
    state = "runnable"

    def __init__(self, oid: int, name: str, index: int):
        self.id, self.name, self.index = oid, name, index

    def __repr__(self) -> str:
        return f"<callback {self.id}:{self.name}>"


class Scheduler:
    def __init__(self, strategy, *, timers: str = "idle", max_steps: int = 20000, record_trace: bool = True,
                 callbacks: str = "fifo", reuse_threads: bool = False):
        self.strategy = strategy
        self.reuse_threads = reuse_threads  # managed threads on reused workers (``_Worker``) instead of new ones
        # The CPU set of this execution's threads (fuzz.affinity; None: unpinned). Fresh threads inherit it from the
        # thread that starts them; reused workers are given it.
        self.cpus: frozenset[int] | None = None
        self.timers = timers
        self.callbacks = callbacks  # "fifo" | "explore": the strategy picks which ready task step runs next
        self._callback_ids: dict[str, int] = {}
        # happens-before digest, only for strategies that reduce by it (bounded search)
        self.hb = HappensBefore() if getattr(strategy, "wants_hb", False) else None
        self.actor = ""  # label of the asyncio task whose step the loop is running (traces only)
        self.max_steps = max_steps
        self.record_trace = record_trace
        self.tasks: list[Task] = []
        self.by_ident: dict[int, Task] = {}
        self.current: Task | None = None
        self.loop_task: Task | None = None
        self.loop: "FuzzLoop | None" = None
        self.vnow = 0.0
        self.steps = 0
        self.choices: list[int] = []
        self.decisions: list[tuple[tuple[int, ...], int, int, int]] = []  # (options, default, chosen, current)
        self.trace: list[Event] = []
        self._hash = hashlib.sha256()
        self._keys: list[str] = []  # event keys not hashed yet (hashed in one call when trace_hash is read)
        self.failure: Failure | None = None
        self.aborting = False
        self.progress = 0
        # Baton hand-offs between OS threads (a switch point choosing another thread, a thread ending): each one is
        # a futex wake plus a GIL hand-over, and on a loaded machine the woken thread waits for a core - where a
        # schedule's wall time beyond its CPU time goes (measured: no timed wait, poll or join is involved).
        self.switches = 0
        self.unwatched = 0  # > 0 while a one-time load runs (Context.load): the watchdog does not count it
        self.quiesce_waiters: list[asyncio.Future] = []
        self.async_waits: dict[Any, tuple[str, Callable[[], Any]]] = {}
        self._labels: dict[int, str] = {}
        self._label_objs: list[Any] = []  # keep labelled objects alive so ids stay unique
        self._label_counts: collections.Counter = collections.Counter()
        self.thread_exceptions: list[tuple[str, BaseException]] = []
        self.fail_on_thread_exception = True

    # ----------------------------------------------------------------- labels & trace
    def label(self, obj: Any, prefix: str) -> str:
        key = id(obj)
        lab = self._labels.get(key)
        if lab is None:
            self._label_counts[prefix] += 1
            lab = f"{prefix}#{self._label_counts[prefix]}"
            self._labels[key] = lab
            self._label_objs.append(obj)
        return lab

    def task_label(self, t) -> str:
        """Deterministic name for an asyncio task (default 'Task-N' names are process-global)."""
        name = t.get_name()
        if name.startswith("Task-") and name[5:].isdigit():
            return self.label(t, "atask")
        return name

    def record(self, task_name: str, kind: str, detail: str = "", where: str | None = None) -> None:
        if where is None:
            where = user_location(depth=3)
        self._keys.append(f"{task_name}|{kind}|{detail}|{where}\n")  # Event.key() + newline
        if self.hb is not None:
            self.hb.add(task_name, kind, detail, where)
        if self.record_trace:
            ev = Event(self.steps, task_name, kind, detail, where)
            if self.actor and task_name == self.loop_task.name:
                ev.actor = self.actor
            self.trace.append(ev)

    @property
    def trace_hash(self) -> str:
        """sha256 over every event key so far, one per line (keys are hashed in one batch: cheaper per event)."""
        if self._keys:
            self._hash.update("".join(self._keys).encode())
            self._keys.clear()
        return self._hash.hexdigest()

    # ----------------------------------------------------------------- tasks
    def _new_task(self, name: str, kind: str) -> Task:
        t = Task(self, len(self.tasks), name, kind)
        self.tasks.append(t)
        return t

    def me(self) -> Task:
        t = self.by_ident.get(_get_ident())
        if t is None:
            raise RuntimeError("fuzz primitive used from a thread the scheduler does not manage "
                               f"({_rt.current_thread().name}); start threads through the instrumented module")
        return t

    def adopt_loop_thread(self, name: str = "loop") -> Task:
        t = self._new_task(name, "loop")
        t.ident = _rt.get_ident()
        t.thread = _rt.current_thread()
        self.by_ident[t.ident] = t
        self.loop_task = t
        self.current = t
        return t

    def spawn(self, fn: Callable, args: tuple = (), kwargs: dict | None = None, name: str = "thread") -> Task:
        """Start a managed real thread; it waits for the baton before running ``fn``."""
        if self.aborting:
            raise FuzzAbort()
        t = self._new_task(name, "thread")
        kwargs = kwargs or {}

        def body():
            t.sem.acquire()
            try:
                if self.aborting:
                    raise FuzzAbort()
                fn(*args, **kwargs)
            except FuzzAbort:
                pass
            except BaseException as e:  # noqa: BLE001 - reported as a failure of the run
                self.thread_exceptions.append((t.name, e))
                if self.fail_on_thread_exception and not self.aborting and self.failure is None:
                    self.failure = Failure("thread-exception", f"uncaught {type(e).__name__} in thread {t.name}: {e}",
                                           "".join(traceback.format_exception(e)))
                    self.aborting = True
            finally:
                t.state = "done"
                self._on_exit(t)

        if self.reuse_threads:
            t.exited = LockBaton()  # a lock: finish_threads waits on it with a timeout

            def job():
                try:
                    body()
                finally:
                    _rt.current_thread().name = _Worker.IDLE_NAME
                    _pass(t.exited)
            w = _Worker.take()
            t.ident, t.thread = w.ident, w.thread
            self.by_ident[w.ident] = t  # before the job starts: the worker may run it at once
            w.start(job, name, self.cpus)
            return t
        started = _rt.Event()

        def bootstrap():
            t.ident = _rt.get_ident()
            self.by_ident[t.ident] = t
            started.set()
            body()

        th = _rt.Thread(target=bootstrap, name=f"fuzz:{name}", daemon=True)
        t.thread = th
        th.start()
        started.wait()
        return t

    def external(self, name: str, fn: Callable[[], Any], enabled: Callable[[], bool] | None = None) -> Task:
        """Register an external event (run on the loop thread, at most once, whenever the schedule picks it)."""
        t = self._new_task(name, "event")
        t.fn = fn
        t.enabled = enabled
        return t

    # ----------------------------------------------------------------- runnability
    def _loop_has_work(self) -> bool:
        loop = self.loop
        if loop is None:
            return False
        if self.loop_task.pending_event is not None:
            return True
        for h in loop._ready:
            if not h._cancelled:
                return True
        sch = loop._scheduled
        while sch and sch[0]._cancelled:
            h = heapq.heappop(sch)
            h._scheduled = False
            loop._timer_cancelled_count = max(0, loop._timer_cancelled_count - 1)
        return bool(sch) and sch[0]._when <= self.vnow

    def _runnable(self, t: Task) -> bool:
        if t.state == "done":
            return False
        if t.kind == "event":
            lt = self.loop_task
            return (not t.fired and lt is not None and lt.wait is None and lt.state != "done"
                    and lt.pending_event is None and (t.enabled is None or t.enabled()))
        if t.wait is not None:
            _, ready, deadline, _ = t.wait
            return ready() or (deadline is not None and self.vnow >= deadline)
        if t.kind == "loop":
            return t.busy or self._loop_has_work()
        return True

    def next_deadline(self) -> float | None:
        best = None
        if self.loop is not None:
            sch = self.loop._scheduled
            while sch and sch[0]._cancelled:
                h = heapq.heappop(sch)
                h._scheduled = False
            if sch:
                best = sch[0]._when
        for t in self.tasks:
            if t.state != "done" and t.wait is not None and t.wait[2] is not None:
                if best is None or t.wait[2] < best:
                    best = t.wait[2]
        return best

    def _advance(self, when: float) -> None:
        if when > self.vnow:
            self.vnow = when
        self.record("clock", "advance", f"t={self.vnow:.6f}", where="-")

    # ----------------------------------------------------------------- decisions
    def _choose(self, me: Task) -> Task | None:
        while True:
            options = []
            for t in self.tasks:  # _runnable() inlined for the common cases: this runs at every switch point
                if t.state == "done":
                    continue
                kind = t.kind
                if t.wait is None:
                    if kind == "thread":
                        options.append(t)
                        continue
                    if kind == "loop":
                        if t.busy or self._loop_has_work():
                            options.append(t)
                        continue
                if kind == "event" and t.fired:
                    continue
                if self._runnable(t):
                    options.append(t)
            if not options:
                dl = self.next_deadline()
                if dl is not None:
                    self._advance(dl)
                    continue
                if self.quiesce_waiters:
                    # Quiescent only if every blocked thread is idle (queue/event); a thread blocked on a
                    # lock or join whose owner cannot run any more is a deadlock.
                    stuck = [t for t in self.tasks if t.state != "done" and t.wait is not None
                             and t.wait[3] is not None and t.wait[3]() is not None]
                    if stuck:
                        return None
                    waiters, self.quiesce_waiters = self.quiesce_waiters, []
                    for w in waiters:
                        if not w.done():
                            w.set_result(None)
                    continue
                return None
            if self.timers == "explore" and self.next_deadline() is not None:
                options.append(CLOCK)
            if len(options) == 1:
                return options[0]
            default = me if me in options else options[0]
            chosen = self.strategy.choose(options, default, me, self)
            self.choices.append(chosen.id)
            self.decisions.append((tuple([o.id for o in options]), default.id, chosen.id, me.id))
            if chosen is CLOCK:
                self._advance(self.next_deadline())
                continue
            return chosen

    def point(self, kind: str, detail: str = "", where: str | None = None) -> None:
        """A switch point: record the event, then let the strategy pick who runs next."""
        if self.aborting:
            raise FuzzAbort()
        me = self.me()
        if self.current is not me:
            # A managed thread is running without the baton: a scheduler bug or a bypassing thread.
            self.fail("bypass", f"task {me.name} ran without the baton (current={self.current})")
        self.steps += 1
        self.progress += 1
        if self.steps > self.max_steps:
            self.fail("livelock", f"more than {self.max_steps} steps; the body does not terminate")
        if where is None:
            where = user_location(depth=2)
        self.record(me.name, kind, detail, where)
        self._reschedule(me)

    def _reschedule(self, me: Task) -> None:
        nxt = self._choose(me)
        if nxt is None:
            self.fail("deadlock", "nothing runnable, no timer pending, body not done", self.wait_for_graph())
        self._transfer(me, nxt)

    def _transfer(self, me: Task, nxt: Task) -> None:
        if nxt.kind == "event":
            host = self.loop_task
            host.pending_event = nxt
            nxt.fired = True
            nxt = host
        if nxt is me:
            return
        self.current = nxt
        self.switches += 1
        # Held: nxt is waiting (or about to wait) for it; only the abort paths hand a baton twice, and they use _pass.
        nxt.sem.post()
        me.sem.acquire()
        if self.aborting:
            raise FuzzAbort()

    def block(self, desc: str, ready: Callable[[], bool], timeout: float | None = None,
              owner: Callable[[], Any] | None = None) -> bool:
        """Block the calling task until ``ready()`` or the virtual timeout; returns ready()."""
        if self.aborting:
            raise FuzzAbort()
        if ready():
            return True
        me = self.me()
        deadline = None if timeout is None or timeout < 0 else self.vnow + timeout
        me.wait = (desc, ready, deadline, owner)
        try:
            self.steps += 1
            self.progress += 1
            self._reschedule(me)
        finally:
            me.wait = None
        return ready()

    def _on_exit(self, t: Task) -> None:
        if self.aborting:
            if self.loop_task is not None and self.current is t:
                self.current = self.loop_task
                _pass(self.loop_task.sem)
            return
        self.record(t.name, "exit", "", where="-")
        try:
            nxt = self._choose(t)
        except FuzzAbort:
            nxt = None
        if nxt is None:
            if self.failure is None:
                self.failure = Failure("deadlock", "nothing runnable, no timer pending, body not done",
                                       self.wait_for_graph())
            self.aborting = True
            self.current = self.loop_task
            _pass(self.loop_task.sem)
            return
        if nxt.kind == "event":
            self.loop_task.pending_event = nxt
            nxt.fired = True
            nxt = self.loop_task
        self.current = nxt
        self.switches += 1
        nxt.sem.post()  # held, as in _transfer

    def choose_callback(self, ready) -> int:
        """Index in ``ready`` (the loop's deque, cancelled handles already dropped) of the callback to run.

        Candidates are every asyncio task step/wakeup plus the first other callback, so plain callbacks keep
        their FIFO order among themselves (protocol callbacks rely on it) while tasks interleave freely.
        """
        cands: list[_CallbackOption] = []
        other_seen = False
        used: set[int] = set()
        for i, h in enumerate(ready):
            owner = getattr(h._callback, "__self__", None)
            if isinstance(owner, asyncio.Task):
                key = self.task_label(owner)
            elif not other_seen:
                other_seen = True
                key = "cb " + getattr(h._callback, "__qualname__", type(h._callback).__name__)
            else:
                continue
            oid = _CALLBACK_ID_BASE + self._callback_ids.setdefault(key, len(self._callback_ids))
            while oid in used:  # two handles with one name in the same option set: keep ids distinct
                oid += 100000
            used.add(oid)
            cands.append(_CallbackOption(oid, key, i))
        if len(cands) < 2:
            return 0
        me = self.loop_task
        chosen = self.strategy.choose(cands, cands[0], me, self)
        self.choices.append(chosen.id)
        self.decisions.append((tuple(o.id for o in cands), cands[0].id, chosen.id, me.id))
        return chosen.index

    # ----------------------------------------------------------------- failures
    def fail(self, kind: str, message: str, details: str = "") -> None:
        if self.failure is None:
            self.failure = Failure(kind, message, details)
        self.aborting = True
        raise FuzzAbort()

    def check(self, cond: bool, message: str, details: str = "") -> None:
        if not cond:
            self.fail("invariant", message, details)

    def wait_for_graph(self) -> str:
        lines = ["wait-for graph:"]
        for t in self.tasks:
            if t.state == "done" or t.kind == "event":
                continue
            if t.wait is not None:
                desc, _, deadline, owner = t.wait
                who = owner() if owner else None
                target = getattr(who, "name", None) or (self.task_label(who) if who is not None and hasattr(who, "get_name") else None)
                arrow = f" --> {target}" if target else " --> (nobody will signal it)"
                lines.append(f"  thread {t.name} waits on {desc}{arrow}")
            elif t.kind == "loop":
                lines.append(f"  loop {t.name}: no ready callbacks, no timers")
            else:
                lines.append(f"  thread {t.name}: runnable?")
        if self.loop is not None:
            for at in asyncio.all_tasks(self.loop):
                if at.done():
                    continue
                name = self.task_label(at)
                frames = at.get_stack(limit=1)
                where = (f"{_short(frames[-1].f_code.co_filename)}:{frames[-1].f_lineno} "
                         f"({frames[-1].f_code.co_name})") if frames else "?"
                w = self.async_waits.get(at)
                if w is not None:
                    desc, owner = w
                    o = owner()
                    oname = self.task_label(o) if o is not None else "nobody"
                    cyc = "  <-- SELF" if o is at else ""
                    lines.append(f"  task {name} at {where} waits on {desc} held by {oname}{cyc}")
                else:
                    fw = getattr(at, "_fut_waiter", None)
                    lines.append(f"  task {name} at {where} awaits {type(fw).__name__ if fw is not None else '?'}")
        return "\n".join(lines)

    # ----------------------------------------------------------------- teardown
    def finish_threads(self, timeout: float = 2.0) -> list[str]:
        """Unwind every managed thread still alive (one at a time); return names of leaked ones."""
        self.aborting = True
        leaked = []
        for t in self.tasks:
            if t.kind != "thread" or t.thread is None:
                continue
            if t.exited is not None:  # on a reused worker: alive until its job returned
                if t.exited.locked():
                    _pass(t.sem)
                    if not t.exited.acquire(timeout=timeout):
                        leaked.append(t.name)
                continue
            if t.thread.is_alive():
                _pass(t.sem)
                t.thread.join(timeout)
                if t.thread.is_alive():
                    leaked.append(t.name)
        return leaked


class FuzzLoop(asyncio.SelectorEventLoop):
    """Runs one callback per decision (FIFO, or the strategy's pick among ready task steps with
    ``callbacks="explore"``), virtual clock, managed executor threads."""

    def __init__(self, sched: Scheduler):
        # Never polled (``_run_once`` is ours): a select()-based selector needs no epoll descriptor.
        super().__init__(selectors.SelectSelector())
        self._sched = sched
        self._executor_n = 0
        self.set_exception_handler(self._on_exception)
        self.unhandled: list[dict] = []

    def _on_exception(self, loop, context):
        self.unhandled.append(context)

    def time(self) -> float:
        return self._sched.vnow

    def _write_to_self(self) -> None:
        pass

    def _make_self_pipe(self) -> None:
        # Nothing wakes this loop through its self-pipe (``_write_to_self`` is a no-op, nothing is polled):
        # skip the socketpair a real loop creates, a per-schedule cost.
        self._ssock = self._csock = None

    def _close_self_pipe(self) -> None:
        pass

    def run_in_executor(self, executor, func, *args):
        self._check_closed()
        cf: concurrent.futures.Future = concurrent.futures.Future()
        self._executor_n += 1
        name = f"executor-{self._executor_n}"

        def work():
            if not cf.set_running_or_notify_cancel():
                return
            try:
                r = func(*args)
            except FuzzAbort:
                raise
            except BaseException as e:  # noqa: BLE001
                cf.set_exception(e)
            else:
                cf.set_result(r)

        self._sched.spawn(work, name=name)
        fut = asyncio.wrap_future(cf, loop=self)
        self._sched.point("executor.submit", name)
        return fut

    def _describe(self, h) -> tuple[str, str]:
        cb = h._callback
        owner = getattr(cb, "__self__", None)
        s = self._sched
        if isinstance(owner, asyncio.Task):
            coro = owner.get_coro()
            fr = getattr(coro, "cr_frame", None)
            while fr is not None:
                # descend into the innermost awaited coroutine for a useful location
                aw = getattr(coro, "cr_await", None)
                if aw is not None and getattr(aw, "cr_frame", None) is not None:
                    coro = aw
                    fr = aw.cr_frame
                    continue
                break
            where = coroutine_location(fr) if fr else "start"
            return f"step {s.task_label(owner)}", where
        name = getattr(cb, "__qualname__", type(cb).__name__)
        return f"cb {name}", "-"

    def _run_once(self):
        s = self._sched
        me = s.loop_task
        if s.aborting:
            raise FuzzAbort()
        s.steps += 1
        s.progress += 1
        if s.steps > s.max_steps:
            s.fail("livelock", f"more than {s.max_steps} steps; the body does not terminate")
        s._reschedule(me)
        ev = me.pending_event
        if ev is not None:
            me.pending_event = None
            s.record(ev.name, "event", "", where="-")
            me.busy = True
            try:
                ev.fn()
            except FuzzAbort:
                raise
            except BaseException as e:  # noqa: BLE001
                s.fail("exception", f"external event {ev.name} raised {type(e).__name__}: {e}",
                       "".join(traceback.format_exception(e)))
            finally:
                me.busy = False
            return
        sch = self._scheduled
        while sch and (sch[0]._cancelled or sch[0]._when <= s.vnow):
            h = heapq.heappop(sch)
            h._scheduled = False
            if not h._cancelled:
                self._ready.append(h)
        ready = self._ready
        if s.callbacks == "explore" and len(ready) > 1:
            live = [h for h in ready if not h._cancelled]
            ready.clear()
            ready.extend(live)
            i = s.choose_callback(ready) if len(live) > 1 else 0
            if i:
                ready.rotate(-i)
                h = ready.popleft()
                ready.rotate(i)
                ready.appendleft(h)
        while self._ready:
            h = self._ready.popleft()
            if h._cancelled:
                continue
            detail, where = self._describe(h)
            s.record(me.name, "callback", detail, where)
            me.busy = True
            if s.record_trace and detail.startswith("step "):
                s.actor = detail[5:]
            try:
                h._run()
            finally:
                me.busy = False
                s.actor = ""
            break
        h = None
