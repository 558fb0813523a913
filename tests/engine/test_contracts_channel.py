"""TokenChannel contracts: at most one pending loop wakeup, rate-limited by the interval; close/END semantics.

The loop is wrapped in a proxy that counts `call_soon_threadsafe` (the wakeups the channel pays for).
"""

from __future__ import annotations

import asyncio

import pytest

from tripwire.engine.channel import END, TokenChannel

pytestmark = pytest.mark.anyio


class CountingLoop:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self.wakeups = 0

    def call_soon_threadsafe(self, *a):
        self.wakeups += 1
        return self._loop.call_soon_threadsafe(*a)

    def __getattr__(self, name):
        return getattr(self._loop, name)


async def test_puts_while_a_wakeup_is_pending_schedule_no_other_wakeup():
    loop = CountingLoop(asyncio.get_running_loop())
    ch = TokenChannel(loop, min_wake_interval_s=0.0)
    for t in range(10):  # no loop iteration in between: the first wakeup is still pending
        ch.put(t)
    assert loop.wakeups == 1
    assert [await ch.get() for _ in range(10)] == list(range(10))
    await asyncio.sleep(0)  # let the pending wakeup run: it clears the flag
    ch.put(10)
    assert loop.wakeups == 2  # a put after the wakeup ran schedules a new one
    assert await ch.get() == 10


async def test_within_the_interval_only_the_first_put_wakes_the_loop():
    loop = CountingLoop(asyncio.get_running_loop())
    ch = TokenChannel(loop, min_wake_interval_s=3600)
    ch.put(1)
    assert await ch.get() == 1
    await asyncio.sleep(0)
    ch.put(2)
    ch.put(3)
    assert loop.wakeups == 1
    ch.close("length")
    assert [await ch.get(), await ch.get(), await ch.get()] == [2, 3, END]


async def test_close_wakes_a_waiting_consumer_and_end_keeps_the_reason():
    ch = TokenChannel(asyncio.get_running_loop(), min_wake_interval_s=3600)
    getter = asyncio.create_task(ch.get())
    await asyncio.sleep(0)
    assert not getter.done()
    err = RuntimeError("worker failed")
    ch.close(err)
    assert await asyncio.wait_for(getter, 5) is END
    assert ch.end is err
    assert await ch.get() is END


async def test_a_closed_channel_still_delivers_buffered_tokens_before_end():
    ch = TokenChannel(asyncio.get_running_loop(), min_wake_interval_s=0.0)
    ch.put(5)
    ch.put(6)
    ch.close("stop")
    assert [await ch.get(), await ch.get(), await ch.get()] == [5, 6, END]


class RecordingLoop(CountingLoop):
    def __init__(self, loop):
        super().__init__(loop)
        self.timers: list[asyncio.TimerHandle] = []

    def call_later(self, *a):
        h = self._loop.call_later(*a)
        self.timers.append(h)
        return h


async def test_the_consumer_timer_is_cancelled_once_the_token_arrived():
    loop = RecordingLoop(asyncio.get_running_loop())
    ch = TokenChannel(loop, min_wake_interval_s=3600)
    getter = asyncio.create_task(ch.get())
    await asyncio.sleep(0)
    assert len(loop.timers) == 1 and not loop.timers[0].cancelled()
    ch.put(1)  # first put: wakes the consumer
    assert await asyncio.wait_for(getter, 5) == 1
    assert loop.timers[0].cancelled()  # no stray hour-long timer per waited token


async def test_a_put_exactly_one_interval_after_the_last_wakeup_wakes_again(monkeypatch):
    import tripwire.engine.channel as channel_mod
    now = [50.0]
    monkeypatch.setattr(channel_mod, "time", type("T", (), {"monotonic": staticmethod(lambda: now[0])}))
    loop = CountingLoop(asyncio.get_running_loop())
    ch = TokenChannel(loop, min_wake_interval_s=0.5)
    ch.put(1)
    assert await ch.get() == 1
    await asyncio.sleep(0)
    now[0] = 50.25
    ch.put(2)  # inside the interval: no wakeup of its own
    assert loop.wakeups == 1 and await ch.get() == 2
    now[0] = 50.5
    ch.put(3)  # exactly one interval after the last wakeup: wakes
    assert loop.wakeups == 2 and await ch.get() == 3


async def test_an_idle_consumer_of_a_zero_interval_channel_sleeps_without_polling():
    """Interval 0: every put wakes the loop itself, so a waiting consumer arms no timer of its own and stays
    suspended (no busy loop) until a token or the close arrives."""
    loop = RecordingLoop(asyncio.get_running_loop())
    ch = TokenChannel(loop, min_wake_interval_s=0.0)
    getter = asyncio.create_task(ch.get())
    for _ in range(50):  # many loop iterations while nothing arrives
        await asyncio.sleep(0)
    assert loop.timers == [] and not getter.done()
    ch.put(7)
    assert await asyncio.wait_for(getter, 5) == 7
    ch.close("stop")
    assert await ch.get() is END and loop.timers == []


async def test_by_default_a_token_waits_at_most_ten_milliseconds_for_its_pickup():
    """The engine's channels use the default interval: a token put inside it (no wakeup of its own) is picked up
    by the consumer's timer, armed for 10 ms, so a stream's tokens are delayed by at most 10 ms."""
    loop = RecordingLoop(asyncio.get_running_loop())
    ch = TokenChannel(loop)
    getter = asyncio.create_task(ch.get())
    await asyncio.sleep(0)
    assert [round(t.when() - loop.time(), 3) <= 0.01 for t in loop.timers] == [True]
    ch.put(1)
    assert await asyncio.wait_for(getter, 5) == 1
    ch.close("stop")
    assert await ch.get() is END
