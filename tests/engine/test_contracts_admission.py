"""AdmissionController contracts, as a unit with a fake clock (pure Python, no engine, no MLX).

Pins the Retry-After estimate (floor, rounding up to 0.01 s, growth with the remaining tokens, the EMA of
seconds per token), the holder summary, counters, and wait mode: release wakes exactly the first waiter (FIFO).
"""

from __future__ import annotations

import asyncio
import types
from dataclasses import dataclass

import pytest

import tripwire.engine.admission as admission_mod
from tripwire.engine import EngineBusy, InvalidRequest
from tripwire.engine.admission import AdmissionController

pytestmark = pytest.mark.anyio


@dataclass(eq=False)
class Req:
    id: str
    started: float = 0.0
    completion_tokens: int = 0
    max_tokens: int = 100


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


async def _until(pred, what: str) -> None:
    # Bounded yielding to the loop (no sleep): the tasks under test run until `pred` holds.
    for _ in range(1000):
        if pred():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never reached: {what}")


async def _admitted(ctl: AdmissionController, req: Req) -> None:
    await asyncio.wait_for(ctl.admit(req), 5)


# -- configuration and initial state ------------------------------------------------------------------
def test_fresh_controller_state():
    ctl = AdmissionController(clock=Clock())
    assert ctl.mode == "fail_fast" and ctl.max_wait_s == 1.0
    assert ctl.holder is None and ctl.admitted == 0 and ctl.busy_rejections == 0 and ctl.waiters == 0
    assert ctl.seconds_per_token == 0.01
    assert ctl.holder_summary() is None and ctl.retry_after_s() == 0.0


@pytest.mark.parametrize("max_wait_s", [0.0, -1.0, 2.0001])
def test_wait_mode_rejects_max_wait_outside_the_bound(max_wait_s):
    with pytest.raises(InvalidRequest, match=r"max_wait_s must be in \(0, 2.0\]") as ei:
        AdmissionController("wait", max_wait_s=max_wait_s)
    assert ei.value.field == "max_wait_s"


def test_wait_mode_accepts_the_bound_itself_and_fail_fast_ignores_max_wait():
    assert AdmissionController("wait", max_wait_s=2.0).max_wait_s == 2.0
    assert AdmissionController("fail_fast", max_wait_s=120).mode == "fail_fast"


def test_unknown_mode_names_the_admission_field():
    with pytest.raises(InvalidRequest) as ei:
        AdmissionController("queue")
    assert ei.value.field == "admission" and "['fail_fast', 'wait']" in str(ei.value)


def test_default_clock_is_time_monotonic_resolved_at_call_time(monkeypatch):
    ctl = AdmissionController()
    ctl._take(Req("r", started=100.0))
    monkeypatch.setattr(admission_mod, "time", types.SimpleNamespace(monotonic=lambda: 102.5))
    assert ctl.holder_summary()["elapsed_s"] == 2.5


# -- fail fast -----------------------------------------------------------------------------------------
async def test_fail_fast_admits_one_and_rejects_the_next_with_holder_and_retry_hint():
    clock = Clock(10.0)
    ctl = AdmissionController(clock=clock)
    a = Req("req-a", started=10.0, completion_tokens=4, max_tokens=54)
    await _admitted(ctl, a)
    assert ctl.holder is a and ctl.admitted == 1
    clock.t = 11.5
    with pytest.raises(EngineBusy) as ei:
        await ctl.admit(Req("req-b"))
    exc = ei.value
    summary = {"request_id": "req-a", "elapsed_s": 1.5, "completion_tokens": 4, "max_tokens": 54}
    assert exc.holder == summary and exc.retry_after_s == 0.5  # 50 remaining tokens x 0.01 s
    assert "busy serving request 'req-a'" in str(exc)
    assert ctl.busy_rejections == 1 and ctl.holder is a and ctl.admitted == 1 and ctl.waiters == 0
    with pytest.raises(EngineBusy):
        await ctl.admit(Req("req-c"))
    assert ctl.busy_rejections == 2
    ctl.release(a)
    b = Req("req-b", started=11.5)
    await _admitted(ctl, b)
    assert ctl.holder is b and ctl.admitted == 2


def test_fail_fast_rejects_a_busy_arrival_without_ever_suspending():
    """fail_fast never queues: `admit` on a held slot raises EngineBusy in its first step (it never awaits,
    not even for `max_wait_s`), and the rejected request never enters the waiter deque."""
    ctl = AdmissionController(max_wait_s=2.0, clock=Clock())
    ctl._take(Req("holder"))
    coro = ctl.admit(Req("late"))
    with pytest.raises(EngineBusy):
        coro.send(None)  # one step: it must not suspend
    assert ctl.waiters == 0 and ctl.busy_rejections == 1 and ctl.holder.id == "holder"


# -- holder summary ------------------------------------------------------------------------------------
def test_holder_summary_fields_and_rounding_to_tenths_of_milliseconds():
    clock = Clock(3.123456)
    ctl = AdmissionController(clock=clock)
    ctl._take(Req("r1", started=1.0, completion_tokens=7, max_tokens=9))
    assert ctl.holder_summary() == {"request_id": "r1", "elapsed_s": 2.1235, "completion_tokens": 7,
                                    "max_tokens": 9}


# -- Retry-After estimate ------------------------------------------------------------------------------
def _with_holder(completion_tokens: int, max_tokens: int, spt: float) -> AdmissionController:
    ctl = AdmissionController(clock=Clock())
    ctl.seconds_per_token = spt
    ctl._take(Req("h", started=100.0, completion_tokens=completion_tokens, max_tokens=max_tokens))
    return ctl


@pytest.mark.parametrize("done, max_tokens, spt, expected", [
    (0, 400, 0.01, 4.0),      # remaining x seconds_per_token
    (100, 400, 0.01, 3.0),    # shrinks as the holder produces tokens
    (0, 7, 0.25, 1.75),
    (0, 10, 0.0123, 0.13),    # 0.123 s is rounded *up* to the next 10 ms, not to the nearest
    (0, 1, 0.06, 0.06),
    (0, 2, 0.01, 0.05),       # 0.02 s is raised to the 0.05 s floor
    (10, 10, 1.0, 0.05),      # nothing left: still the floor, never 0 while the slot is held
    (12, 10, 1.0, 0.05),      # overrun (more tokens than max) never goes negative
    (0, 7, 0.01, 0.07),       # exact hundredths stay exact (float noise must not round 0.07 up to 0.08)
    (0, 55, 0.01, 0.55),
    (0, 1, 0.070000004, 0.07),  # a few nanoseconds over a hundredth (float noise) is not rounded up
])
def test_retry_after_estimate(done, max_tokens, spt, expected):
    assert _with_holder(done, max_tokens, spt).retry_after_s() == expected


def test_retry_after_grows_with_the_remaining_tokens():
    values = [_with_holder(0, n, 0.01).retry_after_s() for n in (10, 50, 100, 200, 400)]
    assert values == sorted(values) and values[0] < values[-1]


# -- release: EMA of seconds per token -----------------------------------------------------------------
def test_release_updates_the_seconds_per_token_ema_from_the_finished_request():
    clock = Clock(100.0)
    ctl = AdmissionController(clock=clock)
    r = Req("r", started=98.0, completion_tokens=10)
    ctl._take(r)
    ctl.release(r)  # 2 s for 10 tokens: 0.8 * 0.01 + 0.2 * 0.2
    assert ctl.seconds_per_token == pytest.approx(0.048)
    assert ctl.holder is None and ctl.holder_summary() is None and ctl.retry_after_s() == 0.0
    one = Req("one", started=99.0, completion_tokens=1)
    ctl._take(one)
    ctl.release(one)  # a single token counts too: 0.8 * 0.048 + 0.2 * 1.0
    assert ctl.seconds_per_token == pytest.approx(0.2384)
    # The estimate then feeds Retry-After for the next holder.
    ctl._take(Req("next", started=100.0, completion_tokens=0, max_tokens=10))
    assert ctl.retry_after_s() == 2.39


def test_release_of_a_request_without_tokens_frees_the_slot_but_keeps_the_estimate():
    ctl = AdmissionController(clock=Clock(100.0))
    r = Req("r", started=50.0, completion_tokens=0)
    ctl._take(r)
    ctl.release(r)
    assert ctl.holder is None and ctl.seconds_per_token == 0.01


def test_release_by_a_non_holder_is_a_no_op():
    ctl = AdmissionController(clock=Clock(100.0))
    holder = Req("holder", started=99.0, completion_tokens=5)
    ctl._take(holder)
    ctl.release(Req("holder", started=0.0, completion_tokens=1))  # same id, other object: not the holder
    assert ctl.holder is holder and ctl.seconds_per_token == 0.01
    empty = AdmissionController(clock=Clock())
    empty.release(holder)
    assert empty.holder is None and empty.seconds_per_token == 0.01


# -- wait mode -----------------------------------------------------------------------------------------
async def test_wait_mode_release_wakes_exactly_the_first_waiter_in_fifo_order():
    ctl = AdmissionController("wait", max_wait_s=2.0, clock=Clock())
    h = Req("h")
    await _admitted(ctl, h)
    reqs = [Req(n) for n in ("a", "b", "c")]
    tasks = []
    for r in reqs:  # queue them one at a time so their arrival order is known
        tasks.append(asyncio.create_task(ctl.admit(r)))
        await _until(lambda n=len(tasks): ctl.waiters == n, f"{r.id} queued")
    prev = h
    for i, r in enumerate(reqs):
        ctl.release(prev)
        assert ctl.waiters == len(reqs) - i - 1  # one waiter taken off the queue, the others stay
        await asyncio.wait_for(tasks[i], 5)
        assert ctl.holder is r, f"expected {r.id} (FIFO), got {ctl.holder and ctl.holder.id}"
        assert all(not t.done() for t in tasks[i + 1:])
        prev = r
    assert ctl.admitted == 4 and ctl.busy_rejections == 0 and ctl.waiters == 0


async def test_a_waiter_cancelled_in_the_queue_does_not_swallow_the_wakeup():
    ctl = AdmissionController("wait", max_wait_s=2.0, clock=Clock())
    h = Req("h")
    await _admitted(ctl, h)
    a, b = Req("a"), Req("b")
    ta = asyncio.create_task(ctl.admit(a))
    await _until(lambda: ctl.waiters == 1, "a queued")
    tb = asyncio.create_task(ctl.admit(b))
    await _until(lambda: ctl.waiters == 2, "b queued")
    ta.cancel()  # its wake future is cancelled now; the task has not run its cleanup yet
    ctl.release(h)
    await asyncio.wait_for(tb, 5)
    assert ctl.holder is b
    with pytest.raises(asyncio.CancelledError):
        await ta
    assert ctl.waiters == 0 and ctl.admitted == 2


async def test_wait_mode_arrival_behind_a_queued_waiter_waits_even_if_the_slot_is_free():
    # The fast path needs a free slot *and* an empty queue: nobody jumps ahead of a queued waiter.
    ctl = AdmissionController("wait", max_wait_s=2.0, clock=Clock())
    h = Req("h")
    await _admitted(ctl, h)
    ta = asyncio.create_task(ctl.admit(Req("a")))
    tb = asyncio.create_task(ctl.admit(Req("b")))
    await _until(lambda: ctl.waiters == 2, "a and b queued")
    ctl.release(h)  # a is woken (not yet running); b still queued
    late = asyncio.create_task(ctl.admit(Req("late")))
    await asyncio.wait_for(ta, 5)
    assert ctl.holder.id == "a"
    await _until(lambda: ctl.waiters == 2, "late queued behind b")
    assert not late.done() and not tb.done()
    ctl.release(ctl.holder)
    await asyncio.wait_for(tb, 5)
    assert ctl.holder.id == "b" and not late.done()
    ctl.release(ctl.holder)
    await asyncio.wait_for(late, 5)
    assert ctl.holder.id == "late"


async def test_wait_mode_rejects_after_max_wait_and_leaves_no_waiter_behind():
    loop = asyncio.get_running_loop()
    ctl = AdmissionController("wait", max_wait_s=0.01, clock=loop.time)
    h = Req("h", started=loop.time(), max_tokens=20)
    await _admitted(ctl, h)
    with pytest.raises(EngineBusy) as ei:
        await asyncio.wait_for(ctl.admit(Req("w")), 5)
    assert ei.value.holder["request_id"] == "h" and ei.value.retry_after_s == 0.2
    assert ctl.waiters == 0 and ctl.busy_rejections == 1 and ctl.holder is h and ctl.admitted == 1


async def test_wait_mode_woken_but_outrun_past_the_deadline_is_rejected_without_waiting_again():
    clock = Clock(100.0)
    ctl = AdmissionController("wait", max_wait_s=1.0, clock=clock)
    h = Req("h")
    await _admitted(ctl, h)
    w = asyncio.create_task(ctl.admit(Req("w")))
    await _until(lambda: ctl.waiters == 1, "w queued")
    clock.t = 101.0  # exactly at w's deadline
    ctl.release(h)
    intruder = Req("intruder")
    ctl._take(intruder)  # someone took the slot before w ran
    with pytest.raises(EngineBusy) as ei:
        await asyncio.wait_for(w, 5)
    assert ei.value.holder["request_id"] == "intruder"
    assert ctl.waiters == 0 and ctl.holder is intruder and ctl.busy_rejections == 1


async def test_wait_mode_woken_waiter_is_not_overtaken_by_an_arrival_in_the_same_loop_iteration():
    ctl = AdmissionController("wait", max_wait_s=2.0, clock=Clock())
    h = Req("h")
    await _admitted(ctl, h)
    w = asyncio.create_task(ctl.admit(Req("waiter")))
    await _until(lambda: ctl.waiters == 1, "waiter queued")
    newcomer = asyncio.create_task(ctl.admit(Req("newcomer")))  # scheduled, not yet run
    ctl.release(h)
    await _until(lambda: w.done() or newcomer.done(), "someone admitted")
    try:
        assert ctl.holder.id == "waiter"
    finally:
        for t in (w, newcomer):
            t.cancel()
        await asyncio.gather(w, newcomer, return_exceptions=True)


async def test_wait_mode_a_waiter_cancelled_right_after_the_handoff_passes_the_slot_on():
    ctl = AdmissionController("wait", max_wait_s=2.0, clock=Clock())
    h = Req("h")
    await _admitted(ctl, h)
    first = asyncio.create_task(ctl.admit(Req("first")))
    second = asyncio.create_task(ctl.admit(Req("second")))
    await _until(lambda: ctl.waiters == 2, "both queued")
    ctl.release(h)  # hands the slot to `first`...
    first.cancel()  # ...whose task is cancelled before it runs: the slot must not leak with it
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 5)
    assert ctl.holder.id == "second" and ctl.waiters == 0


# -- precheck (fail_fast busy answer before any per-request work) -----------------------------------------
def test_precheck_rejects_only_in_fail_fast_while_the_slot_is_held():
    ctl = AdmissionController(clock=Clock(100.0))
    ctl.precheck()  # free slot: nothing happens
    assert ctl.busy_rejections == 0 and ctl.holder is None
    ctl._take(Req("h", started=99.0, completion_tokens=0, max_tokens=30))
    with pytest.raises(EngineBusy) as ei:
        ctl.precheck()
    assert ei.value.holder["request_id"] == "h" and ei.value.retry_after_s == 0.3
    assert ctl.busy_rejections == 1 and ctl.admitted == 1
    waiting = AdmissionController("wait", max_wait_s=1.0, clock=Clock())
    waiting._take(Req("h"))
    waiting.precheck()  # wait mode decides in admit(), never here
    assert waiting.busy_rejections == 0


class SteppingClock:
    """Advances by `step` on every read: a wait-mode deadline computed from it is already past."""

    def __init__(self, t: float = 100.0, step: float = 1.0):
        self.t, self.step = t, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


async def test_wait_mode_deadline_passing_as_the_holder_releases_is_busy_with_no_holder_named():
    """The waiter's deadline passes in the same loop iteration in which the holder releases: the release finds
    the waiter already timed out and hands the slot to nobody. The waiter is rejected (EngineBusy, no holder,
    the message names "another request", retry floor 0) and leaves no slot or queue entry behind."""
    ctl = AdmissionController("wait", max_wait_s=0.5, clock=SteppingClock())
    h = Req("h")
    await _admitted(ctl, h)
    w = asyncio.create_task(ctl.admit(Req("w")))
    await asyncio.sleep(0)  # w queued; its (already expired) timeout fires in the next iteration
    assert ctl.waiters == 1
    asyncio.get_running_loop().call_soon(ctl.release, h)  # runs after the timeout, before w resumes
    with pytest.raises(EngineBusy) as ei:
        await asyncio.wait_for(w, 5)
    assert str(ei.value) == "text generation is busy serving another request; retry shortly"
    assert ei.value.holder is None and ei.value.retry_after_s == 0.0
    assert ctl.holder is None and ctl.waiters == 0 and ctl.busy_rejections == 1 and ctl.admitted == 1
