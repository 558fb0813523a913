"""The busy back-off's timers around the contender (engine/server/backoff.py, issue 13 item 6), on a real event loop
with the stand-in protocol and slot of tests/server/test_server_backoff.py: a paused connection whose timer ends
while the contender is on its way looks again later and is resumed once the contender has taken the slot; a
connection its timer resumes while the slot is busy is no contender, so a generation client finishing when the
slot frees (before the engine's "free" callback has run) is not paused on its account."""

from __future__ import annotations

import asyncio

from tripwire.engine.server.backoff import REQUEST
from test_server_backoff import _backoff, _Proto, _Slot


def test_a_timer_ending_while_the_contender_is_pending_resumes_its_connection_once_the_slot_is_taken():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        looked = asyncio.Event()
        probe_busy = slot.is_busy

        def is_busy() -> bool:  # after the free, only the waiting timer asks: it sees the contender pending
            if not slot.busy:
                looked.set()
            return probe_busy()

        slot.is_busy = is_busy
        contender, waiting = _Proto(loop), _Proto(loop)
        contender.unread = waiting.unread = REQUEST
        bo = _backoff(slot, max_pause_s=0.02)
        resumed = asyncio.Event()
        bo.on_resume = lambda proto, why: resumed.set() if proto is waiting and why == "timer" else None
        assert bo.pause(contender, 1.0) and bo.pause(waiting, 0.02)
        slot.free()                      # the contender is resumed and goes for the slot
        await asyncio.wait_for(looked.wait(), 5)
        assert waiting.flow.read_paused  # its timer ended with the contender pending: it looks again later
        slot.busy = True                 # the contender took the slot
        await asyncio.wait_for(resumed.wait(), 5)
        assert not waiting.flow.read_paused and bo.stats()["busy_resumed_on_timer"] == 1
        for p in (contender, waiting):
            p._unset_keepalive_if_required()

    asyncio.run(main())


def test_a_connection_resumed_by_its_timer_while_busy_is_no_contender():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        retried, finished = _Proto(loop), _Proto(loop)
        bo = _backoff(slot, max_pause_s=0.01)
        resumed = asyncio.Event()
        bo.on_resume = lambda proto, why: resumed.set() if why == "timer" else None
        assert bo.pause(retried, 0.01)
        await asyncio.wait_for(resumed.wait(), 5)  # resumed by its timer; the slot is still busy
        slot.busy = False  # the holder's job released the slot; the engine's callback has not run yet
        bo.after_response(finished, generation=True, idle=True)  # the holder's client gets its last byte
        assert not finished.flow.read_paused and bo.stats()["busy_paused_now"] == 0
        for p in (retried, finished):
            p._unset_keepalive_if_required()

    asyncio.run(main())


def test_a_resumed_connection_idle_past_its_keep_alive_is_closed_by_its_own_handler():
    """Resuming re-arms uvicorn's keep-alive with the connection's own handler: a retry that never comes is closed
    after `timeout_keep_alive` as any idle connection (second random sample of the server mutants: the timer's
    callback `None` survived; asyncio only logs the TypeError and the connection stays open for good)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot, proto = _Slot(), _Proto(loop)
        proto.timeout_keep_alive = 0.01
        bo = _backoff(slot)
        assert bo.pause(proto, 3.0) and proto.timeout_keep_alive_task is None
        slot.free()
        fired = await loop.run_in_executor(None, proto.keep_alive_fired.wait, 5)
        assert fired, "the re-armed keep-alive never ran the connection's handler"
        proto._unset_keepalive_if_required()

    asyncio.run(main())
