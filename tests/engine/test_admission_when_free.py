"""`AdmissionController.call_when_free` / `SimpleEngine.call_when_free`: a one-shot notification that the slot was
freed (issue 16: the server stops reading a connection it answered busy until the slot frees, and needs to know
when that is without polling)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest

from tripwire.engine.admission import AdmissionController

pytestmark = pytest.mark.anyio


@dataclass
class _Req:
    id: str
    started: float = 0.0
    completion_tokens: int = 0
    max_tokens: int = 4
    abort: object = field(default=None)


async def test_a_callback_runs_once_on_the_release_that_frees_the_slot():
    adm = AdmissionController()
    holder = _Req("a")
    await adm.admit(holder)
    calls: list[object] = []
    adm.call_when_free(lambda: calls.append(adm.holder))
    adm.release(_Req("not-the-holder"))  # a no-op release frees nothing
    assert calls == []
    adm.release(holder)
    assert calls == [None]  # called after the slot is free (a probe from the callback sees it free)
    second = _Req("b")
    await adm.admit(second)
    adm.release(second)
    assert calls == [None]  # one-shot: not called again


async def test_a_release_that_hands_the_slot_to_a_waiter_does_not_call_back():
    adm = AdmissionController(mode="wait", max_wait_s=2.0)
    first, second = _Req("a"), _Req("b")
    await adm.admit(first)
    waiting = asyncio.create_task(adm.admit(second))
    for _ in range(100):  # bounded: the waiter queues within a few loop iterations
        if adm.waiters:
            break
        await asyncio.sleep(0)
    assert adm.waiters == 1
    calls: list[str] = []
    adm.call_when_free(lambda: calls.append("free"))
    adm.release(first)
    await asyncio.wait_for(waiting, 5)
    assert adm.holder is second and calls == []
    adm.release(second)
    assert calls == ["free"]


async def test_a_raising_callback_is_logged_and_does_not_stop_the_others_or_the_release(caplog):
    adm = AdmissionController()
    holder = _Req("a")
    await adm.admit(holder)
    calls: list[str] = []

    def boom() -> None:
        raise RuntimeError("listener exploded")

    adm.call_when_free(boom)
    adm.call_when_free(lambda: calls.append("second"))
    with caplog.at_level(logging.ERROR, logger="tripwire.engine.admission"):
        adm.release(holder)
    assert adm.holder is None and calls == ["second"]
    # An operator reading the log learns what failed (a call_when_free callback) and why (its own traceback).
    (rec,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "call_when_free callback failed" in rec.getMessage(), rec.getMessage()
    assert rec.exc_info and isinstance(rec.exc_info[1], RuntimeError) and "listener exploded" in str(rec.exc_info[1])


async def test_a_callback_registered_while_free_runs_at_the_next_release_not_now():
    adm = AdmissionController()
    calls: list[str] = []
    adm.call_when_free(lambda: calls.append("free"))
    assert calls == []  # the caller decides about a free slot itself (it just saw the slot busy)
    holder = _Req("a")
    await adm.admit(holder)
    adm.release(holder)
    assert calls == ["free"]


async def test_the_engine_forwards_call_when_free_to_its_admission(make_engine):
    eng = make_engine()
    await eng.start()
    try:
        freed = asyncio.Event()
        task = asyncio.create_task(eng.generate("hold the slot", max_tokens=8))
        for _ in range(100_000):  # bounded: yields to the loop until the slot is held
            if eng.is_busy():
                break
            await asyncio.sleep(0)
        assert eng.is_busy()
        eng.call_when_free(freed.set)
        await asyncio.wait_for(task, 30)
        assert freed.is_set() and not eng.is_busy()
    finally:
        await eng.stop()
