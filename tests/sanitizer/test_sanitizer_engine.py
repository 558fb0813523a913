"""The sanitizer on our engine: silent on the correct engine under load and cancellation; it catches the
catalogue's MLX-thread shapes (tools/regressions: to-thread-lock-released-on-cancel, mlx-on-default-executor,
model-loaded-on-another-thread) with the engine's own MLX entry guard switched off."""

from __future__ import annotations

import asyncio

import pytest

from tripwire.engine import EngineBusy
from tripwire.sanitizer import sanitize

pytestmark = pytest.mark.anyio


async def _thread_event(ev, timeout=10):
    assert await asyncio.to_thread(ev.wait, timeout), "the worker never reached the pinned step"


async def _until(pred, timeout=10.0):
    """Yield to the loop until `pred()` holds (bounded): the state it reads is the engine's own, and each
    caller then asserts the outcome it needs, so no duration is guessed."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0)


async def test_cancelled_request_is_drained_before_the_next_one_touches_mlx(sanitized_engine):
    with sanitize() as san:
        eng = sanitized_engine("wait", max_wait_s=2.0)
        await eng.start()
        backend = eng._backend
        try:
            backend.pin_after_tokens = 3
            first = asyncio.create_task(eng.generate("first request", max_tokens=200, request_id="first"))
            await _thread_event(backend.pinned)
            first.cancel()
            second = asyncio.create_task(eng.generate("second request", max_tokens=4, request_id="second"))
            # Correct engine: `second` waits for the slot while `first` drains. Broken one: it runs at once.
            await _until(lambda: second.done() or eng.status()["waiters"] == 1)
            backend.release.set()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert (await second).completion_tokens > 0
        finally:
            backend.release.set()
            await eng.stop()
    san.assert_clean()
    assert san.calls > 0


async def test_every_mlx_call_on_the_one_worker_which_ends_clean(sanitized_engine):
    with sanitize() as san:
        eng = sanitized_engine()
        await eng.start()
        try:
            await eng.generate("one", max_tokens=4)
            async for _ in eng.stream_generate("two", max_tokens=4):
                pass
            await eng.chat([{"role": "user", "content": "three"}], max_tokens=4)
        finally:
            await eng.stop()
        assert not eng._worker.is_alive()
    san.assert_clean()  # includes: no thread that ran MLX work is left without synchronize + clear_streams
    assert san.calls > 0


@pytest.mark.timeout(90)
async def test_silent_on_the_correct_engine_under_load_and_cancellation(sanitized_engine):
    with sanitize() as san:
        eng = sanitized_engine("wait", max_wait_s=0.05)
        await eng.start()
        try:
            async def client(i):
                for j in range(4):
                    try:
                        if (i + j) % 3 == 0:
                            s = await eng.open_stream(f"stream {i} {j}", max_tokens=30)
                            async for n, _ in _aenumerate(s):
                                if n == 2:
                                    break  # a client that walks away mid-stream
                            await s.aclose()
                        elif (i + j) % 3 == 1:
                            t = asyncio.create_task(eng.generate(f"cancel {i} {j}", max_tokens=60))
                            await _until(lambda: t.done() or eng.status()["generation_lock"]["locked"])
                            t.cancel()
                            await asyncio.gather(t, return_exceptions=True)
                        else:
                            await eng.chat([{"role": "user", "content": f"chat {i} {j}"}], max_tokens=6)
                    except EngineBusy:
                        pass
            await asyncio.gather(*(client(i) for i in range(8)))
            st = eng.status()
            assert st["totals"]["admitted"] > 0 and not st["generation_lock"]["locked"], st
        finally:
            await eng.stop()
    san.assert_clean()


async def _aenumerate(it):
    n = 0
    async for x in it:
        yield n, x
        n += 1
