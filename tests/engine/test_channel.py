"""The worker->loop token channel: every token arrives, in order; wakeups are rate-limited, never lost."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tripwire.engine.channel import END, TokenChannel

pytestmark = pytest.mark.anyio


async def test_tokens_put_from_a_thread_arrive_in_order_and_end_after_the_last():
    ch = TokenChannel(asyncio.get_running_loop(), min_wake_interval_s=0.003)
    done = threading.Event()

    def worker():
        for t in range(500):
            ch.put(t)
        done.set()

    async def consume():
        got = []
        while (item := await ch.get()) is not END:
            got.append(item)
        return got

    async def close_after_worker():  # as the engine does: close once the worker's job has returned
        assert await asyncio.to_thread(done.wait, 5)
        ch.close("length")

    threading.Thread(target=worker).start()
    got, _ = await asyncio.wait_for(asyncio.gather(consume(), close_after_worker()), 10)
    assert got == list(range(500)) and ch.end == "length"
    assert await ch.get() is END


async def test_the_first_token_wakes_the_consumer_immediately():
    ch = TokenChannel(asyncio.get_running_loop(), min_wake_interval_s=3600)  # only the first put may wake
    getter = asyncio.create_task(ch.get())
    await asyncio.sleep(0)
    threading.Thread(target=ch.put, args=(7,)).start()
    assert await asyncio.wait_for(getter, 5) == 7


async def test_tokens_inside_the_interval_are_delivered_by_close_not_stranded():
    ch = TokenChannel(asyncio.get_running_loop(), min_wake_interval_s=3600)
    t = threading.Thread(target=lambda: [ch.put(i) for i in range(3)])
    t.start()
    t.join(5)
    assert await ch.get() == 0  # woken by the first put
    ch.close("stop")  # tokens 1 and 2 had no wakeup of their own
    assert [await ch.get(), await ch.get(), await ch.get()] == [1, 2, END]


async def test_a_token_put_inside_the_interval_is_delivered_within_the_interval_even_if_the_worker_stalls():
    """A token that got no wakeup of its own (the worker stalled right after putting it) is still delivered,
    by the consumer's own timer, bounded by the interval rather than by the worker's next token."""
    ch = TokenChannel(asyncio.get_running_loop(), min_wake_interval_s=0.05)
    ch.put(1)  # wakes (first token)
    assert await ch.get() == 1
    getter = asyncio.create_task(ch.get())
    await asyncio.sleep(0)  # the consumer is waiting on an empty buffer
    threading.Thread(target=ch.put, args=(2,)).start()  # inside the interval: no wakeup scheduled
    assert await asyncio.wait_for(getter, 5) == 2  # delivered by the timer, no close() needed
