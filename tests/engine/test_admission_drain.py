"""Busy decisions that know the drain (issue 13, item 4).

When the slot is held only by a request that is already aborting (its abort flag is set: the client went
away and the engine is draining the worker), a fail_fast arrival waits at most `DRAIN_GRACE_S` for the
release and takes the slot by direct handoff; if the drain outlasts the grace it gets EngineBusy whose
retry_after is the measured drain time still to go (exact hundredths), not the holder's remaining tokens.
Pure Python with a fake clock (no MLX) for the admission unit; one live-server test drops a stream and
sends the next request at once.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest

from tripwire.engine import EngineBusy
from tripwire.engine.admission import DRAIN_GRACE_S, AdmissionController

pytestmark = pytest.mark.anyio


class Abort(threading.Event):
    """Like the engine's abort flag: remembers when it was set (`set_at`, on the controller's clock)."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.set_at = None

    def set(self):
        if self.set_at is None:
            self.set_at = self.clock()
        super().set()


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass(eq=False)
class Req:
    id: str
    abort: Abort
    started: float = 100.0
    completion_tokens: int = 0
    max_tokens: int = 2000


def make(clock, rid="holder", tokens=0):
    return Req(rid, Abort(clock), completion_tokens=tokens)


async def _until(pred, what):
    for _ in range(1000):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never reached: {what}")


def test_grace_is_a_few_milliseconds():
    assert 0 < DRAIN_GRACE_S <= 0.1


async def test_busy_holder_not_aborting_is_rejected_at_once_with_its_token_estimate():
    clock = Clock()
    ctl = AdmissionController(clock=clock)
    holder = make(clock)
    await ctl.admit(holder)
    with pytest.raises(EngineBusy) as ei:
        ctl.precheck()
    assert ei.value.retry_after_s == 20.0  # 2000 tokens * 0.01 s
    with pytest.raises(EngineBusy):
        await ctl.admit(make(clock, "next"))
    assert ctl.waiters == 0


async def test_aborting_holder_hands_the_slot_to_the_next_arrival_when_it_drains():
    clock = Clock()
    ctl = AdmissionController(clock=clock)
    holder = make(clock)
    await ctl.admit(holder)
    holder.abort.set()
    ctl.precheck()  # draining: no early rejection, admit() decides
    nxt = make(clock, "next")
    task = asyncio.create_task(ctl.admit(nxt))
    await _until(lambda: ctl.waiters == 1, "the arrival waits for the drain")
    with pytest.raises(EngineBusy):  # only one arrival may wait on a drain: never a queue
        await ctl.admit(make(clock, "third"))
    with pytest.raises(EngineBusy):
        ctl.precheck()
    clock.t += 0.012
    ctl.release(holder)
    await asyncio.wait_for(task, 5)
    assert ctl.holder is nxt and ctl.waiters == 0
    assert ctl.drain_s == pytest.approx(0.8 * 0.02 + 0.2 * 0.012)  # measured abort -> release


async def test_drain_outlasting_the_grace_rejects_with_the_measured_drain_time():
    clock = Clock()
    ctl = AdmissionController(clock=clock)
    ctl.drain_s = 0.3
    holder = make(clock)
    await ctl.admit(holder)
    holder.abort.set()
    clock.t += 0.123
    with pytest.raises(EngineBusy) as ei:
        await asyncio.wait_for(ctl.admit(make(clock, "next")), 5)
    # 0.3 s measured drain - 0.123 s already drained = 0.177 -> 0.18 (rounded up to hundredths)
    assert ei.value.retry_after_s == 0.18
    assert ctl.waiters == 0 and ctl.holder is holder and ctl.busy_rejections == 1
    clock.t += 1.0  # overdue drain: the floor, never 0 or negative
    assert ctl.retry_after_s() == 0.01


async def test_a_cancelled_drain_waiter_never_keeps_its_place():
    clock = Clock()
    ctl = AdmissionController(clock=clock)
    holder = make(clock)
    await ctl.admit(holder)
    holder.abort.set()
    nxt = make(clock, "next")
    task = asyncio.create_task(ctl.admit(nxt))
    await _until(lambda: ctl.waiters == 1, "waiting")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctl.waiters == 0
    ctl.release(holder)
    assert ctl.holder is None
    third = make(clock, "third")
    await ctl.admit(third)
    assert ctl.holder is third


async def test_wait_mode_is_unchanged_by_the_drain_rule():
    clock = Clock()
    ctl = AdmissionController("wait", max_wait_s=1.0, clock=clock)
    holder = make(clock)
    await ctl.admit(holder)
    holder.abort.set()
    nxt = make(clock, "next")
    task = asyncio.create_task(ctl.admit(nxt))
    await _until(lambda: ctl.waiters == 1, "waiting")
    ctl.release(holder)
    await asyncio.wait_for(task, 5)
    assert ctl.holder is nxt


async def test_holder_without_an_abort_flag_is_plain_busy():
    @dataclass(eq=False)
    class Plain:
        id: str
        started: float = 100.0
        completion_tokens: int = 0
        max_tokens: int = 10

    ctl = AdmissionController(clock=Clock())
    await ctl.admit(Plain("a"))
    with pytest.raises(EngineBusy):
        await ctl.admit(Plain("b"))


async def test_would_reject_is_a_pure_query_matching_precheck():
    clock = Clock()
    ctl = AdmissionController(clock=clock)
    assert not ctl.would_reject()
    holder = make(clock)
    await ctl.admit(holder)
    assert ctl.would_reject() and ctl.busy_rejections == 0
    holder.abort.set()
    assert not ctl.would_reject()
    ctl.precheck()
    assert AdmissionController("wait", clock=clock).would_reject() is False


@pytest.mark.parametrize("mode", ["fail_fast", "wait"])
@pytest.mark.parametrize("holder_state", ["free", "busy", "aborting"])
@pytest.mark.parametrize("waiting", [0, 1])
def test_would_reject_agrees_with_precheck_in_every_state(mode, holder_state, waiting):
    """`would_reject()` is documented as "what precheck would decide now": check every combination of slot
    holder (none, generating, aborting) and waiter deque (empty or not, even a stale entry with no holder)."""
    clock = Clock()
    ctl = AdmissionController(mode, clock=clock)
    if holder_state != "free":
        ctl._take(make(clock))
        if holder_state == "aborting":
            ctl.holder.abort.set()
    for i in range(waiting):
        ctl._waiters.append((object(), make(clock, f"w{i}")))  # precheck never touches the future
    try:
        ctl.precheck()
        rejected = False
    except EngineBusy:
        rejected = True
    assert ctl.would_reject() is rejected


async def test_a_drain_waiter_cancelled_right_after_the_handoff_passes_the_slot_on():
    """The drain waiter is handed the slot by `release`, then cancelled before it runs: the slot is released
    (not leaked with the cancelled request) and the next arrival is admitted at once."""
    clock = Clock()
    ctl = AdmissionController(clock=clock)
    holder = make(clock)
    await ctl.admit(holder)
    holder.abort.set()
    nxt = make(clock, "next")
    task = asyncio.create_task(ctl.admit(nxt))
    await _until(lambda: ctl.waiters == 1, "the arrival waits for the drain")
    ctl.release(holder)  # direct handoff to `next`...
    assert ctl.holder is nxt
    task.cancel()  # ...whose task is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctl.holder is None and ctl.waiters == 0
    third = make(clock, "third")
    await asyncio.wait_for(ctl.admit(third), 5)
    assert ctl.holder is third


@pytest.mark.parametrize("drain_s, drained_s, expected", [
    (0.3, 0.123, 0.18),         # 0.177 s to go, rounded up
    (0.3, 0.127, 0.18),         # 0.173 s: rounded *up* to the next hundredth, never to the nearest
    (0.3, 0.101, 0.20),         # 0.199 s: still 0.20, not 0.21
    (0.070000004, 0.0, 0.07),   # a few nanoseconds over a hundredth (float noise) is not rounded up
    (0.05, 0.04, 0.01),         # exactly the floor
])
def test_retry_after_while_draining_is_the_drain_time_left_rounded_up_to_hundredths(drain_s, drained_s, expected):
    clock = Clock()
    ctl = AdmissionController(clock=clock)
    ctl.drain_s = drain_s
    holder = make(clock)
    ctl._take(holder)
    holder.abort.set()
    clock.t += drained_s
    assert ctl.retry_after_s() == expected


async def test_a_holder_aborting_without_a_set_time_gets_the_token_estimate():
    """`set_at` is optional on a holder's abort flag (SlotHolder): without it there is no measured drain to go
    by, so the busy answer (after the drain grace) falls back to the remaining tokens, and never fails."""
    ctl = AdmissionController(clock=Clock())
    holder = Req("h", threading.Event(), max_tokens=30)  # a plain Event: no set_at
    await ctl.admit(holder)
    holder.abort.set()
    assert ctl.retry_after_s() == 0.3
    with pytest.raises(EngineBusy) as ei:
        await asyncio.wait_for(ctl.admit(make(Clock(), "next")), 5)
    assert ei.value.retry_after_s == 0.3 and ctl.holder is holder and ctl.waiters == 0
