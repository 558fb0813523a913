"""The busy back-off's timer path at its exact contract (engine/server/backoff.py, issue 13 item 6; the server
group's random mutation sample):

- a paused connection whose timer ends while the contender (the retry resumed for a freed slot) is still on its
  way to admission looks again a few milliseconds later, and is resumed by that later look once the contender
  took the slot: it is never left paused with no timer;
- a retry its timer resumes becomes the contender only when the slot is free at that moment: resumed while the
  slot is still busy, it races nobody, so a generation client finishing next (before the engine's "slot freed"
  callback arrives) is not held back for it.

`BusyBackoff` runs on a real event loop against the stand-in protocol and slot of test_server_backoff.py (the
parts of uvicorn's protocol and of the engine it touches)."""

from __future__ import annotations

import asyncio

import pytest

from test_server_backoff import _backoff, _Proto, _Slot
from tripwire.engine.server.backoff import REQUEST, BusyBackoff


def test_a_timer_ending_while_the_contender_is_pending_looks_again_and_resumes_once_the_slot_is_taken():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        looked, watching = asyncio.Event(), [False]

        def is_busy() -> bool:
            if watching[0]:  # after the free: only `waiting`'s timer asks (is the contender still pending?)
                looked.set()
            return slot.busy

        bo = BusyBackoff(is_busy=is_busy, call_when_free=slot.call_when_free, max_pause_s=0.02,
                         probe=lambda proto: proto.unread)
        contender, waiting = _Proto(loop), _Proto(loop)
        contender.unread = waiting.unread = REQUEST
        resumed = asyncio.Event()
        bo.on_resume = lambda proto, why: resumed.set() if proto is waiting and why == "timer" else None
        assert bo.pause(contender, 1.0) and bo.pause(waiting, 0.02)
        slot.free()  # the contender is resumed and on its way to admission; the slot is still free
        assert not contender.flow.read_paused and waiting.flow.read_paused
        watching[0] = True
        await asyncio.wait_for(looked.wait(), 5)  # `waiting`'s timer ended and found the contender pending
        assert waiting.flow.read_paused and not resumed.is_set()
        slot.busy = True  # the contender was admitted: the slot is taken
        await asyncio.wait_for(resumed.wait(), 5)  # the next look lets the retry in (to a cheap busy answer)
        assert not waiting.flow.read_paused and bo.stats()["busy_resumed_on_timer"] == 1
        assert bo.stats()["busy_paused_now"] == 0
        for p in (contender, waiting):
            p._unset_keepalive_if_required()

    asyncio.run(main())


@pytest.mark.parametrize("busy_at_timer", [True, False], ids=["slot-busy-at-the-timer", "slot-free-at-the-timer"])
def test_a_retry_resumed_by_its_timer_is_the_contender_only_if_the_slot_is_free_then(busy_at_timer):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        retry, finished = _Proto(loop), _Proto(loop)
        retry.unread = REQUEST
        bo = _backoff(slot, max_pause_s=0.01)
        resumed = asyncio.Event()
        bo.on_resume = lambda proto, why: resumed.set() if proto is retry and why == "timer" else None
        assert bo.pause(retry, 0.01)
        # the holder releases the slot before the timer ends, its "slot freed" callback not delivered yet
        slot.busy = busy_at_timer
        await asyncio.wait_for(resumed.wait(), 5)
        slot.busy = False  # now the slot is free in both cases; the engine's callback still on its way
        bo.after_response(finished, generation=True, idle=True)  # another generation client finished
        # held back only for a contender: a retry resumed while the slot was free is on its way to it
        assert finished.flow.read_paused is (not busy_at_timer)
        for p in (retry, finished):
            p._unset_keepalive_if_required()
        bo.forget(finished)

    asyncio.run(main())
