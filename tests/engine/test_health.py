"""SimpleEngine.health(): unhealthy when the MLX worker thread is dead or an admitted request stalls (issue 13)."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.anyio


async def test_health_follows_the_lifecycle(make_engine):
    eng = make_engine()
    h = eng.health()
    assert h["status"] == "unhealthy" and "created" in h["reason"]
    await eng.start()
    assert eng.health() == {"status": "ok"}
    await eng.generate("hi", max_tokens=2)
    assert eng.health() == {"status": "ok"}
    await eng.stop()
    h = eng.health()
    assert h["status"] == "unhealthy" and "stopped" in h["reason"]


async def test_health_reports_a_dead_worker_thread(make_engine):
    eng = make_engine()
    await eng.start()
    try:
        await asyncio.wait_for(asyncio.wrap_future(eng._worker.request_stop()), 10)
        assert eng._worker.join(5)
        h = eng.health()
        assert h["status"] == "unhealthy" and "worker" in h["reason"] and "not running" in h["reason"]
    finally:
        await eng.stop()


async def test_health_reports_an_admitted_request_without_progress_past_the_deadline(make_engine):
    eng = make_engine(spy=True)
    await eng.start()
    eng._backend.pin_after_tokens = 1
    try:
        stream = await eng.open_stream("hello", max_tokens=50)
        assert await asyncio.to_thread(eng._backend.pinned.wait, 10)
        now = time.monotonic()
        assert eng.health(stall_after_s=30.0, now=now) == {"status": "ok"}
        h = eng.health(stall_after_s=30.0, now=now + 30.5)
        assert h["status"] == "unhealthy" and stream.request_id in h["reason"] and "30" in h["reason"]
        # Exactly at the deadline is still healthy: the deadline is "past", not "at".
        at = eng._active[stream.request_id].progress_at + 30.0
        assert eng.health(stall_after_s=30.0, now=at) == {"status": "ok"}
        eng._backend.release.set()
        [d async for d in stream]
        assert eng.health(stall_after_s=30.0, now=time.monotonic() + 1000) == {"status": "ok"}, "idle is healthy"
    finally:
        eng._backend.release.set()
        await eng.stop()


async def test_each_token_counts_as_progress(make_engine):
    eng = make_engine(spy=True)
    await eng.start()
    eng._backend.pin_after_tokens = 3
    try:
        stream = await eng.open_stream("hello", max_tokens=50)
        req = eng._active[stream.request_id]
        admitted_at = req.progress_at
        assert await asyncio.to_thread(eng._backend.pinned.wait, 10)
        assert req.progress_at > admitted_at
        eng._backend.release.set()
        await stream.aclose()
    finally:
        eng._backend.release.set()
        await eng.stop()
