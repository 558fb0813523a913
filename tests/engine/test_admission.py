"""Fail-fast admission: a busy engine answers at once; it never becomes a wait queue (upstream, a lock used as
a 120 s wait queue piled requests up under agent traffic)."""

from __future__ import annotations

import asyncio

import pytest

from tripwire.engine import EngineBusy
from tripwire.engine.admission import AdmissionController

pytestmark = pytest.mark.anyio


async def _until_locked(eng):
    # Bounded poll of the engine's own state (no sleep): yields to the loop until the worker holds the lock.
    for _ in range(100_000):
        if eng.status()["generation_lock"]["locked"]:
            return
        await asyncio.sleep(0)
    raise AssertionError("generation never started")


async def test_fifty_concurrent_requests_one_admitted_rest_rejected_without_waiting(make_engine):
    eng = make_engine()
    await eng.start()
    try:
        holder = asyncio.create_task(eng.generate("hold the slot", max_tokens=400))
        await _until_locked(eng)
        outcomes = []
        for i in range(49):
            coro = eng.generate(f"request {i}", max_tokens=4)
            # One send() runs the coroutine until its first suspension: a rejection that raises here
            # never suspended, i.e. never waited for anything.
            try:
                coro.send(None)
            except EngineBusy as exc:
                outcomes.append(exc)
            else:  # pragma: no cover - the regression this test exists for
                coro.close()
                pytest.fail("a concurrent request suspended instead of being rejected immediately")
            assert eng.status()["waiters"] == 0
        assert len(outcomes) == 49
        for exc in outcomes:
            assert exc.code == "text_generation_busy" and exc.http_status == 503 and exc.retryable
            assert exc.retry_after_s > 0
            assert exc.holder["request_id"] == eng.status()["slot_holder"]["request_id"]
            assert set(exc.holder) >= {"request_id", "elapsed_s", "completion_tokens"}
        st = eng.status()
        assert st["busy_rejections"] == 49 and st["totals"]["admitted"] == 1 and len(st["active"]) == 1
        r = await holder
        assert r.completion_tokens > 0
    finally:
        await eng.stop()


async def test_gathered_concurrent_arrivals_admit_exactly_one(make_engine):
    eng = make_engine()
    await eng.start()
    try:
        results = await asyncio.gather(*(eng.generate(f"p{i}", max_tokens=8) for i in range(50)),
                                       return_exceptions=True)
        ok = [r for r in results if not isinstance(r, BaseException)]
        busy = [r for r in results if isinstance(r, EngineBusy)]
        assert len(ok) == 1 and len(busy) == 49
        assert eng.status()["generation_lock"]["locked"] is False and eng.status()["slot_holder"] is None
    finally:
        await eng.stop()


async def test_wait_mode_waits_at_most_max_wait_then_rejects(make_engine):
    eng = make_engine("wait", max_wait_s=0.2)
    await eng.start()
    try:
        holder = asyncio.create_task(eng.generate("hold", max_tokens=1500))
        await _until_locked(eng)
        waiter = asyncio.create_task(eng.generate("wait for it", max_tokens=4))
        for _ in range(1000):
            await asyncio.sleep(0)
            if eng.status()["waiters"] == 1:
                break
        assert eng.status()["waiters"] == 1
        with pytest.raises(EngineBusy):
            await waiter
        assert eng.status()["waiters"] == 0
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
    finally:
        await eng.stop()


async def test_wait_mode_admits_the_waiter_when_the_slot_frees(make_engine):
    eng = make_engine("wait", max_wait_s=2.0)
    await eng.start()
    try:
        first = asyncio.create_task(eng.generate("first", max_tokens=8))
        await _until_locked(eng)
        second = await eng.generate("second", max_tokens=4)
        assert (await first).request_id != second.request_id
        assert eng.status()["totals"]["admitted"] == 2
    finally:
        await eng.stop()


def test_admission_config_is_validated():
    from tripwire.engine import InvalidRequest

    with pytest.raises(InvalidRequest, match="unknown admission mode"):
        AdmissionController("queue")
    with pytest.raises(InvalidRequest, match="max_wait_s"):
        AdmissionController("wait", max_wait_s=120)
    assert isinstance(InvalidRequest("x"), ValueError)


async def test_admitted_once_a_stream_is_never_rejected_midway(make_engine):
    eng = make_engine()
    await eng.start()
    try:
        stream = await eng.open_stream("a long story", max_tokens=64)
        n = 0
        with pytest.raises(EngineBusy):  # others are rejected while the stream holds the slot...
            await eng.generate("intruder", max_tokens=2)
        async for d in stream:
            n += 1
        assert stream.finish_reason in ("length", "stop")  # ...and the stream itself always finishes
        assert n == stream.completion_tokens + 1
    finally:
        await eng.stop()


async def test_a_busy_engine_rejects_before_tokenizing(make_engine):
    """Busy answers must stay cheap under load: no chat-template render, no tokenizer call."""
    eng = make_engine(spy=True)
    await eng.start()
    backend = eng._backend
    try:
        backend.pin_after_tokens = 1
        holder = asyncio.create_task(eng.generate("hold", max_tokens=50))
        assert await asyncio.to_thread(backend.pinned.wait, 10)
        before = backend.encodes
        with pytest.raises(EngineBusy):
            await eng.chat([{"role": "user", "content": "busy?"}], max_tokens=4)
        with pytest.raises(EngineBusy):
            await eng.open_stream("busy?", max_tokens=4)
        with pytest.raises(EngineBusy):
            eng.reject_if_busy()
        assert backend.encodes == before and eng.status()["busy_rejections"] == 3
        from tripwire.engine import InvalidRequest
        with pytest.raises(InvalidRequest):  # structural validation still comes first: a bad request is a 400
            await eng.chat([{"role": "robot", "content": "x"}], max_tokens=4)
        backend.release.set()
        await holder
        eng.reject_if_busy()  # free again: no exception, nothing counted
        assert eng.status()["busy_rejections"] == 3
    finally:
        backend.release.set()
        await eng.stop()


async def test_counting_then_generating_tokenizes_once(make_engine):
    eng = make_engine(spy=True)
    await eng.start()
    try:
        msgs = [{"role": "user", "content": "count me once"}]
        before = eng._backend.encodes
        n = eng.count_prompt_tokens(messages=msgs)
        r = await eng.chat(msgs, max_tokens=2)
        assert r.prompt_tokens == n and eng._backend.encodes == before + 1
    finally:
        await eng.stop()
