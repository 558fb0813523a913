"""Instrumented primitives and the name-swapping instrumentation of a module under test.

Every operation on these primitives is a switch point of the active scheduler; blocking operations
block the *managed task* (the scheduler runs someone else) instead of the real thread.
They are swapped into one module at a time (``instrument(module)``), never globally.
"""

from __future__ import annotations

import asyncio as _real_asyncio
import builtins
import collections
import os as _real_os
import pathlib
import queue as _real_queue
import shutil as _real_shutil
import threading as _real_threading
import time as _real_time
import types
from typing import Any

from . import sched as _s
from .sched import FuzzAbort, format_stack, light_stack, raw_stack


def _sched() -> "_s.Scheduler":
    s = _s.ACTIVE
    if s is None:
        raise FuzzAbort()
    return s


def point(label: str = "point", detail: str = "") -> None:
    """Explicit switch point (no-op outside a fuzz run or on unmanaged threads)."""
    s = _s.ACTIVE
    if s is None:
        return
    if _real_threading.get_ident() not in s.by_ident:
        return
    s.point(label, detail)


# --------------------------------------------------------------------------- threading
class Lock:
    """Non-reentrant lock with owner tracking: the owner re-acquiring it fails the run immediately."""

    _reentrant = False

    def __init__(self):
        self._owner = None
        self._count = 0
        self._stack: list[str] | None = None
        s = _s.ACTIVE
        self._label = s.label(self, "RLock" if self._reentrant else "Lock") if s else "Lock"

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        s = _sched()
        me = s.me()
        s.point("lock.acquire", self._label)
        if self._owner is me:
            if self._reentrant:
                self._count += 1
                return True
            if blocking:
                s.fail("self-deadlock",
                       f"{me.name} re-acquires non-reentrant {self._label} it already holds",
                       "first acquired at:\n    " + "\n    ".join(format_stack(self._stack) or ["?"]) +
                       "\nre-acquired at:\n    " + "\n    ".join(light_stack(depth=2)))
            return False
        if self._owner is not None:
            if not blocking:
                return False
            ok = s.block(f"{self._label}", lambda: self._owner is None,
                         None if timeout is None or timeout < 0 else timeout, owner=lambda: self._owner)
            if not ok:
                return False
        self._owner = me
        self._count = 1
        self._stack = raw_stack(depth=2)  # formatted only if a self-deadlock is reported
        return True

    def release(self) -> None:
        s = _sched()
        me = s.me()
        if self._owner is None:
            raise RuntimeError("release unlocked lock")
        if self._reentrant:
            if self._owner is not me:
                raise RuntimeError("cannot release un-acquired lock")
            self._count -= 1
            if self._count:
                return
        self._owner = None
        self._count = 0
        s.point("lock.release", self._label)

    def locked(self) -> bool:
        return self._owner is not None

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()

    def _is_owned(self):  # used by Condition
        s = _s.ACTIVE
        return s is not None and self._owner is s.by_ident.get(_real_threading.get_ident())


class RLock(Lock):
    _reentrant = True


class Event:
    def __init__(self):
        self._flag = False
        s = _s.ACTIVE
        self._label = s.label(self, "Event") if s else "Event"

    def is_set(self) -> bool:
        return self._flag

    isSet = is_set

    def set(self) -> None:
        s = _sched()
        self._flag = True
        s.point("event.set", self._label)

    def clear(self) -> None:
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        s = _sched()
        s.point("event.wait", self._label)
        return s.block(self._label, lambda: self._flag, timeout)


class Condition:
    def __init__(self, lock=None):
        self._lock = lock if lock is not None else RLock()
        self._waiters: collections.deque = collections.deque()
        s = _s.ACTIVE
        self._label = s.label(self, "Condition") if s else "Condition"
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self):
        return self._lock.acquire()

    def __exit__(self, *exc):
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        s = _sched()
        token = [False]
        self._waiters.append(token)
        lock = self._lock
        saved = lock._count
        lock._owner = None
        lock._count = 0
        s.point("cond.wait", self._label)
        try:
            ok = s.block(self._label, lambda: token[0], timeout)
        finally:
            if not token[0]:
                try:
                    self._waiters.remove(token)
                except ValueError:
                    pass
            s.block(lock._label, lambda: lock._owner is None, None, owner=lambda: lock._owner)
            lock._owner = s.me()
            lock._count = saved
        return ok

    def wait_for(self, predicate, timeout: float | None = None):
        s = _sched()
        deadline = None if timeout is None else s.vnow + timeout
        result = predicate()
        while not result:
            remaining = None
            if deadline is not None:
                remaining = deadline - s.vnow
                if remaining <= 0:
                    break
            self.wait(remaining)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        s = _sched()
        for _ in range(min(n, len(self._waiters))):
            self._waiters.popleft()[0] = True
        s.point("cond.notify", self._label)

    def notify_all(self) -> None:
        self.notify(len(self._waiters))

    notifyAll = notify_all


class Semaphore:
    def __init__(self, value: int = 1):
        self._value = value
        s = _s.ACTIVE
        self._label = s.label(self, "Semaphore") if s else "Semaphore"

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        s = _sched()
        s.point("sem.acquire", self._label)
        if self._value <= 0:
            if not blocking:
                return False
            if not s.block(self._label, lambda: self._value > 0, timeout):
                return False
        self._value -= 1
        return True

    __enter__ = acquire

    def release(self, n: int = 1) -> None:
        s = _sched()
        self._value += n
        s.point("sem.release", self._label)

    def __exit__(self, *exc):
        self.release()


BoundedSemaphore = Semaphore


class Thread:
    """A thread whose body runs as a managed task."""

    def __init__(self, group=None, target=None, name=None, args=(), kwargs=None, *, daemon=None):
        self._target = target
        self._args = args
        self._kwargs = kwargs or {}
        self.name = name or "thread"
        self.daemon = bool(daemon)
        self._task = None

    def run(self):
        if self._target is not None:
            self._target(*self._args, **self._kwargs)

    def start(self):
        s = _sched()
        if self._task is not None:
            raise RuntimeError("threads can only be started once")
        self._task = s.spawn(self.run, name=self.name)
        s.point("thread.start", self.name)

    def join(self, timeout: float | None = None):
        s = _sched()
        if self._task is None:
            raise RuntimeError("cannot join thread before it is started")
        t = self._task
        if t is s.me():
            raise RuntimeError("cannot join current thread")
        s.point("thread.join", self.name)
        s.block(f"join({self.name})", lambda: t.state == "done", timeout, owner=lambda: t)

    def is_alive(self) -> bool:
        return self._task is not None and self._task.state != "done"

    @property
    def ident(self):
        return self._task.ident if self._task else None

    def setDaemon(self, d):
        self.daemon = d

    def getName(self):
        return self.name


def _make_proxy(name: str, real: types.ModuleType, overrides: dict[str, Any]) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update({k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    mod.__dict__.update(overrides)
    mod.__fuzz_proxy__ = real
    return mod


threading = _make_proxy("fuzz.threading", _real_threading, dict(
    Lock=Lock, RLock=RLock, Event=Event, Condition=Condition, Semaphore=Semaphore,
    BoundedSemaphore=BoundedSemaphore, Thread=Thread))


# --------------------------------------------------------------------------- queue
class Queue:
    def __init__(self, maxsize: int = 0):
        self.maxsize = maxsize
        self._q: collections.deque = collections.deque()
        self._unfinished = 0
        s = _s.ACTIVE
        self._label = s.label(self, "Queue") if s else "Queue"

    def qsize(self) -> int:
        return len(self._q)

    def empty(self) -> bool:
        return not self._q

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._q)

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        s = _sched()
        s.point("queue.put", self._label)
        if self.full():
            if not block:
                raise _real_queue.Full
            if not s.block(f"{self._label} (full)", lambda: not self.full(), timeout):
                raise _real_queue.Full
        self._q.append(item)
        self._unfinished += 1

    def put_nowait(self, item) -> None:
        self.put(item, block=False)

    def get(self, block: bool = True, timeout: float | None = None):
        s = _sched()
        s.point("queue.get", self._label)
        if not self._q:
            if not block:
                raise _real_queue.Empty
            if not s.block(f"{self._label} (empty)", lambda: bool(self._q), timeout):
                raise _real_queue.Empty
        return self._q.popleft()

    def get_nowait(self):
        return self.get(block=False)

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1

    def join(self) -> None:
        s = _sched()
        s.point("queue.join", self._label)
        s.block(f"{self._label} (join)", lambda: self._unfinished == 0)


class SimpleQueue(Queue):
    pass


queue = _make_proxy("fuzz.queue", _real_queue, dict(Queue=Queue, SimpleQueue=SimpleQueue, LifoQueue=Queue))


# --------------------------------------------------------------------------- time (virtual)
_T0 = 1_700_000_000.0


def _vnow() -> float:
    s = _s.ACTIVE
    return s.vnow if s is not None else 0.0


PLAIN_TIME_SCALE = 0.1  # outside a fuzz run (plain repetition), sleep() really sleeps seconds * this


def sleep(seconds: float) -> None:
    """Virtual sleep: blocks the managed thread until the virtual clock reaches the deadline."""
    s = _s.ACTIVE
    if s is None or _real_threading.get_ident() not in s.by_ident:
        _real_time.sleep(seconds * PLAIN_TIME_SCALE)
        return
    me = s.me()
    if me.kind == "loop":
        s.fail("blocking-call", f"time.sleep({seconds}) on the event loop thread blocks every task",
               "\n".join(light_stack(depth=2)))
    s.point("sleep", f"{seconds}")
    if seconds > 0:
        s.block(f"sleep({seconds})", lambda: False, seconds)


time = _make_proxy("fuzz.time", _real_time, dict(
    monotonic=_vnow, perf_counter=_vnow, time=lambda: _T0 + _vnow(), sleep=sleep,
    monotonic_ns=lambda: int(_vnow() * 1e9), perf_counter_ns=lambda: int(_vnow() * 1e9),
    time_ns=lambda: int((_T0 + _vnow()) * 1e9)))


# --------------------------------------------------------------------------- asyncio (owner-tracking Lock)
class TrackedLock(_real_asyncio.Lock):
    """asyncio.Lock that fails immediately when its owning task acquires it again (self-deadlock)."""

    def __init__(self):
        super().__init__()
        self._owner_task = None
        self._owner_stack: list[str] | None = None
        s = _s.ACTIVE
        self._label = s.label(self, "asyncio.Lock") if s else "asyncio.Lock"

    async def acquire(self):
        s = _s.ACTIVE
        t = _real_asyncio.current_task()
        if s is not None and t is not None and self._owner_task is t:
            s.fail("self-deadlock",
                   f"task {s.task_label(t)} re-acquires {self._label} it already holds (would wait forever)",
                   "first acquired at:\n    " + "\n    ".join(format_stack(self._owner_stack) or ["?"]) +
                   "\nre-acquired at:\n    " + "\n    ".join(light_stack(depth=2)))
        if s is not None and t is not None:
            s.async_waits[t] = (self._label, lambda: self._owner_task)
        try:
            await super().acquire()
        finally:
            if s is not None and t is not None:
                s.async_waits.pop(t, None)
        self._owner_task = t
        self._owner_stack = raw_stack(depth=2)  # formatted only if a self-deadlock is reported
        if s is not None:
            for hook in getattr(s, "lock_hooks", ()):
                hook("acquire", self, t)
        return True

    def release(self):
        self._owner_task = None
        super().release()
        s = _s.ACTIVE
        if s is not None:
            for hook in getattr(s, "lock_hooks", ()):
                hook("release", self, None)

    @property
    def owner(self):
        return self._owner_task


asyncio = _make_proxy("fuzz.asyncio", _real_asyncio, dict(Lock=TrackedLock))


# --------------------------------------------------------------------------- filesystem
_FS_OPS = ("open", "replace", "rename", "unlink", "remove", "rmdir", "mkdir", "makedirs", "fsync",
           "listdir", "scandir", "stat", "utime", "truncate")


def _fs_wrap(name: str, fn):
    def wrapper(*a, **k):
        s = _s.ACTIVE
        if s is not None and _real_threading.get_ident() in s.by_ident:
            s.point(f"fs.{name}", _fs_arg(a))
        return fn(*a, **k)
    wrapper.__name__ = name
    wrapper.__wrapped__ = fn
    return wrapper


def _fs_arg(a) -> str:
    if not a:
        return ""
    x = a[0]
    if isinstance(x, (str, bytes, _real_os.PathLike)):
        return _real_os.path.basename(_real_os.fspath(x)) if not isinstance(x, bytes) else ""
    return ""


os = _make_proxy("fuzz.os", _real_os, {n: _fs_wrap(n, getattr(_real_os, n)) for n in _FS_OPS if hasattr(_real_os, n)})
os.path = _real_os.path
shutil = _make_proxy("fuzz.shutil", _real_shutil, {n: _fs_wrap(n, getattr(_real_shutil, n))
                                                   for n in ("rmtree", "move", "copyfile", "copy2")})
fs_open = _fs_wrap("open", builtins.open)


class Path(type(pathlib.Path())):
    """pathlib.Path whose filesystem-mutating methods are switch points."""


for _n in ("unlink", "rename", "replace", "mkdir", "rmdir", "write_bytes", "write_text", "read_bytes",
           "read_text", "open", "touch", "exists", "iterdir", "stat"):
    setattr(Path, _n, _fs_wrap(f"path.{_n}", getattr(pathlib.Path, _n)))


# --------------------------------------------------------------------------- instrumentation
_MODULE_SWAPS = {
    _real_threading: threading, _real_queue: queue, _real_time: time, _real_asyncio: asyncio,
}
_FS_SWAPS = {_real_os: os, _real_shutil: shutil}
_VALUE_SWAPS = {
    _real_threading.Lock: Lock, _real_threading.RLock: RLock, _real_threading.Event: Event,
    _real_threading.Condition: Condition, _real_threading.Thread: Thread,
    _real_threading.Semaphore: Semaphore, _real_queue.Queue: Queue, _real_queue.SimpleQueue: SimpleQueue,
    _real_time.sleep: sleep, _real_time.monotonic: time.monotonic, _real_time.perf_counter: time.perf_counter,
    _real_time.time: time.time, _real_asyncio.Lock: TrackedLock,
}
_FS_VALUE_SWAPS = {pathlib.Path: Path}
_SHUTIL_OPS = ("rmtree", "move", "copyfile", "copy2")


def _fs_swaps(fs) -> tuple[dict, dict, Any]:
    """(module swaps, value swaps, ``open``) for ``instrument(fs=...)``: the real filesystem (``fs=True``) or a
    ``memfs.MemFS``, whose operations become the same switch points as the real ones (built once per instance)."""
    if fs is True:
        return _FS_SWAPS, _FS_VALUE_SWAPS, fs_open
    cached = getattr(fs, "_fuzz_swaps", None)
    if cached is not None:
        return cached
    os_p = types.ModuleType("fuzz.memfs.os")
    os_p.__dict__.update(fs.os.__dict__)
    os_p.__dict__.update({n: _fs_wrap(n, getattr(fs.os, n)) for n in _FS_OPS})
    shutil_p = types.ModuleType("fuzz.memfs.shutil")
    shutil_p.__dict__.update(fs.shutil.__dict__)
    shutil_p.__dict__.update({n: _fs_wrap(n, getattr(fs.shutil, n)) for n in _SHUTIL_OPS})
    fs._fuzz_swaps = swaps = ({_real_os: os_p, _real_shutil: shutil_p}, {}, _fs_wrap("open", fs.open_file))
    return swaps


_CONTAINERS = (set, dict, list, collections.deque)


def isolate(module: types.ModuleType) -> "callable":
    """Snapshot ``module``'s state now; the returned function puts it back: names added since are removed, names
    rebound are bound again to their values, and set/dict/list/deque values get their contents back in place (other
    holders of those objects see the reset too). Mutations inside other objects are not undone.

    Why: shaped modules are loaded once per process and the real ones are shared, so without this a schedule's
    mutation of module state would be seen by every later schedule (a schedule would depend on its predecessors).
    """
    g = module.__dict__
    snap = {k: v for k, v in g.items() if not k.startswith("__")}
    contents = {k: (v.copy() if not isinstance(v, collections.deque) else list(v))
                for k, v in snap.items() if isinstance(v, _CONTAINERS)}

    def restore() -> None:
        for k in [k for k in g if k not in snap and not k.startswith("__")]:
            del g[k]
        for k, v in snap.items():
            if g.get(k, snap) is not v:
                g[k] = v
        for k, c in contents.items():
            v = snap[k]
            if isinstance(v, list):
                v[:] = c
            else:
                v.clear()
                (v.extend if isinstance(v, collections.deque) else v.update)(c)
    return restore


def instrument(module: types.ModuleType, *, fs: "bool | Any" = False, time_: bool = True,
               extra: dict[str, Any] | None = None) -> "callable":
    """Swap threading/queue/time/asyncio (and os/shutil/open/Path with fs=True) names inside ``module``.

    ``fs`` may also be a ``memfs.MemFS``: os/shutil/open then act on that in-memory filesystem (same switch
    points). Returns a function restoring the original names.

    Raises:
        ValueError: ``fs`` is a MemFS and the module uses ``pathlib.Path`` (not modelled in memory: it would
            reach the real disk).
    """
    g = module.__dict__
    fs_mods, fs_vals, fs_open_ = _fs_swaps(fs) if fs else ({}, {}, None)
    if fs and fs is not True and any(v is pathlib.Path for v in g.values()):
        raise ValueError(f"{module.__name__} uses pathlib.Path, which an in-memory filesystem does not model; "
                         "instrument it with fs=True (the real filesystem)")
    saved: dict[str, Any] = {}
    missing = object()
    for name, val in list(g.items()):
        if name.startswith("__"):
            continue
        new = None
        try:
            if isinstance(val, types.ModuleType):
                new = _MODULE_SWAPS.get(val) or fs_mods.get(val)
                if val is _real_time and not time_:
                    new = None
            else:
                new = _VALUE_SWAPS.get(val) or fs_vals.get(val)
        except TypeError:  # unhashable
            new = None
        if new is not None:
            saved[name] = val
            g[name] = new
    if fs and "open" not in g:
        saved["open"] = missing
        g["open"] = fs_open_
    for name, val in (extra or {}).items():
        saved[name] = g.get(name, missing)
        g[name] = val

    def restore():
        for name, val in saved.items():
            if val is missing:
                g.pop(name, None)
            else:
                g[name] = val
    return restore
