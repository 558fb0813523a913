"""TokenizerPool and the engine's off-loop tokenizing of long prompts (issue 13, item 2)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tripwire.engine import EngineBusy
from tripwire.engine.tokenizing import INLINE_BELOW_CHARS, TokenizerPool

pytestmark = pytest.mark.anyio


async def test_pool_is_bounded_and_balances_on_errors():
    pool = TokenizerPool(threads=1, max_pending=2)
    gate, entered = threading.Event(), threading.Event()

    def slow():
        entered.set()
        assert gate.wait(10)
        return [1, 2]

    a = asyncio.create_task(pool.run(slow))
    b = asyncio.create_task(pool.run(lambda: [3]))
    assert await asyncio.to_thread(entered.wait, 10)
    assert pool.pending == 2
    with pytest.raises(EngineBusy) as ei:
        await pool.run(lambda: [4])
    assert ei.value.retry_after_s == 1.0 and ei.value.holder is None
    gate.set()
    assert await a == [1, 2] and await b == [3]
    assert pool.pending == 0

    def boom():
        raise RuntimeError("tokenizer failed")

    with pytest.raises(RuntimeError, match="tokenizer failed"):
        await pool.run(boom)
    assert pool.pending == 0
    assert pool.stats() == {"pending": 0, "threads": 1, "max_pending": 2, "inline_below_chars": INLINE_BELOW_CHARS}
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(lambda: [5])


async def test_engine_tokenizes_long_prompts_on_the_pool_short_ones_inline(make_engine):
    eng = make_engine(spy=True)
    await eng.start()
    seen: list[str] = []
    real = eng._backend.encode

    def encode(text):
        seen.append(threading.current_thread().name)
        return real(text)

    eng._backend.encode = encode
    try:
        await eng.generate("short", max_tokens=1)
        assert seen == [threading.current_thread().name]
        long_prompt = "hello " * (INLINE_BELOW_CHARS // 6 + 1)
        assert await eng.count_prompt_tokens_async(prompt=long_prompt) > 0
        assert seen[-1].startswith("tripwire-tokenizer")
        n = len(seen)
        await eng.generate(long_prompt, max_tokens=1)  # memoized by the count: not tokenized again
        assert len(seen) == n
        r = await eng.chat([{"role": "user", "content": long_prompt + "!"}], max_tokens=1)
        assert r.completion_tokens == 1
        assert eng.status()["tokenizer"]["pending"] == 0
    finally:
        await eng.stop()
    with pytest.raises(Exception):
        await eng._tokenizer.run(lambda: [1])


async def test_pool_errors_say_what_happened():
    """The busy answer (it reaches clients as the 503 message) names how many long prompts are in flight; a
    closed pool says it is closed."""
    pool = TokenizerPool(threads=1, max_pending=1)
    gate, entered = threading.Event(), threading.Event()

    def slow():
        entered.set()
        assert gate.wait(10)
        return [1]

    a = asyncio.create_task(pool.run(slow))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        with pytest.raises(EngineBusy) as ei:
            await pool.run(lambda: [2])
        assert str(ei.value) == "1 long prompts are being tokenized; retry shortly"
        assert ei.value.to_dict()["message"] == str(ei.value)
    finally:
        gate.set()
    assert await a == [1]
    pool.close()
    with pytest.raises(RuntimeError) as ei:
        await pool.run(lambda: [3])
    assert str(ei.value) == "tokenizer pool is closed"


async def test_pool_runs_at_most_threads_encodes_at_once():
    """`threads` bounds the encodes running in parallel (the others wait their turn on the pool), also when
    more are pending; the pool's threads are named for diagnosis."""
    pool = TokenizerPool(threads=2, max_pending=4)
    gate = threading.Event()
    running: list[str] = []
    two_in = threading.Event()
    lock = threading.Lock()  # guards `running`, appended to from the pool's threads

    def encode():
        with lock:
            running.append(threading.current_thread().name)
            if len(running) == 2:
                two_in.set()
        assert gate.wait(10)
        return [len(running)]

    tasks = [asyncio.create_task(pool.run(encode)) for _ in range(4)]
    try:
        assert await asyncio.to_thread(two_in.wait, 10)
        assert pool.pending == 4
        # The two started encodes hold both threads: nothing else can have started.
        assert len(running) == 2 and len(pool._executor._threads) == 2
        assert all(n.startswith("tripwire-tokenizer") for n in running)
    finally:
        gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert len(running) == 4 and pool.pending == 0
    pool.close()


async def test_close_cancels_queued_encodes_and_does_not_wait_for_the_running_one():
    """`close()` returns at once while an encode still runs (nobody waits for it; it finishes on its thread),
    and an encode still queued behind it never runs: its caller gets CancelledError."""
    pool = TokenizerPool(threads=1, max_pending=2)
    gate, entered, finished = threading.Event(), threading.Event(), threading.Event()
    queued_ran = threading.Event()

    def running():
        entered.set()
        gate.wait(5)  # bounded: a close() that waits for it would return only after this
        finished.set()
        return [1]

    def queued():
        queued_ran.set()
        return [2]

    a = asyncio.create_task(pool.run(running))
    b = asyncio.create_task(pool.run(queued))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        assert pool.pending == 2  # b's job is queued behind a's on the one thread
        pool.close()
        assert not finished.is_set(), "close() waited for the running encode"
    finally:
        gate.set()
    assert await asyncio.wait_for(a, 5) == [1]
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(b, 5)
    assert not queued_ran.is_set() and pool.pending == 0
