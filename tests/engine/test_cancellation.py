"""Cancellation drain (the upstream cancellation fix): the lock/slot outlive the worker step of a cancelled request."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tripwire.engine import EngineBusy

pytestmark = pytest.mark.anyio


async def _wait_thread_event(ev, timeout=10):
    assert await asyncio.to_thread(ev.wait, timeout), "worker never reached the pinned step"


async def test_cancel_inside_a_step_then_second_request_waits_for_the_worker(make_engine):
    eng = make_engine("wait", spy=True, max_wait_s=2.0)
    await eng.start()
    backend = eng._backend
    try:
        backend.pin_after_tokens = 3
        first = asyncio.create_task(eng.generate("first request", max_tokens=200, request_id="first"))
        await _wait_thread_event(backend.pinned)
        first.cancel()
        second = asyncio.create_task(eng.generate("second request", max_tokens=4, request_id="second"))
        for _ in range(50):  # let both tasks run as far as they can while the worker is pinned
            await asyncio.sleep(0)
        assert not first.done(), "the cancelled request returned before its worker step finished"
        assert eng.status()["generation_lock"]["locked"] and eng.status()["waiters"] == 1
        assert ("enter", "second") not in backend.events
        backend.release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        r = await second
        assert r.completion_tokens > 0
        assert backend.events.index(("exit", "first")) < backend.events.index(("enter", "second"))
        assert eng.guard.trips == 0
        assert eng.status()["totals"]["cancelled"] == 1
    finally:
        backend.release.set()
        await eng.stop()


async def test_fail_fast_rejects_while_a_cancelled_request_drains(make_engine):
    eng = make_engine(spy=True)
    await eng.start()
    backend = eng._backend
    try:
        backend.pin_after_tokens = 2
        first = asyncio.create_task(eng.generate("first", max_tokens=200))
        await _wait_thread_event(backend.pinned)
        first.cancel()
        for _ in range(20):
            await asyncio.sleep(0)
        with pytest.raises(EngineBusy):  # slot still held: the worker has not finished
            async with asyncio.timeout(5):  # fail-fast answers at once; admitted, it would wait for the pinned step
                await eng.generate("too early", max_tokens=2)
        backend.release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert (await eng.generate("after drain", max_tokens=2)).completion_tokens > 0
        assert eng.guard.trips == 0
    finally:
        backend.release.set()
        await eng.stop()


async def test_cancelled_stream_stops_within_one_token(make_engine):
    eng = make_engine(spy=True)
    await eng.start()
    backend = eng._backend
    try:
        stream = await eng.open_stream("stream then abort", max_tokens=500, request_id="s1")
        got = 0
        async for d in stream:
            got += 1
            if got == 3:
                break
        await stream.aclose()
        assert backend.tokens_after_abort["s1"] <= 1
        assert eng._active == {} and not eng.status()["generation_lock"]["locked"]
        assert eng.status()["totals"]["cancelled"] == 1
    finally:
        await eng.stop()


async def test_cancelling_the_consumer_task_of_a_stream_drains(make_engine):
    eng = make_engine(spy=True)
    await eng.start()
    backend = eng._backend
    try:
        seen = asyncio.Event()

        async def consume():
            async for _ in eng.stream_generate("consume", max_tokens=500, request_id="c1"):
                seen.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(seen.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert backend.tokens_after_abort["c1"] <= 1
        assert eng.status()["slot_holder"] is None and eng.guard.trips == 0
        assert (await eng.generate("next", max_tokens=2)).completion_tokens > 0
    finally:
        await eng.stop()


async def test_worker_error_while_draining_is_logged_with_the_request_id(make_engine, caplog):
    eng = make_engine(spy=True)
    await eng.start()
    backend = eng._backend
    backend.fail_after_abort = True
    try:
        backend.pin_after_tokens = 1
        task = asyncio.create_task(eng.generate("doomed", max_tokens=100, request_id="doomed-1"))
        await _wait_thread_event(backend.pinned)
        task.cancel()
        backend.release.set()
        with caplog.at_level(logging.ERROR, logger="tripwire.engine.simple"), pytest.raises(asyncio.CancelledError):
            await task
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("doomed-1" in r.getMessage() and r.exc_info for r in errors), caplog.text
        assert eng.status()["generation_lock"]["locked"] is False
    finally:
        backend.release.set()
        await eng.stop()


async def test_double_cancel_during_drain_still_waits_for_the_worker(make_engine):
    eng = make_engine(spy=True)
    await eng.start()
    backend = eng._backend
    try:
        backend.pin_after_tokens = 2
        task = asyncio.create_task(eng.generate("twice", max_tokens=100, request_id="twice"))
        await _wait_thread_event(backend.pinned)
        task.cancel()
        for _ in range(10):
            await asyncio.sleep(0)
        task.cancel()
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done() and eng.status()["generation_lock"]["locked"]
        backend.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ("exit", "twice") in backend.events and not eng.status()["generation_lock"]["locked"]
    finally:
        backend.release.set()
        await eng.stop()
