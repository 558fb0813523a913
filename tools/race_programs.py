"""Small race programs for ``python -m tripwire.tools.bench_fuzz --races``: ordinary Python, no fuzzer import.

Each program comes in a buggy and a fixed form and is one of three kinds:
  * ``threads``  - worker functions run on threads (``threading.Thread``),
  * ``asyncio``  - worker coroutines run as asyncio tasks,
  * ``mixed``    - asyncio tasks and worker threads (``asyncio.to_thread``) in one program, the shape of an
                   asyncio server driving a model on a worker thread.

A program is ``setup() -> state``, ``workers`` (sync = thread, async = task) and ``invariant(state)``, or
for shapes that need more choreography (cancellation) a hand-written ``main``. ``main()`` (async, asserts)
is what our fuzzer and plain stress run; peers get ``setup``/``workers``/``invariant`` or a sync ``model``
where they can express the program. Stdlib only: the peers' interpreter imports this file by path.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Callable


class State:
    """Attribute bag shared by a program's workers."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


@dataclass
class Program:
    name: str
    kind: str  # threads | asyncio | mixed
    form: str  # buggy | fixed
    setup: Callable[[], Any] | None = None
    workers: list[Callable] = field(default_factory=list)
    invariant: Callable[[Any], bool] | None = None
    custom_main: Callable[[], Any] | None = None
    what: str = ""

    async def main(self) -> None:
        """Run the program once and assert its invariant (what our fuzzer and plain stress run)."""
        if self.custom_main is not None:
            await self.custom_main()
            return
        s = self.setup()
        if self.kind == "threads":
            ts = [threading.Thread(target=w, args=(s,), name=f"w{i}") for i, w in enumerate(self.workers)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        else:
            await asyncio.gather(*(w(s) if asyncio.iscoroutinefunction(w) else asyncio.to_thread(w, s)
                                   for w in self.workers))
        assert self.invariant(s), f"{self.name}: invariant violated ({vars(s)})"

    def model(self) -> None:
        """Threads-only programs as a synchronous model (for thread-interleaving peers)."""
        s = self.setup()
        ts = [threading.Thread(target=w, args=(s,)) for w in self.workers]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert self.invariant(s), f"{self.name}: invariant violated"

    @property
    def expressible_as_workers(self) -> bool:
        return self.custom_main is None and self.kind != "mixed"


# --------------------------------------------------------------------------- threads
def _counter_setup():
    return State(n=0, lock=threading.Lock())


def _counter_buggy(s):
    s.n += 1


def _counter_fixed(s):
    with s.lock:
        s.n += 1


def _withdraw_setup():
    return State(balance=10, lock=threading.Lock())


def _withdraw_buggy(s):
    if s.balance >= 10:
        s.balance -= 10


def _withdraw_fixed(s):
    with s.lock:
        if s.balance >= 10:
            s.balance -= 10


def _lazy_setup():
    return State(inst=None, created=0, lock=threading.Lock())


def _lazy_buggy(s):
    if s.inst is None:
        s.created += 1
        s.inst = object()


def _lazy_fixed(s):
    with s.lock:
        if s.inst is None:
            s.created += 1
            s.inst = object()


def _dict_setup():
    return State(d={}, lock=threading.Lock())


def _dict_buggy(s):
    s.d["hits"] = s.d.get("hits", 0) + 1


def _dict_fixed(s):
    with s.lock:
        s.d["hits"] = s.d.get("hits", 0) + 1


class Box:
    def __init__(self):
        self.value = 0


def _publish_setup():
    return State(obj=None, seen=None)


def _publish_buggy(s):
    b = Box()
    s.obj = b  # published before it is initialized
    b.value = 42


def _publish_fixed(s):
    b = Box()
    b.value = 42
    s.obj = b


def _publish_reader(s):
    o = s.obj
    if o is not None:
        s.seen = o.value


def _buffer_setup():
    return State(buf=[], lock=threading.Lock())


def _buffer_buggy(s):
    if len(s.buf) < 1:
        s.buf.append("x")


def _buffer_fixed(s):
    with s.lock:
        if len(s.buf) < 1:
            s.buf.append("x")


# --------------------------------------------------------------------------- asyncio
def _acounter_setup():
    return State(n=0, lock=asyncio.Lock())


async def _acounter_buggy(s):
    v = s.n
    await asyncio.sleep(0)  # e.g. an audit call between the read and the write
    s.n = v + 1


async def _acounter_fixed(s):
    async with s.lock:
        v = s.n
        await asyncio.sleep(0)
        s.n = v + 1


async def _acounter_late_buggy(s):
    await asyncio.sleep(0)  # starts one step later: FIFO order never interleaves it with the first
    await _acounter_buggy(s)


async def _acounter_late_fixed(s):
    await asyncio.sleep(0)
    await _acounter_fixed(s)


async def _awithdraw_buggy(s):
    if s.balance >= 10:
        await asyncio.sleep(0)
        s.balance -= 10


async def _awithdraw_fixed(s):
    async with s.alock:
        if s.balance >= 10:
            await asyncio.sleep(0)
            s.balance -= 10


def _awithdraw_setup():
    return State(balance=10, alock=asyncio.Lock())


def _stampede_setup():
    return State(cache={}, loads=0, lock=asyncio.Lock())


async def _stampede_buggy(s):
    if "k" not in s.cache:
        s.loads += 1
        await asyncio.sleep(0)  # the slow load
        s.cache["k"] = 1


async def _stampede_fixed(s):
    async with s.lock:
        if "k" not in s.cache:
            s.loads += 1
            await asyncio.sleep(0)
            s.cache["k"] = 1


def _torn_setup():
    return State(busy=False, saw_busy=False, lock=asyncio.Lock())


async def _torn_writer_buggy(s):
    s.busy = True
    await asyncio.sleep(0)  # the transient state is visible across this await
    s.busy = False


async def _torn_writer_fixed(s):
    async with s.lock:
        s.busy = True
        await asyncio.sleep(0)
        s.busy = False


async def _torn_reader_buggy(s):
    await asyncio.sleep(0)
    s.saw_busy = s.saw_busy or s.busy


async def _torn_reader_fixed(s):
    await asyncio.sleep(0)
    async with s.lock:
        s.saw_busy = s.saw_busy or s.busy


# --------------------------------------------------------------------------- mixed (loop + worker thread)
def _mcounter_setup():
    return State(n=0, lock=threading.Lock())


async def _mcounter_task_buggy(s):
    v = s.n
    await asyncio.sleep(0)
    s.n = v + 1


def _mcounter_thread_buggy(s):
    s.n += 1


async def _mcounter_task_fixed(s):
    with s.lock:  # read-modify-write under the thread lock, no await inside
        s.n += 1


def _mcounter_thread_fixed(s):
    with s.lock:
        s.n += 1


def _stop_setup():
    return State(stopped=False, queue=[], lock=threading.Lock())


def _submit_buggy(s):
    if not s.stopped:
        s.queue.append("job")


async def _stop_buggy(s):
    s.stopped = True
    await asyncio.sleep(0)
    s.queue.clear()  # drain


def _submit_fixed(s):
    with s.lock:
        if not s.stopped:
            s.queue.append("job")


async def _stop_fixed(s):
    with s.lock:
        s.stopped = True
    await asyncio.sleep(0)
    with s.lock:
        s.queue.clear()


def _gen(s):
    """The 'model step' a worker thread runs: never two of them at once (the MLX rule)."""
    s.inside += 1
    if s.inside > s.max_inside:
        s.max_inside = s.inside
    s.inside -= 1


def _serial_setup():
    return State(inside=0, max_inside=0, alock=asyncio.Lock())


async def _serial_buggy(s):
    await asyncio.to_thread(_gen, s)


async def _serial_fixed(s):
    async with s.alock:
        await asyncio.to_thread(_gen, s)


async def _cancel_main(fixed: bool):
    s = State(inside=0, max_inside=0, alock=asyncio.Lock())

    async def request():
        async with s.alock:
            fut = asyncio.ensure_future(asyncio.to_thread(_gen, s))
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                if fixed:
                    await fut  # drain the worker before releasing the slot
                raise

    a = asyncio.ensure_future(request())
    b = asyncio.ensure_future(request())
    await asyncio.sleep(0)
    a.cancel()
    await asyncio.gather(a, b, return_exceptions=True)
    await asyncio.sleep(0)
    assert s.max_inside == 1, f"cancel-release: two worker steps at once ({s.max_inside})"


async def _cancel_buggy_main():
    await _cancel_main(False)


async def _cancel_fixed_main():
    await _cancel_main(True)


# --------------------------------------------------------------------------- the suite
def _pair(name, kind, what, setup, buggy, fixed, invariant):
    return (Program(name, kind, "buggy", setup, buggy, invariant, what=what),
            Program(name, kind, "fixed", setup, fixed, invariant, what=what))


PROGRAMS: list[tuple[Program, Program]] = [
    _pair("thread-counter", "threads", "two threads do self.n += 1", _counter_setup,
          [_counter_buggy, _counter_buggy], [_counter_fixed, _counter_fixed], lambda s: s.n == 2),
    _pair("thread-withdraw", "threads", "check-then-act on a balance", _withdraw_setup,
          [_withdraw_buggy, _withdraw_buggy], [_withdraw_fixed, _withdraw_fixed], lambda s: s.balance >= 0),
    _pair("thread-lazy-init", "threads", "double-checked singleton without the lock", _lazy_setup,
          [_lazy_buggy, _lazy_buggy], [_lazy_fixed, _lazy_fixed], lambda s: s.created == 1),
    _pair("thread-dict-counter", "threads", "d[k] = d.get(k, 0) + 1 from two threads", _dict_setup,
          [_dict_buggy, _dict_buggy], [_dict_fixed, _dict_fixed], lambda s: s.d.get("hits") == 2),
    _pair("thread-publish", "threads", "object published before it is initialized", _publish_setup,
          [_publish_buggy, _publish_reader], [_publish_fixed, _publish_reader], lambda s: s.seen in (None, 42)),
    _pair("thread-bounded-buffer", "threads", "len() check then append on a 1-slot buffer", _buffer_setup,
          [_buffer_buggy, _buffer_buggy], [_buffer_fixed, _buffer_fixed], lambda s: len(s.buf) <= 1),
    _pair("async-counter", "asyncio", "read, await, write from two tasks", _acounter_setup,
          [_acounter_buggy, _acounter_buggy], [_acounter_fixed, _acounter_fixed], lambda s: s.n == 2),
    _pair("async-counter-late", "asyncio", "the same, second task one step later (FIFO never interleaves)",
          _acounter_setup, [_acounter_buggy, _acounter_late_buggy], [_acounter_fixed, _acounter_late_fixed],
          lambda s: s.n == 2),
    _pair("async-withdraw", "asyncio", "check, await, act on a balance", _awithdraw_setup,
          [_awithdraw_buggy, _awithdraw_buggy], [_awithdraw_fixed, _awithdraw_fixed], lambda s: s.balance >= 0),
    _pair("async-stampede", "asyncio", "two tasks load the same missing cache key", _stampede_setup,
          [_stampede_buggy, _stampede_buggy], [_stampede_fixed, _stampede_fixed], lambda s: s.loads == 1),
    _pair("async-torn-state", "asyncio", "a transient flag observed across an await", _torn_setup,
          [_torn_writer_buggy, _torn_reader_buggy], [_torn_writer_fixed, _torn_reader_fixed],
          lambda s: not s.saw_busy),
    _pair("mixed-counter", "mixed", "an asyncio task and a worker thread update one counter", _mcounter_setup,
          [_mcounter_task_buggy, _mcounter_thread_buggy], [_mcounter_task_fixed, _mcounter_thread_fixed],
          lambda s: s.n == 2),
    _pair("mixed-stop-vs-submit", "mixed", "a thread submits while the loop stops and drains", _stop_setup,
          [_stop_buggy, _submit_buggy], [_stop_fixed, _submit_fixed], lambda s: not s.queue),
    _pair("mixed-serialized-worker", "mixed", "two requests run the model step on worker threads at once",
          _serial_setup, [_serial_buggy, _serial_buggy], [_serial_fixed, _serial_fixed],
          lambda s: s.max_inside == 1),
    (Program("mixed-cancel-release", "mixed", "buggy", custom_main=_cancel_buggy_main,
             what="a cancelled request releases the slot while its worker thread still runs"),
     Program("mixed-cancel-release", "mixed", "fixed", custom_main=_cancel_fixed_main,
             what="a cancelled request releases the slot while its worker thread still runs")),
]
